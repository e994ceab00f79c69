"""Stopping a sweep's hopeless trials early: ASHA, fed by the training loop's epochs.

A trial in a sweep with `scheduler: asha` scores the model it is training on the holdout
every `report_every` epochs (`Watch`, opened around the strategy's training through
`trainer.progress.watching`). At each rung (grace period x reduction factor^k epochs) it
asks the scheduler (`Asha`) whether to go on: a trial whose score is below the best
1/reduction_factor of the scores that reached the rung before it stops there, and its
remaining epochs are never trained. This is asynchronous successive halving as Ray Tune's
`ASHAScheduler` runs it (Li et al., 2018: one bracket, a trial is judged against the trials
that reached its rung earlier, never waits for them). The rungs' records live in the
driver: one `Asha` shared by the threads of a local sweep, or behind a Ray actor that the
trials on the cluster call; a resumed sweep rebuilds them from its trial records, so it
decides as the interrupted run would have.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows, RowSource

if TYPE_CHECKING:
    from continual_trainer.executor import Decide

SCHEDULERS = ("fifo", "asha")
WATCHED_ROWS = 20_000  # holdout rows a trial scores at each report (a seeded sample of larger holdouts)


@dataclass(frozen=True)
class AshaSettings:
    """ASHA's settings, as a sweep file gives them (`scheduler: asha`, `grace_period`,
    `reduction_factor`, `report_every`; 0 for a default chosen from the trials' epochs)."""

    grace_period: int = 0
    reduction_factor: int = 3
    report_every: int = 0

    @classmethod
    def parse(cls, doc: Mapping[str, Any], name: str) -> AshaSettings | None:
        scheduler = doc.get("scheduler", "fifo")
        if scheduler not in SCHEDULERS:
            raise UserError(f"{name}: scheduler must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
        keys = [k for k in ("grace_period", "reduction_factor", "report_every") if k in doc]
        if scheduler == "fifo":
            if keys:
                raise UserError(f"{name}: {', '.join(keys)} apply to `scheduler: asha`")
            return None
        values = {}
        for key in keys:
            value, least = doc[key], 2 if key == "reduction_factor" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"{name}: {key} must be a whole number >= {least} (epochs), not {value!r}")
            values[key] = value
        return cls(**values)

    def rungs(self, max_epochs: int) -> tuple[int, tuple[int, ...]]:
        """(report every, the rungs' epochs) for trials of at most `max_epochs` epochs: by
        default the grace period is max_epochs / reduction_factor^3, so that a trial that goes
        the distance passed three rungs, and trials report at every grace period."""
        rf = self.reduction_factor
        grace = self.grace_period or max(1, round(max_epochs / rf**3))
        rungs, r = [], grace
        while r < max_epochs:
            rungs.append(r)
            r *= rf
        return self.report_every or grace, tuple(rungs)


@dataclass
class Asha:
    """The rungs of one sweep: the score every trial had when it reached each rung.

    Args:
        rungs: epochs at which trials are judged, ascending.
        reduction_factor: a trial goes on past a rung if its score is at least the
            (1 - 1/reduction_factor) quantile of the scores recorded there before it.
        brackets: each trial's bracket (how its strategy starts: `current`, `members`, `body`
            or `scratch`); trials are judged only against trials of their bracket, so a
            network trained from scratch is never stopped for trailing fine-tuned ones that
            started near the answer. Trials not in it share one bracket.
    """

    rungs: tuple[int, ...]
    reduction_factor: int
    brackets: dict[str, str] = field(default_factory=dict)
    _records: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, trial: str, epochs: int, score: float) -> bool:
        """Record `trial`'s `score` (higher is better) after `epochs` epochs; False if it should
        stop. A trial is judged at the highest rung it has reached and not yet been judged at,
        against the trials of its bracket."""
        with self._lock:
            bracket = self.brackets.get(trial, "")
            for rung in reversed(self.rungs):
                recorded = self._records.setdefault((bracket, rung), {})
                if epochs < rung or trial in recorded:
                    continue
                cutoff = self._cutoff(list(recorded.values()))
                recorded[trial] = score
                return cutoff is None or score >= cutoff
            return True

    def _cutoff(self, scores: list[float]) -> float | None:
        if not scores:
            return None
        return float(np.nanpercentile(scores, (1 - 1 / self.reduction_factor) * 100))

    def __getstate__(self) -> dict[str, Any]:  # to a Ray actor: the lock stays here
        return {
            "rungs": self.rungs,
            "reduction_factor": self.reduction_factor,
            "brackets": self.brackets,
            "_records": self._records,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def replay(self, curves: Iterable[tuple[str, list[tuple[int, float]]]]) -> None:
        """Record what earlier trials reported (a resumed sweep's records), in order."""
        for trial, curve in curves:
            for epochs, score in curve:
                self.decide(trial, epochs, score)


class Pruned(Exception):
    """The scheduler stopped this trial at a rung (raised from inside its training)."""

    def __init__(self, epochs: int, score: float) -> None:
        super().__init__(f"stopped by ASHA after {epochs} epochs (holdout score {score:.4g})")
        self.epochs, self.score = epochs, score


class Watch:
    """A trial's milestones (`trainer.progress.Milestones`): every `every` epochs of training
    (counted across the strategy's training runs), the model's score on the holdout sample
    (accuracy, or minus the RMSE: higher is better) goes into `curve` and to `decide`, which
    may stop the trial (`Pruned`)."""

    def __init__(self, trial: str, every: int, rows: Rows, n_classes: int, decide: Decide) -> None:
        self.trial, self.every, self.rows, self.n_classes, self.decide = trial, every, rows, n_classes, decide
        self.epochs = 0
        self.curve: list[tuple[int, float]] = []

    def until_next(self) -> int:
        return self.every - self.epochs % self.every

    def ran(self, epochs: int, model: Any) -> None:
        before, self.epochs = self.epochs, self.epochs + epochs
        if self.epochs // self.every == before // self.every:
            return
        score = self.score(model)
        self.curve.append((self.epochs, score))
        if not self.decide(self.trial, self.epochs, score):
            raise Pruned(self.epochs, score)

    def score(self, model: Any) -> float:
        from continual_trainer.trainer.candidate import member_output, member_proba

        if self.n_classes == 0:
            pred = member_output(model, self.rows.x).reshape(-1)
            value = -float(np.sqrt(np.mean((pred - self.rows.y) ** 2)))
        else:
            proba = member_proba(model, self.rows.x, self.n_classes)
            value = float(np.mean(proba.argmax(axis=1) == self.rows.y))
        return value if math.isfinite(value) else -math.inf


def watched_rows(holdout: RowSource, seed: int = 0) -> Rows:
    """The holdout rows trials score at each report: all of them up to `WATCHED_ROWS`, else a
    seeded sample (read a chunk at a time if they are left in the store)."""
    if holdout.in_memory:
        rows = holdout.load()
    else:
        fraction = min(1.0, 1.5 * WATCHED_ROWS / max(len(holdout), 1))
        rows = Rows.concat(list((holdout.sampled(fraction, seed) if fraction < 1 else holdout).chunks()))
    if len(rows) > WATCHED_ROWS:
        rows = rows.take(np.sort(np.random.default_rng(seed).choice(len(rows), WATCHED_ROWS, replace=False)))
    return rows
