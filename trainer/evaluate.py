"""Scoring predictions with scikit-learn metrics, and the one ranking of models."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np


def score(pred: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Metrics of predictions against targets: class probabilities (n, k) against class
    indices, or predicted numbers (n,) against numbers (regression). Empty input: {}."""
    if len(y) == 0:
        return {}
    pred, bad = finite(pred, y)
    metrics = score_regression(pred, y) if pred.ndim == 1 else score_classes(pred, y)
    if bad:
        metrics["nonfinite_rows"] = float(bad)
    return metrics


def finite(pred: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
    """Predictions with the rows a model gave no number for scored as knowing nothing about
    them (the mean label, or equal class probabilities), and how many there were."""
    bad = ~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)
    if not bad.any():
        return pred, 0
    pred = pred.copy()
    pred[bad] = float(np.mean(y)) if pred.ndim == 1 else 1.0 / pred.shape[1]
    return pred, int(bad.sum())


def score_classes(proba: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Accuracy, log loss and ROC AUC of class probabilities against class indices.

    ROC AUC is one-vs-rest for more than two classes, and None where it is undefined
    (a single class among the labels).
    """
    return class_metrics(class_parts(proba, y), proba.shape[1])


def class_parts(proba: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """What the classification metrics need of each row, smaller than the probabilities: the
    true and the predicted class, the log-probability of the true class and what ROC AUC
    ranks (class 1's probability for two classes, else every class's). Parts of several row
    sets concatenate (`class_metrics` of the joined parts is that of the joined rows)."""
    p = np.clip(proba, 1e-15, 1)
    p = p / p.sum(axis=1, keepdims=True)
    index = np.asarray(y, np.int64)
    classes = np.int16 if p.shape[1] < 2**15 else np.int32
    return {  # 12 bytes a row for two classes: a holdout of millions of rows is scored in little memory
        "y": index.astype(classes),
        "predicted": p.argmax(axis=1).astype(classes),
        "log_true": np.log(p[np.arange(len(index)), index]).astype(np.float32),
        "ranked": (p[:, 1] if p.shape[1] == 2 else p).astype(np.float32),
    }


def join_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of scores for class 1 against 0/1 labels (both present), exactly as scikit-learn's
    `roc_auc_score` (ties count half), as the Mann-Whitney statistic of the positives' average
    ranks: one sort, about 13 bytes a row (scikit-learn's curve takes several times that)."""
    order = np.argsort(score, kind="stable")
    ranked, positive = score[order], y[order] == 1
    del order
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # each run of equal scores
    del ranked
    sizes = np.diff(np.r_[starts, len(positive)])
    hits = np.add.reduceat(positive, starts, dtype=np.int64)
    n_pos = int(hits.sum())
    n_neg = len(positive) - n_pos
    rank_sum = float(np.sum(hits * (starts + (sizes + 1) / 2)))  # 1-based average rank of each run
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def class_metrics(parts: Mapping[str, np.ndarray], n_classes: int) -> dict[str, float | None]:
    """`score_classes` from `class_parts`."""
    y, predicted = parts["y"], parts["predicted"]
    metrics: dict[str, float | None] = {  # in NumPy: scikit-learn's checks cost more than these sums
        "accuracy": float(np.mean(predicted == y)),
        "log_loss": float(-np.mean(parts["log_true"], dtype=np.float64)),
        "roc_auc": None,
    }
    present = np.unique(y)
    if len(present) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if n_classes == 2:
                metrics["roc_auc"] = binary_auc(y, parts["ranked"])
            elif len(present) == n_classes:
                from sklearn.metrics import roc_auc_score  # only here: importing scikit-learn takes a second

                labels = list(range(n_classes))
                metrics["roc_auc"] = float(roc_auc_score(y, parts["ranked"], multi_class="ovr", labels=labels))
    metrics["rows"] = float(len(y))
    # What learning nothing looks like here: always the most frequent class, one class only.
    metrics["majority"] = float(np.bincount(y.astype(np.int64), minlength=n_classes).max() / len(y))
    metrics["predicted_classes"] = float(len(np.unique(predicted)))
    return metrics


def score_regression(pred: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Mean absolute error, root mean squared error and R² (None for a constant target), in
    NumPy (scikit-learn's definitions; importing it would cost a scoring process a second)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    error = y - pred
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(math.sqrt(np.mean(error**2))),
        "r2": float(1 - np.sum(error**2) / np.sum((y - y.mean()) ** 2)) if len(y) > 1 and np.ptp(y) > 0 else None,
        "rows": float(len(y)),
        "baseline_rmse": float(np.std(y)),  # always predicting the mean
        "prediction_std": float(np.std(pred)),
    }


def learned_nothing(metrics: Mapping[str, float | None], prefix: str = "holdout_") -> list[str]:
    """Warnings for a model whose `prefix` metrics look like it learned nothing: (nearly)
    constant predictions, ROC AUC within 0.02 of 0.5, no better than always predicting the
    most frequent class (or the mean)."""

    def get(key: str) -> float | None:
        return metrics.get(prefix + key)

    out = []
    if get("predicted_classes") == 1 and (get("majority") or 1) < 1:
        out.append("it predicts the same class for every holdout row")
    auc = get("roc_auc")
    if auc is not None and abs(auc - 0.5) <= 0.02:
        out.append(f"its ROC AUC is {auc:.3f}, no better than chance")
    acc, majority = get("accuracy"), get("majority")
    if acc is not None and majority is not None and acc <= majority and not out:
        out.append(
            f"its accuracy {acc:.3f} is no better than always predicting the most frequent class ({majority:.3f})"
        )
    spread, base = get("prediction_std"), get("baseline_rmse")
    if spread is not None and base and spread < 0.01 * base:
        out.append("its predictions are (nearly) constant")
    rmse = get("rmse")
    if rmse is not None and base and rmse >= base and spread is not None and spread >= 0.01 * base:
        out.append(f"its RMSE {rmse:.3f} is no better than always predicting the mean ({base:.3f})")
    return out


def rank_key(metrics: Mapping[str, float | None]) -> tuple[float, float]:
    """How models are ordered everywhere (promotion, sweeps, a stream's best candidate), larger
    first: for classification higher accuracy, then lower log loss; for regression lower
    RMSE, then lower MAE. Missing values rank last."""

    def low(key: str) -> float:
        value = metrics.get(key)
        return -math.inf if value is None else -value

    if "rmse" in metrics:
        return (low("rmse"), low("mae"))
    acc = metrics.get("accuracy")
    return (-math.inf if acc is None else acc, low("log_loss"))


def better(candidate: Mapping[str, float | None], current: Mapping[str, float | None]) -> bool:
    """Whether `candidate` beats `current` by `rank_key`; anything beats no metrics at all."""
    if not candidate:
        return False
    if not current:
        return True
    return rank_key(candidate) > rank_key(current)


def headline(task: str) -> tuple[str, str]:
    """The metric a task is judged by first and second (for tables and reports)."""
    return ("rmse", "mae") if task == "regression" else ("accuracy", "log_loss")
