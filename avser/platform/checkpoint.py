"""The checkpoint folder of a training run: its files, saving and restoring
them, the best epoch's weights, the cached hybrid features, and the check
that a resumed run trains with the configuration it started with.

Layout of one checkpoint folder:

- ``model.pt``: the model's state dict (the final checkpoint: the best weights);
- ``optimizer.pt``: the optimizer's state (absent from the final checkpoint);
- ``best_model.pt``: the best epoch's weights so far (the EMA's when there is one);
- ``ema_model.pt``: the weight EMA, when the recipe keeps one;
- ``state.json``: the :class:`LoopState` (epoch, early stopping, MLflow run id, history);
- ``config.json``: the effective configuration, flattened, for the resume check;
- ``hybrid_features.npz``, ``labels.json``, ``model.avser.pt``: the final
  checkpoint's hybrid features, label names and model bundle.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from avser.errors import AvserError, ConfigError
from avser.platform import storage

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
BEST_FILE = "best_model.pt"
EMA_FILE = "ema_model.pt"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
HYBRID_FILE = "hybrid_features.npz"
LABELS_FILE = "labels.json"
BUNDLE_FILE = "model.avser.pt"
KLDA_HEAD_FILE = "klda_head.npz"  # the fitted KLDA head as arrays (avser.heads.save_head)
# How Ray Train names the checkpoint folders of a run (storage_path/name/...).
RAY_CHECKPOINT_GLOB = "checkpoint_*"
# Keys that may change between a run and its resumption: where and how it
# runs, not what it trains.
OPERATIONAL_KEYS = ("storage_path", "max_failures", "mlflow_outage", "torch_threads", "data_cpus", "materialize",
                    "cpus_per_worker", "num_workers", "use_gpu", "experiment", "run_name")


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


def save(folder: str | Path, model_state: Mapping[str, torch.Tensor], state: LoopState,
         config: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None,
         best_state: Mapping[str, torch.Tensor] | None = None,
         ema_state: Mapping[str, torch.Tensor] | None = None) -> Path:
    folder = Path(folder)
    torch.save(dict(model_state), folder / MODEL_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    if best_state is not None:
        torch.save(dict(best_state), folder / BEST_FILE)
    if ema_state is not None:
        torch.save(dict(ema_state), folder / EMA_FILE)
    write_state(folder, state)
    (folder / CONFIG_FILE).write_text(json.dumps(dict(config), sort_keys=True, default=str))
    return folder


def write_state(folder: str | Path, state: LoopState) -> None:
    Path(folder, STATE_FILE).write_text(json.dumps(asdict(state)))


@dataclass
class Restored:
    state: LoopState
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None
    best_state: dict[str, torch.Tensor] | None
    ema_state: dict[str, torch.Tensor] | None
    config: dict[str, Any] | None


def restore(folder: str | Path) -> Restored:
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    return Restored(
        state=LoopState(**json.loads((folder / STATE_FILE).read_text())),
        model_state=_load(folder / MODEL_FILE),
        optimizer_state=_load(folder / OPTIMIZER_FILE, required=False),
        best_state=_load(folder / BEST_FILE, required=False),
        ema_state=_load(folder / EMA_FILE, required=False),
        config=json.loads(config_path.read_text()) if config_path.is_file() else None,
    )


def _load(path: Path, required: bool = True):
    if not path.is_file():
        if required:
            raise AvserError(f"checkpoint file {path} is missing; the checkpoint folder is "
                             "incomplete (start the run under a new --run-name)")
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model_state(where: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint folder (or of a ``model.pt`` given
    directly), on this machine or on the run's storage (a URI)."""
    from pyarrow.fs import FileType

    path = str(where)
    kind = storage.file_type(path)
    if kind == FileType.Directory:
        path = storage.join(path, MODEL_FILE)
        kind = storage.file_type(path)
    if kind != FileType.File:
        raise ConfigError(f"no {MODEL_FILE} at {path}; give the checkpoint folder of a "
                          "training run (printed at its end)")
    return torch.load(storage.read_bytes(path), map_location="cpu", weights_only=True)


def check_resume(saved: Mapping[str, Any] | None, current: Mapping[str, Any], run_name: str) -> None:
    """Refuse to resume ``run_name`` under a configuration other than the one
    it started with (operational keys aside); name the keys that differ."""
    if saved is None:
        return
    keys = (set(saved) | set(current)) - set(_operational(saved) | _operational(current))
    differ = sorted(k for k in keys if saved.get(k) != current.get(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ[:8])
        raise ConfigError(
            f"run {run_name!r} was started with another configuration ({shown}"
            f"{'; ...' if len(differ) > 8 else ''}); resuming it would mix two trainings. "
            "Start a new run (another --run-name, or none for a name derived from the config), "
            "or go back to the run's configuration to resume it")


def check_resume_of_run(storage_path: str, run_name: str, current: Mapping[str, Any]) -> None:
    """The driver's resume check, before any worker starts: compare with the
    newest checkpoint Ray Train keeps under ``storage_path/run_name``
    (``checkpoint_<timestamp>`` folders). Remote storage is checked by the
    worker on restore instead."""
    from avser.platform.storage import is_uri

    if is_uri(storage_path):
        return
    folders = sorted(Path(storage_path, run_name).glob(RAY_CHECKPOINT_GLOB))
    for folder in reversed(folders):  # the newest complete one
        if (folder / CONFIG_FILE).is_file():
            saved = json.loads((folder / CONFIG_FILE).read_text())
            check_resume(saved, current, run_name)
            return


def _operational(config: Mapping[str, Any]) -> set[str]:
    return {k for k in config if k.removeprefix("train.").split(".")[0] in OPERATIONAL_KEYS}


def save_hybrid_features(splits: Mapping[str, Mapping[str, np.ndarray]], folder: str | Path) -> None:
    """Hybrid features + labels per split, so KLDA can be re-fitted (tuned)
    without retraining the network."""
    arrays = {}
    for name, preds in splits.items():
        arrays[f"{name}_hybrid"] = preds["hybrid"]
        arrays[f"{name}_labels"] = preds["labels"]
    np.savez_compressed(os.path.join(folder, HYBRID_FILE), **arrays)


def load_hybrid_features(checkpoint: str | Path) -> dict[str, np.ndarray]:
    """The cached hybrid features of a checkpoint (a local folder or a URI), one file read."""
    with np.load(storage.read_bytes(storage.join(str(checkpoint), HYBRID_FILE))) as data:
        return {key: data[key] for key in data.files}
