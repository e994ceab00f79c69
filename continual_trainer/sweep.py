"""Sweeps: strategies x parameters x seeds, every trial on the same holdouts, wherever they run.

A sweep lives in the store under its id: the spec it ran, one record per finished
trial (the source of truth, written as each trial ends), and the outputs: a results
table, a Markdown report ranking the configurations and plots. `--resume` reruns
exactly the trials without a record, so an interrupted sweep finishes the same way on
every storage backend. The executor decides where trials run (Ray Tune on a cluster,
or side by side on this process's cores); nothing here touches Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from continual_trainer import strategies
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest, lineage
from continual_trainer.data.parquet import table_to_bytes
from continual_trainer.data.storage import Store, utc_stamp
from continual_trainer.executor import (
    Executor,
    Failure,
    Job,
    Schedule,
    StoppedEarly,
    SweepSettings,
    TrialOutcome,
    WorkFailed,
)
from continual_trainer.promotion import stored_manifest
from continual_trainer.schedule import Asha, AshaSettings, watched_rows
from continual_trainer.search import SEARCHES, Tpe, draws, key_of, largest, product
from continual_trainer.sizing import UPDATE_SECONDS, sized, sized_and_said
from continual_trainer.sweep_results import (
    accuracy_matrix_png,
    metric_names,
    mostly_stopped,
    plots,
    render_report,
    summarize,
)
from continual_trainer.trainer import params as P
from continual_trainer.trainer.evaluate import headline, rank_key
from continual_trainer.trainer.forgetting import forgetting
from continual_trainer.trainer.progress import report
from continual_trainer.updatedata import NothingNew, default_memory_budget, load_update_data
from continual_trainer.versions import stored_candidate

__all__ = [
    "SweepResult",
    "SweepSpec",
    "TrialSpec",
    "metric_names",
    "run_sweep",
    "summarize",
]

log = logging.getLogger(__name__)


# The most configurations a search draws per strategy: each is a trial with its own record, and
# drawing them happens before the first trial starts (a larger number looked like a hang).
MAX_SAMPLES = 10_000
_GRID_KEYS = {"strategies", "params", "seeds", "search", "num_samples", "search_seed"}
_SCHEDULE_KEYS = {"scheduler", "grace_period", "reduction_factor", "report_every"}
_SETTING_KEYS = {f for f in SweepSettings.__dataclass_fields__}


@dataclass(frozen=True)
class TrialSpec:
    strategy: str
    params: dict[str, Any]
    seed: int

    @property
    def trial_id(self) -> str:
        key = json.dumps([self.strategy, self.params, self.seed], sort_keys=True, default=str)
        return f"{self.strategy}-s{self.seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def identity(self) -> dict[str, Any]:
        """What names the trial in its record."""
        params = json.dumps(self.params, sort_keys=True)
        return {"trial_id": self.trial_id, "strategy": self.strategy, "params": params, "seed": self.seed}

    def job(self) -> Job:
        strategy = strategies.get(self.strategy)
        return Job(strategy, strategy.make_params(self.params), self.seed, trial=self.trial_id)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file; `trials` is the full grid (or the random draws), validated
    against the registry; `asha`: the scheduler's settings with `scheduler: asha`, else None
    (every trial runs to its end). With `search: tpe` the trials are proposed as the sweep runs:
    `trials` is empty and `spaces` holds each strategy's space, searched for `num_samples`
    configurations, each run once per seed of `seeds`."""

    trials: tuple[TrialSpec, ...]
    source: str
    settings: SweepSettings = field(default_factory=SweepSettings)
    asha: AshaSettings | None = None
    search: str = "grid"
    spaces: tuple[tuple[str, dict[str, Any]], ...] = ()
    seeds: tuple[int, ...] = (0,)
    num_samples: int = 0
    search_seed: int = 0

    @property
    def planned(self) -> int:
        """How many trials the sweep will run (at most, for TPE)."""
        return len(self.trials) or len(self.spaces) * self.num_samples * len(self.seeds)

    @classmethod
    def parse(cls, text: str, name: str = "sweep config") -> SweepSpec:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or "strategies" not in doc:
            raise UserError(f"{name}: expected a mapping with a `strategies` list (see examples/sweep.yaml)")
        unknown = set(doc) - _GRID_KEYS - _SETTING_KEYS - _SCHEDULE_KEYS
        if unknown:
            known = ", ".join(sorted(_GRID_KEYS | _SETTING_KEYS | _SCHEDULE_KEYS))
            raise UserError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
        search = doc.get("search", "grid")
        if search not in SEARCHES:
            raise UserError(f"{name}: search must be one of {', '.join(SEARCHES)}, not {search!r}")
        samples = doc.get("num_samples", 10)
        if search != "grid" and not (
            isinstance(samples, int) and not isinstance(samples, bool) and 1 <= samples <= MAX_SAMPLES
        ):
            raise UserError(f"{name}: num_samples must be a whole number from 1 to {MAX_SAMPLES:,}, not {samples!r}")
        if search == "grid" and ("num_samples" in doc or "search_seed" in doc):
            raise UserError(f"{name}: num_samples and search_seed apply to `search: random` and `search: tpe`")
        search_seed = doc.get("search_seed", 0)
        if not isinstance(search_seed, int) or isinstance(search_seed, bool):
            raise UserError(f"{name}: search_seed must be a whole number, not {search_seed!r}")
        rng = np.random.default_rng(search_seed)
        shared = doc.get("params") or {}
        if not isinstance(shared, dict):
            raise UserError(f"{name}: `params` must be a mapping of parameter to value or list of values")
        seeds = doc.get("seeds", [0])
        seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise UserError(f"{name}: `seeds` must be a whole number or a list of them")
        if not isinstance(doc["strategies"], list | type(None)):
            raise UserError(f"{name}: `strategies` must be a list")
        trials: list[TrialSpec] = []
        spaces: list[tuple[str, dict[str, Any]]] = []
        used: set[str] = set()
        for entry in doc["strategies"] or []:
            strategy_name, own = (entry, {}) if isinstance(entry, str) else _one_item(entry, name)
            strategy = strategies.get(strategy_name)
            accepted = set(strategy.param_names)
            grid = {k: v for k, v in shared.items() if k in accepted}
            used |= set(grid)
            grid.update(own)
            if search == "tpe":
                Tpe(grid, search_seed, name)  # its space is checked here, before any work
                spaces.append((strategy_name, grid))
            combos = product(grid, name) if search == "grid" else draws(grid, rng, int(samples), name)
            for combo in combos if search != "tpe" else combos[:1]:
                try:
                    strategy.make_params(combo)  # validate now, before any cluster work
                except UserError as exc:
                    if search == "grid":
                        raise
                    raise UserError(f"{name}: a sampled {strategy_name} configuration {combo}: {exc}") from None
                trials.extend(TrialSpec(strategy_name, combo, seed) for seed in seeds)
        # A configuration drawn (or listed) twice is one trial: trials are known by their content.
        trials = list({t.trial_id: t for t in reversed(trials)}.values())[::-1]
        stray = set(shared) - used
        if stray:
            raise UserError(f"{name}: no listed strategy has parameter(s) {', '.join(sorted(stray))}")
        if not trials:
            raise UserError(f"{name}: no strategies listed")
        try:
            settings = P.build(SweepSettings, {k: doc[k] for k in _SETTING_KEYS if k in doc})
        except ValueError as exc:
            raise UserError(f"{name}: {exc}") from None
        asha = AshaSettings.parse(doc, name)
        if search == "tpe":  # proposed as the sweep runs, from the scores before
            return cls((), text, settings, asha, search, tuple(spaces), tuple(seeds), int(samples), search_seed)
        return cls(tuple(trials), text, settings, asha, search)


def _one_item(entry: Any, name: str) -> tuple[str, dict[str, Any]]:
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise UserError(f"{name}: each strategy is a name or `name: {{param: values}}`, got {entry!r}")
    ((strategy_name, grid),) = entry.items()
    if grid is not None and not isinstance(grid, dict):
        raise UserError(f"{name}: parameters of {strategy_name} must be a mapping")
    return str(strategy_name), dict(grid or {})


@dataclass(frozen=True)
class SweepResult:
    """What a sweep left: its id, where its outputs are, its results, and what failed.

    Attributes:
        failures: (trial id, Failure) of every trial that ended without a result in this run.
        stopped: trials the scheduler (ASHA) stopped early; `finished` does not count them.
        where: where its trials ran (`Executor.where`).
    """

    sweep_id: str
    folder: str
    table: pa.Table
    trials: int
    finished: int
    failures: list[tuple[str, Failure]] = field(default_factory=list)
    where: str = ""
    stopped: int = 0

    def summary(self, task: str = "classification") -> list[dict[str, Any]]:
        """`summarize` of the finished trials: mean and std over seeds, ranked."""
        return summarize(self.table.to_pylist(), task) if self.finished else []

    def __repr__(self) -> str:
        best = self.summary()[:1]
        top = f"; best {best[0]['strategy']} {best[0]['params']}".rstrip() if best else ""
        return (
            f"SweepResult({self.sweep_id}: {self.finished} of {self.trials} trial(s) finished, "
            f"{len(self.failures)} failed, {self.stopped} stopped early{top}; results in {self.folder})"
        )


def run_sweep(
    store: Store,
    executor: Executor,
    spec: SweepSpec | None = None,
    *,
    resume: str | None = None,
    memory_budget: int | None = None,
) -> SweepResult:
    """Run (or, with `resume`, finish) a sweep; trials run where `executor` says. Above
    `memory_budget` (bytes; default `updatedata.default_memory_budget`) the trials read the
    store a chunk at a time, if all their strategies can (see `updatedata.load_update_data`).

    Raises UserError if every trial failed through the user's input, WorkFailed if
    every trial failed otherwise.
    """
    if resume:
        text = store.sweep_spec(resume)
        if text is None:
            raise UserError.about("resume", resume, f"no such sweep in {store.display}")
        spec = SweepSpec.parse(text, f"sweep {resume}'s spec")
    if spec is None:
        raise ValueError("give a spec or a sweep id to resume")
    sweep_id = resume or f"sweep-{utc_stamp()}"
    probes = [t.job() for t in spec.trials] or [_probe(name, grid) for name, grid in spec.spaces]
    in_pieces = all(j.strategy.can.in_pieces for j in probes)
    try:
        data = load_update_data(
            store,
            params=[j.params for j in probes] if spec.trials else None,  # TPE's trials are not known yet
            memory_budget=default_memory_budget(in_pieces) if memory_budget is None else memory_budget,
            in_pieces=in_pieces,
        )
    except NothingNew:
        if not resume:
            raise
        raise UserError.about(
            "resume",
            resume,
            f"the batches it compared on were learned since (the current version is {store.current()}); "
            "its results and report stay in the store; a new sweep compares on the next new batches",
        ) from None
    if len(data.holdout) == 0:
        raise UserError(f"{store.display}: sweeps score trials on held-out rows; this store's holdout_fraction is 0")
    if not resume:
        store.write_sweep_spec(sweep_id, spec.source)
    recorded = store.trial_records(sweep_id)
    runner = _Runner(store, executor, spec, data, sweep_id, recorded, probes)
    if spec.search == "tpe":
        trials = _search_tpe(runner, spec, recorded)
    else:
        trials = list(spec.trials)
        runner.run([t for t in trials if t.trial_id not in recorded])
    failures = runner.failures
    result = _write_outputs(store, sweep_id, spec, trials, failures, runner.task, runner.ancestors)
    result = dataclasses.replace(result, where=executor.where)
    if result.finished == 0 and result.stopped == 0 and failures:
        first = next((f for _, f in failures if f.user_error), failures[0][1])
        message = f"sweep {sweep_id}: none of {result.trials} trials finished; first failure: {first.message}"
        raise (UserError if first.user_error else WorkFailed)(message)
    return result


def _probe(strategy_name: str, grid: Mapping[str, Any]) -> Job:
    """A job of the strategy with the longest training its space allows (for planning)."""
    epochs = largest(grid.get("epochs"))
    strategy = strategies.get(strategy_name)
    return Job(strategy, strategy.make_params({} if epochs is None else {"epochs": int(epochs)}), 0)


class _Runner:
    """Runs batches of a sweep's trials on the executor and records each as it ends (finished,
    stopped early by the scheduler, or failed), with one progress bar and one scheduler for
    the whole sweep."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        spec: SweepSpec,
        data: Any,
        sweep_id: str,
        recorded: Mapping[str, dict[str, Any]],
        probes: list[Job],
    ) -> None:
        self.store, self.executor, self.spec, self.data, self.sweep_id = store, executor, spec, data, sweep_id
        self.task = store.schema.task
        self.failures: list[tuple[str, Failure]] = []
        self.ancestors = lineage(data.parent, stored_manifest(store))
        self.bar = _Progress(spec.planned, len(recorded), self.task)
        self.told = False
        self.asha: Asha | None = None
        self.schedule: Schedule | None = None
        if spec.asha is not None:
            every, rungs = spec.asha.rungs(max((getattr(j.params, "epochs", 1) for j in probes), default=1))
            brackets = {trial: _starts(r["strategy"]) for trial, r in recorded.items() if "strategy" in r}
            self.asha = Asha(rungs, spec.asha.reduction_factor, brackets)
            self.asha.replay((trial, _curve(r)) for trial, r in recorded.items())
            self.schedule = Schedule(every, watched_rows(data.holdout), self.asha.decide)

    def run(self, trials: list[TrialSpec]) -> dict[str, TrialOutcome]:
        """Run `trials` (sized to the rows; the first plan is told once); outcomes by trial id."""
        if not trials:
            return {}
        if self.asha is not None:  # a search's trials are known only as it proposes them
            self.asha.brackets.update({t.trial_id: _starts(t.strategy) for t in trials})
        pairs = [(t.job(), frozenset(t.params)) for t in trials]
        if self.told:
            jobs = [sized(job, self.data, UPDATE_SECONDS, keys) for job, keys in pairs]
        else:
            jobs, self.told = sized_and_said(pairs, self.data, UPDATE_SECONDS), True
        outcomes: dict[str, TrialOutcome] = {}

        def record(i: int, outcome: TrialOutcome) -> None:
            trial = trials[i]
            outcomes[trial.trial_id] = outcome
            if isinstance(outcome, Failure):
                self.failures.append((trial.trial_id, outcome))
            elif isinstance(outcome, StoppedEarly):
                self.store.write_trial_record(self.sweep_id, trial.trial_id, _stopped_record(trial, outcome))
            else:
                row = _record(trial, outcome, self.task, self.ancestors)
                self.store.write_trial_record(self.sweep_id, trial.trial_id, row)
                self.bar.best(trial.strategy, outcome.metrics, row["params"])
            if self.asha is not None and not isinstance(outcome, Failure):
                self.asha.replay([(trial.trial_id, list(outcome.curve))])  # what a Ray actor heard
            self.bar.update()

        current = stored_candidate(self.store, self.data.parent)
        self.executor.sweep(self.data, current, jobs, self.spec.settings, record, self.schedule)
        return outcomes


def _score(outcome: TrialOutcome | Mapping[str, Any], task: str) -> float | None:
    """What TPE maximises: the holdout's first metric (accuracy, or minus the RMSE); for a
    trial stopped early, its score when it stopped (as Tune's searchers see a stopped trial)."""
    if isinstance(outcome, Failure):
        return None
    if isinstance(outcome, StoppedEarly):
        return outcome.score
    if isinstance(outcome, Mapping):
        if "stopped_epochs" in outcome:
            return float(outcome["stopped_score"])
        metrics = {m: outcome.get(f"holdout_{m}") for m in headline(task)}
    else:
        metrics = {m: outcome.metrics.get(f"holdout_{m}") for m in headline(task)}
    value = rank_key(metrics)[0]
    return None if value == -float("inf") else value


def _search_tpe(runner: _Runner, spec: SweepSpec, recorded: Mapping[str, dict[str, Any]]) -> list[TrialSpec]:
    """Optuna's TPE (`search.Tpe`, one per strategy) proposes `num_samples` configurations per
    strategy, a wave at a time (`max_concurrent` trials, default this machine's CPUs, each
    configuration once per seed); each wave's mean scores over seeds guide the next. A resumed
    sweep tells the searchers what its records hold and finishes configurations missing seeds
    first. Returns every trial the sweep ran."""
    import os

    seeds, task = list(spec.seeds), runner.task
    searchers = {name: Tpe(grid, spec.search_seed + i, name) for i, (name, grid) in enumerate(spec.spaces)}
    configs: dict[tuple[str, str], dict[str, Any]] = {}  # (strategy, params key) -> params, in order
    for r in recorded.values():
        configs.setdefault((r["strategy"], key_of(json.loads(r["params"]))), json.loads(r["params"]))
    trials = [TrialSpec(name, params, seed) for (name, _), params in configs.items() for seed in seeds]
    missing = [t for t in trials if t.trial_id not in recorded]
    outcomes: dict[str, Any] = {**recorded, **runner.run(missing)}

    def mean_score(name: str, params: dict[str, Any]) -> float | None:
        scores = [_score(outcomes[TrialSpec(name, params, s).trial_id], task) for s in seeds]
        known = [v for v in scores if v is not None]
        return float(np.mean(known)) if known else None

    for (name, _), params in configs.items():
        score = mean_score(name, params)
        if score is not None and name in searchers:
            searchers[name].seen(params, score)
    count = {name: sum(1 for n, _ in configs if n == name) for name in searchers}
    # A space with fewer configurations than num_samples gives what it has (as a random search).
    quota = {name: min(spec.num_samples, searchers[name].size or spec.num_samples) for name in searchers}
    wave_size = max(1, -(-(spec.settings.max_concurrent or os.cpu_count() or 1) // len(seeds)))
    stale = {name: 0 for name in searchers}  # proposals repeating a tried configuration, in a row
    while True:
        wanted = [n for n in searchers if count[n] < quota[n]]
        if not wanted:
            break
        wave: list[tuple[str, str, dict[str, Any]]] = []
        while wanted and len(wave) < wave_size:
            for name in list(wanted):
                if len(wave) == wave_size:
                    break
                ticket, params = searchers[name].ask()
                if (name, key_of(params)) in configs:
                    searchers[name].tell(ticket, mean_score(name, params))
                    stale[name] += 1
                    if stale[name] >= 20:  # the searcher keeps proposing what was tried: done
                        quota[name] = count[name]
                else:
                    configs[(name, key_of(params))] = params
                    count[name], stale[name] = count[name] + 1, 0
                    wave.append((name, ticket, params))
                if count[name] >= quota[name]:
                    wanted.remove(name)
        batch = [TrialSpec(name, params, seed) for name, _, params in wave for seed in seeds]
        valid = []
        for t in batch:
            try:
                t.job()  # a proposed configuration this strategy refuses fails as a trial, told as such
                valid.append(t)
            except UserError as exc:
                runner.failures.append((t.trial_id, Failure(str(exc), user_error=True, error=exc)))
                outcomes[t.trial_id] = runner.failures[-1][1]
        outcomes.update(runner.run(valid))
        trials += batch
        for name, ticket, params in wave:
            searchers[name].tell(ticket, mean_score(name, params))
    return trials


def _curve(record: Mapping[str, Any]) -> list[tuple[int, float]]:
    return [(int(e), float(v)) for e, v in json.loads(record.get("curve") or "[]")]


def _starts(strategy: str) -> str:
    """How a strategy's candidate starts (its ASHA bracket); "" if it is no longer registered."""
    try:
        return strategies.get(strategy).can.starts_from
    except UserError:
        return ""


def _stopped_record(trial: TrialSpec, outcome: StoppedEarly) -> dict[str, Any]:
    """A trial the scheduler stopped: when, its holdout score then, and what it reported."""
    return {
        **trial.identity(),
        "stopped_epochs": outcome.epochs,
        "stopped_score": outcome.score,
        "curve": json.dumps(outcome.curve),
    }


def _record(trial: TrialSpec, outcome: Any, task: str, ancestors: list[Manifest]) -> dict[str, Any]:
    """A finished trial's row: its metrics, forgetting along the current version's lineage, and
    its accuracy-matrix row (`batch_<id>_<metric>`, one per batch)."""
    f = forgetting(outcome.metrics, ancestors)
    return {
        **trial.identity(),
        "train_seconds": outcome.train_seconds,
        "members": outcome.members,
        "worker_peak_rss_mb": outcome.peak_rss_mb,
        **{m: outcome.metrics.get(m) for m in metric_names(task)},
        "forgetting": f.worst,
        "forgetting_batch": f.batch,
        "backward_transfer": f.backward_transfer,
        "negative_flip_rate": outcome.metrics.get("holdout_negative_flip_rate"),
        **{k: v for k, v in outcome.metrics.items() if k.startswith("batch_")},
        **({"curve": json.dumps(outcome.curve)} if outcome.curve else {}),
    }


class _Progress:
    """Trials done, with the best configuration so far by the final table's rule (the mean over
    the seeds finished, ranked as everywhere), on the command's reporter."""

    def __init__(self, total: int, done: int, task: str) -> None:
        self._total, self._done = total, done
        self._note: str | None = None
        self._names = headline(task)
        self._seen: dict[tuple[str, str], list[dict[str, float | None]]] = {}

    def best(self, strategy: str, metrics: Mapping[str, float | None], params: str = "") -> None:
        self._seen.setdefault((strategy, params), []).append({m: metrics.get(f"holdout_{m}") for m in self._names})

        def mean(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
            out: dict[str, float | None] = {}
            for m in self._names:
                values = [v for r in runs if (v := r[m]) is not None]
                out[m] = float(np.mean(values)) if values else None
            return out

        (name, _), runs = max(self._seen.items(), key=lambda kv: rank_key(mean(kv[1])))
        value = mean(runs)[self._names[0]]
        seeds = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
        self._note = f"best {name} {self._names[0]} {'n/a' if value is None else f'{value:.3f}'}{seeds}"

    def update(self) -> None:
        self._done += 1
        report("trials", self._done, self._total, self._note)


def _write_outputs(
    store: Store,
    sweep_id: str,
    spec: SweepSpec,
    trials: list[TrialSpec],
    failures: list[tuple[str, Failure]],
    task: str,
    ancestors: list[Manifest],
) -> SweepResult:
    wanted = {t.trial_id for t in trials}
    recorded = store.trial_records(sweep_id)
    kept = [recorded[i] for i in sorted(set(recorded) & wanted)]
    records = [r for r in kept if "stopped_epochs" not in r]
    stopped = [r for r in kept if "stopped_epochs" in r]
    table = pa.Table.from_pylist(records) if records else pa.table({"trial_id": pa.array([], pa.string())})
    pngs = plots(records, task) if records else {}
    matrix = accuracy_matrix_png(records, ancestors, store.batch_ids(), task)
    if matrix:
        pngs["plots/accuracy_matrix.png"] = matrix
    for line in mostly_stopped(records, stopped):
        log.warning("%s (see the report)", line)
    report = render_report(records, spec, sweep_id, sorted(pngs), failures, task, stopped, len(trials))
    files = {"results.parquet": table_to_bytes(table), "report.md": report.encode(), **pngs}
    folder = store.write_report(sweep_id, files)
    return SweepResult(sweep_id, folder, table, len(trials), len(records), failures, stopped=len(stopped))
