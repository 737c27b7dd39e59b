"""Evaluation protocols: which clips train, which validate, which test.

- ``random``: the paper's stratified 80/20 split (section III-C). Speakers
  and sentences appear on both sides, so its numbers compare with the
  paper's only.
- ``speaker``: no speaker is on two sides; k folds over the speakers, or
  one fixed set of held-out test speakers.

Validation is always carved from a split's training part, the same way
its test part was drawn (speaker-disjoint under ``speaker``, stratified
under ``random``), so model selection never sees a test clip. Indices are
row positions (``frame.iloc``) in the manifest frame, sorted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from avser.errors import AvserError, ConfigError

RANDOM = "random"
SPEAKER = "speaker"
PROTOCOLS = (RANDOM, SPEAKER)
HELDOUT = "heldout"
FOLD_PREFIX = "fold"
MIN_FOLDS = 2

IndexPair = tuple[np.ndarray, np.ndarray]


@dataclass
class SplitConfig:
    """How to split a manifest; ``test_speakers`` (speaker protocol only)
    replaces the k folds by one ``heldout`` split."""

    protocol: str = RANDOM
    test_fraction: float = 0.2
    n_folds: int = 6
    test_speakers: list[str] | None = None
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"split protocol {self.protocol!r} is not one of {list(PROTOCOLS)}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(
                f"split test_fraction {self.test_fraction} must lie strictly between 0 and 1"
            )
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"split val_fraction {self.val_fraction} must lie in [0, 1)")
        if self.n_folds < MIN_FOLDS:
            raise ConfigError(f"split n_folds {self.n_folds} must be at least {MIN_FOLDS}")
        if self.test_speakers is not None:
            if self.protocol != SPEAKER:
                raise ConfigError(
                    "split test_speakers needs protocol: speaker (the random split ignores speakers)"
                )
            # YAML reads speaker 1001 as a number; the manifest holds strings.
            self.test_speakers = [str(s) for s in self.test_speakers]


@dataclass
class Split:
    """One train/validation/test division of a manifest (row positions)."""

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    protocol: str = RANDOM

    def __post_init__(self) -> None:
        self.train, self.val, self.test = (
            np.sort(np.asarray(part, dtype=np.int64)) for part in (self.train, self.val, self.test)
        )
        # Cheap, and it makes "no clip on two sides" true of every Split.
        parts = self.parts()
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = np.intersect1d(parts[first], parts[second])
            if shared.size:
                raise AvserError(
                    f"split {self.name}: {shared.size} clips are in both {first} and {second}"
                )

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(part) for name, part in self.parts().items()}


def make_splits(frame: pd.DataFrame, cfg: SplitConfig) -> list[Split]:
    """The splits ``cfg`` asks for over a manifest frame: ``random``, or
    ``fold0``..``fold{k-1}``, or ``heldout``."""
    missing = [c for c in ("speaker", "label") if c not in frame.columns]
    if missing:
        raise AvserError(f"manifest frame lacks column(s) {missing}; read it with read_manifest")
    if frame.empty:
        raise AvserError("the manifest has no clips to split; check the corpus scan")
    speakers = frame["speaker"].astype(str).to_numpy()
    labels = frame["label"].to_numpy()
    if cfg.protocol == RANDOM:
        named = [(RANDOM, random_split(labels, cfg.test_fraction, cfg.seed))]
    elif cfg.test_speakers is not None:
        named = [(HELDOUT, held_out_speakers(speakers, cfg.test_speakers))]
    else:
        folds = speaker_folds(speakers, labels, cfg.n_folds, cfg.seed)
        named = [(f"{FOLD_PREFIX}{k}", fold) for k, fold in enumerate(folds)]
    splits = []
    for name, (train, test) in named:
        train, val = validation_split(
            train, speakers, labels, cfg.protocol, cfg.val_fraction, cfg.seed
        )
        splits.append(Split(name, train, val, test, cfg.protocol))
    return splits


def random_split(labels: Sequence, test_fraction: float = 0.2, seed: int = 0) -> IndexPair:
    """Stratified: each label gives (about) ``test_fraction`` of its clips to
    test, the per-label counts adding up to round(n * test_fraction)."""
    return _stratified_split(np.asarray(labels), test_fraction, seed, "test")


def speaker_folds(
    speakers: Sequence, labels: Sequence, n_folds: int, seed: int = 0
) -> list[IndexPair]:
    """Speaker-disjoint k-fold: every speaker is tested in exactly one fold.

    Speakers are dealt (in a seeded order, most clips first) to the fold
    with the fewest clips, ties going to the fold whose label mix stays
    closest to the whole corpus's.
    """
    speakers, labels = np.asarray(speakers).astype(str), np.asarray(labels)
    names = np.unique(speakers)
    if n_folds < MIN_FOLDS:
        raise AvserError(f"speaker folds need n_folds >= {MIN_FOLDS}, got {n_folds}")
    if len(names) < n_folds:
        raise AvserError(
            f"{n_folds} speaker-disjoint folds need at least {n_folds} speakers; "
            f"the manifest has {len(names)}: {names.tolist()}"
        )
    fold_of = _deal_speakers(speakers, labels, names, n_folds, seed)
    folds = []
    for k in range(n_folds):
        test = np.flatnonzero(np.isin(speakers, [s for s, f in fold_of.items() if f == k]))
        folds.append((_complement(len(speakers), test), test))
    return folds


def held_out_speakers(speakers: Sequence, test_speakers: Sequence) -> IndexPair:
    """Clips of ``test_speakers`` test, all others train."""
    speakers = np.asarray(speakers).astype(str)
    wanted = sorted({str(s) for s in test_speakers})
    names = sorted(set(speakers.tolist()))
    if not wanted:
        raise AvserError(f"no test speakers given; choose some of {names}")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise AvserError(
            f"test speakers {unknown} are not in the manifest; its speakers are {names}"
        )
    if len(wanted) == len(names):
        raise AvserError(f"holding out every speaker ({names}) leaves nobody to train on")
    test = np.flatnonzero(np.isin(speakers, wanted))
    return _complement(len(speakers), test), test


def validation_split(
    train_idx: Sequence,
    speakers: Sequence,
    labels: Sequence,
    protocol: str,
    fraction: float,
    seed: int = 0,
) -> IndexPair:
    """Carve validation clips from ``train_idx`` only; returns (train, val).

    ``speaker``: round(fraction * speakers in train) whole speakers (at least
    one) move to validation. ``random``: a stratified ``fraction`` of the
    clips. ``fraction`` 0 gives an empty validation set.
    """
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    if protocol not in PROTOCOLS:
        raise AvserError(f"protocol {protocol!r} is not one of {list(PROTOCOLS)}")
    if fraction == 0:
        return train_idx, np.empty(0, dtype=np.int64)
    if protocol == RANDOM:
        labels_in_train = np.asarray(labels)[train_idx]
        keep, val = _stratified_split(labels_in_train, fraction, seed, "validation")
        return train_idx[keep], train_idx[val]
    train_speakers = np.asarray(speakers).astype(str)[train_idx]
    pool = np.unique(train_speakers)
    n_val = max(1, round(len(pool) * fraction))
    if n_val >= len(pool):
        raise AvserError(
            f"a speaker-disjoint validation set needs a training speaker to spare; "
            f"the training part has only {pool.tolist()} (lower val_fraction or use more speakers)"
        )
    chosen = np.random.default_rng(seed).permutation(pool)[:n_val]
    in_val = np.isin(train_speakers, chosen)
    return train_idx[~in_val], train_idx[in_val]


def _stratified_split(labels: np.ndarray, fraction: float, seed: int, part: str) -> IndexPair:
    """(rest, part): a stratified ``fraction`` of the positions of ``labels``."""
    if not 0 < fraction < 1:
        raise AvserError(f"the {part} fraction {fraction} must lie strictly between 0 and 1")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    n_part = _stratified_counts(counts, round(len(labels) * fraction), rng)
    if n_part.sum() in (0, len(labels)):
        empty = part if n_part.sum() == 0 else "training"
        raise AvserError(
            f"a {part} fraction of {fraction} of {len(labels)} clips leaves no {empty} clip; "
            "use more clips or another fraction"
        )
    picked = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, n_part)]
    )
    return _complement(len(labels), picked), np.sort(picked)


def _stratified_counts(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest
    remainder), never taking every clip of a class."""
    quotas = counts * total / counts.sum()
    taken = np.floor(quotas).astype(np.int64)
    # Largest remainder first; equal remainders in a seeded order, so no
    # class is always the one that gets the extra clip.
    for c in np.lexsort((rng.permutation(len(counts)), -(quotas - taken))):
        if taken.sum() >= total:
            break
        if taken[c] + 1 < counts[c]:
            taken[c] += 1
    return taken


def _deal_speakers(
    speakers: np.ndarray, labels: np.ndarray, names: np.ndarray, n_folds: int, seed: int
) -> dict[str, int]:
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    per_speaker = {
        s: np.array([np.sum((speakers == s) & (labels == c)) for c in classes]) for s in names
    }
    order = np.random.default_rng(seed).permutation(names)
    # sorted() is stable: speakers with equal counts keep the seeded order.
    order = sorted(order, key=lambda s: -per_speaker[s].sum())
    fold_counts = np.zeros((n_folds, len(classes)), dtype=np.int64)
    fold_of = {}
    for name in order:
        after = fold_counts + per_speaker[name]
        fold = min(range(n_folds), key=lambda k: _fold_cost(after[k], overall))
        fold_counts[fold] += per_speaker[name]
        fold_of[name] = fold
    return fold_of


def _fold_cost(label_counts: np.ndarray, overall: np.ndarray) -> tuple[int, float]:
    """Fold size first (balanced folds), then distance of its label mix from the corpus's."""
    return int(label_counts.sum()), float(np.abs(label_counts / label_counts.sum() - overall).sum())


def _complement(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    return np.flatnonzero(mask)
