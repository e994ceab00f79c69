"""Committing a trial's candidate as a new version, and promoting it by compare-and-swap."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from continual_trainer import strategies
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest, lineage
from continual_trainer.data.storage import Store
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.evaluate import better, learned_nothing, rank_key
from continual_trainer.trainer.forgetting import Gate
from continual_trainer.trainer.models import preprocessing_of
from continual_trainer.trials import JUDGED_ON, TrialResult, holdout_metrics
from continual_trainer.updatedata import UpdateData
from continual_trainer.versions import save_candidate

__all__ = [
    "PROMOTE_MODES",
    "Promotion",
    "UpdateOutcome",
    "check_promote",
    "commit",
    "commit_version",
    "promote_by_hand",
    "promote_version",
    "rollback",
    "scores_below",
    "stored_manifest",
]

log = logging.getLogger(__name__)

PROMOTE_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class UpdateOutcome:
    """What an update (or init) produced: the committed version and whether it is current now."""

    version: str
    parent: str | None
    strategy: str
    promoted: bool
    reason: str
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float
    members: int
    executor: str = ""  # where it trained, in words (see `executor.Executor.where`)

    @property
    def warnings(self) -> list[str]:
        """Signs on the holdout that the model learned nothing (see `learned_nothing`)."""
        return learned_nothing(self.metrics)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "warnings": self.warnings}


def check_promote(promote: str, on: str = "holdout") -> None:
    if promote not in PROMOTE_MODES:
        raise UserError.about("promote", promote, f"choose one of {', '.join(PROMOTE_MODES)}")
    if on not in JUDGED_ON:
        raise UserError.about("promote_on", on, f"choose one of {', '.join(JUDGED_ON)}")


@dataclass(frozen=True)
class Promotion:
    """How a committed version may become current, decided once where a command starts and
    passed down whole (to an update, a comparison, a sweep's winner, a stream's files).

    Attributes:
        mode: `auto` (if better than the current model on `on`'s rows and the gate allows),
            `always` or `never`.
        on: what `auto` compares on: `holdout` (every seen batch's held-out rows) or `new`
            (the new batches' only: for data that drifts, where the recent rows matter).
        gate: with `auto`, the forgetting and negative-flip limits a winner must also keep.
    """

    mode: str = "auto"
    on: str = "holdout"
    gate: Gate = field(default_factory=Gate)

    def __post_init__(self) -> None:
        check_promote(self.mode, self.on)

    def but(self, mode: str) -> Promotion:
        """The same promotion with another mode (a comparison's losers: `never`)."""
        return replace(self, mode=mode)


def commit(
    store: Store,
    data: UpdateData,
    strategy_name: str,
    params: Any,
    seed: int,
    result: TrialResult,
    promotion: Promotion,
    by: str = "update",
    origin: dict[str, Any] | None = None,
) -> UpdateOutcome:
    """Save a trial's candidate as a new version, then promote it as `promotion` says.

    Args:
        by: the command committing it (`update`, `stream`, `sweep`), kept in the event log.
        origin: more of where it comes from, for its manifest (e.g. the sweep and trial).
    """
    if result.candidate is None:
        raise ValueError("this trial's candidate did not come back; it cannot be committed")
    trained_old = data.old_ids if getattr(params, "trains_on_old", lambda: False)() else []
    manifest = Manifest(
        parent=data.parent,
        strategy=strategy_name,
        params=asdict(params),
        seed=seed,
        model=str(data.model_spec),
        batches_seen=tuple(data.old_ids + data.new_ids),
        batches_trained=tuple(trained_old + data.new_ids),
        metrics=result.metrics,
        current_metrics=result.current_metrics,
        train_seconds=result.train_seconds,
        execution=result.execution,
        origin=origin or {},
        preprocessing=preprocessing_of(data.model_spec, strategies.get(strategy_name).can.starts_from),
    )
    mine, theirs = holdout_metrics(result.metrics, promotion.on), holdout_metrics(result.current_metrics, promotion.on)
    wins = better(mine, theirs)
    tie = bool(mine) and bool(theirs) and rank_key(mine) == rank_key(theirs)
    refused = None
    if promotion.mode == "auto" and promotion.gate.active and wins:
        refused = promotion.gate.refuses(result.metrics, lineage(data.parent, stored_manifest(store)))
    version, promoted, reason = commit_version(
        store, result.candidate, manifest, promotion, by=by, wins=wins, tie=tie, refused=refused
    )
    return UpdateOutcome(
        version,
        data.parent,
        strategy_name,
        promoted,
        reason,
        result.metrics,
        result.current_metrics,
        result.train_seconds,
        result.members,
    )


def commit_version(
    store: Store,
    candidate: Candidate,
    manifest: Manifest,
    promotion: Promotion,
    *,
    by: str,
    wins: bool,
    tie: bool = False,
    refused: str | None = None,
) -> tuple[str, bool, str]:
    """The one path by which every version enters a store, the first included: a new id, the
    members and then the manifest written (a version without a manifest does not exist), then
    promoted as `promotion` says, by compare-and-swap against the manifest's parent (`refused`:
    what the gate found against it). Returns (version, promoted, reason)."""
    version = store.new_version_id(manifest.strategy.replace("+", "-"))
    save_candidate(store, version, candidate, manifest)
    if promotion.mode == "auto" and refused:
        return version, False, f"better on the holdout, but {refused}"
    promoted, reason = promote_version(store, version, manifest.parent, promotion.mode, wins, by, promotion.on, tie=tie)
    return version, promoted, reason


def promote_version(
    store: Store,
    version: str,
    parent: str | None,
    mode: str,
    wins: bool,
    by: str = "update",
    on: str = "holdout",
    *,
    tie: bool = False,
) -> tuple[bool, str]:
    """Make `version` current if `mode` says so and nobody promoted another since `parent`
    (`tie`: it scores exactly as the current version, which a tie keeps)."""
    where = "the holdout" if on == "holdout" else "the new batches' holdout"
    if mode == "never":
        return False, "--promote never"
    if mode == "auto" and not wins:
        return False, f"not better than the current model on {where}" + (
            " (a tie: the current one stays)" if tie else ""
        )
    if by == "init":  # the store's first version
        if store.promote(version, None, by=by, reason="first model"):
            return True, "first model"
        return False, f"another {by} promoted {store.current()} first"
    reason = "promoted" if mode == "always" else f"better than the current model on {where}"
    if store.promote(version, parent, by=by, reason=f"--promote {mode}: {reason}"):
        return True, reason
    return False, f"another {by} promoted {store.current()} first; this version is kept but not promoted"


def stored_manifest(store: Store) -> Callable[[str], Manifest | None]:
    """`store.manifest`, with None for a version that is gone (for `data.manifest.lineage`)."""

    def manifest_of(version: str) -> Manifest | None:
        try:
            return store.manifest(version)
        except UserError:  # removed by gc, or damaged: the lineage known ends there
            return None

    return manifest_of


def promote_by_hand(store: Store, ref: str, reason: str = "") -> tuple[str, str | None]:
    """`ctrain promote`: make the version `ref` names current (compare-and-swap, recorded with
    `reason`); returns (version, the version it replaced)."""
    version = store.resolve(ref)
    previous = store.current()
    if version == previous:
        return version, previous
    worse = scores_below(store, version, previous)
    _swap(store, version, previous, "promote", reason or "by hand")
    if worse:
        log.warning(worse)
    return version, previous


def scores_below(store: Store, version: str, other: str | None) -> str | None:
    """A warning if `version` scores below `other` on the same holdout rows (both saw the same
    batches), else None (better, equal, or not comparable)."""
    if other is None:
        return None
    mine, theirs = store.manifest(version), store.manifest(other)
    if set(mine.batches_seen) != set(theirs.batches_seen):
        return None
    a, b = holdout_metrics(mine.metrics), holdout_metrics(theirs.metrics)
    if not a or not b or not better(b, a):
        return None
    name, second = ("rmse", "mae") if "rmse" in a else ("accuracy", "log_loss")
    if a.get(name) is None or b.get(name) is None:
        return None
    if a[name] == b[name]:  # a tie on the headline: worse only on the second metric, and it says so
        if a.get(second) is None or b.get(second) is None:
            return None
        return (
            f"{version} ties {other}, the version it replaced, on holdout {name} ({a[name]:.4f}) but has a worse "
            f"{second} ({a[second]:.4f} vs {b[second]:.4f}) on the same rows (`ctrain rollback` undoes this)"
        )
    return (
        f"{version} scores holdout {name} {a[name]:.4f}, worse than {b[name]:.4f} of {other}, the version it "
        f"replaced, on the same holdout rows (`ctrain rollback` undoes this)"
    )


def rollback(store: Store, to: str | None = None, reason: str = "") -> tuple[str, str]:
    """`ctrain rollback`: undo the last change of the current version, making current what was
    current before it (the event log knows; a second rollback redoes it, as `kubectl rollout
    undo` does), or make `to` current (`parent`: the current version's parent in its lineage).
    Returns (version, the version it replaced)."""
    previous = store.current()
    if previous is None:
        raise UserError(f"{store.display}: no current version to roll back from")
    version = store.resolve(to) if to else _current_before(store, previous)
    if version == previous:
        raise UserError(f"{store.display}: {version} is already the current version")
    _swap(store, version, previous, "rollback", reason or f"rolled back from {previous}")
    return version, previous


def _current_before(store: Store, current: str) -> str:
    """The version that was current before the last change made `current` current."""
    for event in reversed(store.events("promote")):
        if event.get("version") != current:
            continue
        before = event.get("previous")
        if not isinstance(before, str) or not before:
            raise UserError(
                f"{store.display}: {current} was the store's first current version; nothing to undo "
                "(use --to VERSION, e.g. --to parent)"
            )
        if before not in store.versions():
            raise UserError(
                f"{store.display}: {before}, current before {current}, no longer exists (deleted by gc); "
                "use --to VERSION"
            )
        return before
    return store.resolve("parent")  # a store without events of its promotions: the lineage


def _swap(store: Store, version: str, previous: str | None, by: str, reason: str) -> None:
    """A promotion a user asked for: compare-and-swap, or UserError if another process won."""
    if not store.promote(version, previous, by=by, reason=reason):
        raise UserError(f"{store.display}: another process promoted {store.current()} meanwhile; run it again")
