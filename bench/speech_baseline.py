"""A classical reference for the RACNN speech results: per-clip log-mel
statistics and an RBF-kernel SVM, on the same splits as the training jobs.

    .venv/bin/python bench/speech_baseline.py [--store out/store-ravdess]

Features per clip: the mean and standard deviation over time of every mel
bin of the stored log-mel and of its deltas (3 x 128 x 2 = 768 values);
standardised, then an RBF SVM whose C is chosen on the validation part of
the split (the test part is scored once). Splits come from
``avser.data.splits`` with the pretraining config's settings, so the numbers
sit beside the BENCHMARKS.md RAVDESS table: ``random`` (stratified 80/20)
and ``speaker`` with Actor_13..16 held out.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from avser import config as configlib
from avser.data.splits import make_splits
from avser.data.store import decode_logmel, read_ok_rows
from avser.metrics import classification_report
from avser.platform.config import TrainConfig
from avser.platform.experiments import label_names_of

HELD_OUT = ["Actor_13", "Actor_14", "Actor_15", "Actor_16"]
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="out/store-ravdess")
    parser.add_argument("--config", default="configs/pretrain_ravdess.yaml",
                        help="the training config whose split settings to use")
    return parser.parse_args()


def clip_statistics(frame) -> np.ndarray:
    rows = []
    for row in frame.to_dict("records"):
        logmel = decode_logmel(row).astype(np.float32)  # (3, n_mels, T)
        rows.append(np.concatenate([logmel.mean(axis=2).ravel(), logmel.std(axis=2).ravel()]))
    return np.stack(rows)


def fit_and_score(features, labels, split, label_names) -> tuple[float, dict[str, float]]:
    """C picked on validation UA; the test split is scored once with that C."""
    def model(c):
        return make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf")).fit(
            features[split.train], labels[split.train])

    def ua(clf, index):
        return classification_report(labels[index], clf.predict(features[index]), label_names)["ua"]

    best_c = max(C_GRID, key=lambda c: ua(model(c), split.val))
    clf = model(best_c)
    return best_c, classification_report(labels[split.test], clf.predict(features[split.test]),
                                         label_names)


def main() -> None:
    args = parse_args()
    frame = read_ok_rows(args.store)
    features, labels = clip_statistics(frame), frame["label"].to_numpy()
    label_names = label_names_of(frame)
    base = configlib.load(TrainConfig, args.config).split
    protocols = {
        "random": dataclasses.replace(base, protocol="random"),
        "speaker (Actor_13-16 held out)": dataclasses.replace(base, protocol="speaker", test_speakers=HELD_OUT),
    }
    print(f"{len(frame)} clips from {args.store}; features {features.shape[1]} per clip\n")
    print("| protocol | C (picked on val) | test WA | test UA |")
    print("| --- | ---: | ---: | ---: |")
    for name, split_cfg in protocols.items():
        (split,) = make_splits(frame, split_cfg)
        c, report = fit_and_score(features, labels, split, label_names)
        print(f"| {name} | {c} | {100 * report['wa']:.2f} | {100 * report['ua']:.2f} |")


if __name__ == "__main__":
    main()
