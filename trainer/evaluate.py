"""Scoring predictions with scikit-learn metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np


def score(proba: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Accuracy, log loss and ROC AUC of class probabilities against class indices.

    ROC AUC is one-vs-rest for more than two classes, and None where it is undefined
    (a single class among the labels). Empty input gives an empty dict.
    """
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    if len(y) == 0:
        return {}
    n_classes = proba.shape[1]
    labels = list(range(n_classes))
    p = np.clip(proba, 1e-15, 1)
    p = p / p.sum(axis=1, keepdims=True)
    metrics: dict[str, float | None] = {
        "accuracy": float(accuracy_score(y, p.argmax(axis=1))),
        "log_loss": float(log_loss(y, p, labels=labels)),
        "roc_auc": None,
    }
    present = np.unique(y)
    if len(present) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if n_classes == 2:
                metrics["roc_auc"] = float(roc_auc_score(y, p[:, 1]))
            elif len(present) == n_classes:
                metrics["roc_auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=labels))
    metrics["rows"] = float(len(y))
    return metrics


def rank_key(metrics: Mapping[str, float | None]) -> tuple[float, float]:
    """How models are ordered everywhere (promotion, sweeps, a stream's best candidate):
    higher accuracy first, then lower log loss. Missing values rank last."""
    acc, loss = metrics.get("accuracy"), metrics.get("log_loss")
    return (-math.inf if acc is None else acc, -math.inf if loss is None else -loss)


def better(candidate: Mapping[str, float | None], current: Mapping[str, float | None]) -> bool:
    """Whether `candidate` beats `current` by `rank_key`; anything beats no metrics at all."""
    if not candidate:
        return False
    if not current:
        return True
    return rank_key(candidate) > rank_key(current)
