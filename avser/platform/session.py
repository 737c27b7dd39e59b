"""Where the per-worker loop runs: a Ray Train worker, or a Tune trial itself.

The loop (:mod:`avser.platform.train`) asks its session for its rank, its
device, the datasets, the checkpoint to resume from, and where to report;
it never calls ``ray.train`` or ``ray.tune`` itself. A Tune trial with one
worker runs the loop in the trial (:class:`TuneTrialSession`): no Train
controller or worker group is started, which is most of a small trial's
cost. Several workers keep Ray's Train-inside-Tune pattern
(:class:`TrainWorkerSession`). One loop serves both.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class LoopSession(Protocol):
    rank: int

    def device(self) -> torch.device: ...

    def dataset(self, name: str) -> Any | None:
        """The named dataset's iterator (the training set: this worker's shard), or None."""

    def latest_checkpoint(self): ...

    def report(self, metrics: dict[str, float], folder: str | None = None,
               checkpoint=None) -> None:
        """Report metrics; with a folder, that folder as the checkpoint (or an
        existing ``checkpoint`` again)."""

    def prepare_model(self, model: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module: ...


class TrainWorkerSession:
    """A Ray Train worker: DDP, dataset shards, the Train controller's checkpoints."""

    def __init__(self) -> None:
        import ray.train

        self.rank = ray.train.get_context().get_world_rank()

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def dataset(self, name: str):
        import ray.train

        try:
            return ray.train.get_dataset_shard(name)
        except (KeyError, ValueError, RuntimeError):
            return None

    def latest_checkpoint(self):
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], folder: str | None = None,
               checkpoint=None) -> None:
        import ray.train

        if folder:
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)

    def prepare_model(self, model, find_unused_parameters: bool):
        import ray.train.torch

        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters})


class TuneTrialSession:
    """The loop inside a Tune trial: one worker, the search's materialized
    datasets, Tune's own checkpoints."""

    rank = 0

    def __init__(self, datasets: dict[str, Any], use_gpu: bool = False) -> None:
        self.datasets = datasets
        self.use_gpu = use_gpu

    def device(self) -> torch.device:
        return torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")

    def dataset(self, name: str):
        dataset = self.datasets.get(name)
        return dataset.iterator() if dataset is not None else None

    def latest_checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()

    def report(self, metrics: dict[str, float], folder: str | None = None,
               checkpoint=None) -> None:
        import ray.tune

        if folder:
            checkpoint = ray.tune.Checkpoint.from_directory(folder)
        ray.tune.report(metrics, checkpoint=checkpoint)

    def prepare_model(self, model, find_unused_parameters: bool):
        return model.to(self.device())
