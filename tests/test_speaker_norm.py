"""Speaker normalisation: per speaker, channel and mel bin, zero mean and unit
std over all that speaker's frames; speakers do not mix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from avser.features.speaker_norm import STORED_DTYPE, normalise_by_speaker, standardise_rows_by_speaker


def _rows(speaker: str, offset: float, scale: float, lengths, rng) -> list[dict]:
    rows = []
    for n in lengths:
        logmel = (offset + scale * rng.standard_normal((3, 8, n))).astype(STORED_DTYPE)
        rows.append({"speaker": speaker, "logmel": logmel.tobytes(), "logmel_shape": np.array(logmel.shape)})
    return rows


def _stack(frame: pd.DataFrame) -> np.ndarray:
    return np.concatenate([np.frombuffer(r.logmel, dtype=STORED_DTYPE).reshape(tuple(r.logmel_shape))
                           .astype(np.float32) for r in frame.itertuples()], axis=-1)


def test_each_speaker_ends_with_zero_mean_and_unit_std_per_bin():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(_rows("a", 5.0, 2.0, [40, 70], rng) + _rows("b", -3.0, 0.5, [55], rng))
    normalised = normalise_by_speaker(frame)
    for speaker in ("a", "b"):
        values = _stack(normalised[normalised["speaker"] == speaker])
        np.testing.assert_allclose(values.mean(-1), 0.0, atol=0.01)
        np.testing.assert_allclose(values.std(-1), 1.0, atol=0.01)
    assert [tuple(s) for s in normalised["logmel_shape"]] == [tuple(s) for s in frame["logmel_shape"]]


def test_a_speakers_statistics_come_from_their_own_clips_only():
    rng = np.random.default_rng(1)
    alone = pd.DataFrame(_rows("a", 5.0, 2.0, [40], rng))
    together = pd.concat([alone, pd.DataFrame(_rows("b", -3.0, 0.5, [55], rng))], ignore_index=True)
    assert normalise_by_speaker(together)["logmel"][0] == normalise_by_speaker(alone)["logmel"][0]


def test_clip_features_standardised_within_each_speaker():
    rng = np.random.default_rng(2)
    features = np.concatenate([5.0 + 2.0 * rng.standard_normal((30, 4)),
                               -3.0 + 0.5 * rng.standard_normal((20, 4))])
    speakers = np.array(["a"] * 30 + ["b"] * 20)
    out = standardise_rows_by_speaker(features, speakers)
    for speaker in ("a", "b"):
        np.testing.assert_allclose(out[speakers == speaker].mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(out[speakers == speaker].std(0), 1.0, atol=1e-5)
    # Speaker "a" alone gives the same rows: no statistics cross speakers.
    np.testing.assert_allclose(standardise_rows_by_speaker(features[:30], speakers[:30]), out[:30])
