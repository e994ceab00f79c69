"""Running one strategy and scoring what it made, on the same rows as the current model.

Nothing here touches files or Ray: a trial may run in any process.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    """Metrics of a candidate and of the current model on the same row sets."""
    sets = data.eval_sets(extra_eval)
    return TrialResult(
        candidate,
        evaluate_sets(candidate, sets, data.n_classes),
        evaluate_sets(current, sets, data.n_classes),
        seconds,
        len(candidate.members),
        dict(execution or {"mode": "local"}),
        peak_rss_mb(),
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
