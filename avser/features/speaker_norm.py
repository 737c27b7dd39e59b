"""Speaker normalisation of stored 3D log-mels.

Each speaker's clips have, per channel and mel bin, the mean subtracted and
are divided by the standard deviation, both over every frame of every clip
of that speaker. It removes what is constant in a speaker (vocal tract,
microphone, level) and leaves what varies between their utterances, such as
emotion. For a speaker never trained on it needs their clips, without labels:
a speaker-adaptive protocol, to be reported as such.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STORED_DTYPE = np.float16
MIN_STD = 1e-3


def _logmel(row) -> np.ndarray:
    return np.frombuffer(row.logmel, dtype=STORED_DTYPE).reshape(tuple(row.logmel_shape))


def speaker_statistics(logmels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each ``(channels, n_mels, 1)``, over all frames of ``logmels``."""
    frames = np.concatenate([m.astype(np.float32) for m in logmels], axis=-1)
    return frames.mean(-1, keepdims=True), np.maximum(frames.std(-1, keepdims=True), MIN_STD)


def normalise_by_speaker(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (store rows: ``speaker``, ``logmel``, ``logmel_shape``) with
    each ``logmel`` normalised by its speaker's statistics, stored dtype kept."""
    if frame.empty:
        return frame
    out = frame.copy()
    for _, rows in frame.groupby(frame["speaker"].astype(str)):
        logmels = [_logmel(row) for row in rows.itertuples()]
        mean, std = speaker_statistics(logmels)
        out.loc[rows.index, "logmel"] = [((m - mean) / std).astype(STORED_DTYPE).tobytes()
                                         for m in logmels]
    return out


def standardise_rows_by_speaker(features: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """``(n_clips, n_features)`` with each speaker's rows standardised by that
    speaker's mean and std (clip-level features: the counterpart, with clips in
    place of frames, of what ``normalise_by_speaker`` does to log-mels)."""
    out = np.empty_like(features, dtype=np.float64)
    for speaker in np.unique(speakers):
        rows = speakers == speaker
        mean, std = speaker_statistics([features[rows].T])
        out[rows] = ((features[rows].T - mean) / std).T
    return out
