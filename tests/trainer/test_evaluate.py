"""The metrics computed in NumPy are scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score, roc_auc_score

from continual_trainer.trainer.evaluate import binary_auc, score_regression


def test_regression_metrics_are_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, 400)
    pred = y + rng.normal(0, 4, 400)
    got = score_regression(pred, y)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-12)
    assert score_regression(pred, np.full(400, 3.0))["r2"] is None  # a constant target has no R²


def test_binary_auc_is_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    scores = np.round(y * 0.3 + rng.random(500), 1)  # many ties
    assert binary_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), rel=1e-12)


def test_class_scores_are_scikit_learns_with_what_learning_nothing_needs() -> None:
    from sklearn.metrics import accuracy_score, log_loss

    from continual_trainer.trainer.evaluate import class_parts, join_parts, score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300)
    proba[np.arange(300), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    got = score(proba, y)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(axis=1)))
    assert got["log_loss"] == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]), rel=1e-6)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"), rel=1e-6)
    assert got["rows"] == 300.0 and got["predicted_classes"] == 3.0
    assert got["majority"] == pytest.approx(np.bincount(y).max() / 300)
    assert "nonfinite_rows" not in got
    # parts of several row sets join into the metrics of all their rows
    parts = [class_parts(proba[:100], y[:100]), class_parts(proba[100:], y[100:])]
    joined = join_parts(parts)
    assert joined["y"].dtype == np.int16 and joined["log_true"].dtype == np.float32 and len(joined["y"]) == 300
    from continual_trainer.trainer.evaluate import class_metrics

    again = class_metrics(joined, 3)
    assert again["accuracy"] == got["accuracy"] and again["log_loss"] == pytest.approx(got["log_loss"], rel=1e-6)
    # two classes: the AUC of class 1's probability; one class present: no AUC
    two = np.c_[1 - proba[:, 0], proba[:, 0]]
    binary = (y == 1).astype(int)
    assert score(two, binary)["roc_auc"] == pytest.approx(roc_auc_score(binary, two[:, 1]), rel=1e-6)
    assert score(two, np.zeros(300, int))["roc_auc"] is None
    assert score(proba[y != 2], y[y != 2])["roc_auc"] is None  # a class missing among three: undefined


def test_rows_without_a_finite_prediction_are_scored_as_knowing_nothing() -> None:
    from continual_trainer.trainer.evaluate import finite, score

    proba = np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8], [np.inf, 0.0]])
    y = np.array([0, 1, 1, 0])
    got = score(proba, y)
    assert got["nonfinite_rows"] == 2.0
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.5, 0.8, 0.5])), rel=1e-6)
    fixed, bad = finite(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 6.0]))
    assert bad == 1 and fixed.tolist() == [1.0, 3.0, 3.0]  # the mean label
    same, none = finite(proba[[0, 2]], y[[0, 2]])
    assert none == 0 and same is not None and np.array_equal(same, proba[[0, 2]])
    assert score(np.zeros((0, 2)), np.zeros(0)) == {}
    assert set(score(np.array([1.0, 2.0]), np.array([1.0, 3.0]))) == {
        "mae", "rmse", "r2", "rows", "baseline_rmse", "prediction_std"
    }  # fmt: skip
