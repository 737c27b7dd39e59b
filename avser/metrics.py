"""Evaluation metrics of speech emotion recognition, and their figures.

- WA (weighted accuracy): plain accuracy, each clip counts once, so frequent
  emotions weigh more.
- UA (unweighted accuracy): mean per-class recall over the emotions present
  in the true labels, each emotion counts once; the paper's main metric
  (section III), robust to class imbalance (e.g. RAVDESS "neutral" has half
  the clips of the other emotions).
- macro-F1: unweighted mean of per-class F1 over every class that occurs in
  the true or predicted labels (a class that is only ever predicted wrongly
  scores 0).

Labels are integer class indices ``0..C-1`` (the manifest's ``label``).
Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas,
never through ``pyplot``, so no global backend or figure registry is touched
and plotting is safe inside Ray workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, f1_score

# Figure geometry (inches) and resolution of the PNGs.
CONFUSION_CELL_INCHES = 0.8
CONFUSION_MIN_INCHES = 4.0
COLORBAR_INCHES = 1.0
CURVES_PANEL_INCHES = (5.0, 3.6)
FIGURE_DPI = 120
CURVE_MARKER_SIZE = 3
GRID_ALPHA = 0.3
# Normalised cell value above which counts are written in white, for contrast.
DARK_CELL_THRESHOLD = 0.5
CONFUSION_COLORMAP = "Blues"


def _as_labels(y, pred) -> tuple[np.ndarray, np.ndarray]:
    """1-D integer arrays of equal, non-zero length, or a ValueError saying why."""
    y_true = np.asarray(y).ravel()
    y_pred = np.asarray(pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"true and predicted labels differ in length: {y_true.size} vs {y_pred.size}"
        )
    if y_true.size == 0:
        raise ValueError("no labels to score: both label arrays are empty")
    return y_true, y_pred


def weighted_accuracy(y, pred) -> float:
    """WA: fraction of clips classified correctly."""
    y_true, y_pred = _as_labels(y, pred)
    return float(np.mean(y_true == y_pred))


def per_class_recall(y, pred) -> dict:
    """Recall of each class present in ``y``, keyed by class label."""
    y_true, y_pred = _as_labels(y, pred)
    return {
        label.item(): float(np.mean(y_pred[y_true == label] == label))
        for label in np.unique(y_true)
    }


def unweighted_accuracy(y, pred) -> float:
    """UA: mean recall over the classes present in ``y``."""
    return float(np.mean(list(per_class_recall(y, pred).values())))


def macro_f1(y, pred) -> float:
    """Unweighted mean F1 over classes seen in ``y`` or ``pred``."""
    y_true, y_pred = _as_labels(y, pred)
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def confusion(y, pred, n_classes: int) -> np.ndarray:
    """``n_classes x n_classes`` counts; row = true class, column = predicted."""
    y_true, y_pred = _as_labels(y, pred)
    outside = np.setdiff1d(np.concatenate([y_true, y_pred]), np.arange(n_classes))
    if outside.size:
        raise ValueError(
            f"labels {outside.tolist()} are outside 0..{n_classes - 1}; "
            f"pass the number of classes of the label set in use"
        )
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def classification_report(y, pred, label_names: Sequence[str]) -> dict:
    """Every metric of one evaluation, JSON-serialisable (for MLflow ``log_dict``).

    Keys: ``wa``, ``ua``, ``macro_f1`` (floats), ``per_class_recall`` and
    ``support`` (keyed by label name; a class absent from ``y`` has recall
    ``None``, since it has no recall), ``confusion`` (list of rows of counts),
    ``label_names``, ``n`` (clips scored).
    """
    names = list(label_names)
    matrix = confusion(y, pred, len(names))
    recalls = per_class_recall(y, pred)
    return {
        "wa": weighted_accuracy(y, pred),
        "ua": unweighted_accuracy(y, pred),
        "macro_f1": macro_f1(y, pred),
        "per_class_recall": {name: recalls.get(index) for index, name in enumerate(names)},
        "support": {name: int(count) for name, count in zip(names, matrix.sum(axis=1))},
        "confusion": matrix.tolist(),
        "label_names": names,
        "n": int(matrix.sum()),
    }


def _row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total; an empty row (class never seen) stays 0."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix, dtype=np.float64), where=totals > 0)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
    return path


def _recall_label(name: str, correct: int, total: int) -> str:
    """A true class's tick: its name and recall (a dash when it has no clips)."""
    return f"{name} (-)" if total == 0 else f"{name} ({100 * correct / total:.0f}%)"


def plot_confusion(cm, label_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """PNG of a confusion matrix: colour = row-normalised recall, text = counts."""
    counts = np.asarray(cm)
    names = list(label_names)
    if counts.shape != (len(names), len(names)):
        raise ValueError(
            f"confusion matrix of shape {counts.shape} does not match {len(names)} label names"
        )
    fractions = _row_normalised(counts)
    side = max(CONFUSION_MIN_INCHES, CONFUSION_CELL_INCHES * len(names))
    figure = Figure(figsize=(side + COLORBAR_INCHES, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap=CONFUSION_COLORMAP, vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of true class")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if fractions[row, col] > DARK_CELL_THRESHOLD else "black"
        axes.text(col, row, str(int(count)), ha="center", va="center", color=colour)
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, names, rotation=45, ha="right")
    axes.set_yticks(ticks, [_recall_label(name, counts[i, i], counts[i].sum())
                            for i, name in enumerate(names)])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true (recall)")
    axes.set_title(title)
    return _save(figure, path)


# Panels of the training curves: which series each takes, in order; a
# series no panel claims goes to "score".
CURVE_PANELS = (
    ("loss", lambda name: "loss" in name.lower()),
    ("seconds per epoch", lambda name: name.endswith("_seconds")),
    ("learning rate", lambda name: name == "lr"),
    ("score", lambda name: True),
)


def _curve_panels(series: Mapping[str, list[float]]) -> list[tuple[str, dict[str, list[float]]]]:
    panels: dict[str, dict[str, list[float]]] = {}
    for name, values in series.items():
        label = next(label for label, claims in CURVE_PANELS if claims(name))
        panels.setdefault(label, {})[name] = values
    order = ("loss", "score", "seconds per epoch", "learning rate")
    return [(label, panels[label]) for label in order if label in panels]


def plot_curves(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """PNG of training curves, each kind of series on its own axes: losses,
    scores (WA, UA, F1, ...; 0 to 1), seconds per epoch, learning rate (log).

    ``history`` maps a series name (``train_loss``, ``val_ua``, ``lr``,
    ``epoch_seconds``, ...) to one value per epoch. A panel with no series is
    omitted.
    """
    series = {name: list(values) for name, values in history.items() if len(values)}
    if not series:
        raise ValueError("history has no values to plot: every series is empty")
    panels = _curve_panels(series)
    width, height = CURVES_PANEL_INCHES
    figure = Figure(figsize=(width * len(panels), height), layout="constrained")
    for axes, (label, group) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for name, values in group.items():
            epochs = np.arange(1, len(values) + 1)
            axes.plot(epochs, values, marker="o", markersize=CURVE_MARKER_SIZE, label=name)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(label)
        if label == "score":
            axes.set_ylim(0.0, 1.0)
        elif label == "learning rate":
            axes.set_yscale("log")
        axes.grid(alpha=GRID_ALPHA)
        axes.legend()
    figure.suptitle(title)
    return _save(figure, path)
