"""Ray Train: the per-worker training loop and the driver that launches it.

``train_loop_per_worker`` only talks to ``ray.train`` (dataset shards,
report, checkpoints); ``fit`` builds the ``TorchTrainer``. One loop serves
both stages: ``pretrain`` (RACNN + speech head on speech alone) and
``fusion`` (the full audio-visual model, then the kernel-LDA head).

Fault tolerance: a checkpoint every epoch; Ray Train restores the latest
one when a worker fails (``FailureConfig``) or when the same run (same
storage path and name) is started again, and the MLflow run id travels in
the checkpoint so the resumed run keeps logging into the same MLflow run.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import ray.data
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from avser import config as configlib
from avser.batches import collate
from avser.metrics import classification_report
from avser.models.config import ModelConfig
from avser import recipe
from avser.features.augment import mixup
from avser.features.config import AudioConfig
from avser.models.factory import build_model, forward_logits, pretrain_logits, racnn_input_config
from avser.platform.config import TrainConfig

MODEL_FILE = "model.pt"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
BEST_FILE = "best_model.pt"
EMA_FILE = "ema_model.pt"
HYBRID_FILE = "hybrid_features.npz"
# Marks the final report of a run that trained to its end. Not "done": Tune
# sets that on the last result of every trial, early-stopped ones included.
FINISHED_KEY = "training_finished"


@dataclass
class LoopState:
    """What a checkpoint carries besides weights."""

    epoch: int = 0  # next epoch to run
    best_score: float | None = None  # best value of optim.early_stop_metric so far
    best_epoch: int = -1
    stale_epochs: int = 0
    mlflow_run_id: str | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    # Set by the final checkpoint: a finished run restarted reports these again.
    final_metrics: dict[str, float] | None = None

    def record(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(float(value))


@dataclass
class LoopContext:
    """Everything the per-worker loop needs, rebuilt from the loop config dict."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    label_names: list[str]
    run_name: str
    tracking: dict[str, Any]  # experiment, parent_run_id, tags, register, uri
    audio_cfg: AudioConfig = field(default_factory=AudioConfig)  # the store's

    @classmethod
    def from_loop_config(cls, loop_config: dict[str, Any]) -> "LoopContext":
        return cls(
            cfg=configlib.from_dict(TrainConfig, loop_config["train"]),
            model_cfg=configlib.from_dict(ModelConfig, loop_config["model"]),
            label_names=list(loop_config["label_names"]),
            run_name=loop_config["run_name"],
            tracking=dict(loop_config["tracking"]),
            audio_cfg=configlib.from_dict(AudioConfig, loop_config.get("audio")),
        )

    @property
    def with_visual(self) -> bool:
        return self.cfg.stage == "fusion"

    @property
    def n_classes(self) -> int:
        racnn = self.model_cfg.racnn
        return racnn.n_classes if self.cfg.stage == "pretrain" else self.model_cfg.n_classes

    @property
    def input_cfg(self):
        return racnn_input_config(self.model_cfg, self.cfg.segment_overlap)


# ---------------------------------------------------------------- batches


def _batches(iterator, ctx: LoopContext, shuffle_seed: int | None = None):
    kwargs: dict[str, Any] = {"batch_size": ctx.cfg.optim.batch_size, "batch_format": "numpy"}
    if shuffle_seed is not None:
        kwargs.update(local_shuffle_buffer_size=ctx.cfg.optim.shuffle_buffer,
                      local_shuffle_seed=shuffle_seed)
    for batch in iterator.iter_batches(**kwargs):
        yield batch, collate(batch, ctx.model_cfg.appearance.image_size,
                             ctx.model_cfg.keyframes, with_visual=ctx.with_visual)


def _precision(ctx: LoopContext, device: torch.device) -> str:
    return recipe.resolve_precision(ctx.cfg.mixed_precision, device, ctx.model_cfg.racnn.input_size)


# ---------------------------------------------------------------- epochs


def _augment_generator(ctx: LoopContext, epoch: int, rank: int) -> torch.Generator:
    """Augmentation draws: a fixed function of (seed, epoch, rank)."""
    return torch.Generator().manual_seed((ctx.cfg.seed * 1_000_003 + epoch) * 1009 + rank)


def _training_logits(model, inputs, ctx: LoopContext, device, generator):
    """Logits and soft targets of one training batch: augmented speech, and
    mixup of the speech input for the pretraining stage."""
    labels = inputs.labels.to(device)
    augment = ctx.cfg.augment
    alpha = ctx.cfg.optim.mixup_alpha
    if ctx.cfg.stage == "pretrain" and alpha > 0:
        speech = inputs.speech(device, ctx.input_cfg, augment, generator)
        speech, targets = mixup(speech, labels, ctx.n_classes, alpha, generator)
        logits, _ = pretrain_logits(model, speech)
        return logits, targets
    logits, _ = forward_logits(model, ctx.cfg.stage, inputs, device, ctx.input_cfg, augment, generator)
    return logits, F.one_hot(labels, logits.shape[-1]).float()


def train_one_epoch(model, optimizer, shard, ctx: LoopContext, device, epoch: int,
                    seen_ids: list[str] | None = None,
                    ema: recipe.WeightEMA | None = None, rank: int = 0) -> dict[str, float]:
    """One pass over ``shard`` (anything with Ray's ``iter_batches``)."""
    model.train()
    optim = ctx.cfg.optim
    recipe.set_learning_rate(optimizer, recipe.learning_rate(optim, epoch))
    generator = _augment_generator(ctx, epoch, rank)
    precision = _precision(ctx, device)
    total_loss, correct, count = 0.0, 0, 0
    for raw, inputs in _batches(shard, ctx, shuffle_seed=ctx.cfg.seed + epoch):
        if seen_ids is not None:
            seen_ids.extend(str(c) for c in raw["clip_id"])
        with recipe.autocast(precision, device):
            logits, targets = _training_logits(model, inputs, ctx, device, generator)
        loss = recipe.soft_cross_entropy(logits, targets, optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(_unwrap(model))
        total_loss += loss.detach().item() * len(inputs)
        correct += int((logits.argmax(1).cpu() == inputs.labels).sum())
        count += len(inputs)
    return {"train_loss": total_loss / max(count, 1), "train_wa": correct / max(count, 1),
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def predict(model, iterator, ctx: LoopContext, device) -> dict[str, np.ndarray]:
    """Logits, labels and hybrid features over a whole dataset (no shuffling)."""
    model.eval()
    logits, labels, hybrids, ids = [], [], [], []
    for raw, inputs in _batches(iterator, ctx):
        with recipe.autocast(_precision(ctx, device), device):
            out, hybrid = forward_logits(model, ctx.cfg.stage, inputs, device, ctx.input_cfg)
        logits.append(out.float().cpu())
        hybrids.append(hybrid.float().cpu())
        labels.append(inputs.labels)
        ids.extend(str(c) for c in raw["clip_id"])
    return {
        "logits": torch.cat(logits).numpy(),
        "labels": torch.cat(labels).numpy(),
        "hybrid": torch.cat(hybrids).numpy(),
        "clip_id": np.asarray(ids),
    }


def evaluate(predictions: dict[str, np.ndarray], label_names: list[str], prefix: str) -> dict[str, float]:
    logits = torch.from_numpy(predictions["logits"])
    labels = torch.from_numpy(predictions["labels"])
    report = classification_report(labels.numpy(), logits.argmax(1).numpy(), label_names)
    return {
        f"{prefix}_loss": float(F.cross_entropy(logits, labels)),
        f"{prefix}_wa": report["wa"],
        f"{prefix}_ua": report["ua"],
        f"{prefix}_f1": report["macro_f1"],
    }


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, optimizer, state: LoopState, best_state: dict | None, folder: str,
                    ema: recipe.WeightEMA | None = None) -> Checkpoint:
    torch.save(_unwrap(model).state_dict(), os.path.join(folder, MODEL_FILE))
    torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
    if best_state is not None:
        torch.save(best_state, os.path.join(folder, BEST_FILE))
    if ema is not None:
        torch.save(ema.state, os.path.join(folder, EMA_FILE))
    Path(folder, STATE_FILE).write_text(json.dumps(asdict(state)))
    return Checkpoint.from_directory(folder)


def restore_checkpoint(model, optimizer, ema: recipe.WeightEMA | None = None
                       ) -> tuple[LoopState, dict | None]:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return LoopState(), None
    with checkpoint.as_directory() as folder:
        _unwrap(model).load_state_dict(torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu"))
        optimizer_path = os.path.join(folder, OPTIMIZER_FILE)
        if os.path.exists(optimizer_path):  # the final checkpoint holds no optimizer
            optimizer.load_state_dict(torch.load(optimizer_path, map_location="cpu"))
        best_path = os.path.join(folder, BEST_FILE)
        best = torch.load(best_path, map_location="cpu") if os.path.exists(best_path) else None
        ema_path = os.path.join(folder, EMA_FILE)
        if ema is not None and os.path.exists(ema_path):
            ema.load_state(torch.load(ema_path, map_location="cpu"))
        state = LoopState(**json.loads(Path(folder, STATE_FILE).read_text()))
    return state, best


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


# ---------------------------------------------------------------- the loop


def _world_rank() -> int:
    return ray.train.get_context().get_world_rank()


def _is_rank_zero() -> bool:
    return _world_rank() == 0


def _start_tracking(ctx: LoopContext, state: LoopState) -> set[int]:
    """Rank 0 opens (or, after a restart, re-opens) the run's MLflow run;
    returns the epochs that run already holds and must not be logged again."""
    from avser.platform import tracking

    # The driver resolved the store (a relative default would land in this
    # worker's own working directory); this process logs only there.
    os.environ[tracking.TRACKING_URI_ENV] = ctx.tracking["uri"]
    if state.mlflow_run_id is None:
        state.mlflow_run_id = tracking.start_run(
            ctx.tracking["experiment"], run_key=ctx.run_name, run_name=ctx.run_name,
            tags=ctx.tracking.get("tags", {}), parent_run_id=ctx.tracking.get("parent_run_id"),
        )
        tracking.log_params(state.mlflow_run_id, {"train": ctx.cfg, "model": ctx.model_cfg})
        return set()
    # Restored from a checkpoint: the attempt that died may have logged epochs
    # past it (rank 0 logs an epoch before reporting its checkpoint, and Ray
    # registers a reported checkpoint only at its next poll). MLflow cannot
    # delete metric points, so those epochs keep their first entry.
    history = tracking.client().get_metric_history(state.mlflow_run_id, "epoch")
    return {int(m.step) for m in history if m.step >= state.epoch}


def _log_epoch(state: LoopState, metrics: dict[str, float], epoch: int) -> None:
    from avser.platform import tracking

    tracking.log_metrics(state.mlflow_run_id, metrics, step=epoch)


def _record_shard(ctx: LoopContext, seen_ids: list[str]) -> None:
    folder = ctx.tracking.get("shard_log_dir")
    if folder:
        rank = ray.train.get_context().get_world_rank()
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(sorted(seen_ids)))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    ctx = LoopContext.from_loop_config(loop_config)
    # The loop prints one line per epoch; Ray Data's bars for every pass over
    # the validation and test sets would bury it in the job log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    torch.manual_seed(ctx.cfg.seed)
    if ctx.cfg.torch_threads:
        torch.set_num_threads(ctx.cfg.torch_threads)
    device = ray.train.torch.get_device()
    model = build_model(ctx.cfg.stage, ctx.model_cfg, ctx.cfg.init)
    optimizer = recipe.make_optimizer(model, ctx.cfg.optim)
    ema = recipe.WeightEMA(model, ctx.cfg.optim.ema_decay) if ctx.cfg.optim.ema_decay > 0 else None
    state, best_state = restore_checkpoint(model, optimizer, ema)
    if state.final_metrics is not None:
        _report_finished(state)
        return
    # The fusion model leaves branches unused on batches without faces.
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": ctx.with_visual})
    logged_epochs = _start_tracking(ctx, state) if _is_rank_zero() else set()
    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")

    while state.epoch < ctx.cfg.optim.max_epochs and state.stale_epochs < ctx.cfg.optim.patience:
        epoch = state.epoch
        seen = [] if epoch == 0 else None
        started = time.perf_counter()
        metrics = train_one_epoch(model, optimizer, train_shard, ctx, device, epoch, seen, ema,
                                  _world_rank())
        if seen is not None:
            _record_shard(ctx, seen)
        # Every rank scores the whole (unsplit) validation set, so every rank
        # takes the same early-stopping decision without a collective.
        scored = evaluation_model(model, ema)
        metrics.update(evaluate(predict(scored, val_data, ctx, device), ctx.label_names, "val"))
        # The loop's own time (train + validation), to tell the platform's
        # overhead apart from the work (bench/tune.py).
        metrics["epoch_seconds"] = time.perf_counter() - started
        best_state = track_best(state, ctx.cfg.optim, metrics, scored, best_state, epoch)
        state.record(metrics)
        metrics["epoch"] = epoch
        _report_epoch(ctx, model, optimizer, state, best_state, metrics, logged_epochs, ema)

    if not _is_rank_zero():
        ray.train.report({"epoch": state.epoch - 1, FINISHED_KEY: 1})
        return
    with tempfile.TemporaryDirectory() as folder:
        final = _finish(ctx, model, best_state, state, device, folder)
        ray.train.report({**final, "epoch": state.epoch - 1, FINISHED_KEY: 1},
                         checkpoint=Checkpoint.from_directory(folder))


def _report_finished(state: LoopState) -> None:
    """The run had already finished: report its result again, redo nothing."""
    if not _is_rank_zero():
        ray.train.report({"epoch": state.epoch - 1, FINISHED_KEY: 1})
        return
    ray.train.report({**state.final_metrics, "epoch": state.epoch - 1, FINISHED_KEY: 1},
                     checkpoint=ray.train.get_checkpoint())


def evaluation_model(model, ema: recipe.WeightEMA | None) -> torch.nn.Module:
    """The weights that are scored and kept: the EMA's when there is one."""
    model = _unwrap(model)
    if ema is None:
        return model
    scored = copy.deepcopy(model)
    scored.load_state_dict(ema.state)
    return scored


def track_best(state: LoopState, optim: recipe.OptimConfig, metrics: dict[str, float],
               scored: torch.nn.Module, best_state: dict | None, epoch: int) -> dict | None:
    """Advance ``state`` past ``epoch``; a better early-stopping metric keeps
    ``scored``'s weights as the best ones (returned)."""
    state.epoch = epoch + 1
    value = metrics[optim.early_stop_metric]
    if not recipe.is_better(optim.early_stop_metric, value, state.best_score):
        state.stale_epochs += 1
        return best_state
    state.best_score, state.best_epoch, state.stale_epochs = value, epoch, 0
    return {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}


def _report_epoch(ctx, model, optimizer, state, best_state, metrics, logged_epochs: set[int],
                  ema: recipe.WeightEMA | None = None) -> None:
    if not _is_rank_zero():
        ray.train.report(metrics)
        return
    if metrics["epoch"] not in logged_epochs:
        _log_epoch(state, metrics, metrics["epoch"])
    print(f"[{ctx.run_name}] epoch {metrics['epoch']}: train loss {metrics['train_loss']:.3f}, "
          f"val loss {metrics['val_loss']:.3f}, val UA {metrics['val_ua']:.3f} "
          f"({metrics['epoch_seconds']:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        ray.train.report(metrics, checkpoint=save_checkpoint(model, optimizer, state, best_state,
                                                             folder, ema))


def _finish(ctx: LoopContext, model, best_state, state: LoopState, device, folder: str) -> dict[str, float]:
    """Rank 0, after the last epoch: best weights -> test metrics, KLDA head,
    artifacts, model logging and registration; the final checkpoint (best
    weights, cached hybrid features) is written to ``folder``."""
    from avser.platform import finalize

    model = _unwrap(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    # "train_eval" is the whole (unsplit) training set: the KLDA head is fitted
    # on every training clip, not on rank 0's shard.
    splits = {name: predict(model, ray.train.get_dataset_shard(source), ctx, device)
              for name, source in (("train", "train_eval"), ("val", "val"), ("test", "test"))
              if _has_dataset(source)}
    return finalize.finish_run(ctx, model, splits, state, folder)


def _has_dataset(name: str) -> bool:
    try:
        return ray.train.get_dataset_shard(name) is not None
    except (KeyError, ValueError, RuntimeError):
        return False


# ---------------------------------------------------------------- the driver


def _check_data_cpus(cfg: TrainConfig) -> None:
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    wanted = cfg.num_workers * cfg.cpus_per_worker
    if total - wanted < cfg.data_cpus:
        print(f"warning: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPUs take all {total:g} "
              "CPUs of the cluster; Ray Data cannot read the feature store and training will "
              "hang unless the cluster scales up. Lower cpus_per_worker (use torch_threads for "
              "more intra-op threads).")


def trainer_for(loop_config: dict[str, Any], datasets: dict[str, Any], cfg: TrainConfig,
                run_name: str, callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer whose name (no timestamps) makes re-runs resume it."""
    from ray.train import DataConfig

    _check_data_cpus(cfg)

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(Path(cfg.storage_path).resolve()) if "://" not in cfg.storage_path
            else cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=datasets,
        # Only the training set is sharded; validation/test are scored whole.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
