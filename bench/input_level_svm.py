"""What the RACNN input's per-utterance normalisation takes away, read by the
reference SVM of ``bench/speech_baseline.py``.

    .venv/bin/python bench/input_level_svm.py [--store out/store-ravdess]

The network never sees a clip's level: ``racnn_input`` subtracts each
channel's mean over all mel bins and frames and divides by its std. Whether
that discards a cue the classical reference uses is measured here on the
store's own log-mels (static, delta, delta-delta), with per-clip statistics
(each mel bin's mean and std over time, per channel) in these variants:

- ``raw``: from the stored log-mels;
- ``normalised``: from the log-mels normalised as the network's input is;
- ``normalised + level``: the same with the 6 numbers the normalisation
  removes (each channel's mean and std) appended;
- ``level only``: those 6 numbers;
- ``cepstra of raw`` and ``cepstra of normalised``: the first
  ``N_CEPSTRA`` coefficients of the static and delta channels' DCT along
  the mel axis (MFCCs of the stored log-mels, and of the network's own
  input): the static's mean and std over time, the delta's std, as the
  reference SVM's MFCC features are (less c0's mean for the normalised
  input, where it is 0).

Each is scored by the reference SVM over ``random`` (5 seeds) and
``speaker`` (6 actor-disjoint folds), mean +- std of test UA; the SVM's C is
fixed, so nothing is selected on any split.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.fft import dct

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from speech_baseline import RANDOM_SEEDS, SPEAKER_FOLDS, test_report  # noqa: E402

from avser import config as configlib  # noqa: E402
from avser.data.splits import make_splits  # noqa: E402
from avser.data.store import decode_logmel, read_ok_rows  # noqa: E402
from avser.features.config import RacnnInputConfig  # noqa: E402
from avser.features.racnn_input import normalise_per_utterance  # noqa: E402
from avser.platform.config import TrainConfig  # noqa: E402

N_CEPSTRA = 40  # as the reference's 40 MFCCs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="out/store-ravdess", help="a RAVDESS feature store")
    parser.add_argument("--config", default="configs/pretrain_ravdess.yaml",
                        help="the training config whose split settings to use")
    return parser.parse_args()


def clip_features(logmel: np.ndarray) -> dict[str, np.ndarray]:
    """The four variants' features of one ``(3, n_mels, T)`` log-mel."""
    logmel = logmel.astype(np.float64)
    mean = logmel.mean(axis=(1, 2), keepdims=True)
    std = logmel.std(axis=(1, 2), keepdims=True)
    # The network's own normalisation, so the probe reads exactly what it removes.
    normalised = normalise_per_utterance(torch.from_numpy(logmel)[None],
                                         torch.tensor([logmel.shape[-1]]),
                                         RacnnInputConfig().min_std)[0].numpy()
    level = np.concatenate([mean.ravel(), std.ravel()])
    bins = {name: np.concatenate([x.mean(axis=2).ravel(), x.std(axis=2).ravel()])
            for name, x in (("raw", logmel), ("normalised", normalised))}
    return {**bins, "normalised + level": np.concatenate([bins["normalised"], level]),
            "level only": level,
            "cepstra of raw": cepstral_statistics(logmel),
            # c0's mean over time is 0 there by construction: only rounding noise, which
            # the SVM's standardisation would blow up to a unit-variance feature.
            "cepstra of normalised": cepstral_statistics(normalised)[1:]}


def cepstral_statistics(logmel: np.ndarray) -> np.ndarray:
    """MFCC-style statistics of a ``(3, n_mels, T)`` log-mel (see the module doc)."""
    cepstra = dct(logmel[:2], type=2, axis=1, norm="ortho")[:, :N_CEPSTRA]
    return np.concatenate([cepstra[0].mean(axis=1), cepstra[0].std(axis=1),
                           cepstra[1].std(axis=1)])


def main() -> None:
    args = parse_args()
    frame = read_ok_rows(args.store).reset_index(drop=True)
    per_clip = [clip_features(decode_logmel(row)) for _, row in frame.iterrows()]
    variants = {name: np.stack([clip[name] for clip in per_clip]) for name in per_clip[0]}
    labels = frame["label"].to_numpy()
    names = list(pd.Series(frame["label_name"].to_numpy(), index=labels).sort_index().unique())
    base = configlib.load(TrainConfig, args.config).split
    protocols = {
        f"random, {RANDOM_SEEDS} seeds": [
            make_splits(frame, dataclasses.replace(base, protocol="random", seed=seed))[0]
            for seed in range(RANDOM_SEEDS)],
        f"speaker, {SPEAKER_FOLDS} folds": make_splits(
            frame, dataclasses.replace(base, protocol="speaker", n_folds=SPEAKER_FOLDS)),
    }
    print(f"{len(frame)} clips from {args.store}; test UA %, mean +- std\n")
    print("| features | values | " + " | ".join(protocols) + " |")
    print("| --- | ---: |" + " ---: |" * len(protocols))
    for name, features in variants.items():
        cells = []
        for splits in protocols.values():
            uas = [100 * test_report(features, labels, split, names)["ua"] for split in splits]
            cells.append(f"{np.mean(uas):.1f} +- {np.std(uas):.1f}")
        print(f"| {name} | {features.shape[1]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
