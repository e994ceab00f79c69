"""Forgetting, seen through the accuracy matrix: one row per version, one column per batch.

Each version's manifest keeps its score on every seen batch's holdout (`batch_<id>_accuracy`,
or `_rmse` for regression). Along a version's lineage that makes the continual-learning
field's measures (Lopez-Paz & Ranzato's accuracy matrix, Chaudhry et al.'s forgetting):
- forgetting on a batch: the best score any earlier version in the lineage reached on it,
  minus this version's (for RMSE: this version's error minus the lowest earlier one), so
  positive means worse than before; a version's forgetting is its largest over batches;
- backward transfer: the mean, over batches an earlier version learned, of this version's
  score minus the score of the version that learned it (for RMSE the other way round), so
  positive means learning later batches helped the earlier ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from continual_trainer.data.manifest import Manifest


def matrix_row(metrics: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """(metric name, {batch id: score}) from a version's flat metrics."""
    row, name = {}, "accuracy"
    for key, value in metrics.items():
        if key.startswith("batch_") and value is not None:
            batch, _, metric = key[len("batch_") :].rpartition("_")
            row[batch], name = float(value), metric
    return name, row


@dataclass(frozen=True)
class Forgetting:
    """A version's forgetting (the worst batch) and backward transfer along its lineage."""

    worst: float | None = None
    batch: str | None = None
    best_before: float | None = None
    now: float | None = None
    backward_transfer: float | None = None


def forgetting(metrics: Mapping[str, Any], ancestors: list[Manifest]) -> Forgetting:
    """This version's forgetting and backward transfer against its ancestors' matrix rows."""
    name, row = matrix_row(metrics)
    lower_is_better = name == "rmse"
    rows = [matrix_row(m.metrics)[1] for m in ancestors]
    worst: tuple[float, str, float, float] | None = None
    transfer = []
    for batch, now in row.items():
        earlier = [r[batch] for r in rows if batch in r]
        if not earlier:
            continue  # learned by this version: nothing to forget yet
        best = min(earlier) if lower_is_better else max(earlier)
        lost = (now - best) if lower_is_better else (best - now)
        if worst is None or lost > worst[0]:
            worst = (lost, batch, best, now)
        first = earlier[-1]  # the oldest ancestor that scored it: the one that learned it
        transfer.append((first - now) if lower_is_better else (now - first))
    if worst is None:
        return Forgetting()
    return Forgetting(worst[0], worst[1], worst[2], worst[3], sum(transfer) / len(transfer))


@dataclass(frozen=True)
class Gate:
    """`--promote auto`'s limits on forgetting and negative flips (None: no limit)."""

    max_forgetting: float | None = None
    max_flip_rate: float | None = None

    @property
    def active(self) -> bool:
        return self.max_forgetting is not None or self.max_flip_rate is not None

    def refuses(self, metrics: Mapping[str, Any], ancestors: list[Manifest]) -> str | None:
        """Why a version that beats the current one must still not be promoted, or None."""
        if self.max_forgetting is not None:
            f = forgetting(metrics, ancestors)
            if f.worst is not None and f.worst > self.max_forgetting:
                name = matrix_row(metrics)[0]
                return (
                    f"forgets batch {f.batch}: {name} {f.now:.3f}, {f.best_before:.3f} before "
                    f"(forgetting {f.worst:.3f} > --max-forgetting {self.max_forgetting:g})"
                )
        flips = metrics.get("holdout_negative_flip_rate")
        if self.max_flip_rate is not None and flips is not None and flips > self.max_flip_rate:
            return (
                f"negative flip rate {flips:.3f} > --max-flip-rate {self.max_flip_rate:g} "
                "(holdout rows the current model got right and this one gets wrong)"
            )
        return None
