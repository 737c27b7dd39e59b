"""Late fusion of speech networks with the reference SVM: their averaged
softmax probabilities mixed with the SVM's, on the runs' own split.

    .venv/bin/python bench/speech_svm_fusion.py out/recipe/RUN_A [out/recipe/RUN_B ...] \
        [--manifest out/ravdess.parquet]

The runs are ``bench/speech_recipe.py`` folders of one split, as for
``bench/speech_ensemble.py``. The SVM is ``bench/speech_baseline.py``'s
reference (per-clip MFCC and log-mel statistics, standardised, RBF, C fixed)
with Platt-scaled probabilities (5-fold), fitted on the split's **training** clips
only, so that validation can choose the mixing weight. Rows:

- the networks' ensemble alone, and the SVM alone;
- ``SVM as one more member``: the SVM's probabilities counted as one more
  network (weight ``1 / (n + 1)``), and ``half and half`` (weight 0.5):
  both fixed before any score is seen;
- ``weight by val UA``: the SVM weight in ``WEIGHTS`` with the best
  validation UA (ties to the smaller weight); test is scored, selects nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import speech_recipe  # noqa: E402  (the runs' split)
from speech_baseline import SVM_C, clip_statistics  # noqa: E402
from speech_ensemble import open_runs, probabilities  # noqa: E402
from speech_readout import ua  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from avser.data.manifest import read_manifest  # noqa: E402

SCORED = ("val", "test")
WEIGHTS = tuple(round(0.1 * step, 1) for step in range(10))  # the SVM's share, 0 .. 0.9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of bench/speech_recipe.py")
    parser.add_argument("--manifest", default="out/ravdess.parquet",
                        help="the manifest whose audio the runs' store was made from")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def split_clip_ids(run: Path) -> dict[str, list[str]]:
    """{part: clip ids}, in the order the networks are scored in."""
    _, _, frames, _ = speech_recipe.prepare(speech_recipe.run_args(run))
    return {name: list(frames[name]["clip_id"]) for name in ("train", *SCORED)}


def svm_probabilities(clip_ids: dict[str, list[str]], manifest: str,
                      labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{part: (N, C)} probabilities of the reference SVM fitted on the training clips;
    ``labels``: the networks' validation and test labels, checked against the manifest's."""
    clips = read_manifest(manifest).set_index("clip_id")
    missing = [clip for ids in clip_ids.values() for clip in ids if clip not in clips.index]
    if missing:
        raise SystemExit(f"{manifest} lacks {len(missing)} of the runs' clips (first: "
                         f"{missing[0]}); pass the manifest the store was made from")
    for name in SCORED:
        if (clips.loc[clip_ids[name], "label"].to_numpy() != labels[name]).any():
            raise SystemExit(f"{manifest}'s labels of the {name} clips differ from the runs'")
    features = {n: np.stack([clip_statistics(clips.loc[c, "audio_path"]) for c in ids])
                for n, ids in clip_ids.items()}
    # Platt scaling on 5-fold decision values, then one SVM refitted on all training clips.
    clf = make_pipeline(StandardScaler(), CalibratedClassifierCV(
        SVC(C=SVM_C, kernel="rbf"), method="sigmoid", cv=5, ensemble=False))
    clf.fit(features["train"], clips.loc[clip_ids["train"], "label"].to_numpy())
    if list(clf.classes_) != list(range(clf.classes_.size)):
        raise SystemExit(f"the training split lacks a class (has {list(clf.classes_)})")
    return {n: clf.predict_proba(features[n]) for n in SCORED}


def mixed(networks: dict, svm: dict, weight: float) -> dict[str, np.ndarray]:
    return {n: (1.0 - weight) * networks[n] + weight * svm[n] for n in SCORED}


def main() -> None:
    args = parse_args()
    runs = open_runs(args.runs, args.threads)
    per_run = [probabilities(run) for run in runs]
    names, labels = per_run[0][2], per_run[0][1]
    networks = {n: np.mean([probs[n] for probs, _, _ in per_run], axis=0) for n in SCORED}
    svm = svm_probabilities(split_clip_ids(runs[0]), args.manifest, labels)

    def row(name: str, probs: dict) -> None:
        scores = [100 * ua(labels[n], probs[n].argmax(1), names) for n in SCORED]
        print(f"| {name} | {scores[0]:.1f} | {scores[1]:.1f} |", flush=True)

    print("| readout | val UA | test UA |")
    print("| --- | ---: | ---: |")
    row(f"the {len(runs)} networks' ensemble", networks)
    row("the SVM alone", svm)
    row(f"SVM as one more member (weight {1 / (len(runs) + 1):.2f})",
        mixed(networks, svm, 1 / (len(runs) + 1)))
    row("half and half (weight 0.50)", mixed(networks, svm, 0.5))
    chosen = max(WEIGHTS, key=lambda w: (ua(labels["val"], mixed(networks, svm, w)["val"].argmax(1),
                                            names), -w))
    row(f"weight by val UA ({chosen:.1f})", mixed(networks, svm, chosen))


if __name__ == "__main__":
    main()
