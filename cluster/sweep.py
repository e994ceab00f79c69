"""Sweeps: strategies x parameters x seeds on Ray Tune, every trial on the same holdouts.

A sweep lives in `<store>/sweeps/<id>/`: the spec it ran (`sweep.yaml`), one JSON
record per finished trial (`trials/`, the source of truth, written atomically by the
trial itself), and the outputs: `results.parquet`, `report.md` and `plots/*.png`.

`--resume` reruns exactly the trials without a record, so it works the same on every
storage backend. Ray Tune's own experiment state (which holds pickles) is therefore
not needed afterwards: it lives in scratch space on the driver, never in the store.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import resource
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

import strategies
from cluster.pool import ACTOR_MEMORY
from data.errors import UserError
from data.parquet import table_to_bytes
from data.storage import Store, utc_stamp
from trainer.pipeline import UpdateData, candidate_files, load_update_data

log = logging.getLogger(__name__)

METRICS = (
    "holdout_accuracy",
    "holdout_log_loss",
    "holdout_roc_auc",
    "old_accuracy",
    "old_log_loss",
    "new_accuracy",
    "new_log_loss",
)
_SPEC_KEYS = {"strategies", "params", "seeds", "cpus_per_trial", "max_failures", "max_concurrent"}


@dataclass(frozen=True)
class TrialSpec:
    strategy: str
    params: dict[str, Any]
    seed: int

    @property
    def trial_id(self) -> str:
        key = json.dumps([self.strategy, self.params, self.seed], sort_keys=True, default=str)
        return f"{self.strategy}-s{self.seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file; `trials` is the full grid, validated against the registry."""

    trials: tuple[TrialSpec, ...]
    source: str
    cpus_per_trial: float = 1.0
    max_failures: int = 2
    max_concurrent: int = 0

    @classmethod
    def parse(cls, text: str, name: str = "sweep config") -> SweepSpec:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(doc, dict) or "strategies" not in doc:
            raise UserError(f"{name}: expected a mapping with a `strategies` list (see examples/sweep.yaml)")
        unknown = set(doc) - _SPEC_KEYS
        if unknown:
            known = ", ".join(sorted(_SPEC_KEYS))
            raise UserError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
        shared = doc.get("params") or {}
        if not isinstance(shared, dict):
            raise UserError(f"{name}: `params` must be a mapping of parameter to value or list of values")
        seeds = doc.get("seeds", [0])
        seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise UserError(f"{name}: `seeds` must be a whole number or a list of them")
        trials, used = [], set()
        for entry in doc["strategies"] or []:
            strategy_name, own = (entry, {}) if isinstance(entry, str) else _one_item(entry, name)
            strategy = strategies.get(strategy_name)
            accepted = {f for f in strategy.params.__dataclass_fields__}
            grid = {k: v for k, v in shared.items() if k in accepted}
            used |= set(grid)
            grid.update(own)
            for combo in _product(grid):
                strategy.make_params(combo)  # validate now, before any cluster work
                trials.extend(TrialSpec(strategy_name, combo, seed) for seed in seeds)
        stray = set(shared) - used
        if stray:
            raise UserError(f"{name}: no listed strategy has parameter(s) {', '.join(sorted(stray))}")
        if not trials:
            raise UserError(f"{name}: no strategies listed")
        try:
            return cls(
                tuple(trials),
                text,
                float(doc.get("cpus_per_trial", 1)),
                int(doc.get("max_failures", 2)),
                int(doc.get("max_concurrent", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"{name}: {exc}") from None


def _one_item(entry: Any, name: str) -> tuple[str, dict[str, Any]]:
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise UserError(f"{name}: each strategy is a name or `name: {{param: values}}`, got {entry!r}")
    ((strategy_name, grid),) = entry.items()
    if grid is not None and not isinstance(grid, dict):
        raise UserError(f"{name}: parameters of {strategy_name} must be a mapping")
    return strategy_name, dict(grid or {})


def _product(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    axes = [grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes)]


@dataclass(frozen=True)
class Payload:
    """What every trial reads from the object store: data, current model, strategies."""

    store_uri: str
    sweep_id: str
    data: UpdateData
    current: tuple[list[bytes], tuple[float, ...]]
    strategies: dict[str, strategies.Strategy] = field(default_factory=dict)


_current_cache: dict[str, Any] = {}


def _trial(config: dict[str, Any], payload: Payload) -> dict[str, Any]:
    """One Tune trial: run the strategy, record the result in the store, report it."""
    from ray import tune

    from cluster.runtime import pin_threads
    from trainer.candidate import Candidate
    from trainer.pipeline import run_strategy

    pin_threads()
    spec = TrialSpec(**config["trial"])
    strategy = payload.strategies[spec.strategy]
    key = payload.data.parent
    if key not in _current_cache:
        _current_cache.clear()
        _current_cache[key] = Candidate.from_files(*payload.current)
    result = run_strategy(payload.data, _current_cache[key], strategy, strategy.make_params(spec.params), spec.seed)
    record = {
        "trial_id": spec.trial_id,
        "strategy": spec.strategy,
        "params": json.dumps(spec.params, sort_keys=True),
        "seed": spec.seed,
        "train_seconds": result.train_seconds,
        "members": len(result.candidate.members),
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{m: result.metrics.get(m) for m in METRICS},
    }
    Store.open(payload.store_uri).write(
        f"sweeps/{payload.sweep_id}/trials/{spec.trial_id}.json", json.dumps(record, sort_keys=True).encode()
    )
    metrics = {k: v for k, v in record.items() if isinstance(v, int | float) and v is not None}
    tune.report(metrics)
    return metrics


@dataclass(frozen=True)
class SweepResult:
    sweep_id: str
    folder: str
    table: pa.Table
    trials: int
    finished: int


def run_sweep(
    store: Store, spec: SweepSpec | None = None, *, resume: str | None = None, progress: bool = True
) -> SweepResult:
    """Run (or, with `resume`, finish) a sweep on the connected Ray cluster."""
    from ray import tune

    if resume:
        try:
            text = store.read("sweeps", resume, "sweep.yaml").decode()
        except FileNotFoundError:
            raise UserError(f"--resume {resume}: no such sweep in {store.display}") from None
        spec = SweepSpec.parse(text, f"sweeps/{resume}/sweep.yaml")
    assert spec is not None
    sweep_id = resume or f"sweep-{utc_stamp()}"
    data = load_update_data(store)
    if len(data.holdout) == 0:
        raise UserError(f"{store.display}: sweeps score trials on held-out rows; this store's holdout_fraction is 0")
    if not resume:
        store.write(f"sweeps/{sweep_id}/sweep.yaml", spec.source.encode())
    done = _finished_ids(store, sweep_id)
    todo = [t for t in spec.trials if t.trial_id not in done]
    if todo:
        payload = Payload(
            store.uri,
            sweep_id,
            data,
            candidate_files(store, data.parent),  # bytes as stored: the driver never imports TensorFlow
            {t.strategy: strategies.get(t.strategy) for t in todo},
        )
        trainable = tune.with_resources(
            tune.with_parameters(_trial, payload=payload), {"cpu": spec.cpus_per_trial, "memory": ACTOR_MEMORY}
        )
        _fit(store, sweep_id, spec, trainable, todo, len(done), progress)
    return _write_outputs(store, sweep_id, spec)


def _fit(
    store: Store, sweep_id: str, spec: SweepSpec, trainable: Any, todo: list[TrialSpec], already: int, progress: bool
) -> None:
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0: our bar only
    scratch = tempfile.mkdtemp(prefix=f"ctrain-{sweep_id}-")
    callback = _progress_callback(len(todo) + already, already, progress)
    run_config = tune.RunConfig(
        name="tune",
        storage_path=scratch,
        verbose=0,
        callbacks=[callback],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
    )
    tune_config = tune.TuneConfig(
        reuse_actors=True,
        max_concurrent_trials=spec.max_concurrent or None,
    )
    space = {"trial": tune.grid_search([asdict(t) for t in todo])}
    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)
    try:
        tuner.fit()
    finally:
        callback.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _progress_callback(total: int, done: int, enabled: bool) -> Any:
    """A Tune callback drawing a progress bar: trials done and the best holdout accuracy."""
    from ray import tune
    from tqdm import tqdm

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.bar = tqdm(total=total, initial=done, desc="trials", unit="trial", disable=not enabled or None)
            self.best = -math.inf

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            acc = (trial.last_result or {}).get("holdout_accuracy")
            if acc is not None and acc > self.best:
                self.best = acc
                self.bar.set_postfix_str(f"best {trial.config['trial']['strategy']} {acc:.3f}")
            self.bar.update()

        def close(self) -> None:
            self.bar.close()

    return Progress()


def _finished_ids(store: Store, sweep_id: str) -> set[str]:
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(store.path("sweeps", sweep_id, "trials"), allow_not_found=True)
    return {i.base_name[:-5] for i in store.fs.get_file_info(sel) if i.base_name.endswith(".json")}


def _write_outputs(store: Store, sweep_id: str, spec: SweepSpec) -> SweepResult:
    wanted = {t.trial_id for t in spec.trials}
    records = [
        json.loads(store.read("sweeps", sweep_id, "trials", f"{i}.json"))
        for i in sorted(_finished_ids(store, sweep_id) & wanted)
    ]
    table = pa.Table.from_pylist(records) if records else pa.table({"trial_id": pa.array([], pa.string())})
    files = {"results.parquet": table_to_bytes(table), "report.md": render_report(records, spec, sweep_id).encode()}
    if records:
        files.update(_plots(records))
    folder = store.write_report(sweep_id, files)
    return SweepResult(sweep_id, folder, table, len(spec.trials), len(records))


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of each (strategy, params), best holdout accuracy first."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["strategy"], r["params"]), []).append(r)
    rows = []
    for (strategy, params), rs in groups.items():
        row: dict[str, Any] = {"strategy": strategy, "params": params, "seeds": len(rs)}
        for m in (*METRICS, "train_seconds"):
            values = [r[m] for r in rs if r.get(m) is not None]
            row[m] = (float(np.mean(values)), float(np.std(values))) if values else (None, None)
        rows.append(row)
    return sorted(rows, key=lambda r: -(r["holdout_accuracy"][0] or -1))


def render_report(records: list[dict[str, Any]], spec: SweepSpec, sweep_id: str) -> str:
    def pm(v: tuple[float | None, float | None], d: int = 3) -> str:
        return "n/a" if v[0] is None else f"{v[0]:.{d}f} ± {v[1]:.{d}f}"

    lines = [
        f"# Sweep {sweep_id}",
        "",
        f"{len(records)} of {len(spec.trials)} trials finished. Every trial is scored on the same held-out rows: "
        "`holdout` is all of them, `old` the old batches' (forgetting), `new` the new batches' (plasticity). "
        "Mean ± std over seeds.",
        "",
        "| rank | strategy | params | seeds | holdout accuracy | old accuracy | new accuracy | holdout log loss "
        "| train s |",
        "| ---: | --- | --- | ---: | --- | --- | --- | --- | ---: |",
    ]
    for i, r in enumerate(summarize(records), 1):
        params = r["params"] if r["params"] != "{}" else "defaults"
        lines.append(
            f"| {i} | {r['strategy']} | `{params}` | {r['seeds']} | {pm(r['holdout_accuracy'])} | "
            f"{pm(r['old_accuracy'])} | {pm(r['new_accuracy'])} | {pm(r['holdout_log_loss'])} | "
            f"{pm(r['train_seconds'], 2)} |"
        )
    lines += ["", "Plots: `plots/accuracy_by_strategy.png`, `plots/accuracy_vs_seconds.png`.", ""]
    return "\n".join(lines)


def _plots(records: list[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(records)
    labels = [r["strategy"] + ("" if r["params"] == "{}" else f"\n{r['params']}") for r in rows]
    out = {}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    means = [r["holdout_accuracy"][0] or 0 for r in rows]
    stds = [r["holdout_accuracy"][1] or 0 for r in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("holdout accuracy (mean ± std over seeds)")
    ax.set_ylim(max(0.0, min(means) - 0.1), min(1.0, max(means) + 0.05))
    ax.set_title("Accuracy by strategy")
    fig.tight_layout()
    out["plots/accuracy_by_strategy.png"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for strategy in sorted({r["strategy"] for r in records}):
        rs = [r for r in records if r["strategy"] == strategy and r.get("holdout_accuracy") is not None]
        ax.scatter([r["train_seconds"] for r in rs], [r["holdout_accuracy"] for r in rs], label=strategy, s=24)
    ax.set_xlabel("train seconds")
    ax.set_ylabel("holdout accuracy")
    ax.set_title("Accuracy against training time (one point per trial)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["plots/accuracy_vs_seconds.png"] = _png(fig)
    plt.close("all")
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
