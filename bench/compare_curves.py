"""Overlay the learning curves of ``bench/speech_recipe.py`` runs on the same
split (e.g. bf16 autocast against fp32) in one PNG.

    .venv/bin/python bench/compare_curves.py out/recipe/p112-paper out/recipe/p112-paper-fp32 \
        --epochs 15 --out bench/figures/bf16-vs-fp32.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SERIES = (("train_loss", "training loss"), ("val_loss", "validation loss"), ("val_ua", "validation UA"))


def history(folder: Path, epochs: int | None) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    return rows[:epochs] if epochs else rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--epochs", type=int, default=None, help="the first N epochs of each")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    figure = Figure(figsize=(5.0 * len(SERIES), 3.6), layout="constrained")
    runs = {Path(run).name: history(Path(run), args.epochs) for run in args.runs}
    for axes, (key, label) in zip(figure.subplots(1, len(SERIES)), SERIES):
        for name, rows in runs.items():
            axes.plot([r["epoch"] + 1 for r in rows], [r[key] for r in rows], marker="o",
                      markersize=3, label=name)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    for name, rows in runs.items():
        seconds = sorted(r["epoch_seconds"] for r in rows)
        print(f"{name}: median {seconds[len(seconds) // 2]:.1f} s/epoch, best val UA "
              f"{max(r['val_ua'] for r in rows):.3f} in {len(rows)} epochs")
    FigureCanvasAgg(figure)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
