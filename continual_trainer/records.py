"""What a store has done: its history, its report, and `gc` of versions never promoted.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from continual_trainer import strategies
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import lineage
from continual_trainer.data.parquet import one_line, redact
from continual_trainer.data.storage import Store, check_output, utc_stamp
from continual_trainer.predlog import live_metrics
from continual_trainer.trainer.forgetting import forgetting


def store_report(uri: str, out: str | None = None) -> tuple[str, list[str]]:
    """Write `ctrain report`'s page, Markdown and plots to `out` (a folder or URI), by default
    into the store under `reports/report-<time>/`; return where and the files' names."""
    from continual_trainer.data.parquet import resolve
    from continual_trainer.report import build_report

    store = Store.open(uri)
    if out is not None:
        check_output(out, "out")
    files = build_report(store, history(uri))
    if out is None:
        return store.write_report(f"report-{utc_stamp()}", files, folder="reports"), sorted(files)
    fs, root = resolve(out)
    through = [name for name in files if store.contains(f"{root}/{name}")]  # a link in --out into the store
    if through:
        raise UserError.about(
            "out", redact(out), f"{through[0]} there leads into the store {store.display}; nothing written"
        )
    try:
        for name, data in files.items():
            fs.create_dir(os.path.dirname(f"{root}/{name}"), recursive=True)
            with fs.open_output_stream(f"{root}/{name}") as f:
                f.write(data)
    except OSError as exc:
        raise UserError.about("out", redact(out), f"cannot write the report ({one_line(str(exc))})") from None
    return redact(out), sorted(files)


def history(uri: str) -> list[dict[str, Any]]:
    """Every committed version, oldest first: lineage, parameters in short, holdout metrics and
    size, whether it is or ever was current, its forgetting along its lineage (the worst batch,
    see `trainer.forgetting`), backward transfer and negative flip rate against its parent.

    `same_holdout` says whether a version was scored on the same holdout rows as the current
    version (the holdout grows with every batch a version has seen): metrics of versions
    scored on different rows are not directly comparable.
    """
    store = Store.open(uri)
    current = store.current()
    promoted = {e.get("version") for e in store.events("promote")}
    if current is not None:
        promoted.add(current)
    manifests = {v: store.manifest(v) for v in store.versions()}
    seen_by_current = set(manifests[current].batches_seen) if current in manifests else None
    live = live_metrics(store)
    rows = []
    for version, m in manifests.items():
        f = forgetting(m.metrics, lineage(m.parent, manifests.get))
        rows.append(
            {
                "version": version,
                "current": version == current,
                "promoted": version in promoted,
                "parent": m.parent,
                "strategy": m.strategy,
                "params": short_params(m.strategy, m.params),
                "created": m.created,
                "members": len(m.members),
                "batches_seen": len(m.batches_seen),
                "holdout_rows": int(m.metrics.get("holdout_rows") or 0),
                "same_holdout": seen_by_current is None or set(m.batches_seen) == seen_by_current,
                "train_seconds": m.train_seconds,
                "origin": m.origin,
                "forgetting": f.worst,
                "forgetting_batch": f.batch,
                "backward_transfer": f.backward_transfer,
                "negative_flip_rate": m.metrics.get("holdout_negative_flip_rate"),
                "memory_rows": (m.state.get("memory") or {}).get("rows"),
                "metrics": m.metrics,
                "live": live.get(version, {}),
            }
        )
    return rows


def short_params(strategy: str, params: Mapping[str, Any]) -> str:
    """A version's parameters that differ from its strategy's defaults, as `key=value` pairs."""
    try:
        defaults = asdict(strategies.get(strategy).make_params({}))
    except UserError:  # init, import: not a registered strategy
        defaults = {}
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in defaults or defaults[k] != v)


def prune(uri: str, keep: int, *, dry_run: bool = False) -> list[str]:
    """`ctrain gc`: delete versions that were never promoted, except the `keep` newest of them
    and the current version's lineage; returns the versions deleted (or that would be)."""
    if keep < 0:
        raise UserError.about("keep", keep, "must be >= 0")
    return Store.open(uri).prune(keep, dry_run=dry_run)
