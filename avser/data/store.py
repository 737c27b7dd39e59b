"""The feature store: Parquet part files, one row per manifest clip.

Arrays are stored as raw bytes plus their shape, so the store is plain
Parquet that pandas, pyarrow and Ray Data all read without extension types.
Each row carries a ``source_key`` (hash of the feature config and the clip's
files' path/size/mtime): a re-run skips clips whose key is already stored
with status ``ok`` or a deterministic error (anything but ``internal``).
After a run recomputes a clip, ``drop_superseded`` removes its older row, so
every clip appears in exactly one part file (readers of the raw parts, such
as the training datasets, see no duplicates).

Columns: clip_id, corpus, speaker, label, label_name, status, error,
error_reason, source_key, logmel, logmel_shape, face_jpegs, landmarks,
keyframe_index, n_frames, face_fraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from avser import config as configlib
from avser.data.manifest import Clip
from avser.errors import AvserError
from avser.features.config import FeatureConfig

STATUS_OK = "ok"
STATUS_ERROR = "error"
# An unexpected exception is a bug in avser or a library, not a property of the
# clip: its row is kept for the summary but the next run tries the clip again.
REASON_INTERNAL = "internal"
RETRIED_REASONS = frozenset({REASON_INTERNAL})
PART_GLOB = "part-*.parquet"
# The feature config a store was computed with: what a trained model's
# bundle must reproduce on new files (avser.predict).
FEATURES_FILE = "features.yaml"
# Examples of each failure reason printed in the summary.
SUMMARY_EXAMPLES = 3

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
    """Row for a clip that failed: ``reason`` a short code, ``message`` for the user."""
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
    """Write rows as one new part file."""
    return _write_table(pa.Table.from_pylist(rows, schema=SCHEMA), store)


def _write_table(table: pa.Table, store: str | Path) -> Path:
    """Atomic (temp file + rename), so a crash never leaves a half-written
    part behind for the next run to trust."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    final = store / f"part-{uuid.uuid4().hex[:16]}.parquet"
    tmp = store / f".{final.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def part_files(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob(PART_GLOB))


def _read_parts(parts: list[Path], columns: list[str] | None) -> pd.DataFrame:
    """Rows of ``parts`` in write order, with the part each came from."""
    frames = []
    for part in sorted(parts, key=lambda p: p.stat().st_mtime_ns):
        frame = pq.read_table(part, columns=columns).to_pandas()
        frames.append(frame.assign(_part=str(part), _row=np.arange(len(frame))))
    return pd.concat(frames, ignore_index=True)


def read_store(store: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All rows (latest per clip_id wins when a clip was recomputed)."""
    parts = part_files(store)
    if not parts:
        raise AvserError(
            f"feature store {store} holds no part files; run "
            "`python jobs/preprocess.py --manifest M --out STORE` first"
        )
    cols = None if columns is None else sorted(set(columns) | {"clip_id"})
    table = _read_parts(parts, cols).drop_duplicates("clip_id", keep="last")
    return table.drop(columns=["_part", "_row"]).reset_index(drop=True)


def read_ok_rows(store: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of clips whose features were computed (status ``ok``)."""
    cols = None if columns is None else sorted(set(columns) | {"status"})
    frame = read_store(store, cols)
    ok = frame[frame["status"] == STATUS_OK].reset_index(drop=True)
    if ok.empty:
        raise AvserError(f"feature store {store} has no clip with status ok; see its error column")
    return ok if columns is None or "status" in columns else ok.drop(columns=["status"])


def finished_keys(store: str | Path) -> set[str]:
    """Source keys whose clips need no more work: stored ``ok`` or with a
    deterministic error (empty for a new store)."""
    if not part_files(store):
        return set()
    rows = read_store(store, ["source_key", "error_reason"])
    finished = ~rows["error_reason"].isin(RETRIED_REASONS)
    return set(rows.loc[finished, "source_key"])


def drop_superseded(store: str | Path) -> int:
    """Rewrite part files so each clip keeps only its latest row; returns the
    number of rows dropped. The pruned part is written before the old one is
    removed: a crash in between leaves identical copies, never a lost row."""
    parts = part_files(store)
    if not parts:
        return 0
    index = _read_parts(parts, ["clip_id"])
    stale = index.duplicated("clip_id", keep="last")
    for part, rows in index[stale].groupby("_part"):
        table = pq.read_table(part)
        pruned = table.filter(~np.isin(np.arange(table.num_rows), rows["_row"].to_numpy()))
        if pruned.num_rows:
            _write_table(pruned, store)
        Path(part).unlink()
    return int(stale.sum())


def failure_summary(frame: pd.DataFrame) -> str:
    failed = frame[frame["status"] != STATUS_OK]
    lines = [f"{len(frame) - len(failed)} ok, {len(failed)} failed of {len(frame)} clips"]
    for reason, group in failed.groupby("error_reason"):
        lines.append(f"  {reason}: {len(group)}")
        for _, row in group.head(SUMMARY_EXAMPLES).iterrows():
            lines.append(f"    {row['clip_id']}: {row['error']}")
        if len(group) > SUMMARY_EXAMPLES:
            more = len(group) - SUMMARY_EXAMPLES
            lines.append(f"    ... and {more} more (see the store's error column)")
    return "\n".join(lines)


def manifest_clips(frame: pd.DataFrame) -> Iterable[Clip]:
    return (Clip.from_row(r) for r in frame.to_dict("records"))


def save_feature_config(store: str | Path, cfg: FeatureConfig) -> Path:
    """Write the store's feature config (a ``FeatureConfig``) beside its parts."""
    path = Path(store) / FEATURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    configlib.save(cfg, path)
    return path


def load_feature_config(store: str | Path) -> FeatureConfig:
    """The ``FeatureConfig`` a store was computed with; the defaults (with a
    warning) for a store written before stores recorded it."""
    path = Path(store) / FEATURES_FILE
    if not path.is_file():
        print(f"warning: {store} has no {FEATURES_FILE}; assuming the default feature config "
              "(re-run jobs/preprocess.py on it to record the real one)", file=sys.stderr)
        return FeatureConfig()
    return configlib.load(FeatureConfig, path)
