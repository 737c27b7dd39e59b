"""Registry aliases: point ``NAME@ALIAS`` (e.g. ``champion``) at a model version.

MLflow's own errors (no such model, alias or version) become an
``AvserError`` that names what was asked for, the tracking store, and the
models that store does hold.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from avser.errors import AvserError
from avser.platform import tracking


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


def promote(name: str, alias: str, source: str = "candidate", version: str | int | None = None) -> str:
    """Give ``version`` (default: the version ``name@source`` points at) the
    alias ``alias``; returns the version."""
    client = tracking.client()
    try:
        if version is None:
            version = client.get_model_version_by_alias(name, source).version
        else:
            version = client.get_model_version(name, str(version)).version
    except MlflowException as exc:
        asked = f"model {name} version {version}" if version is not None else f"{name}@{source}"
        raise _not_found(asked, exc) from exc
    try:
        tracking.set_alias(name, alias, version)
    except MlflowException as exc:
        raise _not_found(f"model {name} version {version}", exc) from exc
    return str(version)
