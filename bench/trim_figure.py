"""What silence trimming (``racnn.trim_db``) does to one clip's RACNN input.

    .venv/bin/python bench/trim_figure.py ../shared/data/ravdess-speech-16k/Actor_01/<clip>.flac \
        --trim-db 30 --size 112 --out bench/figures/trim-input.png

Top: the clip's static log-mel, with the span the trim keeps marked. Below:
the static channel of the 9 RACNN input segments without and with the trim.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from avser.features.audio import load_logmel
from avser.features.config import RacnnInputConfig
from avser.features.racnn_input import racnn_input, voiced_span


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path, help="an audio file")
    parser.add_argument("--trim-db", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=112, help="racnn.input_size")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logmel = torch.from_numpy(load_logmel(args.clip))
    cfg = RacnnInputConfig(size=args.size, trim_db=args.trim_db)
    first, kept = (int(n[0]) for n in voiced_span(
        logmel[None], torch.tensor([logmel.shape[-1]]), cfg.trim_db, cfg.trim_pad_frames))
    views = {"whole clip (Table I)": RacnnInputConfig(size=args.size),
             f"trimmed to {args.trim_db:g} dB of the loudest frame": cfg}
    figure = Figure(figsize=(13.0, 6.5), layout="constrained")
    rows = figure.subfigures(1 + len(views), 1, height_ratios=[1.3] + [1.0] * len(views))
    top = rows[0].subplots()
    top.imshow(logmel[0].numpy(), origin="lower", aspect="auto", cmap="magma")
    for edge in (first, first + kept - 1):
        top.axvline(edge, color="cyan", linewidth=2)
    top.set(title=f"{args.clip.name}: static log-mel, {logmel.shape[-1]} frames; the trim keeps "
                  f"{first}-{first + kept - 1}", xlabel="frame (10 ms)", ylabel="mel bin")
    for row, (title, view_cfg) in zip(rows[1:], views.items()):
        segments = racnn_input([logmel], view_cfg)[0, 0]  # (D, size, size), static channel
        row.suptitle(title, fontsize=10)
        for axes, segment in zip(row.subplots(1, segments.shape[0]), segments):
            axes.imshow(segment.numpy(), origin="lower", cmap="magma")
            axes.set_axis_off()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
