"""WA, UA, macro-F1 and the confusion matrix against hand-computed values; PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avser.metrics import (
    classification_report,
    confusion,
    macro_f1,
    per_class_recall,
    plot_confusion,
    plot_curves,
    unweighted_accuracy,
    weighted_accuracy,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A blank figure of these sizes is already several kB; drawn content adds more.
MIN_PNG_BYTES = 5_000

# Class 0: 4 clips, 3 right. Class 1: 2 clips, 1 right. Class 2: 2 clips, 2 right.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def test_weighted_accuracy_is_plain_accuracy():
    assert weighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx(6 / 8)


def test_unweighted_accuracy_is_mean_class_recall():
    assert per_class_recall(Y_TRUE, Y_PRED) == pytest.approx({0: 3 / 4, 1: 1 / 2, 2: 1.0})
    assert unweighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_macro_f1_by_hand():
    # precision: class 0 3/3, class 1 1/2, class 2 2/3; recall 3/4, 1/2, 1.
    f1 = [2 * p * r / (p + r) for p, r in ((1.0, 0.75), (0.5, 0.5), (2 / 3, 1.0))]
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(np.mean(f1))


def test_ua_differs_from_wa_on_imbalanced_data():
    # Majority-class guessing: 9 of 10 right, but the minority class is never found.
    y_true = np.array([0] * 9 + [1])
    y_pred = np.zeros(10, dtype=int)
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(0.9)
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx(0.5)
    assert macro_f1(y_true, y_pred) == pytest.approx((2 * 0.9 / 1.9 + 0.0) / 2)


def test_ua_ignores_classes_absent_from_truth():
    # Class 2 exists in the label set but not in this test split.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1.0) / 2)


def test_confusion_rows_are_true_classes():
    expected = np.array([[3, 1, 0], [0, 1, 1], [0, 0, 2]])
    np.testing.assert_array_equal(confusion(Y_TRUE, Y_PRED, 3), expected)
    # Trailing classes never seen still get their rows and columns.
    assert confusion(Y_TRUE, Y_PRED, 5).shape == (5, 5)


def test_confusion_rejects_labels_outside_the_class_range():
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion(Y_TRUE, Y_PRED, 2)


def test_mismatched_or_empty_labels_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        weighted_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        unweighted_accuracy([], [])


def test_classification_report_holds_every_metric_and_is_json():
    names = ["neutral", "happy", "sad", "angry"]
    report = classification_report(Y_TRUE, Y_PRED, names)
    assert report["wa"] == pytest.approx(6 / 8)
    assert report["ua"] == pytest.approx(unweighted_accuracy(Y_TRUE, Y_PRED))
    assert report["macro_f1"] == pytest.approx(macro_f1(Y_TRUE, Y_PRED))
    assert report["per_class_recall"] == {"neutral": 0.75, "happy": 0.5, "sad": 1.0, "angry": None}
    assert report["support"] == {"neutral": 4, "happy": 2, "sad": 2, "angry": 0}
    assert report["confusion"][0] == [3, 1, 0, 0]
    assert report["n"] == 8
    assert json.loads(json.dumps(report)) == report


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > MIN_PNG_BYTES


def test_plot_confusion_writes_png(tmp_path):
    names = ["neutral", "happy", "sad", "angry"]
    cm = np.array(classification_report(Y_TRUE, Y_PRED, names)["confusion"])
    out = plot_confusion(cm, names, tmp_path / "figures" / "confusion.png", "test split")
    assert out == tmp_path / "figures" / "confusion.png"
    _assert_png(out)


def test_plot_confusion_rejects_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="does not match 2 label names"):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "cm.png")


def test_plot_curves_writes_png(tmp_path):
    history = {
        "train_loss": [1.9, 1.4, 1.1, 0.9],
        "val_loss": [1.95, 1.6, 1.4, 1.35],
        "val_wa": [0.3, 0.45, 0.55, 0.6],
        "val_ua": [0.28, 0.41, 0.52, 0.58],
    }
    _assert_png(plot_curves(history, tmp_path / "curves.png", "fusion"))
    # A history with only losses still plots (one panel).
    _assert_png(plot_curves({"train_loss": [1.0, 0.5]}, tmp_path / "loss.png", "pretrain"))


def test_plot_curves_refuses_empty_history(tmp_path):
    with pytest.raises(ValueError, match="no values"):
        plot_curves({"train_loss": []}, tmp_path / "curves.png", "empty")


def test_curves_put_each_kind_of_series_on_its_own_axes():
    from avser.metrics import _curve_panels

    history = {"train_loss": [2.0, 1.5], "val_ua": [0.2, 0.4], "lr": [1e-3, 5e-4],
               "epoch_seconds": [12.0, 11.0], "val_loss": [2.1, 1.9]}
    panels = dict(_curve_panels(history))
    assert list(panels) == ["loss", "score", "seconds per epoch", "learning rate"]
    assert set(panels["loss"]) == {"train_loss", "val_loss"}
    assert set(panels["score"]) == {"val_ua"}
    assert set(panels["seconds per epoch"]) == {"epoch_seconds"}
    assert set(panels["learning rate"]) == {"lr"}


def test_confusion_ticks_carry_each_true_class_recall():
    from avser.metrics import _recall_label

    assert _recall_label("angry", 3, 4) == "angry (75%)"
    assert _recall_label("sad", 0, 0) == "sad (-)"
