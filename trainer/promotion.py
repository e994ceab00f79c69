"""Committing a trial's candidate as a new version, and promoting it by compare-and-swap."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from data.errors import UserError
from data.manifest import Manifest
from data.storage import Store
from trainer.evaluate import better
from trainer.trials import TrialResult, holdout_metrics
from trainer.updatedata import UpdateData
from trainer.versions import save_candidate

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_promote(promote: str) -> None:
    if promote not in PROMOTE_MODES:
        raise UserError(f"--promote {promote}: choose one of {', '.join(PROMOTE_MODES)}")


def commit(
    store: Store, data: UpdateData, strategy_name: str, params: Any, seed: int, result: TrialResult, promote: str
) -> UpdateOutcome:
    """Save a trial's candidate as a new version, then promote it as `promote` says."""
    if result.candidate is None:
        raise ValueError("this trial's candidate did not come back; it cannot be committed")
    check_promote(promote)
    version = store.new_version_id(strategy_name)
    trained_old = data.old_ids if getattr(params, "trains_on_old", lambda: False)() else []
    save_candidate(
        store,
        version,
        result.candidate,
        Manifest(
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
        ),
    )
    wins = better(holdout_metrics(result.metrics), holdout_metrics(result.current_metrics))
    promoted, reason = promote_version(store, version, data.parent, promote, wins)
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


def promote_version(store: Store, version: str, parent: str | None, mode: str, wins: bool) -> tuple[bool, str]:
    """Make `version` current if `mode` says so and nobody promoted another since `parent`."""
    if mode == "never":
        return False, "--promote never"
    if mode == "auto" and not wins:
        return False, "not better than the current model on the holdout"
    if store.promote(version, parent):
        return True, "promoted" if mode == "always" else "better than the current model on the holdout"
    return False, f"another update promoted {store.current()} first; this version is kept but not promoted"
