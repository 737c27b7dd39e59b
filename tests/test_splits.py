"""Evaluation protocols: stratification, determinism, speaker disjointness,
validation drawn from the training part only, and the impossible requests."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from avser import config
from avser.data.ravdess import scan_ravdess
from avser.data.splits import (
    Split,
    SplitConfig,
    held_out_speakers,
    make_splits,
    random_split,
    speaker_folds,
    validation_split,
)
from avser.errors import AvserError, ConfigError


def toy_frame(n_speakers: int = 8, per_label: int = 5, n_labels: int = 4) -> pd.DataFrame:
    """Every speaker has ``per_label`` clips of every label."""
    rows = [
        {"speaker": f"spk{s:02d}", "label": label}
        for s in range(n_speakers)
        for label in range(n_labels)
        for _ in range(per_label)
    ]
    return pd.DataFrame(rows)


def speakers_at(frame: pd.DataFrame, idx: np.ndarray) -> set[str]:
    return set(frame["speaker"].iloc[idx])


def test_random_split_is_stratified_and_partitions():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = random_split(labels, 0.2, seed=0)
    assert Counter(labels[test]) == {0: 10, 1: 6, 2: 4}
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))


def test_random_split_rounds_to_the_requested_total():
    labels = np.repeat(np.arange(8), [64] + [128] * 7)  # RAVDESS speech, 16 actors
    train, test = random_split(labels, 0.2, seed=3)
    assert len(test) == 192
    assert all(abs(n - 0.2 * c) < 1 for n, c in zip(np.bincount(labels[test]), np.bincount(labels)))


def test_random_split_determinism_per_seed():
    labels = np.repeat([0, 1], 40)
    first, again, other = (random_split(labels, 0.25, seed=s)[1] for s in (7, 7, 8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_random_split_never_empties_a_side_or_a_class():
    train, test = random_split(np.array([0, 0, 1]), 0.5, seed=0)
    assert 2 in train  # the single clip of class 1 stays in training
    with pytest.raises(AvserError, match="no test clip"):
        random_split(np.array([0, 1, 2]), 0.1)
    with pytest.raises(AvserError, match="between 0 and 1"):
        random_split(np.array([0, 1]), 1.0)


def test_speaker_folds_are_disjoint_and_cover_every_speaker():
    frame = toy_frame(n_speakers=9)
    folds = speaker_folds(frame["speaker"], frame["label"], n_folds=3, seed=0)
    tested = [speakers_at(frame, test) for _, test in folds]
    assert [len(t) for t in tested] == [3, 3, 3]
    assert set().union(*tested) == set(frame["speaker"]) and sum(map(len, tested)) == 9
    for train, test in folds:
        assert not speakers_at(frame, train) & speakers_at(frame, test)
        assert len(train) + len(test) == len(frame)


def test_speaker_folds_balance_clip_counts():
    speakers = ["big"] * 30 + [f"s{i}" for i in range(6) for _ in range(5)]
    folds = speaker_folds(speakers, [0] * len(speakers), n_folds=2, seed=1)
    assert sorted(len(test) for _, test in folds) == [30, 30]


def test_speaker_folds_depend_on_the_seed_only():
    frame = toy_frame(n_speakers=12)
    runs = [speaker_folds(frame["speaker"], frame["label"], 4, seed=s) for s in (5, 5, 6)]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(runs[0], runs[1]))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(runs[0], runs[2]))


def test_too_few_speakers_names_them():
    frame = toy_frame(n_speakers=3)
    with pytest.raises(AvserError, match=r"at least 5 speakers.*has 3: \['spk00', 'spk01', 'spk02'\]"):
        speaker_folds(frame["speaker"], frame["label"], n_folds=5)


def test_held_out_speakers():
    frame = toy_frame(n_speakers=4)
    train, test = held_out_speakers(frame["speaker"], ["spk01"])
    assert speakers_at(frame, test) == {"spk01"}
    assert speakers_at(frame, train) == {"spk00", "spk02", "spk03"}
    with pytest.raises(AvserError, match=r"\['spk99'\] are not in the manifest.*spk00"):
        held_out_speakers(frame["speaker"], ["spk01", "spk99"])
    with pytest.raises(AvserError, match="nobody to train on"):
        held_out_speakers(frame["speaker"], ["spk00", "spk01", "spk02", "spk03"])


def test_validation_by_speaker_comes_from_train_only():
    frame = toy_frame(n_speakers=10)
    speakers, labels = frame["speaker"].to_numpy(), frame["label"].to_numpy()
    train_part, test = held_out_speakers(speakers, ["spk00", "spk01"])
    train, val = validation_split(train_part, speakers, labels, "speaker", 0.25, seed=0)
    assert len(speakers_at(frame, val)) == 2  # round(8 speakers * 0.25)
    assert not speakers_at(frame, val) & speakers_at(frame, train)
    assert not speakers_at(frame, val) & speakers_at(frame, test)
    assert np.array_equal(np.sort(np.concatenate([train, val])), train_part)


def test_validation_random_is_stratified_within_train():
    labels = np.repeat([0, 1], [60, 40])
    train_part = np.arange(0, 100, 2)  # 30 of label 0, 20 of label 1
    train, val = validation_split(train_part, np.zeros(100), labels, "random", 0.2, seed=0)
    assert set(val) <= set(train_part) and not set(val) & set(train)
    assert Counter(labels[val]) == {0: 6, 1: 4}


def test_validation_needs_a_spare_speaker_and_zero_means_none():
    speakers = np.array(["a"] * 4 + ["b"] * 4)
    with pytest.raises(AvserError, match=r"only \['a'\]"):
        validation_split(np.arange(4), speakers, np.zeros(8), "speaker", 0.2)
    train, val = validation_split(np.arange(8), speakers, np.zeros(8), "speaker", 0.0)
    assert len(val) == 0 and len(train) == 8


def test_make_splits_random():
    frame = toy_frame()  # 160 clips, 40 per label
    (split,) = make_splits(frame, SplitConfig(protocol="random", test_fraction=0.2, val_fraction=0.1))
    assert (split.name, split.protocol) == ("random", "random")
    assert split.sizes == {"train": 115, "val": 13, "test": 32}  # val: round(128 * 0.1)
    assert Counter(frame["label"].iloc[split.test]) == {0: 8, 1: 8, 2: 8, 3: 8}
    assert sorted(Counter(frame["label"].iloc[split.val]).values()) == [3, 3, 3, 4]


def test_make_splits_speaker_folds():
    frame = toy_frame(n_speakers=8)
    splits = make_splits(frame, SplitConfig(protocol="speaker", n_folds=4, val_fraction=0.2, seed=2))
    assert [s.name for s in splits] == ["fold0", "fold1", "fold2", "fold3"]
    tested = set()
    for split in splits:
        train, val, test = (speakers_at(frame, part) for part in split.parts().values())
        assert len(test) == 2 and len(val) == 1 and len(train) == 5
        assert not (train & val or train & test or val & test)
        tested |= test
    assert tested == set(frame["speaker"])


def test_make_splits_heldout_with_numeric_speakers_from_yaml(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text("protocol: speaker\ntest_speakers: [1001, 1002]\nval_fraction: 0.2\n")
    cfg = config.load(SplitConfig, path, ["seed=4"])
    assert cfg.test_speakers == ["1001", "1002"] and cfg.seed == 4
    frame = pd.DataFrame({"speaker": [str(1000 + i % 6) for i in range(60)], "label": [i % 3 for i in range(60)]})
    (split,) = make_splits(frame, cfg)
    assert split.name == "heldout"
    assert speakers_at(frame, split.test) == {"1001", "1002"}
    assert len(speakers_at(frame, split.val)) == 1 and not speakers_at(frame, split.val) & {"1001", "1002"}


def test_split_config_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="'actor'"):
        SplitConfig(protocol="actor")
    with pytest.raises(ConfigError, match="needs protocol: speaker"):
        SplitConfig(protocol="random", test_speakers=["a"])
    with pytest.raises(ConfigError, match="n_folds"):
        SplitConfig(protocol="speaker", n_folds=1)
    with pytest.raises(ConfigError, match="test_fraction"):
        SplitConfig(test_fraction=0.0)


def test_make_splits_errors_name_what_exists():
    frame = toy_frame(n_speakers=3)
    with pytest.raises(AvserError, match="spk02"):
        make_splits(frame, SplitConfig(protocol="speaker", n_folds=4))
    with pytest.raises(AvserError, match=r"\['spk07'\].*spk00"):
        make_splits(frame, SplitConfig(protocol="speaker", test_speakers=["spk07"]))
    with pytest.raises(AvserError, match="lacks column"):
        make_splits(frame.drop(columns="speaker"), SplitConfig())


def test_split_refuses_overlap():
    with pytest.raises(AvserError, match="both train and test"):
        Split("bad", train=[0, 1, 2], val=[], test=[2, 3])


def test_real_ravdess_speaker_folds(shared_data):
    frame = scan_ravdess(shared_data / "ravdess-speech-16k").to_frame()
    splits = make_splits(frame, SplitConfig(protocol="speaker", n_folds=4, val_fraction=0.1))
    assert all(s.sizes == {"train": 660, "val": 60, "test": 240} for s in splits)
    for split in splits:
        assert not speakers_at(frame, split.train) & speakers_at(frame, split.test)
        assert not speakers_at(frame, split.val) & (speakers_at(frame, split.train) | speakers_at(frame, split.test))
