"""Running one strategy and scoring what it made, on the same rows as the current model.

Nothing here touches files or Ray: a trial may run in any process.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continual_trainer import strategies
from continual_trainer.data.rows import Rows
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.evaluate import score
from continual_trainer.trainer.updatedata import UpdateData


@dataclass(frozen=True)
class TrialResult:
    """One strategy run: what it made, its metrics, the current model's on the same rows.

    Attributes:
        candidate: the model or ensemble; None when only the scores came back (sweeps).
        execution: how it ran, for the manifest (`{"mode": "local"}` in one process).
        peak_rss_mb: peak resident memory of the process that ran it.
    """

    candidate: Candidate | None
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float
    members: int
    execution: dict[str, Any] = field(default_factory=lambda: {"mode": "local"})
    peak_rss_mb: float = 0.0


def evaluate_sets(
    candidate: Candidate, sets: Mapping[str, Rows], n_classes: int, batch_ids: Sequence[str] = ()
) -> dict[str, float | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set (see `scored`)."""
    return scored(candidate, sets, n_classes, batch_ids)[0]


def scored(
    candidate: Candidate, sets: Mapping[str, Rows], n_classes: int, batch_ids: Sequence[str] = ()
) -> tuple[dict[str, float | None], np.ndarray | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set and, with `batch_ids`
    (every batch in ingestion order), each batch's rows of the `holdout` set scored apart by
    the task's first metric (`batch_<id>_accuracy`, or `_rmse`: a row of the accuracy matrix);
    and its predictions on the `holdout` set."""
    out: dict[str, float | None] = {}
    holdout_pred = None
    for name, rows in sets.items():
        if not len(rows):
            continue
        pred = candidate.predict(rows.x, n_classes)
        for metric, value in score(pred, rows.y).items():
            out[f"{name}_{metric}"] = value
        if name == "holdout":
            holdout_pred = pred
            if batch_ids:  # the first metric alone, in NumPy: one per batch adds up over a long stream
                first = "rmse" if n_classes == 0 else "accuracy"
                hit = (pred - rows.y) ** 2 if n_classes == 0 else (pred.argmax(axis=1) == rows.y).astype(float)
                for order in np.unique(rows.order):
                    value = float(hit[rows.order == order].mean())
                    out[f"batch_{batch_ids[int(order)]}_{first}"] = value**0.5 if n_classes == 0 else value
    return out, holdout_pred


JUDGED_ON = ("holdout", "new")


def holdout_metrics(metrics: Mapping[str, float | None], on: str = "holdout") -> dict[str, float | None]:
    """The `<on>_*` entries of flat metrics, without the prefix (what promotion compares):
    `holdout` is every seen batch's held-out rows, `new` the new batches' only."""
    return {k[len(on) + 1 :]: v for k, v in metrics.items() if k.startswith(f"{on}_")}


def negative_flip_rate(pred: np.ndarray, before: np.ndarray, y: np.ndarray) -> float:
    """The share of rows the model before got right and this one gets wrong (class probabilities)."""
    return float(np.mean((before.argmax(axis=1) == y) & (pred.argmax(axis=1) != y)))


def run_strategy(
    data: UpdateData,
    current: Candidate,
    strategy: strategies.Strategy,
    params: Any,
    seed: int,
    extra_eval: Mapping[str, Rows] | None = None,
) -> TrialResult:
    """Run one strategy and score it."""
    start = time.perf_counter()
    candidate = strategy(data.inputs(current, seed), params)
    return score_candidate(data, current, candidate, time.perf_counter() - start, extra_eval)


def score_candidate(
    data: UpdateData,
    current: Candidate,
    candidate: Candidate,
    seconds: float,
    extra_eval: Mapping[str, Rows] | None = None,
    execution: Mapping[str, Any] | None = None,
) -> TrialResult:
    """Metrics of a candidate and of the current model on the same row sets, each seen batch's
    holdout scored apart, and (classification) the candidate's negative flip rate."""
    sets = data.eval_sets(extra_eval)
    metrics, pred = scored(candidate, sets, data.n_classes, data.batch_ids)
    current_metrics, before = scored(current, sets, data.n_classes, data.batch_ids)
    if data.n_classes and pred is not None and before is not None:
        metrics["holdout_negative_flip_rate"] = negative_flip_rate(pred, before, data.holdout.y)
    return TrialResult(
        candidate,
        metrics,
        current_metrics,
        seconds,
        len(candidate.members),
        dict(execution or {"mode": "local"}),
        peak_rss_mb(),
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
