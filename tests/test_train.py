"""Ray Train on the tiny model and a small synthetic feature store.

One local Ray (4 logical CPUs, on loopback), one synthetic store and one
two-worker DDP fusion run are shared by the module; the MLflow store is a
sqlite file in the test's temp dir. What each test shows:

- DDP over gloo with two CPU workers trains, and the two workers see
  disjoint shards that together are the training split.
- MLflow holds the run's params, per-epoch and test metrics, the PNG
  figures, and a registered ``avser@candidate`` that predicts exactly what
  the final checkpoint's network predicts.
- A training job killed after its first checkpoint and started again
  resumes at the next epoch, into the same MLflow run, with one metric
  entry per epoch (own subprocess, own Ray, killed as a whole session).
- Pretraining on speech-only rows registers ``avser-racnn``, and the fusion
  model built with ``init=checkpoint:<folder>`` starts from its RACNN.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import avser

import avser.platform  # noqa: F401  (keeps a local Ray on loopback; before ray is imported)
from avser import config as configlib
from avser.batches import collate
from avser.data.manifest import read_manifest
from avser.data import store as feature_store
from avser.data.splits import make_splits
from avser.models.factory import racnn_input_config
from avser.models.fusion import AudioVisualSER
from avser.platform import registry, runs, tracking
from avser.platform.runs import TrackingInfo
from avser.platform.stages import build_stage_model
from avser.predict import predict_files, resolve_bundle
from avser.platform.config import DataPrepConfig, TrainConfig, resolve_paths
from avser.platform.experiments import (
    ExperimentResult,
    datasets_for,
    label_names_of,
    load_store_meta,
    model_config_for,
    run_training,
)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SMOKE_CONFIG = REPO / "configs" / "train_smoke.yaml"
TINY_MODEL = REPO / "configs" / "model" / "tiny.yaml"
# 24 clips, 4 per emotion: the smoke split leaves 14 training clips, an even
# number, so two equal DDP shards hold every one of them.
N_CLIPS = 24
RAY_CPUS = 4  # logical: two 1-CPU workers leave two for Ray Data on this 2-core box
EXPERIMENT = "avser-test-train"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PER_EPOCH = ("train_loss", "train_wa", "val_loss", "val_wa", "val_ua", "val_f1")
TEST_METRICS = ("test_loss", "test_wa", "test_ua", "test_f1")
VISUAL_COLUMNS = ("face_jpegs", "landmarks", "keyframe_index")

pytestmark = pytest.mark.timeout(1200)


def train_config(storage: Path, run_name: str, *overrides: str) -> TrainConfig:
    return configlib.load(TrainConfig, SMOKE_CONFIG, [
        f"model_config={TINY_MODEL}", f"storage_path={storage}", f"run_name={run_name}",
        f"experiment={EXPERIMENT}", *overrides,
    ])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def ray_local(workdir):
    """One local Ray for the module; its workers log to the test's MLflow store."""
    import ray

    from avser.platform.cluster import init_ray

    patch = pytest.MonkeyPatch()
    # Set before Ray starts: the Train workers inherit the driver's environment.
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    patch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():  # another module's Ray would not carry this environment
        ray.shutdown()
    init_ray(num_cpus=RAY_CPUS)
    yield
    ray.shutdown()
    patch.undo()


@pytest.fixture(scope="module")
def store(ray_local, workdir) -> Path:
    """A synthetic corpus -> manifest -> feature store (Ray Data)."""
    from avser.platform.dataprep import prepare_store

    cfg = DataPrepConfig(corpus="synthetic", root=str(workdir / "synthetic"), synth_clips=N_CLIPS,
                         manifest=str(workdir / "synthetic.parquet"), store=str(workdir / "store"),
                         preprocess_config=str(REPO / "configs" / "preprocess_synthetic.yaml"))
    path = prepare_store(cfg, progress=False)
    meta = load_store_meta(path)
    assert len(meta) == N_CLIPS, "every synthetic clip should preprocess cleanly"
    return path


@dataclass
class FusionRun:
    cfg: TrainConfig
    result: ExperimentResult
    shard_dir: Path


@pytest.fixture(scope="module")
def ddp_fusion_run(ray_local, store, workdir) -> FusionRun:
    """Two gloo workers (1 CPU each), two epochs of the tiny fusion model."""
    cfg = train_config(workdir / "ray", "ddp", "num_workers=2", "cpus_per_worker=1",
                       "optim.max_epochs=2", "optim.patience=5")
    shard_dir = workdir / "shards"
    result = run_training(cfg, store, shard_log_dir=str(shard_dir))
    return FusionRun(cfg, result, shard_dir)


# ---------------------------------------------------------------- helpers


def split_of(store: Path, cfg: TrainConfig):
    meta = load_store_meta(store)
    (split,) = make_splits(meta, cfg.split)
    return meta, split


def model_cfg_of(store: Path, cfg: TrainConfig):
    return model_config_for(resolve_paths(cfg), len(label_names_of(load_store_meta(store))))


def metric_history(run_id: str, key: str) -> list:
    return sorted(tracking.client().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))


def store_batch(store: Path, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of the store as ``iter_batches(batch_format="numpy")`` gives them."""
    rows = feature_store.read_store(store).head(n)
    return {column: rows[column].to_numpy() for column in rows.columns}


def session_pids(sid: int) -> set[int]:
    """Live (not zombie) processes of session ``sid``: a job's driver and its whole Ray."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True,
                         check=True).stdout
    rows = (line.split() for line in out.splitlines())
    return {int(pid) for pid, s, stat in rows if int(s) == sid and not stat.startswith("Z")}


def kill_session(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL every process of the session ``proc`` leads and wait until none is left.
    Ray's actors set their own process group but stay in the driver's session."""
    deadline = time.time() + timeout
    while True:
        pids = session_pids(proc.pid)
        if not pids:
            break
        if time.time() > deadline:
            raise AssertionError(f"processes {sorted(pids)} of the killed job survive")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    proc.wait(timeout=timeout)


def snapshot_checkpoints(run_dir: Path) -> list[dict]:
    """Checkpoints Ray Train has registered for the run (what a restart restores)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text()).get("checkpoint_results", [])
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being written
        return []


def speech_only_copy(store: Path, target: Path) -> Path:
    """The store with every visual column emptied: rows like a speech corpus's."""
    target.mkdir(parents=True)
    for part in feature_store.part_files(store):
        table = pq.read_table(part)
        for name in VISUAL_COLUMNS:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(name),
                                     pa.nulls(len(table), table.schema.field(name).type))
        pq.write_table(table, target / part.name)
    return target


def label_sorted_copy(store: Path, target: Path, copies: int = 8, rows_per_part: int = 16) -> Path:
    """The store as the preprocessing job may leave a real corpus: long runs
    of one label across part files (RAVDESS names sort by emotion). Each clip
    is repeated ``copies`` times under new ids so the runs outgrow a batch."""
    table = pa.concat_tables(pq.read_table(part) for part in feature_store.part_files(store))
    index = table.schema.get_field_index("clip_id")
    table = pa.concat_tables(
        table.set_column(index, "clip_id", pa.array([f"{c}-{n}" for c in table["clip_id"].to_pylist()]))
        for n in range(copies))
    table = table.sort_by([("label", "ascending"), ("clip_id", "ascending")])
    target.mkdir(parents=True)
    for part, start in enumerate(range(0, len(table), rows_per_part)):
        pq.write_table(table.slice(start, rows_per_part), target / f"part-{part:04d}.parquet")
    return target


def same_label_neighbours(labels: list[int]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, labels[1:])]))


@contextmanager
def tracking_store(uri: str):
    """Point this process's tracking helpers at another MLflow store for a block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield


def load_job(name: str):
    """``jobs/<name>.py`` as a module (the jobs folder is no package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- tests


def test_ddp_two_workers_train_on_disjoint_shards(ddp_fusion_run, store):
    cfg, result = ddp_fusion_run.cfg, ddp_fusion_run.result
    (fold,) = result.folds
    assert fold.metrics["training_finished"] == 1 and fold.checkpoint_path
    for key in ("final_train_loss", "final_val_loss", "test_loss"):
        assert math.isfinite(fold.metrics[key]), key
    for key in ("test_wa", "test_ua", "test_f1"):
        assert 0.0 <= fold.metrics[key] <= 1.0, key

    run_id = tracking.find_run(EXPERIMENT, fold.run_name)
    losses = metric_history(run_id, "train_loss")
    assert [m.step for m in losses] == [0, 1]
    assert all(math.isfinite(m.value) for m in losses)

    shards = {path.name: set(json.loads(path.read_text()))
              for path in sorted(ddp_fusion_run.shard_dir.glob("rank*.json"))}
    assert set(shards) == {"rank0.json", "rank1.json"}, "both DDP ranks log what they trained on"
    rank0, rank1 = shards["rank0.json"], shards["rank1.json"]
    assert rank0 and rank1, "each worker trains on some clips"
    assert not rank0 & rank1, f"ranks share clips {sorted(rank0 & rank1)}"
    meta, split = split_of(store, cfg)
    assert rank0 | rank1 == set(meta["clip_id"].iloc[split.train])


def test_training_batches_mix_labels_of_a_label_sorted_store(store, workdir):
    """Part files hold long runs of one emotion; every epoch must still see
    each training clip once, in an order that mixes the labels, and a new
    order each epoch (the split is shuffled once, globally, then per epoch
    over optim.shuffle_buffer rows)."""
    from avser.platform.epochs import LoopContext, _batches

    sorted_store = label_sorted_copy(store, workdir / "sorted-store")
    cfg = train_config(workdir / "ray", "order")
    meta, split = split_of(sorted_store, cfg)
    in_store_order = meta["label"].iloc[sorted(split.train)].tolist()
    assert same_label_neighbours(in_store_order) > 0.9, "the copy should be label-sorted"

    train = datasets_for(sorted_store, meta, split, cfg)["train"]
    ctx = LoopContext(cfg, model_cfg_of(sorted_store, cfg), label_names_of(meta), "order",
                      TrackingInfo(experiment=EXPERIMENT, uri="unused"))
    epochs = [[int(label) for raw, _ in _batches(train, ctx, shuffle_seed=epoch) for label in raw["label"]]
              for epoch in (0, 1)]
    assert sorted(epochs[0]) == sorted(in_store_order), "an epoch sees every training clip once"
    assert same_label_neighbours(epochs[0]) < 0.35, epochs[0]
    assert epochs[0] != epochs[1], "each epoch reshuffles"


def test_mlflow_holds_params_metrics_figures_and_candidate(ddp_fusion_run, store, tmp_path):
    cfg, (fold,) = ddp_fusion_run.cfg, ddp_fusion_run.result.folds
    client = tracking.client()
    run_id = tracking.find_run(EXPERIMENT, fold.run_name)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"

    params = run.data.params
    model_cfg = model_cfg_of(store, cfg)
    assert params["train.stage"] == "fusion"
    assert params["train.num_workers"] == "2"
    assert float(params["train.optim.lr"]) == cfg.optim.lr
    assert params["train.split.protocol"] == "random"
    assert params["model.n_classes"] == str(model_cfg.n_classes) == "6"
    assert params["model.racnn.input_size"] == "64"

    for key in PER_EPOCH:
        history = metric_history(run_id, key)
        assert [m.step for m in history] == [0, 1], key
        assert all(math.isfinite(m.value) for m in history), key
    metrics = run.data.metrics
    for key in (*TEST_METRICS, "klda_test_ua", "final_val_ua"):
        assert metrics[key] == pytest.approx(fold.metrics[key]), key

    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert {"figures/confusion_test.png", "figures/curves.png"} <= figures
    for name in ("confusion_test.png", "curves.png"):
        local = client.download_artifacts(run_id, f"figures/{name}", str(tmp_path))
        assert Path(local).read_bytes()[:8] == PNG_MAGIC, name

    version = client.get_model_version_by_alias("avser", "candidate")
    assert version.run_id == run_id

    # The final checkpoint's weights in a fresh network vs. the registered model.
    network = AudioVisualSER.from_config(model_cfg)
    network.load_state_dict(torch.load(Path(fold.checkpoint_path) / "model.pt", map_location="cpu"))
    network.eval()
    inputs = collate(store_batch(store, 4), model_cfg.appearance.image_size, model_cfg.keyframes)
    assert bool(inputs.visual_mask.all()), "the synthetic clips all have faces"
    kwargs = inputs.model_kwargs(torch.device("cpu"),
                                 racnn_input_config(model_cfg, cfg.segment_overlap))
    with torch.no_grad():
        expected = network(**kwargs)[0].numpy()

    registered = registry.load_registered("avser", "candidate")
    logits = registered.predict({name: tensor.numpy() for name, tensor in kwargs.items()})
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
    loaded = avser.load_model("models:/avser@candidate")  # plain data: bundle and KLDA head
    with torch.no_grad():
        np.testing.assert_allclose(loaded.bundle.network()(**kwargs)[0].numpy(), expected,
                                   rtol=1e-5, atol=1e-5)
    assert loaded.klda_head is not None  # the training's KLDA head, as arrays
    card = client.get_model_version("avser", version.version).description
    assert "training run" in card and "test_ua" in card and "`random`" in card


def test_pretrain_registers_racnn_and_fusion_starts_from_it(ray_local, store, workdir, monkeypatch):
    speech_store = speech_only_copy(store, workdir / "store-speech")
    rows = feature_store.read_store(speech_store, ["clip_id", "face_jpegs", "landmarks"])
    assert rows["face_jpegs"].isna().all() and rows["landmarks"].isna().all()

    # With a speaker adversary: its head trains inside Ray Train and stays out of the transfer.
    cfg = train_config(workdir / "ray", "pretrain", "stage=pretrain", "num_workers=1",
                       "optim.max_epochs=1", "optim.speaker_adversary=0.5")
    (fold,) = run_training(cfg, speech_store).folds
    assert math.isfinite(fold.metrics["final_train_loss"])

    client = tracking.client()
    run_id = tracking.find_run(EXPERIMENT, fold.run_name)
    assert client.get_run(run_id).info.status == "FINISHED"
    version = client.get_model_version_by_alias("avser-racnn", "candidate")
    assert version.run_id == run_id
    assert [m.step for m in metric_history(run_id, "train_loss")] == [0]

    checkpoint = Path(fold.checkpoint_path)
    pretrained = torch.load(checkpoint / "model.pt", map_location="cpu")
    assert any(key.startswith("speech_head.") for key in pretrained), "a SpeechEmotionNet checkpoint"
    assert any(key.startswith("speaker_adversary.") for key in pretrained)

    # jobs/train_fusion.py --init checkpoint:<folder> must reach the training config.
    job = load_job("train_fusion")
    monkeypatch.chdir(REPO)  # jobs run from the repository root (relative config paths)
    captured = {}
    monkeypatch.setattr(job, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(job, "print_result", lambda result: None)
    monkeypatch.setattr(job, "run_training", lambda cfg, store: captured.setdefault("cfg", cfg))
    assert job.main(["--store", str(store), "--config", str(SMOKE_CONFIG),
                     "--init", f"checkpoint:{checkpoint}"]) == 0
    fusion_cfg = resolve_paths(captured["cfg"])
    assert fusion_cfg.stage == "fusion" and fusion_cfg.init == f"checkpoint:{checkpoint}"

    model_cfg = model_cfg_of(store, fusion_cfg)
    for init in (fusion_cfg.init, "registry:avser-racnn@candidate"):
        fusion = build_stage_model("fusion", model_cfg, init)
        racnn = fusion.racnn.state_dict()
        assert racnn.keys() == {k[len("racnn."):] for k in pretrained if k.startswith("racnn.")}
        for key, value in racnn.items():
            assert torch.equal(value, pretrained[f"racnn.{key}"]), f"{init}: racnn.{key}"
    scratch = build_stage_model("fusion", model_cfg).racnn.state_dict()
    assert any(not torch.equal(v, pretrained[f"racnn.{k}"]) for k, v in scratch.items()), \
        "a scratch RACNN should differ from the pretrained one"


def test_pretrain_with_every_recipe_element_and_predict_from_the_registry(
        ray_local, store, workdir):
    """Augmentation, mixup, EMA, AdamW + warm-up/cosine, label smoothing,
    early stopping on val UA, the Bi-GRU head, the overlapping Conv1 and the
    speaker-adaptive readout, all at once inside Ray Train; the registered
    version predicts a file, one clip at a time and as one speaker's clips."""
    speech_store = speech_only_copy(store, workdir / "store-speech-recipe")
    cfg = train_config(workdir / "ray", "recipe", "stage=pretrain", "optim.max_epochs=2",
                       "augment.enabled=true", "optim.mixup_alpha=0.4", "optim.ema_decay=0.9",
                       "optim.optimizer=adamw", "optim.weight_decay=0.01",
                       "optim.schedule=cosine", "optim.warmup_epochs=1",
                       "optim.label_smoothing=0.1", "optim.early_stop_metric=val_ua",
                       "model_overrides=[racnn.head=bigru,racnn.conv1=overlap5]",
                       # 24 clips of 4 speakers: 2 clips are enough to standardise by here.
                       "speaker_readout.enabled=true", "speaker_readout.min_clips=2",
                       "register_as=avser-racnn-recipe")
    (fold,) = run_training(cfg, speech_store).folds
    run_id = tracking.find_run(EXPERIMENT, fold.run_name)
    rates = [m.value for m in metric_history(run_id, "lr")]
    assert len(rates) == 2 and rates[0] < rates[1]  # warm-up
    pretrained = torch.load(Path(fold.checkpoint_path) / "model.pt", map_location="cpu")
    assert any(key.startswith("speech_head.gru.") for key in pretrained)

    clip = feature_store.read_store(speech_store, ["clip_id"])["clip_id"].iloc[0]
    row = read_manifest(workdir / "synthetic.parquet").set_index("clip_id").loc[clip]
    audio = row["audio_path"] or row["video_path"]
    # Ray's log forwarding shares this process's stdout: call what the CLI calls.
    bundle = resolve_bundle(model="avser-racnn-recipe@candidate")
    (result,) = predict_files([audio], bundle)
    assert result.label in label_names_of(load_store_meta(store))
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert bundle.model_cfg.racnn.head == "bigru" and bundle.kind == "speech"

    # The readout: fitted on the training speakers' embeddings (the Bi-GRU's
    # 2 x hidden outputs), scored on the test speakers, shipped in the bundle.
    assert bundle.speaker_readout["weight"].shape == (len(bundle.label_names),
                                                      2 * bundle.model_cfg.racnn.head_hidden)
    assert 0.0 <= fold.metrics["adaptive_test_ua"] <= 1.0
    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics["adaptive_test_ua"] == pytest.approx(fold.metrics["adaptive_test_ua"])
    results = predict_files([audio, audio], bundle, one_speaker=True)
    assert all("speaker-adaptive" in r.note for r in results)


def test_killed_job_resumes_from_its_checkpoint_into_the_same_mlflow_run(store, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(MLFLOW_TRACKING_URI=uri, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")
    # Enough epochs that the killed job is still training when it dies.
    experiment, run_name, epochs = "avser-resume", "resume", 8
    run_key = f"{run_name}-random"  # <run name>-<split name>
    command = [PYTHON, "jobs/train_fusion.py", "--store", str(store), "--config", str(SMOKE_CONFIG),
               "--run-name", run_name, "--set", f"optim.max_epochs={epochs}",
               "--set", "optim.patience=20", "--set", f"storage_path={tmp_path / 'ray'}",
               "--set", f"experiment={experiment}", "--set", f"model_config={TINY_MODEL}"]
    run_dir = tmp_path / "ray" / run_key

    def start(log_name: str) -> subprocess.Popen:
        # A session of its own: the job and the local Ray it starts die together.
        return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                                stdout=(tmp_path / log_name).open("w"), stderr=subprocess.STDOUT)

    first = start("first.log")
    try:
        deadline = time.time() + 900
        while not snapshot_checkpoints(run_dir):  # Ray has registered a checkpoint
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 15 minutes"
            time.sleep(0.1)
    finally:
        kill_session(first)
    killed_at = time.time()
    (checkpoint,) = snapshot_checkpoints(run_dir)
    assert checkpoint["metrics"]["epoch"] == 0

    with tracking_store(uri):
        run_id = tracking.find_run(experiment, run_key)
        assert tracking.client().get_run(run_id).info.status == "RUNNING"
        # Rank 0 logs an epoch before reporting it, and Ray registers a report
        # only at its next poll (every 2 s): with epochs of a second or two the
        # killed job has often logged a few epochs past its checkpoint.
        logged_before_kill = [m.step for m in metric_history(run_id, "epoch")]
        assert logged_before_kill == list(range(len(logged_before_kill)))
        assert 1 <= len(logged_before_kill) < epochs
        assert not metric_history(run_id, "test_wa"), "the killed job must not have finished"

    # The same run name under another configuration is refused, naming the key.
    changed = subprocess.run([*command, "--set", "optim.lr=0.02"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2, changed.stderr[-3000:]  # a one-line AvserError, no traceback
    assert "train.optim.lr" in changed.stderr and "new run" in changed.stderr
    assert "Traceback" not in changed.stderr

    restarted_at = time.time()
    second = start("second.log")
    try:
        assert second.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        kill_session(second)  # the job's Ray leftovers, if any

    with tracking_store(uri):
        client = tracking.client()
        found = client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id],
            filter_string=f"tags.`{tracking.RUN_KEY_TAG}` = '{run_key}'")
        assert [r.info.run_id for r in found] == [run_id], "one MLflow run for the run key"
        assert client.get_run(run_id).info.status == "FINISHED"
        # One entry per epoch: a restart from scratch would have logged epoch 0
        # again, and epochs the killed job logged past its checkpoint are kept once.
        for key in ("epoch", "train_loss", "val_loss", "val_ua"):
            assert [m.step for m in metric_history(run_id, key)] == list(range(epochs)), key
        for entry in metric_history(run_id, "train_loss"):
            if entry.step in logged_before_kill:
                assert entry.timestamp < killed_at * 1000
            else:  # trained by the restarted job
                assert entry.timestamp > restarted_at * 1000
        assert metric_history(run_id, "train_loss")[0].value == pytest.approx(
            checkpoint["metrics"]["train_loss"])
        (test_wa,) = metric_history(run_id, "test_wa")
        assert test_wa.step == epochs and test_wa.timestamp > restarted_at * 1000
        assert client.get_model_version_by_alias("avser", "candidate").run_id == run_id


class InProcessSession:
    """The loop in this process: materialized datasets, checkpoints kept in a folder."""

    rank = 0

    def __init__(self, datasets, keep: Path) -> None:
        self.datasets, self.keep, self.reports = datasets, keep, 0

    def device(self) -> torch.device:
        return torch.device("cpu")

    def dataset(self, name: str):
        dataset = self.datasets.get(name)
        return dataset.iterator() if dataset is not None else None

    def latest_checkpoint(self):
        import ray.train

        return ray.train.Checkpoint.from_directory(str(self.keep)) if self.keep.is_dir() else None

    def report(self, metrics, folder=None, checkpoint=None) -> None:
        import shutil

        self.reports += 1
        if folder:  # what Ray persists when a report carries a checkpoint
            shutil.rmtree(self.keep, ignore_errors=True)
            shutil.copytree(folder, self.keep)

    def prepare_model(self, model, find_unused_parameters: bool):
        return model


def test_a_run_killed_after_registering_registers_once_when_resumed(
        ray_local, store, workdir, monkeypatch):
    """Killed between registration and its final checkpoint, then resumed: one version."""
    from avser.data.splits import make_splits
    from avser.platform import finalize
    from avser.platform.epochs import LoopContext
    from avser.platform.experiments import (
        datasets_for, loop_config_for, model_config_for, store_setup)
    from avser.platform.train import run_loop

    cfg = train_config(workdir / "ray-killed", "killed", "optim.max_epochs=1",
                       "register_as=avser-killed")
    setup = store_setup(store, cfg.split.protocol, {"stage": cfg.stage})
    split = make_splits(setup.meta, cfg.split)[0]
    model_cfg = model_config_for(cfg, len(setup.label_names))
    info = runs.tracking_info(cfg.experiment, setup, register=True)
    ctx = LoopContext.from_loop_config(loop_config_for(cfg, model_cfg, setup.label_names,
                                                       "killed-run", info, setup.feature_cfg))
    datasets = {name: ds.materialize() for name, ds in datasets_for(store, setup.meta, split, cfg).items()}
    session = InProcessSession(datasets, workdir / "killed-checkpoint")

    real_register = finalize.registry.register_version

    def register_then_die(*args, **kwargs):  # the final checkpoint is never written
        real_register(*args, **kwargs)
        raise KeyboardInterrupt("killed after registering")

    monkeypatch.setattr(finalize.registry, "register_version", register_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_loop(ctx, session)
    client = tracking.client()
    assert len(client.search_model_versions("name='avser-killed'")) == 1

    monkeypatch.setattr(finalize.registry, "register_version", real_register)
    run_loop(ctx, session)  # resumes from the last epoch's checkpoint, finishes again
    versions = client.search_model_versions("name='avser-killed'")
    assert [int(v.version) for v in versions] == [1]
    assert str(client.get_model_version_by_alias("avser-killed", "candidate").version) == "1"


# ---------------------------------------------------------------- MLflow outages


def _outage_job(store: Path, tmp_path: Path, server_uri: str, name: str, epochs: int,
                final_wait_s: float) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=server_uri, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PYTHONUNBUFFERED="1")
    command = [PYTHON, "jobs/train_fusion.py", "--store", str(store), "--config", str(SMOKE_CONFIG),
               "--run-name", name, "--set", f"optim.max_epochs={epochs}", "--set", "optim.patience=50",
               "--set", f"storage_path={tmp_path / 'ray'}", "--set", "experiment=avser-outage",
               "--set", f"model_config={TINY_MODEL}", "--set", "mlflow_outage.http_retries=0",
               "--set", "mlflow_outage.poll_s=1", "--set", f"mlflow_outage.final_wait_s={final_wait_s}"]
    return command, env


def _wait_for(predicate, what: str, job: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert job.poll() is None, f"the job ended while waiting for {what}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.5)


def _logged_epochs(uri: str, run_key: str) -> list[int]:
    with tracking_store(uri):
        try:
            run_id = tracking.find_run("avser-outage", run_key)
            return [] if run_id is None else sorted(m.step for m in metric_history(run_id, "epoch"))
        except Exception:  # noqa: BLE001  (the server is down)
            return []


@contextmanager
def _server_down_after_first_epoch(store, tmp_path, name: str, epochs: int, final_wait_s: float):
    """A training job logging to a real MLflow server, stopped once the job's
    first epoch is in; yields (restart the server, the job, its log)."""
    from avser.platform import mlflow_server

    folder = tmp_path / "mlflow"
    folder.mkdir()
    server = mlflow_server.start_server(folder)
    command, env = _outage_job(store, tmp_path, server.uri, name, epochs, final_wait_s)
    log = tmp_path / "job.log"
    job = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                           stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_logged_epochs(server.uri, f"{name}-random")) >= 1, "first epoch", job, log)
        mlflow_server.stop_server(folder)
        yield lambda: mlflow_server.start_server(folder, port=server.port), job, log
    finally:
        kill_session(job)
        mlflow_server.stop_server(folder)


@pytest.mark.slow
def test_training_rides_out_a_short_mlflow_outage(store, tmp_path):
    epochs, run_key = 10, "outage-short-random"
    with _server_down_after_first_epoch(store, tmp_path, "outage-short", epochs, 120) as (restart, job, log):
        _wait_for(lambda: log.read_text().count("MLflow unreachable") >= 2, "two epochs kept", job, log)
        server = restart()
        assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
        with tracking_store(server.uri):
            run_id = tracking.find_run("avser-outage", run_key)
            assert tracking.client().get_run(run_id).info.status == "FINISHED"
            # Every epoch reached the server, the ones trained during the outage too.
            assert sorted(set(m.step for m in metric_history(run_id, "epoch"))) == list(range(epochs))
            assert metric_history(run_id, "test_ua")


@pytest.mark.slow
def test_a_run_killed_by_an_mlflow_outage_ends_failed(store, tmp_path):
    run_key = "outage-long-random"
    with _server_down_after_first_epoch(store, tmp_path, "outage-long", 3, 45) as (restart, job, log):
        # The end of the run waits final_wait_s for the server, then the worker
        # gives up, and the driver waits as long to mark the run. (The worker's
        # own lines reach the job's log late, with its error: watch the driver's.)
        _wait_for(lambda: "marking run outage-long-random FAILED" in log.read_text(),
                  "the driver marking the run", job, log)
        server = restart()
        assert job.wait(timeout=300) != 0
        assert "marked FAILED" in log.read_text(), log.read_text()[-3000:]
        with tracking_store(server.uri):
            run_id = tracking.find_run("avser-outage", run_key)
            assert tracking.client().get_run(run_id).info.status == "FAILED"
