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
  speaker-adaptive protocol), then the same SVM.

Validation UA picks one readout per run (``chosen``); the test split is
scored for every readout and selects nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
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

PARTS = ("train", "val", "test")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of bench/speech_recipe.py")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def embeddings(model, rows, ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, labels, logits) of ``rows``: the final FC's input, captured by a hook."""
    captured = []
    hook = model.speech_head.fc.register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0].float().detach()))
    try:
        preds = predict(model, FrameBatches(rows), ctx, torch.device("cpu"))
    finally:
        hook.remove()
    return torch.cat(captured).numpy(), preds["labels"], preds["logits"]


def ua(labels: np.ndarray, predicted: np.ndarray, label_names: list[str]) -> float:
    return classification_report(labels, predicted, label_names)["ua"]


def readouts(run: Path) -> dict[str, dict[str, float]]:
    """{readout: {val_ua, test_ua}} of one run folder."""
    argv = shlex.split((run / "command.txt").read_text())[2:]  # drop "python bench/speech_recipe.py"
    args = speech_recipe.parse_args(argv)
    _, _, parts, ctx = speech_recipe.prepare(args)
    model = load_bundle(run / "model.avser.pt").network()
    data = {name: embeddings(model, parts[name], ctx) for name in PARTS}
    speakers = {name: parts[name]["speaker"].astype(str).to_numpy() for name in PARTS}
    names = ctx.label_names
    table = {"network": {f"{n}_ua": ua(data[n][1], data[n][2].argmax(1), names) for n in ("val", "test")}}
    for readout, transform in (("svm", lambda x, _s: x),
                               ("svm, per speaker", standardise_rows_by_speaker)):
        features = {n: transform(data[n][0], speakers[n]) for n in PARTS}
        clf = svm().fit(features["train"], data["train"][1])
        table[readout] = {f"{n}_ua": ua(data[n][1], clf.predict(features[n]), names)
                          for n in ("val", "test")}
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
