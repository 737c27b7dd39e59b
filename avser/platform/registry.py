"""Logged models and the MLflow model registry: a trained network logged as
a pyfunc, versions registered with a model card, aliases, loading.

A logged model holds the plain-data bundle (:mod:`avser.bundle`: state dict,
model and feature config, label names), the KLDA head as arrays
(:func:`avser.heads.save_head`) and a pyfunc written as MLflow "models from
code" (:mod:`avser.platform.pyfunc_model`). ``mlflow.pyfunc.load_model``
serves it; :func:`load_avser_model` (``avser.load_model``, ``avser predict
--model``, RACNN initialisation from the registry) reads the files with
``torch.load(weights_only=True)`` and ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from avser.bundle import BUNDLE_ARTIFACT, ModelBundle, load_bundle
from avser.errors import AvserError
from avser.models.factory import example_inputs
from avser.platform import tracking

DEFAULT_DEVICE = "cpu"
# Input examples are stored as JSON inside the model: a paper-sized speech
# tensor (3x9x224x224 floats) would add tens of MB, so only small ones are kept;
# the signature records names, dtypes and shapes either way.
MAX_INPUT_EXAMPLE_VALUES = 200_000
CANDIDATE_ALIAS = "candidate"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
HEAD_ARTIFACT = "klda_head"
# Version tag: the format of the logged model; versions without it are older.
FORMAT_TAG = "avser_format"
MODEL_FORMAT = "avser-pyfunc/2"
# What older versions held instead: a pickled torch module.
OLD_MODULE_ARTIFACT = "torch_module"


@dataclass
class LoadedModel:
    """A registered (or logged) avser model, read without running pickled code."""

    bundle: ModelBundle
    klda_head: Any | None  # the fitted KLDA pipeline, when the model has one
    uri: str


def _pip_requirements() -> list[str]:
    torch_version = torch.__version__.split("+", 1)[0]  # "+cpu" is no PyPI version
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch_version}", f"numpy=={np.__version__}"]


def _example(bundle: ModelBundle) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A one-clip input example and the network's logits for it (the signature)."""
    example = example_inputs(bundle.kind, bundle.model_cfg)
    with torch.no_grad():
        output = bundle.network()(**{k: torch.as_tensor(v) for k, v in example.items()})
    logits = output[0] if isinstance(output, (tuple, list)) else output
    return example, logits.float().numpy()


def log_bundle_model(run_id: str, bundle_path: str | Path, head_path: str | Path | None = None,
                     name: str = "model") -> str:
    """Log a bundle (and its KLDA head) as an MLflow pyfunc model of run ``run_id``,
    the pyfunc written as models from code; returns its ``models:/`` URI."""
    bundle = load_bundle(bundle_path)
    example, logits = _example(bundle)
    mlflow_client = tracking.client()
    run = mlflow_client.get_run(run_id)
    # Created here rather than by Model.log, which would file the model under
    # mlflow's "current" experiment (Default) instead of the run's.
    logged = mlflow_client.create_logged_model(
        experiment_id=run.info.experiment_id, name=name, source_run_id=run_id
    )
    small = sum(v.size for v in example.values()) <= MAX_INPUT_EXAMPLE_VALUES
    artifacts = {BUNDLE_ARTIFACT: str(bundle_path)}
    if head_path is not None:
        artifacts[HEAD_ARTIFACT] = str(head_path)
    tracking.point_fluent_api_at_store()
    info = Model.log(
        artifact_path=None,  # deprecated in MLflow 3 but still positional; `name` names it
        name=name,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=logged.model_id,
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        signature=infer_signature(example, logits),
        input_example=example if small else None,
        pip_requirements=_pip_requirements(),
        # Declared so that load_model(..., model_config={"device": ...}) may override it.
        model_config={"device": DEFAULT_DEVICE},
        metadata={"avser_format": MODEL_FORMAT, "avser_inputs": list(example),
                  "avser_output": "logits"},
    )
    return info.model_uri


def load_avser_model(uri: str) -> LoadedModel:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/...`` or a local
    model folder -> its bundle and KLDA head, read as plain data (no pickle)."""
    from avser.heads import load_head

    local = Path(uri) if Path(uri).is_dir() else Path(_download(uri))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = meta.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    if OLD_MODULE_ARTIFACT in artifacts or BUNDLE_ARTIFACT not in artifacts:
        raise AvserError(
            f"{uri} is in avser's old model format (a pickled torch module), which avser no "
            "longer loads because loading it would run code; re-register it by running its "
            "training or search again (a finished run registers the new format)")
    head = artifacts.get(HEAD_ARTIFACT)
    return LoadedModel(
        bundle=load_bundle(local / artifacts[BUNDLE_ARTIFACT]["path"]),
        klda_head=load_head(local / head["path"]) if head else None,
        uri=uri,
    )


def _download(uri: str) -> str:
    # A models:/ URI is resolved through the registry, which mlflow finds from
    # its process-wide URI, not from the tracking_uri argument.
    tracking.point_fluent_api_at_store()
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                   tracking_uri=tracking.tracking_uri())
    except MlflowException as exc:
        raise _not_found(uri, exc) from exc


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


def registered_version_of(name: str, run_id: str) -> int | None:
    """The version of ``name`` that run ``run_id`` already registered, if any."""
    try:
        found = tracking.client().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:  # no such registered model yet
        return None
    return min((int(v.version) for v in found), default=None)


def register_version(run_id: str, name: str, bundle_path: str | Path, tags: Mapping[str, Any],
                     head_path: str | Path | None = None, card: str = "",
                     metrics: Mapping[str, float] | None = None) -> int:
    """Log a bundle (and KLDA head) under ``run_id`` and register it as a new
    version of ``name`` with the ``candidate`` alias, ``card`` as its
    description and ``metrics`` as tags. Idempotent: a run that registered
    before (killed after registering, resumed, or a finished search run
    again) gets its version back, and nothing new is logged."""
    existing = registered_version_of(name, run_id)
    if existing is not None:
        return existing
    uri = log_bundle_model(run_id, bundle_path, head_path)
    metric_tags = {f"metric.{k}": f"{v:.4f}" for k, v in (metrics or {}).items()}
    version = register_model(uri, name, alias=CANDIDATE_ALIAS,
                             tags={**tags, **metric_tags, FORMAT_TAG: MODEL_FORMAT})
    if card:
        tracking.client().update_model_version(name, str(version), description=card)
    return version


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


def load_registered_model(model: str) -> LoadedModel:
    """``--model NAME@ALIAS`` (or ``NAME/VERSION``) -> the registered model, as plain data."""
    name, sep, alias = model.replace("/", "@").partition("@")
    if not sep or not name or not alias:
        raise AvserError(f"--model {model!r}: write NAME@ALIAS, e.g. avser-racnn@candidate")
    model_version(name, alias)  # a clear error when there is no such version
    return load_avser_model(registered_model_uri(name, alias))


def load_registered_state(name: str, alias_or_version: str) -> dict[str, torch.Tensor]:
    """A registered version's weights, from its bundle (no code runs)."""
    return load_registered_model(f"{name}@{alias_or_version}").bundle.state_dict
