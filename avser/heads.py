"""The kernel-LDA head: KernelLDA on hybrid features, then a linear softmax.

Paper section II-C: after the network is trained, the training set's hybrid
features are projected by KLDA (at most C-1 dimensions) and classified by a
softmax layer. Here that is a scikit-learn pipeline fitted on training
features only; it is evaluated next to the network's own FC head.
"""

from __future__ import annotations

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
