"""The feature store: Parquet part files, one live row per manifest clip.

Arrays are stored as raw bytes plus their shape, so the store is plain
Parquet that pandas, pyarrow and Ray Data all read without extension types.
Each row carries a ``source_key`` (hash of the feature config and the clip's
files' path/size/mtime): a re-run skips clips whose key is already stored
with status ``ok`` or a deterministic error (anything but ``internal``).

Exactly once, for readers: the part files may hold more rows than the store
serves (an older row of a recomputed clip when a run stopped before
``drop_superseded``; rows of clips the manifest no longer lists). Every read
therefore keeps, per clip id, only its newest row (part files are numbered in
write order), and only the clips of the manifest the store was last run
with (``clips.json``, written by ``record_clips``). A part holds a clip at
most once, so (part file name, clip id) names a live row: readers that go
to the raw Parquet (the training datasets) filter on those pairs
(``live_rows``).

Writes are crash-safe: a part is written to a temporary file, fsynced,
renamed and its folder fsynced; only one writer at a time holds the store
(``writing``), which also removes temporary files a crashed writer left
and, with ``set_aside_unreadable``, moves damaged parts to ``damaged/`` so
their clips are recomputed rather than every read failing.

Columns: clip_id, corpus, speaker, label, label_name, status, error,
error_reason, source_key, logmel, logmel_shape, face_jpegs, landmarks,
keyframe_index, n_frames, face_fraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from avser import config as configlib
from avser.data import store_io
from avser.data.fingerprint import file_fingerprint
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
# New parts are numbered in write order: part-00000042-1f3a9c0d.parquet.
PART_NAME = re.compile(r"^part-(?P<seq>\d+)-[0-9a-f]+\.parquet$")
SEQUENCE_DIGITS = 8
# The clip ids of the manifest the store serves (record_clips).
CLIPS_FILE = "clips.json"
# Where unreadable parts are moved (set_aside_unreadable), for a person to inspect.
DAMAGED_DIR = "damaged"
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


def source_key(clip: Clip, config_hash: str) -> str:
    """What a stored row was computed from; a change to any part recomputes it."""
    parts = [config_hash, clip.label, clip.label_name]
    for path in (clip.audio_path, clip.video_path, clip.landmarks_path):
        parts.extend(file_fingerprint(path) if path else [None])
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
    """Write rows as one new part file (numbered after every part already there)."""
    return _write_table(pa.Table.from_pylist(rows, schema=SCHEMA), store)


def _write_table(table: pa.Table, store: str | Path) -> Path:
    """Durable and atomic (``store_io.atomic_write``), so a crash never leaves
    a half-written part behind for the next run to trust."""
    store = Path(store)
    final = store / f"part-{_next_sequence(store):0{SEQUENCE_DIGITS}d}-{uuid.uuid4().hex[:8]}.parquet"
    return store_io.atomic_write(final, lambda tmp: pq.write_table(table, tmp))


def _sequence_of(part: Path) -> int | None:
    match = PART_NAME.match(part.name)
    return int(match["seq"]) if match else None


def _next_sequence(store: Path) -> int:
    # One writer at a time (the lock), so max + 1 is unique and increasing.
    numbers = [n for n in map(_sequence_of, Path(store).glob(PART_GLOB)) if n is not None]
    return max(numbers, default=0) + 1


def _write_order(part: Path) -> tuple:
    """Numbered parts in number order, after unnumbered ones (written before
    parts were numbered, or copied in by hand) in mtime order. Numbers, unlike
    mtimes, survive copying the store and never tie."""
    number = _sequence_of(part)
    if number is None:
        return (0, part.stat().st_mtime_ns, part.name)
    return (1, number, part.name)


def part_files(store: str | Path) -> list[Path]:
    """The store's part files, oldest first (a later row of a clip supersedes an earlier)."""
    return sorted(Path(store).glob(PART_GLOB), key=_write_order)


def _read_part(part: Path, columns: list[str] | None) -> pa.Table | None:
    """The part's rows, or None (with a warning) when it cannot be read."""
    try:
        return pq.read_table(part, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        print(f"warning: feature store part {part} cannot be read ({exc}); its clips are left "
              "out: re-run jobs/preprocess.py on the store to set it aside and recompute them")
        return None


def _read_parts(parts: list[Path], columns: list[str] | None) -> pd.DataFrame:
    """Rows of readable ``parts`` in write order, with the part (file name) and row each came from."""
    frames = []
    for part in sorted(parts, key=_write_order):
        table = _read_part(part, columns)
        if table is not None:
            frame = table.to_pandas()
            frames.append(frame.assign(_part=part.name, _row=np.arange(len(frame))))
    if not frames:
        empty = {name: pd.Series(dtype=object) for name in (columns or SCHEMA.names)}
        return pd.DataFrame({**empty, "_part": pd.Series(dtype=object),
                             "_row": pd.Series(dtype="int64")})
    return pd.concat(frames, ignore_index=True)


def _live(store: str | Path, columns: list[str] | None) -> pd.DataFrame:
    """The newest row of each clip the store serves, with ``_part`` and ``_row``."""
    parts = part_files(store)
    if not parts:
        raise AvserError(
            f"feature store {store} holds no part files; run "
            "`python jobs/preprocess.py --manifest M --out STORE` first"
        )
    cols = None if columns is None else sorted(set(columns) | {"clip_id"})
    rows = _read_parts(parts, cols).drop_duplicates("clip_id", keep="last")
    served = recorded_clips(store)
    if served is not None:
        rows = rows[rows["clip_id"].isin(served)]
    return rows.reset_index(drop=True)


def read_store(store: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """One row per clip the store serves: the newest row of each clip of its
    manifest (every clip it holds when no manifest was recorded)."""
    return _live(store, columns).drop(columns=["_part", "_row"])


def live_rows(store: str | Path) -> pd.DataFrame:
    """``clip_id`` and ``part`` (file name) of each row ``read_store`` returns:
    what a reader of the raw part files keeps to see exactly those rows."""
    rows = _live(store, ["clip_id"])
    return rows[["clip_id", "_part"]].rename(columns={"_part": "part"})


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
    number of rows dropped. The pruned part is written (and synced) before the
    old one is removed: a crash in between leaves identical copies, never a
    lost row. Rows of clips outside the recorded manifest are kept: a later
    manifest may list them again."""
    parts = part_files(store)
    if not parts:
        return 0
    index = _read_parts(parts, ["clip_id"])
    stale = index.duplicated("clip_id", keep="last")
    for name, rows in index[stale].groupby("_part"):
        part = Path(store) / name
        table = pq.read_table(part)
        pruned = table.filter(~np.isin(np.arange(table.num_rows), rows["_row"].to_numpy()))
        if pruned.num_rows:
            _write_table(pruned, store)
        store_io.remove_durably(part)
    return int(stale.sum())


def set_aside_unreadable(store: str | Path) -> list[Path]:
    """Move parts that cannot be read to ``damaged/`` (with a warning), so
    their clips count as not stored and are recomputed. Call as the writer."""
    moved = []
    for part in part_files(store):
        try:
            pq.read_table(part, columns=["clip_id"])
        except (pa.ArrowException, OSError) as exc:
            target = Path(store) / DAMAGED_DIR / part.name
            target.parent.mkdir(exist_ok=True)
            os.replace(part, target)
            store_io.fsync_dir(Path(store))
            print(f"warning: feature store part {part} cannot be read ({exc}); moved it to "
                  f"{target} and its clips will be recomputed")
            moved.append(target)
    return moved


def record_clips(store: str | Path, clip_ids: Iterable[str], manifest: str | Path) -> Path:
    """Record the clips the store serves from now on: those of ``manifest``.
    Rewritten only when they change, so a finished store is left untouched."""
    path = Path(store) / CLIPS_FILE
    content = {"manifest": str(manifest), "clip_ids": sorted(set(clip_ids))}
    if _read_clips_file(path) == content:
        return path
    blob = json.dumps(content, indent=0).encode()
    return store_io.atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def _read_clips_file(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if not isinstance(content.get("clip_ids"), list):
            raise ValueError("no clip_ids list")
        return content
    except (ValueError, AttributeError) as exc:
        raise AvserError(f"feature store clip list {path} is damaged ({exc}); re-run "
                         "jobs/preprocess.py on the store to write it again") from exc


def recorded_clips(store: str | Path) -> set[str] | None:
    """Clip ids of the manifest the store was last run with; None for a store
    that recorded none (older stores, or parts written by ``write_part`` alone):
    it serves every clip it holds."""
    content = _read_clips_file(Path(store) / CLIPS_FILE)
    return None if content is None else set(content["clip_ids"])


@contextmanager
def writing(store: str | Path) -> Iterator[Path]:
    """Hold ``store`` as its only writer (``StoreLockedError`` naming the other
    run otherwise); first remove the temporary files a crashed writer left
    and set unreadable parts aside."""
    store = Path(store)
    with store_io.writer_lock(store, "feature store"):
        stale = store_io.clean_temp_files(store)
        if stale:
            print(f"removed {len(stale)} temporary file(s) an interrupted run left in {store}")
        set_aside_unreadable(store)
        yield store


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
