"""The kernel-LDA head: KernelLDA on hybrid features, then a linear softmax.

Paper section II-C: after the network is trained, the training set's hybrid
features are projected by KLDA (at most C-1 dimensions) and classified by a
softmax layer. Here that is a scikit-learn pipeline fitted on training
features only; it is evaluated next to the network's own FC head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from avser.metrics import classification_report
from avser.models.klda import KernelLDA


@dataclass
class KLDAConfig:
    enabled: bool = True
    kernel: str = "rbf"
    gamma: float | None = None  # None -> KernelLDA's default width
    reg: float = 1e-3
    classifier_c: float = 1.0  # inverse L2 strength of the softmax layer
    max_iter: int = 1000


def klda_head(cfg: KLDAConfig, seed: int = 0) -> Pipeline:
    return Pipeline(
        [
            # Standardising first makes one gamma meaningful across feature scales.
            ("scale", StandardScaler()),
            ("klda", KernelLDA(kernel=cfg.kernel, gamma=cfg.gamma, reg=cfg.reg, random_state=seed)),
            ("softmax", LogisticRegression(C=cfg.classifier_c, max_iter=cfg.max_iter)),
        ]
    )


def fit_klda_head(features: np.ndarray, labels: np.ndarray, cfg: KLDAConfig, seed: int = 0) -> Pipeline:
    return klda_head(cfg, seed).fit(features, labels)


def evaluate_head(head: Pipeline, features: np.ndarray, labels: np.ndarray, label_names: list[str]) -> dict:
    return classification_report(labels, head.predict(features), label_names)


# ------------------------------------------------------------ plain-data format
# The fitted head as arrays plus a JSON description, loaded without unpickling:
# each estimator's fitted attributes are arrays or plain scalars, and the
# classes rebuilt are this allowlist only.
HEAD_FORMAT = "avser-klda-head/1"
SPEC_KEY = "__spec__"


def _estimator_classes() -> dict[str, type]:
    from sklearn.kernel_approximation import Nystroem

    return {cls.__name__: cls for cls in (StandardScaler, KernelLDA, LogisticRegression, Nystroem)}


def _plain(value):
    """A JSON-able scalar, or None when ``value`` is not one."""
    if value is None or isinstance(value, (bool, str)):
        return {"value": value}
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        return {"value": value.item() if isinstance(value, np.generic) else value}
    if isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items()):
        return {"value": {k: _plain(v)["value"] for k, v in value.items()}}  # e.g. kernel_params
    return None


def _describe(estimator, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    classes = _estimator_classes()
    name = type(estimator).__name__
    if classes.get(name) is not type(estimator):
        raise TypeError(f"{prefix.rstrip('.')}: a {name} cannot be saved as a plain-data head")
    fields = {}
    for attr, value in vars(estimator).items():
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{prefix}{attr}: object arrays cannot be saved as plain data")
            arrays[prefix + attr] = value
            fields[attr] = {"array": prefix + attr}
        elif (scalar := _plain(value)) is not None:
            fields[attr] = scalar
        elif hasattr(value, "get_params"):
            fields[attr] = {"estimator": _describe(value, f"{prefix}{attr}.", arrays)}
        else:
            raise TypeError(f"{prefix}{attr}: a {type(value).__name__} cannot be saved as plain data")
    return {"class": name, "fields": fields}


def _rebuild(spec: dict, arrays) -> object:
    cls = _estimator_classes().get(spec["class"])
    if cls is None:
        raise ValueError(f"unknown estimator {spec['class']!r} in a head file")
    estimator = cls.__new__(cls)
    for attr, field in spec["fields"].items():
        if "array" in field:
            estimator.__dict__[attr] = arrays[field["array"]]
        elif "estimator" in field:
            estimator.__dict__[attr] = _rebuild(field["estimator"], arrays)
        else:
            estimator.__dict__[attr] = field["value"]
    return estimator


def save_head(head: Pipeline, path) -> None:
    """Write a fitted head as an ``.npz`` of arrays and a JSON spec (no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    steps = [{"name": name, **_describe(step, f"{name}.", arrays)} for name, step in head.steps]
    spec = json.dumps({"format": HEAD_FORMAT, "steps": steps})
    with open(path, "wb") as out:  # a file object: np.savez would append ".npz" to a name
        np.savez(out, **arrays, **{SPEC_KEY: np.frombuffer(spec.encode(), dtype=np.uint8)})


def load_head(path) -> Pipeline:
    """The head :func:`save_head` wrote; ``allow_pickle=False`` throughout."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    spec = json.loads(arrays.pop(SPEC_KEY).tobytes().decode())
    if spec.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path} is not an {HEAD_FORMAT} file")
    return Pipeline([(step["name"], _rebuild(step, arrays)) for step in spec["steps"]])
