"""The feature store: Parquet part files, one row per manifest clip.

Arrays are stored as raw bytes plus their shape, so the store is plain
Parquet that pandas, pyarrow and Ray Data all read without extension types.
Each row carries a ``source_key`` (hash of the feature config and the clip's
files' path/size/mtime): a re-run skips clips whose key is already stored
with status ``ok`` or a deterministic error.

Columns: clip_id, corpus, speaker, label, label_name, status, error,
error_reason, source_key, logmel, logmel_shape, face_jpegs, landmarks,
keyframe_index, n_frames, face_fraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from avser.data.manifest import Clip
from avser.errors import AvserError

STATUS_OK = "ok"
STATUS_ERROR = "error"
PART_GLOB = "part-*.parquet"

SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("corpus", pa.string()),
        ("speaker", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_reason", pa.string()),
        ("source_key", pa.string()),
        ("logmel", pa.binary()),
        ("logmel_shape", pa.list_(pa.int32())),
        ("face_jpegs", pa.list_(pa.binary())),
        ("landmarks", pa.binary()),
        ("keyframe_index", pa.list_(pa.int32())),
        ("n_frames", pa.int32()),
        ("face_fraction", pa.float32()),
    ]
)


def _file_fingerprint(path: str | None) -> list[Any]:
    if not path:
        return [None]
    try:
        stat = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, stat.st_size, int(stat.st_mtime)]


def source_key(clip: Clip, config_hash: str) -> str:
    """What a stored row was computed from; a change to any part recomputes it."""
    parts = [config_hash, clip.label, clip.label_name]
    for path in (clip.audio_path, clip.video_path, clip.landmarks_path):
        parts.extend(_file_fingerprint(path))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _base_row(clip: Clip, key: str) -> dict[str, Any]:
    return {
        "clip_id": clip.clip_id,
        "corpus": clip.corpus,
        "speaker": clip.speaker,
        "label": int(clip.label),
        "label_name": clip.label_name,
        "source_key": key,
        "logmel": None,
        "logmel_shape": None,
        "face_jpegs": None,
        "landmarks": None,
        "keyframe_index": None,
        "n_frames": 0,
        "face_fraction": 0.0,
        "error": None,
        "error_reason": None,
    }


def ok_row(clip: Clip, key: str, features) -> dict[str, Any]:
    """Row for a clip whose features (``avser.features.clip.ClipFeatures``) were made."""
    row = _base_row(clip, key)
    logmel = np.ascontiguousarray(features.logmel, dtype=np.float16)
    row.update(status=STATUS_OK, logmel=logmel.tobytes(), logmel_shape=list(logmel.shape))
    if features.has_visual:
        row.update(
            face_jpegs=list(features.face_jpegs),
            landmarks=np.ascontiguousarray(features.landmarks, dtype=np.float32).tobytes(),
            keyframe_index=[int(i) for i in features.keyframe_index],
            n_frames=int(features.n_frames),
            face_fraction=float(features.face_fraction),
        )
    return row


def error_row(clip: Clip, key: str, reason: str, message: str) -> dict[str, Any]:
    row = _base_row(clip, key)
    row.update(status=STATUS_ERROR, error=message, error_reason=reason)
    return row


def decode_logmel(row: dict[str, Any]) -> np.ndarray:
    shape = tuple(int(s) for s in row["logmel_shape"])
    return np.frombuffer(row["logmel"], dtype=np.float16).reshape(shape)


def decode_landmarks(row: dict[str, Any]) -> np.ndarray | None:
    if row.get("landmarks") is None:
        return None
    return np.frombuffer(row["landmarks"], dtype=np.float32).reshape(-1, 68, 2)


def write_part(rows: list[dict[str, Any]], store: str | Path) -> Path:
    """Write rows as one new part file; atomic (temp file + rename), so a crash
    never leaves a half-written part behind for the next run to trust."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / f"part-{uuid.uuid4().hex[:16]}.parquet"
    tmp = store / f".{final.name}.tmp"
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def part_files(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob(PART_GLOB))


def read_store(store: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All rows (latest per clip_id wins when a clip was recomputed)."""
    parts = part_files(store)
    if not parts:
        raise AvserError(
            f"feature store {store} holds no part files; run "
            "`python jobs/preprocess.py --manifest M --out STORE` first"
        )
    cols = None if columns is None else sorted(set(columns) | {"clip_id"})
    frames = [pq.read_table(p, columns=cols).to_pandas() for p in parts]
    mtimes = [p.stat().st_mtime_ns for p in parts]
    for frame, mtime in zip(frames, mtimes):
        frame["_written"] = mtime
    table = pd.concat(frames, ignore_index=True).sort_values("_written", kind="stable")
    table = table.drop_duplicates("clip_id", keep="last").drop(columns="_written")
    return table.reset_index(drop=True)


def stored_keys(store: str | Path) -> set[str]:
    """Source keys already in the store (empty for a new store)."""
    if not part_files(store):
        return set()
    return set(read_store(store, ["source_key"])["source_key"])


def failure_summary(frame: pd.DataFrame) -> str:
    failed = frame[frame["status"] != STATUS_OK]
    lines = [f"{len(frame) - len(failed)} ok, {len(failed)} failed of {len(frame)} clips"]
    for reason, group in failed.groupby("error_reason"):
        lines.append(f"  {reason}: {len(group)}")
        for _, row in group.head(3).iterrows():
            lines.append(f"    {row['clip_id']}: {row['error']}")
    return "\n".join(lines)


def manifest_clips(frame: pd.DataFrame) -> Iterable[Clip]:
    return (Clip.from_row(r) for r in frame.to_dict("records"))
