"""Logged models and the MLflow model registry: logging a trained network
as a pyfunc, registering versions with their bundle, aliases, loading.

A version's plain-data bundle (:mod:`avser.predict`) is a run artifact whose
path is the version's ``avser_bundle`` tag; ``avser predict --model``
and RACNN initialisation from the registry read it with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from avser.errors import AvserError
from avser.platform import tracking

MODULE_ARTIFACT = "torch_module"
DEFAULT_DEVICE = "cpu"
MODULE_FILE_NAME = "module.pt"
# Input examples are stored as JSON inside the model: a paper-sized speech
# tensor (3x9x224x224 floats) would add tens of MB, so only small ones are kept;
# the signature records names, dtypes and shapes either way.
MAX_INPUT_EXAMPLE_VALUES = 200_000
CANDIDATE_ALIAS = "candidate"
BUNDLE_ARTIFACT_DIR = "bundle"
# Model-version tag: the bundle's path inside the version's run artifacts.
BUNDLE_TAG = "avser_bundle"

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
    mlflow_client = tracking.client()
    run = mlflow_client.get_run(run_id)
    # Created here rather than by Model.log, which would file the model under
    # mlflow's "current" experiment (Default) instead of the run's.
    logged = mlflow_client.create_logged_model(
        experiment_id=run.info.experiment_id, name=name, source_run_id=run_id
    )
    small = sum(v.size for v in input_example.values()) <= MAX_INPUT_EXAMPLE_VALUES
    tracking.point_fluent_api_at_store()
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
    tracking.point_fluent_api_at_store()
    tags = {key: str(value) for key, value in (tags or {}).items()}
    version = mlflow.register_model(model_uri, name, tags=tags).version
    if alias:
        set_alias(name, alias, version)
    return int(version)


def set_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``name@alias`` at ``version`` (e.g. promote a candidate to champion)."""
    tracking.client().set_registered_model_alias(name, alias, str(version))


def registered_model_uri(name: str, alias_or_version: str | int) -> str:
    """``models:/name/3`` for a version number, ``models:/name@alias`` otherwise."""
    if str(alias_or_version).isdigit():
        return f"models:/{name}/{alias_or_version}"
    return f"models:/{name}@{alias_or_version}"


def load_model(model_uri: str, device: str = DEFAULT_DEVICE) -> mlflow.pyfunc.PyFuncModel:
    """The pyfunc at ``model_uri``: ``.predict({name: array}) -> logits``."""
    tracking.point_fluent_api_at_store()
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


def registered_version_of(name: str, run_id: str) -> int | None:
    """The version of ``name`` that run ``run_id`` already registered, if any."""
    try:
        found = tracking.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    return min((int(v.version) for v in found), default=None)


def register_version(run_id: str, model: torch.nn.Module, input_example: Mapping[str, np.ndarray],
                     name: str, bundle_path: str | Path, tags: Mapping[str, Any]) -> int:
    """Log ``model`` and its bundle under ``run_id`` and register them as a
    new version of ``name`` with the ``candidate`` alias. Idempotent: a run
    that registered before (killed after registering, resumed, or a finished
    search run again) gets its version back, and nothing new is logged."""
    existing = registered_version_of(name, run_id)
    if existing is not None:
        return existing
    artifact = tracking.log_artifact_file(run_id, bundle_path, BUNDLE_ARTIFACT_DIR)
    uri = log_torch_model(run_id, model.eval(), input_example)
    return register_model(uri, name, alias=CANDIDATE_ALIAS, tags={**tags, BUNDLE_TAG: artifact})


def _registered_names() -> list[str]:
    try:
        return sorted(m.name for m in tracking.client().search_registered_models())
    except MlflowException:
        return []


def _not_found(what: str, exc: MlflowException) -> AvserError:
    names = _registered_names()
    held = f"it holds {names}" if names else "it holds no registered model"
    return AvserError(
        f"{what} is not in the registry at {tracking.tracking_uri()} "
        f"({exc.message.splitlines()[0]}); {held}: check the name, alias and version, "
        "or set MLFLOW_TRACKING_URI to the store the model was registered in"
    )


def model_version(name: str, alias_or_version: str | int):
    """The registry's version record (by number or alias); a clear error when there is none."""
    mlflow_client = tracking.client()
    try:
        if str(alias_or_version).isdigit():
            return mlflow_client.get_model_version(name, str(alias_or_version))
        return mlflow_client.get_model_version_by_alias(name, str(alias_or_version))
    except MlflowException as exc:
        what = (f"model {name} version {alias_or_version}" if str(alias_or_version).isdigit()
                else f"{name}@{alias_or_version}")
        raise _not_found(what, exc) from exc


def promote(name: str, alias: str, source: str = CANDIDATE_ALIAS,
            version: str | int | None = None) -> str:
    """Give ``version`` (default: the version ``name@source`` points at) the
    alias ``alias``; returns the version."""
    found = model_version(name, version if version is not None else source).version
    try:
        set_alias(name, alias, found)
    except MlflowException as exc:
        raise _not_found(f"model {name} version {found}", exc) from exc
    return str(found)


def download_bundle(name: str, alias_or_version: str, version=None) -> str:
    """Local path of the bundle of a registered version (``version``: its
    record, when the caller has already looked it up)."""
    version = version or model_version(name, alias_or_version)
    artifact = version.tags.get(BUNDLE_TAG)
    if not artifact:
        raise AvserError(f"{name}@{alias_or_version} (version {version.version}) has no model "
                         "bundle: it was registered before avser saved bundles; train it again "
                         "to re-register")
    return mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=artifact,
                                               tracking_uri=tracking.tracking_uri())


def download_registered_bundle(model: str) -> str:
    """``--model NAME@ALIAS`` (or ``NAME/VERSION``) -> the local bundle path."""
    name, sep, alias = model.replace("/", "@").partition("@")
    if not sep or not name or not alias:
        raise AvserError(f"--model {model!r}: write NAME@ALIAS, e.g. avser-racnn@candidate")
    return download_bundle(name, alias)


def load_registered_state(name: str, alias_or_version: str) -> dict[str, torch.Tensor]:
    """A registered version's weights: from its bundle (no code runs), or for
    a version registered before bundles, from its logged module."""
    version = model_version(name, alias_or_version)
    if version.tags.get(BUNDLE_TAG):
        from avser.bundle import load_bundle

        return load_bundle(download_bundle(name, alias_or_version, version)).state_dict
    return load_torch_model(registered_model_uri(name, alias_or_version)).state_dict()
