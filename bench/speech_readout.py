"""Readouts of a trained speech network's embedding, on its run's own split.

    .venv/bin/python bench/speech_readout.py out/recipe/NAME [...]

For each run folder made by ``bench/speech_recipe.py`` (its ``command.txt``
rebuilds the split; its ``model.avser.pt`` holds the best epoch's weights),
the embedding is what the speech head's final FC reads (for the mean head,
the mean of the RACNN tokens). Three readouts of it:

- ``network``: the trained head itself (the run's own ``result.json``);
- ``svm``: the embeddings standardised on the training clips, then an RBF SVM
  (C = 10, as in ``bench/speech_baseline.py``) fitted on the training split;
- ``svm, per speaker``: each speaker's embeddings standardised by that
  speaker's own mean and std (test speakers' clips, never their labels: a
  speaker-adaptive protocol), then the same SVM;
- ``softmax, per speaker``: the same standardisation, then the linear
  softmax of :mod:`avser.speaker_adapt`: the readout a model bundle carries
  (``bench/export_speech_model.py --speaker-readout``) and ``avser evaluate
  --speaker-adaptive`` applies.

Validation UA picks one readout per run (``chosen``); the test split is
scored for every readout and selects nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import speech_recipe  # noqa: E402  (the run's own split and loop context)
from speech_baseline import svm  # noqa: E402  (the SVM reference's classifier)

from avser.batches import FrameBatches  # noqa: E402
from avser.bundle import load_bundle  # noqa: E402
from avser.features.speaker_norm import standardise_rows_by_speaker  # noqa: E402
from avser.metrics import classification_report  # noqa: E402
from avser.platform.epochs import predict  # noqa: E402
from avser.speaker_adapt import (SpeakerReadoutConfig, fit_speaker_readout,  # noqa: E402
                                 speaker_readout_logits, speakers_with_enough_clips)

PARTS = ("train", "val", "test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of bench/speech_recipe.py")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def run_embeddings(run: Path, weights: Path | None = None):
    """({part: embeddings}, {part: labels}, {part: speakers}, {part: network logits}, label
    names) of a run folder's best weights on its own split (rebuilt from ``command.txt``);
    ``weights``: another bundle's network on that split."""
    args = speech_recipe.run_args(run)
    _, _, frames, ctx = speech_recipe.prepare(args)
    parts = {name: rows for name, rows in frames.items() if len(rows)}
    model, cpu = load_bundle(weights or run / "model.avser.pt").network(), torch.device("cpu")
    preds = {n: predict(model, FrameBatches(rows), ctx, cpu) for n, rows in parts.items()}
    return ({n: p["hybrid"] for n, p in preds.items()}, {n: p["labels"] for n, p in preds.items()},
            {n: p["speaker"] for n, p in preds.items()}, {n: p["logits"] for n, p in preds.items()},
            ctx.label_names)


def fit_readout(embedded, labels, speakers, n_classes: int) -> dict[str, torch.Tensor]:
    """The shipped speaker-adaptive readout, fitted on a run's training clips."""
    return fit_speaker_readout(embedded["train"], labels["train"], speakers["train"], n_classes,
                               SpeakerReadoutConfig())


def ua(labels: np.ndarray, predicted: np.ndarray, label_names: list[str]) -> float:
    return classification_report(labels, predicted, label_names)["ua"]


def readouts(run: Path) -> dict[str, dict[str, float]]:
    """{readout: {val_ua, test_ua}} of one run folder."""
    embedded, labels, speakers, logits, names = run_embeddings(run)
    scored = ("val", "test")
    table = {"network": {f"{n}_ua": ua(labels[n], logits[n].argmax(1), names) for n in scored}}
    for readout, transform in (("svm", lambda x, _s: x),
                               ("svm, per speaker", standardise_rows_by_speaker)):
        features = {n: transform(embedded[n], speakers[n]) for n in PARTS}
        clf = svm().fit(features["train"], labels["train"])
        table[readout] = {f"{n}_ua": ua(labels[n], clf.predict(features[n]), names) for n in scored}
    floor = SpeakerReadoutConfig().min_clips
    if not all(speakers_with_enough_clips(speakers[n], floor).all() for n in scored):
        # e.g. `random`: a split holds only a few clips of each speaker
        print(f"{run.name}: no 'softmax, per speaker' row: a speaker has fewer than {floor} "
              "clips in validation or test", file=sys.stderr)
        return table
    shipped = fit_readout(embedded, labels, speakers, len(names))
    table["softmax, per speaker"] = {
        f"{n}_ua": ua(labels[n], speaker_readout_logits(shipped, embedded[n], speakers[n], n).argmax(1),
                      names) for n in scored}
    return table


def main() -> None:
    args = parse_args()
    runs = [run.resolve() for run in args.runs]
    os.chdir(REPO)  # the runs' commands name the store relative to the repository
    torch.set_num_threads(args.threads)
    print("| run | readout | val UA | test UA | chosen |")
    print("| --- | --- | ---: | ---: | --- |")
    for run in runs:
        table = readouts(run)
        chosen = max(table, key=lambda name: table[name]["val_ua"])
        for name, scores in table.items():
            mark = "by val UA" if name == chosen else ""
            print(f"| `{run.name}` | {name} | {100 * scores['val_ua']:.1f} | "
                  f"{100 * scores['test_ua']:.1f} | {mark} |", flush=True)


if __name__ == "__main__":
    main()
