"""MLflow: the store, runs, params, metrics and artifacts.

Run tags and data hashes are in :mod:`avser.platform.runs`; logged models,
the registry and aliases in :mod:`avser.platform.registry`.

Where things are stored:

- ``MLFLOW_TRACKING_URI`` set (e.g. ``http://mlflow:5000`` on a cluster):
  runs live in that store and, for a server, artifacts go wherever the
  server says (its ``--artifacts-destination``); avser sets no artifact
  location of its own.
- unset: the default local store ``sqlite:///<abs>/mlruns/mlflow.db`` with
  artifacts under ``mlruns/artifacts/<experiment>``. For any sqlite store,
  each experiment's ``artifact_location`` is set when avser creates it, next
  to the database, so artifacts never land in whatever folder the process
  happened to start in.

Everything that logs goes through an ``MlflowClient`` and an explicit
``run_id``: no active-run stack, so it is safe inside Ray workers (the caller
logs from rank 0 only). Training that is resumed after a failure finds its
run again by a deterministic ``run_key`` tag (see ``start_run``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from avser.config import flatten
from avser.errors import AvserError

DEFAULT_STORE_DIR = Path("mlruns")
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "artifacts"
SQLITE_PREFIX = "sqlite:///"

RUN_KEY_TAG = "avser.run_key"
class ParamConflictError(AvserError):
    """A run already holds a param with a different value (MLflow params are write-once)."""


# --- store ------------------------------------------------------------------


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the local ``sqlite:///<abs>/mlruns/mlflow.db``."""
    uri = os.environ.get(TRACKING_URI_ENV)
    if uri:
        return uri
    store_dir = DEFAULT_STORE_DIR.resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE_PREFIX}{store_dir / DEFAULT_DB_NAME}"


def artifact_root(uri: str | None = None) -> Path | None:
    """Folder for the artifacts of a sqlite store (next to its database);
    None for servers and other stores, which decide for themselves."""
    uri = uri or tracking_uri()
    if not uri.startswith(SQLITE_PREFIX):
        return None
    db_path = unquote(uri[len(SQLITE_PREFIX) :].split("?", 1)[0])
    if not db_path or db_path == ":memory:":
        return None
    return Path(db_path).resolve().parent / ARTIFACTS_DIR_NAME


def client() -> mlflow.MlflowClient:
    """A client on ``tracking_uri()`` (MLflow caches the store per URI, so this is cheap)."""
    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def point_fluent_api_at_store() -> None:
    """``Model.log``, ``register_model`` and ``pyfunc.load_model`` read mlflow's
    process-wide URI. With ``MLFLOW_TRACKING_URI`` set they already read it;
    only the default local store has to be named to mlflow."""
    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)


def _experiment_artifact_location(name: str) -> str | None:
    root = artifact_root()
    if root is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"
    return (root / folder).as_uri()


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created (or restored, if deleted) when needed."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=_experiment_artifact_location(name)
            )
        except MlflowException as exc:  # another worker created it first
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = mlflow_client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        # MLflow keeps a deleted experiment's name reserved; resuming work
        # under that name should bring it back rather than fail.
        mlflow_client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


# --- runs -------------------------------------------------------------------


def _check_run_key(run_key: str) -> None:
    # The key goes into a search filter literal, which has no escaping.
    if not run_key or "'" in run_key or '"' in run_key:
        raise AvserError(
            f"run_key {run_key!r} must be non-empty and contain no quotes; "
            "derive it from the Ray run name or trial id"
        )


def find_run(experiment: str, run_key: str) -> str | None:
    """The id of the latest non-deleted run tagged ``run_key`` in ``experiment``, or None."""
    _check_run_key(run_key)
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow_client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def start_run(
    experiment: str,
    run_key: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Resume the run tagged ``run_key`` in ``experiment``, or create it.

    A resumed run is set back to RUNNING and keeps its params and metric
    history, so a restarted trainer logs on into the same run. A new run is
    nested under ``parent_run_id`` (``mlflow.parentRunId``) when given.
    ``tags`` are (re)applied either way.
    """
    tags = {key: str(value) for key, value in (tags or {}).items()}
    mlflow_client = client()
    run_id = find_run(experiment, run_key)
    if run_id is not None:
        mlflow_client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        run_tags = [RunTag(key, value) for key, value in tags.items()]
        for batch in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            mlflow_client.log_batch(run_id, tags=batch)
        return run_id
    tags[RUN_KEY_TAG] = run_key
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = mlflow_client.create_run(
        get_or_create_experiment(experiment), run_name=run_name, tags=tags
    )
    return run.info.run_id


def child_runs(parent_id: str, status: str) -> list:
    """The child runs of ``parent_id`` (same experiment) whose status is ``status``."""
    RunStatus.from_string(status)  # raises on an unknown status, naming it
    mlflow_client = client()
    experiment = mlflow_client.get_run(parent_id).info.experiment_id
    return mlflow_client.search_runs([experiment], f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent_id}' "
                                                   f"and attributes.status = '{status}'")


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """End a run as FINISHED, FAILED or KILLED."""
    RunStatus.from_string(status)  # raises on an unknown status, naming it
    client().set_terminated(run_id, status=status)


# --- params, metrics, artifacts ---------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def param_values(cfg_or_dict: Any) -> dict[str, str]:
    """Flattened config as MLflow stores it: ``str(value)`` cut to MLflow's length limit.

    Takes a config dataclass or a mapping, whose values may themselves be
    config dataclasses (``{"train": train_cfg, "model": model_cfg}``).
    """
    from avser.platform.storage import portable

    plain = json.loads(json.dumps(cfg_or_dict, default=_json_default))
    return {key: str(portable(value))[:MAX_PARAM_VAL_LENGTH] for key, value in flatten(plain).items()}


def log_params(run_id: str, cfg_or_dict: Any) -> dict[str, str]:
    """Log every (flattened) config value; idempotent on resume.

    Params already logged with the same value are skipped. A different value
    raises ``ParamConflictError`` before anything is logged: MLflow params are
    write-once, and a resumed run must keep the config it started with.
    """
    wanted = param_values(cfg_or_dict)
    mlflow_client = client()
    logged = mlflow_client.get_run(run_id).data.params
    conflicts = {k: (logged[k], v) for k, v in wanted.items() if k in logged and logged[k] != v}
    if conflicts:
        changes = "; ".join(
            f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(conflicts.items())
        )
        raise ParamConflictError(
            f"run {run_id} already has different values for {len(conflicts)} param(s): {changes}. "
            "Resume with the config the run started with, or start a new run (new run_key)."
        )
    new_params = [Param(k, v) for k, v in wanted.items() if k not in logged]
    for batch in _chunks(new_params, MAX_PARAMS_TAGS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=batch)
    return wanted


def _metric_value(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise AvserError(f"metric {key!r} must be a number, got {value!r}") from exc


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int) -> None:
    """Log ``{name: number}`` at ``step`` in as few requests as MLflow allows."""
    timestamp_ms = int(time.time() * 1000)
    batch = [
        Metric(key, _metric_value(key, value), timestamp_ms, int(step))
        for key, value in metrics.items()
    ]
    mlflow_client = client()
    for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=chunk)


def _artifact_path(artifact_dir: str | None, name: str) -> str:
    return f"{artifact_dir.strip('/')}/{name}" if artifact_dir else name


def log_artifact_file(run_id: str, path: str | Path, artifact_dir: str | None = None) -> str:
    """Upload a saved file; returns its path inside the run's artifacts."""
    path = Path(path)
    if not path.is_file():
        raise AvserError(f"artifact {path} does not exist; save the file before logging it")
    client().log_artifact(run_id, str(path), artifact_path=artifact_dir)
    return _artifact_path(artifact_dir, path.name)


def log_figure_file(run_id: str, path: str | Path, artifact_dir: str | None = "figures") -> str:
    """Upload a saved figure (PNG, ...); returns its path inside the run's artifacts."""
    return log_artifact_file(run_id, path, artifact_dir)


def log_dict(
    run_id: str, data: Mapping[str, Any], name: str, artifact_dir: str | None = None
) -> str:
    """Store a mapping as ``name`` (``.json`` or ``.yaml``) in the run's artifacts."""
    artifact_file = _artifact_path(artifact_dir, name)
    client().log_dict(run_id, dict(data), artifact_file)
    return artifact_file


def log_table(run_id: str, frame: pd.DataFrame, name: str, artifact_dir: str | None = None) -> str:
    """Store a DataFrame as CSV file ``name`` in the run's artifacts."""
    if not name.endswith(".csv"):
        raise AvserError(f"table name {name!r} must end in .csv")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        frame.to_csv(local, index=False)
        client().log_artifact(run_id, str(local), artifact_path=artifact_dir)
    return _artifact_path(artifact_dir, name)
