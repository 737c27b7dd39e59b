"""The feature store on its own (no Ray): exactly-once reads, durable parts,
damaged parts, the single-writer lock and leftover temporary files.

Rows are made by hand with ``ok_row``; the Ray-side reads (training datasets)
and a whole preprocessing re-run are in tests/test_preprocess.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from avser.data import store as feature_store
from avser.data import store_io
from avser.data.manifest import Clip, write_manifest
from avser.platform.config import PreprocessConfig
from avser.platform.preprocess import run_preprocess

REPO = Path(__file__).resolve().parents[1]
LABELS = ["neutral", "happy"]
# How long the lock-holding child waits to be killed.
CHILD_HOLD_S = 60


def clip(clip_id: str, label: int = 0) -> Clip:
    return Clip(clip_id=clip_id, corpus="test", speaker="spk1", label=label,
                label_name=LABELS[label], audio_path=f"/nowhere/{clip_id}.wav")


def row(clip_id: str, label: int = 0) -> dict:
    features = SimpleNamespace(logmel=np.full((3, 4, 5), label, dtype=np.float32), has_visual=False)
    return feature_store.ok_row(clip(clip_id, label), f"key-{clip_id}-{label}", features)


def crashed_before_compaction(store: Path) -> Path:
    """A store whose second run recomputed clip ``a`` (relabelled) and died before
    ``drop_superseded``: two rows for ``a``, the newer with label 1."""
    feature_store.write_part([row("a", 0), row("b")], store)
    feature_store.write_part([row("a", 1)], store)
    return store


# ------------------------------------------------------------------ exactly once


def test_a_clip_with_two_rows_reads_as_its_newest_row(tmp_path):
    store = crashed_before_compaction(tmp_path / "store")
    rows = feature_store.read_store(store).set_index("clip_id")
    assert sorted(rows.index) == ["a", "b"]
    assert rows.loc["a", "label"] == 1 and rows.loc["a", "label_name"] == "happy"
    live = feature_store.live_rows(store).set_index("clip_id")["part"]
    newest = feature_store.part_files(store)[-1].name
    assert live["a"] == newest and live["b"] != newest


def test_newest_row_wins_in_a_copy_whose_mtimes_are_reversed(tmp_path):
    """Write order comes from the part numbers, not mtimes, which a plain copy resets."""
    store = crashed_before_compaction(tmp_path / "store")
    copy = tmp_path / "copy"
    copy.mkdir()
    for age, part in enumerate(feature_store.part_files(store)):
        shutil.copyfile(part, copy / part.name)
        old = time.time() - 1000 * (age + 1)  # the newer part gets the older mtime
        os.utime(copy / part.name, (old, old))
    assert feature_store.read_store(copy).set_index("clip_id").loc["a", "label"] == 1


def test_reads_keep_only_the_recorded_manifest_clips(tmp_path):
    store = crashed_before_compaction(tmp_path / "store")
    feature_store.record_clips(store, ["a"], tmp_path / "manifest.parquet")
    assert feature_store.read_store(store)["clip_id"].tolist() == ["a"]
    assert feature_store.read_ok_rows(store, ["clip_id"])["clip_id"].tolist() == ["a"]
    assert feature_store.live_rows(store)["clip_id"].tolist() == ["a"]
    # The row of b stays in the parts: a later manifest may list it again.
    feature_store.record_clips(store, ["a", "b"], tmp_path / "manifest.parquet")
    assert sorted(feature_store.read_store(store)["clip_id"]) == ["a", "b"]


def test_drop_superseded_keeps_one_row_per_clip(tmp_path):
    store = crashed_before_compaction(tmp_path / "store")
    assert feature_store.drop_superseded(store) == 1
    raw = [r for part in feature_store.part_files(store)
           for r in feature_store.pq.read_table(part, columns=["clip_id", "label"]).to_pylist()]
    assert sorted((r["clip_id"], r["label"]) for r in raw) == [("a", 1), ("b", 0)]


# ------------------------------------------------------------------ durable writes


def test_parts_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = tmp_path / "store"
    part = feature_store.write_part([row("a")], store)
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "rename", "fsync"], events
    assert events[0][1].endswith(store_io.TMP_SUFFIX)  # the temporary file's bytes
    assert events[1][1] == str(part)
    assert events[2][1] == str(store)  # the folder, so the rename is durable


# ------------------------------------------------------------------ damaged parts


def test_a_zero_length_part_does_not_break_reads_and_is_set_aside(tmp_path, capsys):
    store = tmp_path / "store"
    feature_store.write_part([row("a")], store)
    damaged = feature_store.write_part([row("b")], store)
    damaged.write_bytes(b"")
    assert feature_store.read_store(store)["clip_id"].tolist() == ["a"]
    assert damaged.name in capsys.readouterr().out
    assert feature_store.finished_keys(store) == {"key-a-0"}, "b's clip must be recomputed"
    with feature_store.writing(store):
        pass
    assert not damaged.exists()
    assert (store / feature_store.DAMAGED_DIR / damaged.name).is_file()
    assert "moved it to" in capsys.readouterr().out
    assert damaged.name not in [p.name for p in feature_store.part_files(store)]
    assert feature_store.read_store(store)["clip_id"].tolist() == ["a"]


def test_the_writer_removes_stale_temporary_files(tmp_path):
    store = tmp_path / "store"
    feature_store.write_part([row("a")], store)
    stale = store / ".part-00000002-0badc0de.parquet.1234abcd.tmp"
    stale.write_bytes(b"half a part")
    with feature_store.writing(store):
        assert not stale.exists()
    assert feature_store.read_store(store)["clip_id"].tolist() == ["a"]


# ------------------------------------------------------------------ one writer


def hold_lock_in_child(store: Path) -> subprocess.Popen:
    """Another process holding the store's writer lock until killed."""
    code = ("import sys, time\nfrom avser.data import store_io\n"
            "with store_io.writer_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            f"    time.sleep({CHILD_HOLD_S})\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE,
                             text=True, env=env)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_is_refused_with_a_clear_message(tmp_path):
    store = tmp_path / "store"
    manifest = write_manifest([clip("a")], tmp_path / "manifest.parquet")
    child = hold_lock_in_child(store)
    try:
        with pytest.raises(store_io.StoreLockedError,
                           match=rf"{store} is being written by another run \(pid {child.pid} on"):
            with feature_store.writing(store):
                pass
        # The preprocessing job is refused before it starts any work.
        with pytest.raises(store_io.StoreLockedError, match="wait for it to finish"):
            run_preprocess(manifest, store, PreprocessConfig(), progress=False)
    finally:
        child.kill()
        child.wait()
    # A killed writer leaves no lock behind.
    with feature_store.writing(store):
        pass


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    store = tmp_path / "store"
    with pytest.raises(RuntimeError):
        with feature_store.writing(store):
            raise RuntimeError("the run failed")
    with feature_store.writing(store):
        with pytest.raises(store_io.StoreLockedError):
            with feature_store.writing(store):
                pass
