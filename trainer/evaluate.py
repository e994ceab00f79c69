"""Scoring predictions with scikit-learn metrics."""

from __future__ import annotations

import warnings

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


def better(candidate: dict[str, float | None], current: dict[str, float | None]) -> bool:
    """Whether `candidate` beats `current`: higher accuracy, then lower log loss."""
    if not candidate:
        return False
    if not current:
        return True
    ca, cu = candidate["accuracy"], current["accuracy"]
    if ca != cu:
        return ca > cu
    return candidate["log_loss"] < current["log_loss"]
