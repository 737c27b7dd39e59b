"""The per-worker training loop.

``run_loop`` talks only to its session (:mod:`avser.platform.session`):
dataset shards, report, checkpoints. ``train_loop_per_worker`` runs it in a
Ray Train worker (:mod:`avser.platform.trainer` builds the ``TorchTrainer``);
a single-worker Tune trial runs it in the trial itself. The epoch is in
:mod:`avser.platform.epochs`. One loop serves every stage
(:mod:`avser.platform.stages`).

Fault tolerance: a checkpoint every epoch; Ray Train restores the latest
one when a worker fails (``FailureConfig``) or when the same run (same
storage path and name) is started again, and the MLflow run id travels in
the checkpoint so the resumed run keeps logging into the same MLflow run.
A run restarted under another configuration is refused
(:func:`avser.platform.checkpoint.check_resume`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


from avser import recipe
from avser.platform import checkpoint, finalize, tracking
from avser.platform.epoch_log import EpochLog
from avser.platform.checkpoint import LoopState
from avser.platform.epochs import LoopContext, effective_config, predict, run_epoch, unwrap
from avser.platform.session import LoopSession, TrainWorkerSession
from avser.platform.stages import build_stage_model

# Marks the final report of a run that trained to its end. Not "done": Tune
# sets that on the last result of every trial, early-stopped ones included.
FINISHED_KEY = "training_finished"
# Logged each time a run resumes from a checkpoint: the epoch it resumed at.
RESTORED_KEY = "restored_at_epoch"


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(ctx, model, optimizer, state: LoopState, best_state, folder: str,
                     ema: recipe.WeightEMA | None) -> str:
    checkpoint.save(folder, unwrap(model).state_dict(), state,
                    effective_config(ctx.cfg, ctx.model_cfg), optimizer, best_state,
                    ema.state if ema is not None else None)
    return folder


def _restore(ctx: LoopContext, session: LoopSession, model, optimizer,
             ema: recipe.WeightEMA | None) -> tuple[LoopState, dict | None]:
    """The latest checkpoint Ray hands back (none: a fresh start)."""
    latest = session.latest_checkpoint()
    if latest is None:
        return LoopState(), None
    with latest.as_directory() as folder:
        restored = checkpoint.restore(folder)
    checkpoint.check_resume(restored.config, effective_config(ctx.cfg, ctx.model_cfg), ctx.run_name)
    unwrap(model).load_state_dict(restored.model_state)
    if restored.optimizer_state is not None:  # the final checkpoint holds no optimizer
        optimizer.load_state_dict(restored.optimizer_state)
    if ema is not None and restored.ema_state is not None:
        ema.load_state(restored.ema_state)
    return restored.state, restored.best_state


# ---------------------------------------------------------------- tracking


def _start_tracking(ctx: LoopContext, state: LoopState) -> EpochLog:
    """Rank 0 opens (or, after a restart, re-opens) the run's MLflow run;
    its epoch log knows the epochs that run already holds."""
    # The driver resolved the store (a relative default would land in this
    # worker's own working directory); this process logs only there.
    os.environ[tracking.TRACKING_URI_ENV] = ctx.tracking.uri
    ctx.cfg.mlflow_outage.apply_to_client()
    if state.mlflow_run_id is None:
        state.mlflow_run_id = tracking.start_run(
            ctx.tracking.experiment, run_key=ctx.run_name, run_name=ctx.run_name,
            tags=ctx.tracking.tags, parent_run_id=ctx.tracking.parent_run_id,
        )
        tracking.log_params(state.mlflow_run_id, {"train": ctx.cfg, "model": ctx.model_cfg})
        return EpochLog(state.mlflow_run_id, ctx.cfg.mlflow_outage)
    # Restored from a checkpoint: the attempt that died may have logged epochs
    # past it (rank 0 logs an epoch before reporting its checkpoint, and Ray
    # registers a reported checkpoint only at its next poll). MLflow cannot
    # delete metric points, so those epochs keep their first entry.
    history = tracking.client().get_metric_history(state.mlflow_run_id, "epoch")
    # A job that gave up marked it FAILED; it is running again.
    tracking.client().update_run(state.mlflow_run_id, status="RUNNING")
    # When and where it resumed: what a failure cost is read off this curve.
    tracking.log_metrics(state.mlflow_run_id, {RESTORED_KEY: state.epoch}, step=state.epoch)
    print(f"[{ctx.run_name}] resumed at epoch {state.epoch} from its last checkpoint", flush=True)
    return EpochLog(state.mlflow_run_id, ctx.cfg.mlflow_outage,
                    logged={int(m.step) for m in history if m.step >= state.epoch})


def _record_shard(ctx: LoopContext, rank: int, seen_ids: list[str]) -> None:
    folder = ctx.tracking.shard_log_dir
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"rank{rank}.json").write_text(json.dumps(sorted(seen_ids)))


# ---------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train entry point: the loop in a Train worker."""
    run_loop(LoopContext.from_loop_config(loop_config), TrainWorkerSession())


def run_loop(ctx: LoopContext, session: LoopSession) -> None:
    """Train ``ctx``'s run to its end (or its early stop) in ``session``,
    resuming from the session's latest checkpoint."""
    torch.manual_seed(ctx.cfg.seed)
    if ctx.cfg.torch_threads:
        torch.set_num_threads(ctx.cfg.torch_threads)
    device = session.device()
    model = build_stage_model(ctx.stage, ctx.model_cfg, ctx.cfg.init)
    optimizer = recipe.make_optimizer(model, ctx.cfg.optim)
    ema = recipe.WeightEMA(model, ctx.cfg.optim.ema_decay) if ctx.cfg.optim.ema_decay > 0 else None
    state, best_state = _restore(ctx, session, model, optimizer, ema)
    if state.final_metrics is not None:
        _report_finished(session, state)
        return
    # The fusion model leaves branches unused on batches without faces.
    model = session.prepare_model(model, find_unused_parameters=ctx.stage.with_visual)
    epoch_log = _start_tracking(ctx, state) if session.rank == 0 else None
    train_shard, val_data = session.dataset("train"), session.dataset("val")

    while state.epoch < ctx.cfg.optim.max_epochs and state.stale_epochs < ctx.cfg.optim.patience:
        epoch = state.epoch
        seen = [] if epoch == 0 else None
        metrics, best_state = run_epoch(model, optimizer, train_shard, val_data, ctx, device, state,
                                        best_state, ema, session.rank, seen)
        if seen is not None:
            _record_shard(ctx, session.rank, seen)
        metrics["epoch"] = epoch
        _report_epoch(ctx, session, model, optimizer, state, best_state, metrics, epoch_log, ema)

    if session.rank != 0:
        session.report({"epoch": state.epoch - 1, FINISHED_KEY: 1})
        return
    epoch_log.flush()  # the end of the run needs the server
    with tempfile.TemporaryDirectory() as folder:
        final = _finish(ctx, session, model, best_state, state, device, folder)
        session.report({**final, "epoch": state.epoch - 1, FINISHED_KEY: 1}, folder=folder)


def _report_finished(session: LoopSession, state: LoopState) -> None:
    """The run had already finished: report its result again, redo nothing."""
    if session.rank != 0:
        session.report({"epoch": state.epoch - 1, FINISHED_KEY: 1})
        return
    session.report({**state.final_metrics, "epoch": state.epoch - 1, FINISHED_KEY: 1},
                   checkpoint=session.latest_checkpoint())


def _report_epoch(ctx, session: LoopSession, model, optimizer, state, best_state, metrics,
                  epoch_log: EpochLog | None, ema: recipe.WeightEMA | None = None) -> None:
    if epoch_log is None:  # not rank 0
        session.report(metrics)
        return
    epoch_log.log(metrics, step=metrics["epoch"])
    print(f"[{ctx.run_name}] epoch {metrics['epoch']}: train loss {metrics['train_loss']:.3f}, "
          f"val loss {metrics['val_loss']:.3f}, val UA {metrics['val_ua']:.3f} "
          f"({metrics['epoch_seconds']:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        session.report(metrics, folder=_save_checkpoint(ctx, model, optimizer, state, best_state,
                                                        folder, ema))


def _finish(ctx: LoopContext, session: LoopSession, model, best_state, state: LoopState, device,
            folder: str) -> dict[str, float]:
    """Rank 0, after the last epoch: best weights -> test metrics, KLDA head,
    artifacts, model logging and registration; the final checkpoint (best
    weights, cached hybrid features) is written to ``folder``."""
    model = unwrap(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    # "train_eval" is the whole (unsplit) training set: the KLDA head is fitted
    # on every training clip, not on rank 0's shard.
    sources = {name: session.dataset(source)
               for name, source in (("train", "train_eval"), ("val", "val"), ("test", "test"))}
    splits = {name: predict(model, data, ctx, device) for name, data in sources.items()
              if data is not None}
    return finalize.finish_run(ctx, model, splits, state, folder)
