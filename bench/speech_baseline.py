"""The classical reference for the RACNN speech results: per-clip MFCC and
log-mel statistics and an RBF-kernel SVM, on the training jobs' splits.

    .venv/bin/python bench/speech_baseline.py [--manifest out/ravdess.parquet]

Features per clip, from the 16 kHz audio (librosa defaults otherwise): the
mean and standard deviation over time of 40 MFCCs, the standard deviation of
their deltas, and the mean and standard deviation of 64 log-mel bins (248
values); standardised, then an RBF SVM with C = 10 (fixed, so nothing is
selected on any split). Printed:

- the headline splits of ``configs/pretrain_ravdess.yaml``: ``random``
  (stratified 80/20, seed 0) and ``speaker`` with Actor_13..16 held out;
- the protocol means: ``random`` over 5 seeds and ``speaker`` over 6
  actor-disjoint folds (mean +- std of test UA);
- the same with the features standardised per speaker (each speaker's clips
  by that speaker's own mean and std, test speakers' included: their clips,
  never their labels), the SVM counterpart of ``--speaker-norm`` in
  ``bench/speech_recipe.py``.
"""

from __future__ import annotations

import argparse
import dataclasses

import librosa
import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from avser import config as configlib
from avser.data.splits import make_splits
from avser.data.manifest import read_manifest
from avser.features.audio import load_audio
from avser.features.speaker_norm import standardise_rows_by_speaker
from avser.metrics import classification_report
from avser.platform.config import TrainConfig

HELD_OUT = ["Actor_13", "Actor_14", "Actor_15", "Actor_16"]
SAMPLE_RATE = 16000
N_MFCC, N_MELS = 40, 64
SVM_C = 10.0
RANDOM_SEEDS = 5
SPEAKER_FOLDS = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="out/ravdess.parquet",
                        help="a RAVDESS manifest (avser manifest --corpus ravdess)")
    parser.add_argument("--config", default="configs/pretrain_ravdess.yaml",
                        help="the training config whose split settings to use")
    return parser.parse_args()


def clip_statistics(audio_path: str) -> np.ndarray:
    wave = load_audio(audio_path, SAMPLE_RATE)
    mfcc = librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, n_mfcc=N_MFCC)
    logmel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_mels=N_MELS))
    delta = librosa.feature.delta(mfcc)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), delta.std(1), logmel.mean(1), logmel.std(1)])


def svm():
    """The reference classifier: standardised features, RBF SVM, C fixed."""
    return make_pipeline(StandardScaler(), SVC(C=SVM_C, kernel="rbf"))


def test_report(features, labels, split, label_names) -> dict:
    clf = svm()
    # Validation clips are training data to a model that selects nothing.
    train = np.concatenate([split.train, split.val])
    clf.fit(features[train], labels[train])
    return classification_report(labels[split.test], clf.predict(features[split.test]), label_names)


def main() -> None:
    args = parse_args()
    frame = read_manifest(args.manifest)
    features = np.stack([clip_statistics(path) for path in frame["audio_path"]])
    labels = frame["label"].to_numpy()
    label_names = list(pd.Series(frame["label_name"].to_numpy(), index=labels).sort_index().unique())
    base = configlib.load(TrainConfig, args.config).split
    print(f"{len(frame)} clips from {args.manifest}; {features.shape[1]} features per clip; "
          f"RBF SVM, C = {SVM_C:g}\n")
    print("| split | features | test WA | test UA |")
    print("| --- | --- | ---: | ---: |")
    variants = {"per clip": features,
                "standardised per speaker": standardise_rows_by_speaker(features, frame["speaker"].to_numpy())}
    headline = {
        "random (seed 0)": dataclasses.replace(base, protocol="random", seed=0),
        "speaker (Actor_13-16 held out)": dataclasses.replace(base, protocol="speaker",
                                                               test_speakers=HELD_OUT),
    }
    for name, split_cfg in headline.items():
        (split,) = make_splits(frame, split_cfg)
        for variant, values in variants.items():
            report = test_report(values, labels, split, label_names)
            print(f"| {name} | {variant} | {100 * report['wa']:.2f} | {100 * report['ua']:.2f} |")
    random_splits = [make_splits(frame, dataclasses.replace(base, protocol="random", seed=seed))[0]
                     for seed in range(RANDOM_SEEDS)]
    speaker_splits = make_splits(frame, dataclasses.replace(base, protocol="speaker",
                                                            n_folds=SPEAKER_FOLDS))
    for name, splits in ((f"random, {RANDOM_SEEDS} seeds", random_splits),
                         (f"speaker, {SPEAKER_FOLDS} folds", speaker_splits)):
        for variant, values in variants.items():
            uas = [test_report(values, labels, s, label_names)["ua"] for s in splits]
            print(f"| {name} | {variant} | | {100 * np.mean(uas):.1f} +- {100 * np.std(uas):.1f} |")

if __name__ == "__main__":
    main()
