"""Model bundles in the MLflow registry: where a version keeps its
plain-data bundle (``avser.predict``), and fetching it by ``NAME@ALIAS``."""

from __future__ import annotations

import mlflow

from avser.errors import AvserError
from avser.platform import tracking

BUNDLE_FILE = "model.avser.pt"
BUNDLE_ARTIFACT_DIR = "bundle"
# Model-version tag: the bundle's path inside the version's run artifacts.
BUNDLE_TAG = "avser_bundle"


def download_registered_bundle(model: str) -> str:
    """Local path of the bundle of registered version ``NAME@ALIAS`` (or ``NAME/VERSION``)."""
    name, sep, alias = model.replace("/", "@").partition("@")
    if not sep or not name or not alias:
        raise AvserError(f"--model {model!r}: write NAME@ALIAS, e.g. avser-racnn@candidate")
    mlflow_client = tracking.client()
    try:
        version = (mlflow_client.get_model_version(name, alias) if alias.isdigit()
                   else mlflow_client.get_model_version_by_alias(name, alias))
    except mlflow.exceptions.MlflowException as exc:
        raise AvserError(f"no registered model version {model} in {tracking.tracking_uri()} "
                         f"({exc.message.splitlines()[0]}); list them in the MLflow UI or set "
                         "MLFLOW_TRACKING_URI to the right store") from exc
    artifact = version.tags.get(BUNDLE_TAG)
    if not artifact:
        raise AvserError(f"{model} (version {version.version}) has no model bundle: it was "
                         "registered before avser saved bundles; train it again to re-register")
    return mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=artifact,
                                               tracking_uri=tracking.tracking_uri())
