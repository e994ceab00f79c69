"""Drift of labelled rows or of the rows `serve` answered, against what the current version
learned (`ctrain drift`).

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer.data.batches import load_table
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.data.storage import Store
from continual_trainer.updatedata import load_update_data
from continual_trainer.versions import stored_candidate


def drift(
    store: Store, data: str | pa.Table, trigger: str, values: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """The triggers' decisions on a labelled batch against the current model (nothing kept)."""
    from continual_trainer.stream import observe
    from continual_trainer.triggers import TriggerSet

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
    from continual_trainer.stream import judge_served
    from continual_trainer.triggers import TriggerSet

    triggers = TriggerSet.parse(trigger, values)
    table = served_rows(store, None if since is None else time.time() - since)
    if table is None:
        window = f" in the last {since:g} s" if since is not None else ""
        raise UserError(f"{store.display}: the prediction log holds no served rows{window}; serve first")
    return judge_served(store, table, triggers)
