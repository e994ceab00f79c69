"""Drift of labelled rows or of the rows `serve` answered, against what the current version
learned (`ctrain drift`), and what the triggers see of new rows (`observe`; a stream asks it of
every file, and of the served rows with `watch_served`).

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from continual_trainer.data.batches import load_table
from continual_trainer.data.chunks import StoredRows, StoredUnion
from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.rows import Rows, RowSource
from continual_trainer.data.storage import Store
from continual_trainer.triggers import Observation, TriggerSet, per_row_loss
from continual_trainer.updatedata import UpdateData, load_update_data
from continual_trainer.versions import stored_candidate


def drift(
    store: Store, data: str | pa.Table, trigger: str, values: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """The triggers' decisions on a labelled batch against the current model (nothing kept)."""
    triggers = TriggerSet.parse(trigger, values)
    table = load_table(data, store.schema.text_types())[1] if isinstance(data, str) else data
    schema = store.schema.validate(table, source)
    rows = Rows(schema.inputs(table), schema.targets(table, source), np.zeros(table.num_rows, np.int32))
    update_data = load_update_data(store, require_new=False, params=[])
    current = stored_candidate(store, update_data.parent).load()
    pred = current.predict(rows.x, update_data.n_classes)
    observation = observe(update_data, current, rows, pred, manifest=store.manifest(update_data.parent))
    fire, decisions = triggers.decide(observation, {})
    return {"fire": fire, **{name: d.to_json() for name, d in decisions.items()}}


def served_drift(
    store: Store, trigger: str, values: Mapping[str, Any] | None, since: float | None = None
) -> dict[str, Any]:
    """The triggers' decisions on the rows `ctrain serve` answered (the prediction log, those of
    the last `since` seconds) against what the current model learned; triggers that read
    labels cannot judge them (UserError)."""
    from continual_trainer.predlog import served_rows

    triggers = TriggerSet.parse(trigger, values)
    table = served_rows(store, None if since is None else time.time() - since)
    if table is None:
        window = f" in the last {since:g} s" if since is not None else ""
        raise UserError(f"{store.display}: the prediction log holds no served rows{window}; serve first")
    return judge_served(store, table, triggers)


REFERENCE_ROWS = 500


def observe(
    data: UpdateData,
    current: Any,
    rows: Rows,
    pred: Any,
    since: Mapping[str, int] | None = None,
    seed: int = 0,
    manifest: Manifest | None = None,
    last_gain: float | None = None,
    learned_rows: int = 0,
) -> Observation:
    """What the triggers see of `rows` (with `pred`, the current model's predictions on them).

    The reference is the held-out rows of the newest batches the current model learned (at
    least REFERENCE_ROWS of them, where there are): what it was last fitted to, so that after
    an update for a drift the drift is the new normal. `last_gain` is what the update that
    made the current version gained on its new batches' holdout (see `update_gain`)."""
    std = data.target[1] if data.target else 1.0
    held = data.old_holdout
    if not held.in_memory:  # left in the store: read the newest learned batches' only
        reference = _stored_reference(held, manifest)
    elif manifest is not None and len(held):
        reference = held.load()
        position = {b: i for i, b in enumerate(data.batch_ids)}
        keep = np.zeros(len(reference), bool)
        for batch in reversed(manifest.batches_seen):
            keep |= reference.order == position.get(batch, -1)
            if keep.sum() >= REFERENCE_ROWS:
                break
        reference = reference.take(keep) if keep.any() else reference
    else:
        reference = held.load()
    return Observation(
        rows,
        reference,
        per_row_loss(pred, rows.y, std),
        per_row_loss(current.predict(reference.x, data.n_classes), reference.y, std),
        int((since or {}).get("files", 1)),
        int((since or {}).get("rows", len(rows))),
        seed,
        {name: info.columns for name, info in data.input_spec.items() if info.columns},
        last_gain,
        learned_rows,
    )


def _stored_reference(held: RowSource, manifest: Manifest | None) -> Rows:
    """`observe`'s reference read from the store: the held-out rows of the newest batches the
    current model learned, at least REFERENCE_ROWS of them where there are."""
    holdout = StoredUnion.of(held)
    singles = [single for part in holdout.parts for single in part.per_batch()]
    chosen, count = set(), 0
    for single in reversed(singles):
        learned = manifest is None or single.batch_ids[0] in manifest.batches_seen
        if learned and (manifest is None or count < REFERENCE_ROWS):
            chosen.add(single.batch_ids[0])
            count += len(single)
    ids = [single.batch_ids[0] for single in singles]
    kept = [b for b in ids if b in chosen] or ids  # none learned: all
    return StoredRows.of(holdout.parts[0].store, kept, "holdout").load()


def judge_served(store: Store, table: Any, triggers: TriggerSet) -> dict[str, Any]:
    """The decisions of `triggers` (none may need labels) on served rows (`table`: the feature
    columns) against what the current model learned: {"fire", "rows", trigger: decision}."""
    labelled = [t.name for t, _ in triggers.triggers if t.needs_labels]
    if labelled:
        raise UserError.about("trigger", ",".join(labelled), "needs labels; served rows have none (use features)")
    schema = store.schema
    n = table.num_rows
    y = np.zeros(n, np.float32 if schema.is_regression else np.int32)
    rows = Rows(schema.inputs(table), y, np.zeros(n, np.int32))
    data = load_update_data(store, require_new=False, params=[])
    current = stored_candidate(store, data.parent).for_scoring()
    pred = current.predict(rows.x, data.n_classes)
    observation = observe(data, current, rows, pred, manifest=store.manifest(data.parent))
    fire, decisions = triggers.decide(observation, {})
    return {"fire": fire, "rows": n, **{name: d.to_json() for name, d in decisions.items()}}


SERVED_ROWS = 500  # served rows a stream waits for before it judges them


def watch_served(store: Store, triggers: TriggerSet, min_rows: int = SERVED_ROWS) -> dict[str, Any] | None:
    """Judge the rows of the log files written since the last look (once at least `min_rows`
    wait) with the label-free triggers among `triggers` (else `features`); the verdict is kept
    in the store's event log (`served-drift`, naming the last file judged) and returned; None
    while too few rows wait."""
    from continual_trainer.predlog import TIME, served_rows

    label_free = TriggerSet(tuple((t, p) for t, p in triggers.triggers if not t.needs_labels), triggers.combine)
    if not label_free.triggers:
        label_free = TriggerSet.parse("features")
    looked = store.events("served-drift")
    last_file = str(looked[-1].get("last_file", "")) if looked else ""
    names = [n for n in store.prediction_logs() if n > last_file]
    table = served_rows(store, names=names) if names else None
    if table is None or table.num_rows < min_rows:
        return None
    times = table.column(TIME)
    verdict = {
        **judge_served(store, table, label_free),
        "from": pc.min(times).as_py().isoformat(),
        "to": pc.max(times).as_py().isoformat(),
        "files": len(names),
        "last_file": names[-1],
        "version": store.current(),
    }
    store.record_event("served-drift", verdict)
    return verdict
