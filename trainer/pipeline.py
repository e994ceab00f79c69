"""The update pipeline: run a strategy, evaluate it, save it, and maybe promote it.

Also the other store operations behind the CLI: init, ingest, predict and history.
Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa

import strategies
from data.batches import IngestResult, ingest, load_rows, load_table
from data.errors import UserError
from data.parquet import redact, resolve, write_table
from data.rows import Rows
from data.schema import Schema
from data.storage import FORMAT_VERSION, Store, StoreMeta
from trainer.candidate import Candidate
from trainer.evaluate import better, score
from trainer.loop import LoopConfig, train
from trainer.models import ModelSpec, build_model, model_classes, to_bytes

log = logging.getLogger(__name__)

PROMOTE_MODES = ("auto", "always", "never")


@dataclass
class UpdateOutcome:
    """What an update (or init) produced."""

    version: str
    parent: str | None
    strategy: str
    promoted: bool
    reason: str
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float
    members: int
    candidate: Candidate | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("candidate")
        return d


def _libraries() -> dict[str, str]:
    out = {}
    for name in ("continual-trainer", "tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def evaluate_sets(candidate: Candidate, sets: Mapping[str, Rows], n_classes: int) -> dict[str, float | None]:
    """Flat metrics `<set>_<metric>` of a candidate on each non-empty set."""
    out: dict[str, float | None] = {}
    for name, rows in sets.items():
        if len(rows):
            for metric, value in score(candidate.predict_proba(rows.x, n_classes), rows.y).items():
                out[f"{name}_{metric}"] = value
    return out


def holdout_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """The `holdout_*` entries of flat metrics, without the prefix (what promotion compares)."""
    return {k[len("holdout_") :]: v for k, v in metrics.items() if k.startswith("holdout_")}


def candidate_files(store: Store, version: str) -> tuple[list[bytes], tuple[float, ...]]:
    """A stored version's member files (checked against their sha256) and weights, without Keras."""
    manifest = store.manifest(version)
    return [store.read_version_file(version, m["file"]) for m in manifest["members"]], tuple(manifest["weights"])


def load_candidate(store: Store, version: str) -> Candidate:
    """A stored version's members, each checked against its sha256 and loaded in safe mode."""
    return Candidate.from_files(*candidate_files(store, version))


def save_candidate(store: Store, version: str, candidate: Candidate, manifest: dict[str, Any]) -> dict[str, Any]:
    files = {f"member-{i}.keras": to_bytes(m) for i, m in enumerate(candidate.members)}
    members = [{"file": name, "classes": model_classes(m)} for name, m in zip(files, candidate.members, strict=True)]
    body = {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "classes": list(store.schema.classes),
        "features": list(store.schema.features),
        "members": members,
        "weights": list(candidate.weights),
        "libraries": _libraries(),
        **manifest,
    }
    return store.write_version(version, files, body)


def _promote(store: Store, version: str, parent: str | None, mode: str, wins: bool) -> tuple[bool, str]:
    if mode == "never":
        return False, "--promote never"
    if mode == "auto" and not wins:
        return False, "not better than the current model on the holdout"
    if store.promote(version, parent):
        return True, "promoted" if mode == "always" else "better than the current model on the holdout"
    return False, f"another update promoted {store.current()} first; this version is kept but not promoted"


def init_store(
    uri: str,
    data_uri: str,
    label: str,
    *,
    model: str = "mlp:20,10",
    loop: LoopConfig | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.2,
) -> UpdateOutcome:
    """Create a store from a first labelled batch and train its first model on it."""
    spec = ModelSpec.parse(model)
    loop = loop or LoopConfig()
    if not 0 <= holdout_fraction < 1:
        raise UserError(f"--holdout {holdout_fraction}: must be in [0, 1)")
    data, table = load_table(data_uri)
    schema = Schema.infer(table, label, redact(data_uri))
    store = Store.create(uri, StoreMeta(schema, str(spec), holdout_fraction))
    batch = store.add_batch(data, {"source": redact(data_uri).rsplit("/", 1)[-1], "rows": table.num_rows})
    rows, holdout = load_rows(store, [batch])
    start = time.perf_counter()
    net = build_model(spec, len(schema.features), schema.n_classes, seed)
    train(net, rows.x, rows.y, loop, seed=seed)
    seconds = time.perf_counter() - start
    candidate = Candidate.single(net)
    metrics = evaluate_sets(candidate, {"holdout": holdout, "new": holdout}, schema.n_classes)
    version = store.new_version_id("init")
    save_candidate(
        store,
        version,
        candidate,
        {
            "parent": None,
            "strategy": "init",
            "params": asdict(loop),
            "seed": seed,
            "model": str(spec),
            "batches_seen": [batch],
            "batches_trained": [batch],
            "metrics": metrics,
            "train_seconds": seconds,
        },
    )
    promoted = store.promote(version, None)
    reason = "first model" if promoted else f"another init promoted {store.current()} first"
    return UpdateOutcome(version, None, "init", promoted, reason, metrics, {}, seconds, 1, candidate)


def ingest_files(uri: str, files: Sequence[str], *, allow_new_classes: bool = False) -> list[IngestResult]:
    """Validate and add each file in turn; stop at the first bad one (it is quarantined)."""
    store = Store.open(uri)
    return [ingest(store, f, allow_new_classes=allow_new_classes) for f in files]


@dataclass(frozen=True)
class UpdateData:
    """What every strategy of one update sees: the current version and the rows.

    Built once by the driver; on a cluster it goes into Ray's object store once and
    every trial reads it from there.
    """

    parent: str
    old_ids: list[str]
    new_ids: list[str]
    old: Rows
    new: Rows
    old_holdout: Rows
    new_holdout: Rows
    n_classes: int
    model_spec: ModelSpec

    @functools.cached_property
    def holdout(self) -> Rows:
        return Rows.concat([self.old_holdout, self.new_holdout])

    def eval_sets(self, extra: Mapping[str, Rows] | None = None) -> dict[str, Rows]:
        return {"holdout": self.holdout, "old": self.old_holdout, "new": self.new_holdout, **(extra or {})}

    def inputs(self, current: Candidate, seed: int) -> strategies.UpdateInputs:
        return strategies.UpdateInputs(current, self.old, self.new, self.holdout, self.n_classes, self.model_spec, seed)


Trainer = Callable[[UpdateData, Candidate, "strategies.Strategy", Any, int], tuple[Candidate, dict[str, Any]]]


class NothingNew(UserError):
    """No batches arrived since the current version: there is nothing to update."""


def load_update_data(store: Store, *, require_new: bool = True) -> UpdateData:
    """The current version and the rows of the batches it has and has not seen.

    Raises NothingNew if `require_new` and every batch has been seen.
    """
    parent = store.current()
    if parent is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    seen = store.manifest(parent)["batches_seen"]
    batches = store.batch_ids()
    new_ids = [b for b in batches if b not in seen]
    old_ids = [b for b in batches if b in seen]
    if require_new and not new_ids:
        raise NothingNew(f"no new batches since version {parent}; nothing to update (add some with `ctrain ingest`)")
    old, old_holdout = load_rows(store, old_ids)
    new, new_holdout = load_rows(store, new_ids)
    return UpdateData(
        parent,
        old_ids,
        new_ids,
        old,
        new,
        old_holdout,
        new_holdout,
        store.schema.n_classes,
        ModelSpec.parse(store.meta.model),
    )


@dataclass(frozen=True)
class TrialResult:
    """One strategy run: the candidate, its metrics and the current model's on the same rows."""

    candidate: Candidate
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float


def run_strategy(
    data: UpdateData,
    current: Candidate,
    strategy: strategies.Strategy,
    params: Any,
    seed: int,
    extra_eval: Mapping[str, Rows] | None = None,
) -> TrialResult:
    """Run one strategy and score it; touches no files (it may run on any worker)."""
    start = time.perf_counter()
    candidate = strategy(data.inputs(current, seed), params)
    return score_candidate(data, current, candidate, time.perf_counter() - start, extra_eval)


def score_candidate(
    data: UpdateData,
    current: Candidate,
    candidate: Candidate,
    seconds: float,
    extra_eval: Mapping[str, Rows] | None = None,
) -> TrialResult:
    """Metrics of a candidate and of the current model on the same row sets."""
    sets = data.eval_sets(extra_eval)
    return TrialResult(
        candidate, evaluate_sets(candidate, sets, data.n_classes), evaluate_sets(current, sets, data.n_classes), seconds
    )


def commit(
    store: Store,
    data: UpdateData,
    strategy_name: str,
    params: Any,
    seed: int,
    result: TrialResult,
    promote: str,
    execution: Mapping[str, Any] | None = None,
) -> UpdateOutcome:
    """Save a trial's candidate as a new version, then promote it as `promote` says.

    `execution` records how it was trained when that was not one local process.
    """
    version = store.new_version_id(strategy_name)
    trained_old = data.old_ids if params_train_on_old(params) else []
    save_candidate(
        store,
        version,
        result.candidate,
        {
            "parent": data.parent,
            "strategy": strategy_name,
            "params": asdict(params),
            "seed": seed,
            "model": str(data.model_spec),
            "batches_seen": data.old_ids + data.new_ids,
            "batches_trained": trained_old + data.new_ids,
            "metrics": result.metrics,
            "current_metrics": result.current_metrics,
            "train_seconds": result.train_seconds,
            "execution": dict(execution or {"mode": "local"}),
        },
    )
    wins = better(holdout_metrics(result.metrics), holdout_metrics(result.current_metrics))
    promoted, reason = _promote(store, version, data.parent, promote, wins)
    return UpdateOutcome(
        version,
        data.parent,
        strategy_name,
        promoted,
        reason,
        result.metrics,
        result.current_metrics,
        result.train_seconds,
        len(result.candidate.members),
        result.candidate,
    )


def update(
    store: Store,
    strategy_name: str,
    values: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    promote: str = "auto",
    extra_eval: Mapping[str, Rows] | None = None,
    trainer: Trainer | None = None,
) -> UpdateOutcome:
    """Run one strategy against the current model and the batches that arrived since.

    Args:
        store: the store to read batches and models from and to save into.
        strategy_name: a registered strategy.
        values: its parameters (strings are parsed).
        seed: fixes initialisation, sampling and shuffling.
        promote: `auto` (if better on the holdout), `always` or `never`.
        extra_eval: more named row sets to report metrics on, e.g. a test split.
        trainer: runs the strategy some other way (e.g. data-parallel on Ray actors) and
            says how, for the manifest; by default the strategy runs in this process.
    """
    strategy = strategies.get(strategy_name)
    params = strategy.make_params(values)
    check_promote(promote)
    data = load_update_data(store, require_new=strategy_name != "keep")
    current = load_candidate(store, data.parent)
    if trainer is None:
        result, execution = run_strategy(data, current, strategy, params, seed, extra_eval), None
    else:
        start = time.perf_counter()
        candidate, execution = trainer(data, current, strategy, params, seed)
        result = score_candidate(data, current, candidate, time.perf_counter() - start, extra_eval)
    return commit(store, data, strategy_name, params, seed, result, promote, execution)


def check_promote(promote: str) -> None:
    if promote not in PROMOTE_MODES:
        raise UserError(f"--promote {promote}: choose one of {', '.join(PROMOTE_MODES)}")


def params_train_on_old(params: Any) -> bool:
    return bool(getattr(params, "trains_on_old", lambda: False)())


def predict(
    uri: str,
    data_uri: str,
    out_uri: str,
    *,
    version: str | None = None,
    scorer: Callable[[Store, str, str], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the rows of `data_uri` plus `prediction` (and `probability` of class 1 for two classes).

    `scorer(store, version, data_uri)` computes the class probabilities elsewhere, e.g.
    on several Ray actors reading their own row groups; by default this process does.
    """
    if resolve(out_uri)[1] == resolve(data_uri)[1]:
        raise UserError(f"--out {redact(out_uri)}: is the input file; choose another path")
    store = Store.open(uri)
    version = version or store.current()
    if version is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    _, table = load_table(data_uri)
    schema = store.schema
    schema.check_features(table, redact(data_uri), allow_extra=True)
    for name in ("prediction", "probability"):
        if name in table.column_names:
            raise UserError(f"{redact(data_uri)}: already has a column {name!r}; rename it")
    if scorer is None:
        proba = load_candidate(store, version).predict_proba(schema.features_matrix(table), schema.n_classes)
    else:
        proba = scorer(store, version, data_uri)
    classes = np.asarray(schema.classes, dtype=object)
    label_type = table.schema.field(schema.label).type if schema.label in table.column_names else None
    labels = pa.array(classes[proba.argmax(axis=1)].tolist(), type=label_type)
    out = table.append_column("prediction", labels)
    if schema.n_classes == 2:
        out = out.append_column("probability", pa.array(proba[:, 1], pa.float64()))
    write_table(out_uri, out)
    return {"version": version, "rows": out.num_rows, "out": redact(out_uri)}


def history(uri: str) -> list[dict[str, Any]]:
    """Every committed version, oldest first, with lineage and holdout metrics."""
    store = Store.open(uri)
    current = store.current()
    rows = []
    for version in store.versions():
        m = store.manifest(version)
        rows.append(
            {
                "version": version,
                "current": version == current,
                "parent": m.get("parent"),
                "strategy": m.get("strategy"),
                "created": m.get("created"),
                "members": len(m.get("members", [])),
                "batches_seen": len(m.get("batches_seen", [])),
                "train_seconds": m.get("train_seconds"),
                "metrics": m.get("metrics", {}),
            }
        )
    return rows
