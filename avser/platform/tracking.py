"""MLflow: runs, params, metrics, artifacts, models, registry and aliases.

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

import copy
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

import avser
from avser.config import flatten
from avser.data.manifest import COLUMNS as MANIFEST_COLUMNS
from avser.errors import AvserError

DEFAULT_STORE_DIR = Path("mlruns")
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "artifacts"
SQLITE_PREFIX = "sqlite:///"

RUN_KEY_TAG = "avser.run_key"
PROTOCOL_TAG = "avser.protocol"
CORPUS_TAG = "avser.corpus"
DATA_HASH_TAG = "avser.data_hash"
VERSION_TAG = "avser.version"

HASH_CHARS = 16  # same length as avser.config.config_hash
GIT_TIMEOUT_S = 10
UNKNOWN_COMMIT = "unknown"
MANIFEST_FILE_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c.endswith("_path"))

MODULE_ARTIFACT = "torch_module"
DEFAULT_DEVICE = "cpu"
MODULE_FILE_NAME = "module.pt"
# Input examples are stored as JSON inside the model: a paper-sized speech
# tensor (3x9x224x224 floats) would add tens of MB, so only small ones are kept;
# the signature records names, dtypes and shapes either way.
MAX_INPUT_EXAMPLE_VALUES = 200_000


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


def _point_fluent_api_at_store() -> None:
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
    plain = json.loads(json.dumps(cfg_or_dict, default=_json_default))
    return {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in flatten(plain).items()}


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


# --- tags -------------------------------------------------------------------


def git_commit(repo: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: the avser checkout), or
    ``"unknown"`` when it is not a git repository or git is missing."""
    repo = Path(repo) if repo is not None else Path(avser.__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN_COMMIT
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else UNKNOWN_COMMIT


def _file_fingerprint(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path}\tmissing"
    return f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}"


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        path = path.resolve()
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return sorted(set(files))


def _manifest_files(manifest: pd.DataFrame) -> list[Path]:
    columns = [c for c in MANIFEST_FILE_COLUMNS if c in manifest.columns]
    values = manifest[columns].to_numpy().ravel() if columns else []
    return _expand(v for v in values if isinstance(v, str) and v)


def data_hash(source: pd.DataFrame | str | Path | Iterable[str | Path]) -> str:
    """Content hash of data: each file's path, size and mtime.

    ``source`` is a manifest DataFrame (its rows plus the files it names are
    hashed, so relabelling changes the hash too), or files/folders (folders
    are walked). A missing file hashes as missing rather than failing.
    """
    digest = hashlib.sha256()
    if isinstance(source, pd.DataFrame):
        rows = source.sort_values("clip_id") if "clip_id" in source.columns else source
        digest.update(rows.to_json(orient="records").encode())
        files = _manifest_files(source)
    else:
        files = _expand([source] if isinstance(source, (str, Path)) else source)
    for path in files:
        digest.update(_file_fingerprint(path).encode() + b"\n")
    return digest.hexdigest()[:HASH_CHARS]


def standard_tags(
    protocol: str,
    corpus: str,
    data_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The tags every avser run carries: protocol, corpus, data hash, git commit, version."""
    tags = {
        PROTOCOL_TAG: protocol,
        CORPUS_TAG: corpus,
        DATA_HASH_TAG: data_hash,
        MLFLOW_GIT_COMMIT: git_commit(),
        VERSION_TAG: avser.__version__,
    }
    tags.update(extra or {})
    return {key: str(value) for key, value in tags.items()}


# --- models -----------------------------------------------------------------


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward pass: the tensor itself, or the first item of
    a tuple such as the fusion model's ``(logits, hybrid)``."""
    return output[0] if isinstance(output, (tuple, list)) else output


class TorchLogitsModel(mlflow.pyfunc.PythonModel):
    """Pyfunc face of a torch module: ``{input name: array}`` in, logits out.

    The module itself is a ``torch.save`` artifact (its classes are imported
    from avser at load time). ``model_config={"device": "cuda"}`` at load
    time runs it on a GPU.
    """

    def __init__(self, input_names: Sequence[str]) -> None:
        self.input_names = list(input_names)
        self.module: torch.nn.Module | None = None
        self.device = torch.device(DEFAULT_DEVICE)

    def load_context(self, context) -> None:
        self.device = torch.device((context.model_config or {}).get("device", DEFAULT_DEVICE))
        path = context.artifacts[MODULE_ARTIFACT]
        # weights_only=False: the file holds a whole module, written by avser itself.
        self.module = torch.load(path, map_location=self.device, weights_only=False).eval()

    # No type hints: MLflow cannot build a schema from dict[str, ndarray] hints
    # (it warns about their absence instead); the logged signature checks inputs.
    def predict(self, context, model_input, params=None):
        missing = [name for name in self.input_names if name not in model_input]
        if missing:
            raise AvserError(f"model input lacks {missing}; it takes {self.input_names}")
        tensors = {
            name: torch.as_tensor(np.asarray(model_input[name]), device=self.device)
            for name in self.input_names
        }
        with torch.no_grad():
            return logits_of(self.module(**tensors)).cpu().numpy()


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    # A CPU copy in eval mode: the caller's module keeps its device and mode.
    return copy.deepcopy(model).cpu().eval()


def _example_logits(module: torch.nn.Module, input_example: Mapping[str, np.ndarray]) -> np.ndarray:
    tensors = {name: torch.as_tensor(np.asarray(value)) for name, value in input_example.items()}
    with torch.no_grad():
        return logits_of(module(**tensors)).numpy()


def _pip_requirements() -> list[str]:
    torch_version = torch.__version__.split("+", 1)[0]  # "+cpu" is no PyPI version
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch_version}", f"numpy=={np.__version__}"]


def log_torch_model(
    run_id: str,
    model: torch.nn.Module,
    input_example: Mapping[str, np.ndarray],
    name: str = "model",
) -> str:
    """Log ``model`` as an MLflow (pyfunc) model of run ``run_id``; returns its ``models:/`` URI.

    ``input_example`` maps forward()'s argument names to arrays (e.g.
    ``{"speech": ..., "landmarks": ...}``); the pyfunc takes such a dict and
    returns the logits (the first output when forward returns a tuple). The
    signature is inferred from the example and its logits. Pass the bare
    module, not a DDP wrapper.
    """
    input_example = {key: np.asarray(value) for key, value in input_example.items()}
    module = _frozen_copy(model)
    logits = _example_logits(module, input_example)
    mlflow_client = client()
    run = mlflow_client.get_run(run_id)
    # Created here rather than by Model.log, which would file the model under
    # mlflow's "current" experiment (Default) instead of the run's.
    logged = mlflow_client.create_logged_model(
        experiment_id=run.info.experiment_id, name=name, source_run_id=run_id
    )
    small = sum(v.size for v in input_example.values()) <= MAX_INPUT_EXAMPLE_VALUES
    _point_fluent_api_at_store()
    with tempfile.TemporaryDirectory() as tmp:
        module_path = Path(tmp) / MODULE_FILE_NAME
        torch.save(module, module_path)
        info = Model.log(
            artifact_path=None,  # deprecated in MLflow 3 but still positional; `name` names it
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=TorchLogitsModel(list(input_example)),
            artifacts={MODULE_ARTIFACT: str(module_path)},
            signature=infer_signature(input_example, logits),
            input_example=input_example if small else None,
            pip_requirements=_pip_requirements(),
            # Declared so that load_model(..., model_config={"device": ...}) may override it.
            model_config={"device": DEFAULT_DEVICE},
            metadata={"avser_inputs": list(input_example), "avser_output": "logits"},
        )
    return info.model_uri


def register_model(
    model_uri: str,
    name: str,
    alias: str | None = "candidate",
    tags: Mapping[str, Any] | None = None,
) -> int:
    """Register ``model_uri`` as a new version of ``name`` (created if needed),
    point ``alias`` at it (aliases, not stages), and return the version."""
    _point_fluent_api_at_store()
    tags = {key: str(value) for key, value in (tags or {}).items()}
    version = mlflow.register_model(model_uri, name, tags=tags).version
    if alias:
        set_alias(name, alias, version)
    return int(version)


def set_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``name@alias`` at ``version`` (e.g. promote a candidate to champion)."""
    client().set_registered_model_alias(name, alias, str(version))


def registered_model_uri(name: str, alias_or_version: str | int) -> str:
    """``models:/name/3`` for a version number, ``models:/name@alias`` otherwise."""
    if str(alias_or_version).isdigit():
        return f"models:/{name}/{alias_or_version}"
    return f"models:/{name}@{alias_or_version}"


def load_model(model_uri: str, device: str = DEFAULT_DEVICE) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc at ``model_uri``: ``.predict({name: array}) -> logits``."""
    _point_fluent_api_at_store()
    return mlflow.pyfunc.load_model(model_uri, model_config={"device": device})


def load_registered(
    name: str, alias_or_version: str | int = "champion", device: str = DEFAULT_DEVICE
) -> mlflow.pyfunc.PyFuncModel:
    """The registered model ``name`` at an alias or version, as a pyfunc."""
    return load_model(registered_model_uri(name, alias_or_version), device)


def load_torch_model(model_uri: str, device: str = DEFAULT_DEVICE) -> torch.nn.Module:
    """The torch module inside a model logged by ``log_torch_model`` (eval mode)."""
    wrapper = load_model(model_uri, device).unwrap_python_model()
    if not isinstance(wrapper, TorchLogitsModel):
        raise AvserError(f"{model_uri} was not logged by avser's log_torch_model")
    return wrapper.module
