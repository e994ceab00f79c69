"""Scoring large Parquet batches on several actors, each reading its own row groups.

Plain pyarrow reads rather than Ray Data: actors that hold every CPU would starve Ray
Data's own tasks (ray-project/ray#44687), and a row group is a natural shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from continual_trainer.cluster.pool import ACTOR_MEMORY
from continual_trainer.cluster.runtime import get, kill, pin_threads
from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import redact, resolve
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store
from continual_trainer.versions import StoredCandidate, stored_candidate


@ray.remote
class ShardScorer:
    """Holds one model version; scores row groups of Parquet files it reads itself."""

    def __init__(self, stored: StoredCandidate, schema: Schema) -> None:
        pin_threads()
        self.candidate = stored.load()
        self.schema = schema

    def score(self, uri: str, row_groups: list[int], with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
        fs, path = resolve(uri)
        columns = [*self.schema.features, *([self.schema.label] if with_labels else [])]
        with fs.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_groups(row_groups, columns=columns)
        source = f"{redact(uri)} (row groups {row_groups[0]}-{row_groups[-1]})"
        rows = self.schema.conform(table, source)  # the rule `ctrain predict` and `serve` read rows by
        pred = self.candidate.predict(self.schema.inputs(rows), self.schema.n_classes)
        return pred.astype(np.float32), self.schema.targets(table, source) if with_labels else None

    def evaluate(self, uri: str, row_groups: list[int]) -> dict[str, Any]:
        """Additive parts of the metrics of these row groups (see `ScorerPool.evaluate`)."""
        proba, labels = self.score(uri, row_groups, True)
        if labels is None:
            raise ValueError("rows scored with their labels came back without them")
        y = labels
        if proba.ndim == 1:  # regression: sums of errors and of the targets
            err = proba.astype(np.float64) - y
            yy = y.astype(np.float64)
            return {
                "rows": len(y),
                "sse": float(err @ err),
                "sae": float(np.abs(err).sum()),
                "sy": float(yy.sum()),
                "syy": float(yy @ yy),
            }
        picked = np.clip(proba[np.arange(len(y)), y].astype(np.float64), 1e-15, 1)
        parts: dict[str, Any] = {
            "rows": len(y),
            "correct": int((proba.argmax(axis=1) == y).sum()),
            "log_loss_sum": float(-np.log(picked).sum()),
        }
        if proba.shape[1] == 2:  # sorted scores per class: the driver merges them for an exact ROC AUC
            parts["pos"], parts["neg"] = np.sort(proba[y == 1, 1]), np.sort(proba[y == 0, 1])
        else:
            parts["proba"], parts["y"] = proba, y
        return parts


@dataclass
class ScorerPool:
    """Warm actors holding one version: create once, score many files."""

    actors: list[Any]

    @classmethod
    def start(cls, store: Store, version: str, n: int) -> ScorerPool:
        stored = ray.put(stored_candidate(store, version))
        make = ShardScorer.options(num_cpus=1, memory=ACTOR_MEMORY)  # type: ignore[attr-defined]  # a @ray.remote class: mypy does not apply class decorators
        actors = [make.remote(stored, store.schema) for _ in range(n)]
        get([a.__ray_ready__.remote() for a in actors])
        return cls(actors)

    def score(self, uri: str, *, with_labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (and label indices) of every row of `uri`, in file order."""
        parts = self._map(uri, lambda actor, groups: actor.score.remote(uri, groups, with_labels))
        proba = np.concatenate([p for p, _ in parts])
        labels = np.concatenate([y for _, y in parts]) if with_labels else None
        return proba, labels

    def evaluate(self, uri: str) -> dict[str, float | None]:
        """Accuracy, log loss and ROC AUC of every labelled row of `uri`, computed per shard.

        Accuracy and log loss are sums over shards; the binary ROC AUC is exact, from
        each positive's rank among the negatives' sorted scores (ties count one half),
        so the driver never sorts or scores the whole table itself.
        """
        parts = self._map(uri, lambda actor, groups: actor.evaluate.remote(uri, groups))
        n = sum(p["rows"] for p in parts)
        if "sse" in parts[0]:
            sse, sy, syy = (sum(p[k] for p in parts) for k in ("sse", "sy", "syy"))
            spread = syy - sy * sy / n
            return {
                "mae": sum(p["sae"] for p in parts) / n,
                "rmse": float(np.sqrt(sse / n)),
                "r2": 1 - sse / spread if n > 1 and spread > 0 else None,
                "rows": float(n),
            }
        metrics: dict[str, float | None] = {
            "accuracy": sum(p["correct"] for p in parts) / n,
            "log_loss": sum(p["log_loss_sum"] for p in parts) / n,
            "roc_auc": None,
            "rows": float(n),
        }
        if "pos" in parts[0]:
            neg = np.sort(np.concatenate([p["neg"] for p in parts]))
            pos = np.concatenate([p["pos"] for p in parts])
            if len(pos) and len(neg):
                below = np.searchsorted(neg, pos, side="left")
                ties = np.searchsorted(neg, pos, side="right") - below
                metrics["roc_auc"] = float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))
        else:
            from continual_trainer.trainer.evaluate import score

            proba = np.concatenate([p["proba"] for p in parts])
            metrics["roc_auc"] = score(proba, np.concatenate([p["y"] for p in parts]))["roc_auc"]
        return metrics

    def _map(self, uri: str, call: Any) -> list[Any]:
        fs, path = resolve(uri)
        try:
            with fs.open_input_file(path) as f:
                n_groups = pq.ParquetFile(f).metadata.num_row_groups
        except (OSError, ValueError) as exc:
            raise UserError(f"{redact(uri)}: not a readable Parquet file ({exc})") from None
        shards = [[int(g) for g in s] for s in np.array_split(np.arange(n_groups), min(len(self.actors), n_groups))]
        return get([call(actor, shard) for actor, shard in zip(self.actors, shards, strict=False) if shard])

    def stop(self) -> None:
        kill(self.actors)
