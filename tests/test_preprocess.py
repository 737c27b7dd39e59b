"""Preprocessing (Ray Data: manifest -> feature store) on real files and a real local Ray.

One synthetic corpus and one Ray instance serve the module. The manifest
mixes good synthetic clips with deliberately broken ones (a truncated MP4,
an empty WAV, a video whose landmark CSV finds no face) and an audio-only
clip. The module's store is made the hard way: a first run crashes after
writing its first part file, a second run finishes the rest. The tests then
check what a user relies on: one row per clip with the right status and
reason, a failure summary naming the clips, no work at all on a finished
store, and only the missing clips recomputed after damage.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import avser.platform  # noqa: F401 - before ray: keeps a local Ray on loopback
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from avser import config as configlib
from avser.data import store as feature_store
from avser.data.manifest import Clip, write_manifest
from avser.data.synthetic import generate_corpus
from avser.errors import AvserError
from avser.features.audio import load_audio
from avser.features.landmarks import DlibBackend, OpenFaceCSVBackend
from avser.platform import preprocess
from avser.platform.cluster import init_ray
from avser.platform.config import PreprocessConfig
from avser.platform.preprocess import featurize_clip, run_preprocess

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "preprocess_synthetic.yaml"
JOB = REPO / "jobs" / "preprocess.py"
N_SYNTHETIC = 8
SEED = 7
# Small parts and batches so 12 clips make several part files (the crash grain).
ROWS_PER_PART = 4
CLIPS_PER_BATCH = 4
RAY_CPUS = 2
# Keep the first third of an MP4: its index (moov, written last) is cut off.
TRUNCATED_FRACTION = 3
# A clip file "edited" later: its mtime moves by this much (the key keeps whole seconds).
EDIT_SHIFT_S = 10
JPEG_MAGIC = b"\xff\xd8"

TRUNCATED, EMPTY_WAV, NO_FACE, AUDIO_ONLY = (
    "broken_truncated_mp4", "broken_empty_wav", "broken_no_face", "audio_only_wav"
)
EXPECTED_FAILURES = {TRUNCATED: "unreadable", EMPTY_WAV: "empty_audio", NO_FACE: "no_face"}


class SimulatedCrash(RuntimeError):
    """Stands for the driver dying (killed, node lost) part-way through a run."""


@dataclass
class Corpus:
    manifest: Path
    clips: list[Clip]
    synthetic: list[Clip]


@dataclass
class CrashedThenResumed:
    store: Path
    rows_before_crash: int
    parts_before_crash: list[Path]
    report: preprocess.PreprocessReport


def preprocess_config(**overrides) -> PreprocessConfig:
    cfg = configlib.load(PreprocessConfig, CONFIG)
    cfg.rows_per_part = ROWS_PER_PART
    cfg.clips_per_batch = CLIPS_PER_BATCH
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


def odd_clip(clip_id: str, audio: Path, video: Path | None = None, csv: Path | None = None) -> Clip:
    return Clip(clip_id=clip_id, corpus="synthetic", speaker="spk99", label=0,
                label_name="neutral", audio_path=str(audio),
                video_path=str(video) if video else None,
                landmarks_path=str(csv) if csv else None)


def write_truncated_mp4(source: Clip, folder: Path) -> Clip:
    data = Path(source.video_path).read_bytes()
    path = folder / f"{TRUNCATED}.mp4"
    path.write_bytes(data[: len(data) // TRUNCATED_FRACTION])
    return odd_clip(TRUNCATED, path, path, Path(source.landmarks_path))


def write_empty_wav(folder: Path) -> Clip:
    path = folder / f"{EMPTY_WAV}.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    assert sf.info(path).frames == 0
    return odd_clip(EMPTY_WAV, path)


def write_faceless_clip(source: Clip, folder: Path) -> Clip:
    """A real video whose OpenFace CSV reports no successful frame."""
    video = folder / f"{NO_FACE}.mp4"
    shutil.copy(source.video_path, video)
    rows = pd.read_csv(source.landmarks_path, skipinitialspace=True)
    rows["success"] = 0
    csv = folder / f"{NO_FACE}.csv"
    rows.to_csv(csv, index=False)
    return odd_clip(NO_FACE, video, video, csv)


def write_audio_only_wav(source: Clip, folder: Path) -> Clip:
    path = folder / f"{AUDIO_ONLY}.wav"
    sf.write(path, load_audio(source.audio_path, 16000), 16000)
    return odd_clip(AUDIO_ONLY, path)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    init_ray(num_cpus=RAY_CPUS)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("preprocess-corpus")
    synthetic = generate_corpus(root / "synthetic", N_SYNTHETIC, seed=SEED, progress=False)
    odd = root / "odd"
    odd.mkdir()
    clips = synthetic + [
        write_truncated_mp4(synthetic[0], odd),
        write_empty_wav(odd),
        write_faceless_clip(synthetic[1], odd),
        write_audio_only_wav(synthetic[2], odd),
    ]
    manifest = write_manifest(clips, root / "manifest.parquet")
    return Corpus(manifest=manifest, clips=clips, synthetic=synthetic)


def crash_after_first_part(original):
    def write_then_crash(rows, store):
        if feature_store.part_files(store):
            raise SimulatedCrash("the driver died after its first part file")
        return original(rows, store)

    return write_then_crash


@pytest.fixture(scope="module")
def resumed(corpus, ray_local, tmp_path_factory) -> CrashedThenResumed:
    store = tmp_path_factory.mktemp("store") / "features"
    cfg = preprocess_config()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_store, "write_part", crash_after_first_part(feature_store.write_part))
        with pytest.raises(SimulatedCrash):
            run_preprocess(corpus.manifest, store, cfg, progress=False)
    parts = feature_store.part_files(store)
    rows_before = sum(pq.read_metadata(p).num_rows for p in parts)
    report = run_preprocess(corpus.manifest, store, cfg, progress=False)
    return CrashedThenResumed(store, rows_before, parts, report)


def raw_rows(store: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Every row of every part file, as a reader of the raw Parquet sees them."""
    return pd.concat([pq.read_table(p, columns=columns).to_pandas()
                      for p in feature_store.part_files(store)], ignore_index=True)


def part_state(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in feature_store.part_files(store)}


# ------------------------------------------------------------------ crash, resume


def test_resume_after_a_crash_computes_only_the_missing_clips(corpus, resumed):
    total = len(corpus.clips)
    assert len(resumed.parts_before_crash) == 1
    assert ROWS_PER_PART <= resumed.rows_before_crash < total
    assert resumed.report.computed == total - resumed.rows_before_crash
    assert resumed.report.skipped == resumed.rows_before_crash
    # The part written before the crash was reused as it is, not rewritten.
    assert all(p.exists() for p in resumed.parts_before_crash)


def test_every_manifest_clip_is_stored_exactly_once(corpus, resumed):
    stored = raw_rows(resumed.store, ["clip_id"])["clip_id"]
    assert sorted(stored) == sorted(c.clip_id for c in corpus.clips)
    assert not list(resumed.store.glob(".*.tmp")), "a temporary part file was left behind"


def test_statuses_and_error_reasons(corpus, resumed):
    rows = feature_store.read_store(resumed.store).set_index("clip_id")
    failed = rows[rows["status"] != feature_store.STATUS_OK]
    assert failed["error_reason"].to_dict() == EXPECTED_FAILURES
    assert set(failed["status"]) == {feature_store.STATUS_ERROR}
    paths = {c.clip_id: c.audio_path for c in corpus.clips}
    for clip_id, row in failed.iterrows():
        assert clip_id in row["error"] and paths[clip_id] in row["error"], row["error"]
        assert row["logmel"] is None
    ok = rows[rows["status"] == feature_store.STATUS_OK]
    assert sorted(ok.index) == sorted([c.clip_id for c in corpus.synthetic] + [AUDIO_ONLY])
    assert resumed.report.failed == len(EXPECTED_FAILURES)
    assert resumed.report.failures == dict(sorted(
        (reason, 1) for reason in EXPECTED_FAILURES.values()))


def test_audio_visual_rows_hold_the_configured_arrays(corpus, resumed):
    cfg = preprocess_config().features
    rows = feature_store.read_store(resumed.store).set_index("clip_id")
    for clip in corpus.synthetic:
        row = rows.loc[clip.clip_id].to_dict()
        logmel = feature_store.decode_logmel(row)
        assert logmel.shape[:2] == (3, cfg.audio.n_mels) and logmel.shape[2] > 0
        assert np.isfinite(logmel.astype(np.float32)).all()
        assert feature_store.decode_landmarks(row).shape == (cfg.keyframes.k, 68, 2)
        assert len(row["face_jpegs"]) == cfg.keyframes.k
        assert all(jpeg.startswith(JPEG_MAGIC) for jpeg in row["face_jpegs"])
        assert list(row["keyframe_index"]) == sorted(row["keyframe_index"])
        # The synthetic CSVs hold the exact face of every frame.
        assert row["face_fraction"] == 1.0 and row["n_frames"] > max(row["keyframe_index"])


def test_audio_only_row_is_ok_with_null_visual_columns(resumed):
    row = feature_store.read_store(resumed.store).set_index("clip_id").loc[AUDIO_ONLY].to_dict()
    assert row["status"] == feature_store.STATUS_OK
    assert feature_store.decode_logmel(row).shape[0] == 3
    for column in ("face_jpegs", "landmarks", "keyframe_index"):
        assert row[column] is None, column
    assert row["n_frames"] == 0


def test_failure_summary_names_each_reason_and_clip(resumed):
    summary = resumed.report.summary
    n_ok = len(feature_store.read_store(resumed.store)) - len(EXPECTED_FAILURES)
    assert summary.splitlines()[0] == (
        f"{n_ok} ok, {len(EXPECTED_FAILURES)} failed of {n_ok + len(EXPECTED_FAILURES)} clips")
    for clip_id, reason in EXPECTED_FAILURES.items():
        assert f"  {reason}: 1" in summary
        assert f"    {clip_id}: clip {clip_id}: " in summary


# ------------------------------------------------------------------ finished store


def forbid_per_clip_work(patch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("per-clip work was started on a finished store")

    patch.setattr(preprocess, "_feature_dataset", fail)
    patch.setattr(preprocess, "featurize_clip", fail)
    patch.setattr(preprocess.ClipFeaturizer, "__init__", fail)


def test_second_run_over_a_finished_store_does_no_per_clip_work(corpus, resumed, monkeypatch):
    before = part_state(resumed.store)
    forbid_per_clip_work(monkeypatch)
    report = run_preprocess(corpus.manifest, resumed.store, preprocess_config(), progress=False)
    assert (report.computed, report.skipped) == (0, len(corpus.clips))
    assert report.failures == resumed.report.failures
    assert part_state(resumed.store) == before, "part files were written or rewritten"


# ------------------------------------------------------------------ damage, repair


def clip_parts(store: Path) -> dict[str, Path]:
    return {clip_id: part for part in feature_store.part_files(store)
            for clip_id in pq.read_table(part, columns=["clip_id"])["clip_id"].to_pylist()}


def mark_internal_error(store: Path, clip: Clip) -> None:
    """Store a newer row for ``clip`` that says a bug stopped it (same source key)."""
    key = feature_store.read_store(store, ["source_key"]).set_index("clip_id").loc[clip.clip_id]
    row = feature_store.error_row(clip, key["source_key"], feature_store.REASON_INTERNAL,
                                  f"clip {clip.clip_id}: unexpected ValueError (simulated)")
    # The copied parts kept their (older) mtimes, so this new part holds the clip's latest row.
    feature_store.write_part([row], store)


def record_written_clips(patch: pytest.MonkeyPatch) -> list[str]:
    """Clip ids of the rows the job writes as new results (not its store compaction)."""
    written: list[str] = []
    original = feature_store.write_part

    def write_and_record(rows, store):
        written.extend(r["clip_id"] for r in rows)
        return original(rows, store)

    patch.setattr(feature_store, "write_part", write_and_record)
    return written


def test_rerun_repairs_lost_parts_edited_clips_and_internal_errors(
    corpus, resumed, tmp_path, monkeypatch
):
    store = tmp_path / "features"
    shutil.copytree(resumed.store, store)  # copy2: same mtimes, same latest rows
    where = clip_parts(store)
    lost_part = where[corpus.synthetic[0].clip_id]
    lost = {c for c, part in where.items() if part == lost_part}
    edited, buggy = [c for c in corpus.synthetic if where[c.clip_id] != lost_part][:2]
    lost_part.unlink()
    mark_internal_error(store, buggy)
    written = record_written_clips(monkeypatch)
    csv = Path(edited.landmarks_path)
    original = csv.stat()
    try:
        shifted = original.st_mtime + EDIT_SHIFT_S
        os.utime(csv, (shifted, shifted))
        report = run_preprocess(corpus.manifest, store, preprocess_config(), progress=False)
    finally:
        os.utime(csv, ns=(original.st_atime_ns, original.st_mtime_ns))
    expected = lost | {edited.clip_id, buggy.clip_id}
    assert report.computed == len(expected)
    assert sorted(written) == sorted(expected)
    # The superseded rows (edited clip, internal error) are gone from the raw parts.
    stored = raw_rows(store, ["clip_id"])["clip_id"]
    assert sorted(stored) == sorted(c.clip_id for c in corpus.clips)
    rows = feature_store.read_store(store).set_index("clip_id")
    assert rows.loc[buggy.clip_id, "status"] == feature_store.STATUS_OK
    assert report.failures == resumed.report.failures


@contextmanager
def edited(clip: Clip):
    """The clip's landmark CSV with a later mtime (so a new source key) for a block."""
    csv = Path(clip.landmarks_path)
    original = csv.stat()
    try:
        later = original.st_mtime + EDIT_SHIFT_S
        os.utime(csv, (later, later))
        yield
    finally:
        os.utime(csv, ns=(original.st_atime_ns, original.st_mtime_ns))


def crash_before_compacting(original):
    """``drop_superseded`` that dies when there is something to compact."""
    def compact_or_crash(store):
        if raw_rows(store, ["clip_id"])["clip_id"].duplicated().any():
            raise SimulatedCrash("the driver died before the compaction")
        return original(store)

    return compact_or_crash


def training_rows(store: Path, stage: str) -> list[dict]:
    """Every row the training datasets of one all-train split yield (Ray Data)."""
    from avser.data.splits import Split
    from avser.platform.config import TrainConfig
    from avser.platform.experiments import datasets_for, load_store_meta

    meta = load_store_meta(store)
    split = Split("all", train=np.arange(len(meta)), val=[], test=[])
    cfg = TrainConfig(stage=stage, materialize=False)
    return datasets_for(store, meta, split, cfg)["train"].take_all()


def test_crash_before_compaction_training_reads_each_manifest_clip_once(
    corpus, resumed, tmp_path, monkeypatch
):
    from avser.platform.stages import SPEECH_COLUMNS

    store = tmp_path / "features"
    shutil.copytree(resumed.store, store)
    recomputed = corpus.synthetic[3]
    with edited(recomputed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_store, "drop_superseded",
                      crash_before_compacting(feature_store.drop_superseded))
        with pytest.raises(SimulatedCrash):
            run_preprocess(corpus.manifest, store, preprocess_config(), progress=False)
    raw = raw_rows(store, ["clip_id"])["clip_id"].tolist()
    assert raw.count(recomputed.clip_id) == 2, "the crash should leave two rows for the clip"
    # A manifest without one clip: its row stays in the parts but is not served.
    dropped = corpus.synthetic[4].clip_id
    smaller = write_manifest([c for c in corpus.clips if c.clip_id != dropped],
                             tmp_path / "smaller.parquet")
    feature_store.record_clips(store, [c.clip_id for c in corpus.clips if c.clip_id != dropped],
                               smaller)
    ok = {c.clip_id for c in corpus.synthetic} | {AUDIO_ONLY}
    speech = training_rows(store, "pretrain")  # the column-pruned read
    assert sorted(r["clip_id"] for r in speech) == sorted(ok - {dropped})
    assert set(speech[0]) == set(SPEECH_COLUMNS), "the part-path column is dropped"
    full = {r["clip_id"]: r for r in training_rows(store, "fusion")}
    assert sorted(full) == sorted(ok - {dropped})
    newest = feature_store.read_store(store, ["source_key"]).set_index("clip_id")["source_key"]
    assert full[recomputed.clip_id]["source_key"] == newest[recomputed.clip_id]
    assert set(full[recomputed.clip_id]) == set(feature_store.SCHEMA.names)
    # The next run (nothing to compute) compacts the parts.
    forbid_per_clip_work(monkeypatch)
    with edited(recomputed):
        run_preprocess(smaller, store, preprocess_config(), progress=False)
    raw = raw_rows(store, ["clip_id"])["clip_id"].tolist()
    assert sorted(raw) == sorted(c.clip_id for c in corpus.clips)


def test_zero_length_part_is_set_aside_and_its_clips_recomputed(corpus, resumed, tmp_path, capsys):
    store = tmp_path / "features"
    shutil.copytree(resumed.store, store)
    damaged = clip_parts(store)[corpus.synthetic[0].clip_id]
    lost = {c for c, part in clip_parts(store).items() if part == damaged}
    damaged.write_bytes(b"")
    report = run_preprocess(corpus.manifest, store, preprocess_config(), progress=False)
    assert report.computed == len(lost)
    assert (store / feature_store.DAMAGED_DIR / damaged.name).is_file()
    assert f"{damaged} cannot be read" in capsys.readouterr().out
    assert sorted(raw_rows(store, ["clip_id"])["clip_id"]) == sorted(c.clip_id for c in corpus.clips)
    assert report.failures == resumed.report.failures


# ------------------------------------------------------------------ the job


def load_job():
    spec = importlib.util.spec_from_file_location("preprocess_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_main_end_to_end(corpus, ray_local, tmp_path, capsys):
    by_id = {c.clip_id: c for c in corpus.clips}
    tiny = [corpus.synthetic[0], by_id[TRUNCATED], by_id[AUDIO_ONLY]]
    manifest = write_manifest(tiny, tmp_path / "tiny.parquet")
    store = tmp_path / "features"
    # One clip per batch: three results reach the progress bar one by one.
    argv = ["--manifest", str(manifest), "--out", str(store), "--config", str(CONFIG),
            "--num-actors", "1", "--set", "clips_per_batch=1"]
    start = time.perf_counter()
    assert load_job().main(argv) == 0
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert "3 clips: 3 computed, 0 already stored" in out
    assert "2 ok, 1 failed of 3 clips" in out and "unreadable: 1" in out and TRUNCATED in out
    rows = feature_store.read_store(store).set_index("clip_id")
    assert rows["status"].to_dict() == {c.clip_id: "error" if c.clip_id == TRUNCATED else "ok"
                                        for c in tiny}
    # stderr is not a terminal here, as in `ray job logs`: the bar draws at
    # start and end, plus at most once per interval, not once per result.
    redraws = err.count("features:")
    assert 1 <= redraws <= 2 + int(seconds // preprocess.LOG_PROGRESS_INTERVAL_S), err


def test_job_exits_1_when_no_clip_is_usable(corpus, resumed, tmp_path, capsys, monkeypatch):
    broken = [c for c in corpus.clips if c.clip_id in EXPECTED_FAILURES]
    manifest = write_manifest(broken, tmp_path / "broken.parquet")
    forbid_per_clip_work(monkeypatch)  # all stored already: the exit code comes from the store
    argv = ["--manifest", str(manifest), "--out", str(resumed.store), "--config", str(CONFIG)]
    job = load_job()
    assert job.main(argv) == job.EXIT_NOTHING_USABLE
    out = capsys.readouterr().out
    assert "0 ok, 3 failed of 3 clips" in out and "no clip could be featurized" in out


def test_manifest_with_a_repeated_clip_id_is_refused(corpus, tmp_path):
    manifest = write_manifest(corpus.clips[:2] + corpus.clips[:1], tmp_path / "twice.parquet")
    with pytest.raises(AvserError, match=corpus.clips[0].clip_id):
        run_preprocess(manifest, tmp_path / "features", preprocess_config(), progress=False)


# ------------------------------------------------------------------ real data, no Ray


def test_ravdess_flac_rows_are_audio_only_and_ok(shared_data, tmp_path):
    from avser.data.ravdess import scan_ravdess

    clips = scan_ravdess(shared_data / "ravdess-speech-16k").clips[:2]
    cfg = preprocess_config().features
    rows = [featurize_clip(c, f"key-{c.clip_id}", cfg, OpenFaceCSVBackend(cfg.landmarks))
            for c in clips]
    feature_store.write_part(rows, tmp_path)
    stored = feature_store.read_store(tmp_path).set_index("clip_id")
    for clip in clips:
        row = stored.loc[clip.clip_id].to_dict()
        assert clip.video_path is None and row["status"] == feature_store.STATUS_OK
        assert feature_store.decode_logmel(row).shape[:2] == (3, cfg.audio.n_mels)
        assert row["face_jpegs"] is None and row["landmarks"] is None


def test_real_video_without_a_face_is_a_no_face_row(shared_data):
    video = shared_data / "face-videos" / "no_face.mp4"
    clip = odd_clip("no_face_video", video, video)
    cfg = preprocess_config().features
    cfg.landmarks.backend = "dlib"
    row = featurize_clip(clip, "key", cfg, DlibBackend(cfg.landmarks))
    assert (row["status"], row["error_reason"]) == (feature_store.STATUS_ERROR, "no_face")
    assert "no_face_video" in row["error"] and str(video) in row["error"]


def test_a_25_ms_clip_is_a_too_short_row_naming_the_file(tmp_path):
    path = tmp_path / "blip.wav"
    rate = 16000
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.025 * rate)) / rate), rate)
    cfg = preprocess_config().features
    row = featurize_clip(odd_clip("blip", path), "key", cfg, OpenFaceCSVBackend(cfg.landmarks))
    assert (row["status"], row["error_reason"]) == (feature_store.STATUS_ERROR, "too_short")
    assert "blip" in row["error"] and str(path) in row["error"] and "min_seconds" in row["error"]
    assert row["logmel"] is None
