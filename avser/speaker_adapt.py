"""The speaker-adaptive readout of a speech network: a protocol of its own.

Much of what stops the speech network generalising to new speakers is
constant within a speaker: standardising each speaker's clip embeddings by
that speaker's own mean and std adds 8-13 points of UA on held-out RAVDESS
actors (BENCHMARKS.md, "readouts of its embedding"). This readout does that
to the embedding the speech head's FC reads, then applies a linear softmax
fitted on the training speakers' embeddings, standardised the same way.

It reads several clips of each speaker it scores, without their labels.
Results under it are ``speaker-adaptive`` and are reported apart from the
speaker-independent ``speaker`` protocol, which reads one clip at a time.
The fitted readout is plain tensors, so it travels in a model bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avser.errors import AvserError
from avser.features.speaker_norm import standardise_rows_by_speaker

PROTOCOL = "speaker-adaptive"


@dataclass
class SpeakerReadoutConfig:
    # Fit the readout after a speech pretraining run (jobs/pretrain_racnn.py).
    enabled: bool = False
    c: float = 1.0  # inverse L2 strength of the softmax (scikit-learn's C)
    max_iter: int = 2000
    # A speaker's mean and std over fewer clips than this are too noisy to
    # standardise by (RAVDESS has 60 clips per actor, across all emotions).
    min_clips: int = 8


def speakers_with_enough_clips(speakers: np.ndarray, min_clips: int) -> np.ndarray:
    """(N,) bool: clips whose speaker has at least ``min_clips`` clips here."""
    names, inverse, counts = np.unique(np.asarray(speakers, dtype=str), return_inverse=True,
                                       return_counts=True)
    return (counts >= min_clips)[inverse] & (names != "")[inverse]


def check_clips_per_speaker(speakers: np.ndarray, min_clips: int, where: str) -> None:
    names, counts = np.unique(np.asarray(speakers, dtype=str), return_counts=True)
    few = {str(n): int(c) for n, c in zip(names, counts) if c < min_clips}
    if few:
        raise AvserError(f"{where}: speakers {few} have fewer than {min_clips} clips; the "
                         f"{PROTOCOL} readout standardises each speaker by their own clips. "
                         "Give more clips of each speaker, or score without it")
    if "" in names:
        raise AvserError(f"{where}: some clips have no speaker; the {PROTOCOL} readout groups "
                         "clips by speaker, so every clip needs one")


def fit_speaker_readout(embeddings: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                        n_classes: int, cfg: SpeakerReadoutConfig) -> dict[str, torch.Tensor]:
    """A linear softmax on per-speaker standardised ``embeddings``:
    ``{"weight": (C, E), "bias": (C,), "min_clips": ()}``."""
    from sklearn.linear_model import LogisticRegression

    check_clips_per_speaker(speakers, cfg.min_clips, "training clips")
    missing = sorted(set(range(n_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise AvserError(f"training clips have no examples of classes {missing}; the readout "
                         "needs every class among its training speakers")
    features = standardise_rows_by_speaker(embeddings, np.asarray(speakers, dtype=str))
    softmax = LogisticRegression(C=cfg.c, max_iter=cfg.max_iter).fit(features, labels)
    return {"weight": torch.from_numpy(softmax.coef_).float(),
            "bias": torch.from_numpy(softmax.intercept_).float(),
            "min_clips": torch.tensor(cfg.min_clips)}


def speaker_readout_logits(readout: dict[str, torch.Tensor], embeddings: np.ndarray,
                           speakers: np.ndarray, where: str) -> np.ndarray:
    """(N, C) logits of clips ``embeddings`` (N, E) spoken by ``speakers`` (N,)."""
    speakers = np.asarray(speakers, dtype=str)
    check_clips_per_speaker(speakers, int(readout["min_clips"]), where)
    features = standardise_rows_by_speaker(embeddings, speakers)
    weight, bias = readout["weight"].double().numpy(), readout["bias"].double().numpy()
    return features @ weight.T + bias
