"""An ensemble of speech networks trained on the same split: their softmax
probabilities averaged, against each network alone.

    .venv/bin/python bench/speech_ensemble.py out/recipe/RUN_A out/recipe/RUN_B [...] \
        [--confusion bench/figures/NAME-confusion-test.png]

Each run folder is one made by ``bench/speech_recipe.py`` (``command.txt``
rebuilds its split, ``model.avser.pt`` holds its best epoch's weights); the
runs must share their split (the same speakers in train, validation and
test), typically the same command under different ``seed`` values. The
network readout of each run, and of the mean of their probabilities, is
scored on validation and test; nothing is selected on test. ``--confusion``
writes the ensemble's test confusion matrix as a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from speech_readout import run_embeddings, ua  # noqa: E402

from avser.metrics import classification_report, plot_confusion  # noqa: E402

SCORED = ("val", "test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of bench/speech_recipe.py")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--confusion", type=Path,
                        help="write the ensemble's test confusion matrix to this PNG")
    return parser.parse_args()


def split_of(run: Path) -> dict:
    """The run's speakers per split, from its ``result.json``."""
    return json.loads((run / "result.json").read_text())["speakers"]


def check_same_split(runs: list[Path]) -> None:
    first = split_of(runs[0])
    for run in runs[1:]:
        if split_of(run) != first:
            raise SystemExit(f"{run} was trained on another split than {runs[0]} "
                             "(result.json 'speakers' differ); ensemble runs of one split")


def probabilities(run: Path):
    """({part: (N, C) softmax probabilities}, {part: labels}, label names) of one run."""
    _, labels, _, logits, names = run_embeddings(run)
    probs = {n: torch.as_tensor(logits[n]).float().softmax(-1).numpy() for n in SCORED}
    return probs, {n: np.asarray(labels[n]) for n in SCORED}, names


def open_runs(folders: list[Path], threads: int) -> list[Path]:
    """The run folders, absolute and checked to share one split; the process set up
    to score them (the working directory their commands assume, torch threads)."""
    runs = [run.resolve() for run in folders]
    check_same_split(runs)
    os.chdir(REPO)  # the runs' commands name the store relative to the repository
    torch.set_num_threads(threads)
    return runs


def main() -> None:
    args = parse_args()
    runs = open_runs(args.runs, args.threads)
    print("| run | val UA | test UA |")
    print("| --- | ---: | ---: |")
    summed, labels, names = None, None, None
    for run in runs:
        probs, run_labels, names = probabilities(run)
        if labels is not None and any((run_labels[n] != labels[n]).any() for n in SCORED):
            raise SystemExit(f"{run}: its clips come in another order than the first run's")
        labels = run_labels
        summed = probs if summed is None else {n: summed[n] + probs[n] for n in SCORED}
        row = [100 * ua(labels[n], probs[n].argmax(1), names) for n in SCORED]
        print(f"| `{run.name}` | {row[0]:.1f} | {row[1]:.1f} |", flush=True)
    report_ensemble(summed, labels, names, len(runs), args.confusion)


def report_ensemble(summed: dict, labels: dict, names, n_runs: int, confusion: Path | None) -> None:
    """The ensemble's table row, its test WA and macro-F1, and optionally its confusion PNG."""
    test = classification_report(labels["test"], summed["test"].argmax(1), names)
    val_ua = 100 * ua(labels["val"], summed["val"].argmax(1), names)
    print(f"| mean of the {n_runs} networks' probabilities | {val_ua:.1f} | {100 * test['ua']:.1f} |")
    print(f"ensemble test: UA {test['ua']:.3f}, WA {test['wa']:.3f}, "
          f"macro-F1 {test['macro_f1']:.3f}, {test['n']} clips")
    if confusion:
        title = f"ensemble of {n_runs}: test (UA {test['ua']:.1%})"
        print(f"wrote {plot_confusion(test['confusion'], names, confusion, title=title)}")


if __name__ == "__main__":
    main()
