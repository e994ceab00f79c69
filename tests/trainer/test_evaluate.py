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
