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


def evaluate_sets(candidate: Candidate, sets: Mapping[str, Rows], n_classes: int) -> dict[str, float | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set."""
    out: dict[str, float | None] = {}
    for name, rows in sets.items():
        if len(rows):
            for metric, value in score(candidate.predict(rows.x, n_classes), rows.y).items():
                out[f"{name}_{metric}"] = value
    return out


def holdout_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The `holdout_*` entries of flat metrics, without the prefix (what promotion compares)."""
    return {k[len("holdout_") :]: v for k, v in metrics.items() if k.startswith("holdout_")}


def per_batch(
    candidate: Candidate, current: Candidate | None, holdout: Rows, n_classes: int, batch_ids: Sequence[str]
) -> tuple[dict[str, float], dict[str, float], float | None]:
    """Each batch's holdout scored apart, by the task's first metric (`batch_<id>_accuracy`, or
    `_rmse`), for the candidate and the current model; and the candidate's negative flip rate:
    the share of holdout rows the current model gets right and the candidate wrong
    (classification; None for regression or without a current model)."""
    if not len(holdout) or not batch_ids:
        return {}, {}, None
    name = "rmse" if n_classes == 0 else "accuracy"

    def scores(pred: np.ndarray) -> dict[str, float]:
        out = {}
        for order in np.unique(holdout.order):
            rows = holdout.order == order
            out[f"batch_{batch_ids[int(order)]}_{name}"] = float(score(pred[rows], holdout.y[rows])[name])
        return out

    mine_pred = candidate.predict(holdout.x, n_classes)
    if current is None:
        return scores(mine_pred), {}, None
    theirs_pred = current.predict(holdout.x, n_classes)
    flips = None
    if n_classes:
        right_before = theirs_pred.argmax(axis=1) == holdout.y
        wrong_now = mine_pred.argmax(axis=1) != holdout.y
        flips = float(np.mean(right_before & wrong_now))
    return scores(mine_pred), scores(theirs_pred), flips


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
    """Metrics of a candidate and of the current model on the same row sets, with each seen
    batch's holdout scored apart (`batch_<id>_<metric>`, a row of the accuracy matrix) and the
    candidate's negative flip rate against the current model."""
    sets = data.eval_sets(extra_eval)
    metrics = evaluate_sets(candidate, sets, data.n_classes)
    current_metrics = evaluate_sets(current, sets, data.n_classes)
    mine, theirs, flips = per_batch(candidate, current, data.holdout, data.n_classes, data.batch_ids)
    return TrialResult(
        candidate,
        {**metrics, **mine, **({"holdout_negative_flip_rate": flips} if flips is not None else {})},
        {**current_metrics, **theirs},
        seconds,
        len(candidate.members),
        dict(execution or {"mode": "local"}),
        peak_rss_mb(),
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
