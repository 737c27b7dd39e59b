"""The driver side of a training run: the ``TorchTrainer`` that runs the
per-worker loop (:mod:`avser.platform.train`), named without timestamps so
that starting the same run again resumes it."""

from __future__ import annotations

from typing import Any

from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from avser.platform import storage
from avser.platform.config import TrainConfig
from avser.platform.rendezvous import NodeBoundTorchConfig
from avser.platform.train import train_loop_per_worker

CHECKPOINTS_KEPT = 2


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
    _check_data_cpus(cfg)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=NodeBoundTorchConfig(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.resolve(cfg.storage_path),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
            callbacks=callbacks,
        ),
        datasets=datasets,
        # Only the training set is sharded; validation/test are scored whole.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
