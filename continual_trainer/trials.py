"""Running one strategy and scoring what it made, on the same rows as the current model.

Nothing here touches files or Ray: a trial may run in any process.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continual_trainer import strategies
from continual_trainer.data.chunks import StoredRows, StoredUnion
from continual_trainer.data.rows import Rows, RowSource
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.evaluate import class_metrics, class_parts, finite, join_parts, score, score_regression
from continual_trainer.trainer.progress import labelled, phase, recording_training
from continual_trainer.updatedata import UpdateData


@dataclass(frozen=True)
class TrialResult:
    """One strategy run: what it made, its metrics, the current model's on the same rows.

    Attributes:
        candidate: the model or ensemble; None when only the scores came back (sweeps).
        execution: how it ran, for the manifest (`{"mode": "local"}` in one process).
        peak_rss_mb: peak resident memory of the process that ran it.
        curve: in a sweep with a scheduler, its holdout score as it trained: (epochs, score).
    """

    candidate: Candidate | None
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float
    members: int
    execution: dict[str, Any] = field(default_factory=lambda: {"mode": "local"})
    peak_rss_mb: float = 0.0
    curve: tuple[tuple[int, float], ...] = ()


def evaluate_sets(
    candidate: Candidate, sets: Mapping[str, Rows], n_classes: int, batch_ids: Sequence[str] = ()
) -> dict[str, float | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set (see `scored`)."""
    return scored(candidate, sets, n_classes, batch_ids)[0]


PartsOf = Callable[[Candidate, StoredRows, int], tuple[dict[str, np.ndarray], int]]


def stored_parts(candidate: Candidate, rows: StoredRows, n_classes: int) -> tuple[dict[str, np.ndarray], int]:
    """What the metrics need of each of these stored rows (`evaluate.class_parts`, or the
    prediction and target for regression), read a chunk at a time, and how many rows had no
    finite prediction."""
    pieces, missing = [], 0
    for chunk in rows.chunks():
        pred, nonfinite = finite(candidate.predict(chunk.x, n_classes), chunk.y)
        missing += nonfinite
        pieces.append(class_parts(pred, chunk.y) if n_classes else {"pred": pred, "y": chunk.y})
    return (join_parts(pieces) if pieces else {}), missing


def scored(
    candidate: Candidate,
    sets: Mapping[str, RowSource],
    n_classes: int,
    batch_ids: Sequence[str] = (),
    parts_of: PartsOf = stored_parts,
) -> tuple[dict[str, float | None], np.ndarray | None, np.ndarray | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set and, with `batch_ids`
    (every batch in ingestion order), each batch's rows of the `holdout` set scored apart by
    the task's first metric (`batch_<id>_accuracy`, or `_rmse`: a row of the accuracy matrix);
    and its predictions on the `holdout` set (class probabilities, or for sets left in the
    store the predicted classes) with that set's targets.

    Sets left in the store (`data.chunks`) are read a chunk at a time and each of their
    batches predicted once, by `parts_of` (here, or sharded over actors); only what the
    metrics need of each row is kept (`evaluate.class_parts`), never the rows."""
    out: dict[str, float | None] = {}
    holdout_pred = holdout_y = None
    cache: dict[tuple[Any, ...], tuple[dict[str, np.ndarray], int]] = {}
    for name, rows in sets.items():
        if not len(rows):
            continue
        if not rows.in_memory:
            parts, order, bad = _parts_in_pieces(candidate, rows, n_classes, cache, parts_of)
            metrics = class_metrics(parts, n_classes) if n_classes else score_regression(parts["pred"], parts["y"])
            if bad:
                metrics["nonfinite_rows"] = float(bad)
            pred, y = parts["predicted" if n_classes else "pred"], parts["y"]
        else:
            held = rows.load()
            pred, y, order = candidate.predict(held.x, n_classes), held.y, held.order
            metrics = score(pred, y)
        for metric, value in metrics.items():
            out[f"{name}_{metric}"] = value
        if name == "holdout":
            holdout_pred, holdout_y = pred, y
            if batch_ids:  # the first metric alone, in NumPy: one per batch adds up over a long stream
                first = "rmse" if n_classes == 0 else "accuracy"
                classes = pred.argmax(axis=1) if pred.ndim == 2 else pred  # probabilities or classes
                hit = (classes == y).astype(float) if n_classes else (pred - y) ** 2
                for o in np.unique(order):
                    value = float(hit[order == o].mean())
                    out[f"batch_{batch_ids[int(o)]}_{first}"] = value**0.5 if n_classes == 0 else value
    return out, holdout_pred, holdout_y


def _parts_in_pieces(
    candidate: Candidate,
    rows: RowSource,
    n_classes: int,
    cache: dict[tuple[Any, ...], tuple[dict[str, np.ndarray], int]],
    parts_of: PartsOf = stored_parts,
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """What the metrics need of each stored row (`evaluate.class_parts`, or the prediction and
    target for regression), the rows' batch orders and how many rows had no finite prediction;
    each batch is predicted once per `cache` (the holdout and its old and new parts share it)."""
    out, orders, bad = [], [], 0
    for part in StoredUnion.of(rows).parts:
        for single in part.per_batch():
            order = single.orders[0]
            key = (single.part, single.batch_ids[0], single.fraction, single.seed, single.shard, single.validation)
            if key not in cache:
                cache[key] = parts_of(candidate, single, n_classes)
            parts, missing = cache[key]
            if parts:
                out.append(parts)
                orders.append(np.full(len(parts["y"]), order, np.int32))
                bad += missing
    return join_parts(out), np.concatenate(orders), bad


JUDGED_ON = ("holdout", "new")


def holdout_metrics(metrics: Mapping[str, float | None], on: str = "holdout") -> dict[str, float | None]:
    """The `<on>_*` entries of flat metrics, without the prefix (what promotion compares):
    `holdout` is every seen batch's held-out rows, `new` the new batches' only."""
    return {k[len(on) + 1 :]: v for k, v in metrics.items() if k.startswith(f"{on}_")}


def negative_flip_rate(pred: np.ndarray, before: np.ndarray, y: np.ndarray) -> float:
    """The share of rows the model before got right and this one gets wrong (class
    probabilities, or predicted classes)."""
    now, then = (p.argmax(axis=1) if p.ndim == 2 else p for p in (pred, before))
    return float(np.mean((then == y) & (now != y)))


def run_strategy(
    data: UpdateData,
    current: Candidate,
    strategy: strategies.Strategy,
    params: Any,
    seed: int,
    extra_eval: Mapping[str, Rows] | None = None,
) -> TrialResult:
    """Run one strategy and score it; how each of its training runs ended goes to the
    manifest (`execution.training`, see `progress.recording_training`)."""
    with labelled(strategy.name):
        phase(f"building {strategy.name}")
        start = time.perf_counter()
        with recording_training() as runs:
            candidate = strategy(data.inputs(current, seed), params)
        execution = {"mode": "local", **({"training": runs} if runs else {})}
        return score_candidate(data, current, candidate, time.perf_counter() - start, extra_eval, execution)


def score_candidate(
    data: UpdateData,
    current: Candidate,
    candidate: Candidate,
    seconds: float,
    extra_eval: Mapping[str, RowSource] | None = None,
    execution: Mapping[str, Any] | None = None,
    parts_of: PartsOf = stored_parts,
) -> TrialResult:
    """Metrics of a candidate and of the current model on the same row sets, each seen batch's
    holdout scored apart, and (classification) the candidate's negative flip rate. Rows left
    in the store are scored by `parts_of` (see `scored`)."""
    sets = data.eval_sets(extra_eval)
    phase(f"scoring {sum(len(rows) for rows in sets.values()):,} held-out rows")
    metrics, pred, y = scored(candidate, sets, data.n_classes, data.batch_ids, parts_of)
    current_metrics, before, _ = scored(current, sets, data.n_classes, data.batch_ids, parts_of)
    if data.n_classes and pred is not None and before is not None and y is not None:
        metrics["holdout_negative_flip_rate"] = negative_flip_rate(pred, before, y)
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
