"""What one update sees: the current version and the rows of the batches it has and has not seen."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from continual_trainer import strategies
from continual_trainer.data.batches import load_rows
from continual_trainer.data.chunks import StoredRows
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import RowSource
from continual_trainer.data.storage import Store
from continual_trainer.strategies.base import reads_old
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import ModelSpec
from continual_trainer.trainer.progress import phase


@dataclass(frozen=True, kw_only=True)
class UpdateData(strategies.UpdateRows):
    """What every strategy of one update sees: the rows (`strategies.UpdateRows`), which
    batches they come from and the version they update.

    Built once by the driver; on a cluster it goes into Ray's object store once and
    every job reads it from there.
    """

    parent: str
    old_ids: list[str]
    new_ids: list[str]
    batch_ids: tuple[str, ...] = ()  # every batch in ingestion order: a row's `order` indexes it

    def eval_sets(self, extra: Mapping[str, RowSource] | None = None) -> dict[str, RowSource]:
        return {"holdout": self.holdout, "old": self.old_holdout, "new": self.new_holdout, **(extra or {})}

    def inputs(self, current: Candidate, seed: int) -> strategies.UpdateInputs:
        return strategies.UpdateInputs(**self.rows(), current=current, seed=seed)


class NothingNew(UserError):
    """No batches arrived since the current version: there is nothing to update."""


def load_update_data(
    store: Store,
    *,
    require_new: bool = True,
    params: Sequence[Any] | None = None,
    memory_budget: int | None = None,
    in_pieces: bool = False,
) -> UpdateData:
    """The current version and the rows of the batches it has and has not seen.

    With `params` (of the strategies that will run), the old batches' training rows are
    read only if one of them needs them (see `strategies.base.reads_old`): an update that
    replays a memory reads the old batches' holdout rows only.

    With `memory_budget` (bytes), training rows estimated to need more than that in memory
    are left in the store (`data.chunks.StoredRows`, read a chunk at a time while training)
    if the strategies can train so (`in_pieces`), else UserError; so are the held-out rows
    (read a chunk at a time when scored, see `trials.scored`).

    Raises NothingNew if `require_new` and every batch has been seen.
    """
    parent = store.current()
    if parent is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    seen = set(store.manifest(parent).batches_seen)
    committed = store.batch_ids()
    lost = sorted(seen - set(committed))
    if lost:
        raise UserError(
            f"{store.display}: version {parent} learned batch {lost[0]}, which the store no longer holds "
            "(its batch.json is missing); restore it from a backup"
        )
    retired = store.retired_batches()  # `ctrain drop`: never trained on or scored again
    batches = [b for b in committed if b not in retired]
    new_ids = [b for b in batches if b not in seen]
    old_ids = [b for b in batches if b in seen]
    if require_new and not new_ids:
        raise NothingNew(f"no new batches since version {parent}; nothing to update (add some with `ctrain ingest`)")
    phase(f"checking and reading {len(batches)} batch(es) ({len(new_ids)} new)")
    state = store.manifest(parent).state.get("files", {})
    old_train = params is None or any(reads_old(p, state) for p in params)
    old: RowSource
    new: RowSource
    old_holdout: RowSource
    new_holdout: RowSource
    if _over_budget(store, (old_ids if old_train else []) + new_ids, memory_budget, in_pieces):
        old, new, old_holdout, new_holdout = _left_in_store(store, old_ids if old_train else [], old_ids, new_ids)
    else:
        old, old_holdout = load_rows(store, old_ids, train=old_train)
        new, new_holdout = load_rows(store, new_ids)
    return UpdateData(
        parent=parent,
        old_ids=old_ids,
        new_ids=new_ids,
        old=old,
        new=new,
        old_holdout=old_holdout,
        new_holdout=new_holdout,
        n_classes=store.schema.n_classes,
        model_spec=model_spec(store),
        input_spec=store.schema.input_spec(),
        target=store.schema.target,
        batch_ids=tuple(committed),  # rows index it by ingestion order, retired batches included
    )


COPIES = 4  # the rows, a sample or concatenation of them, the tensor and an epoch's shuffled copy


def training_bytes(store: Store, batch_ids: Sequence[str]) -> int:
    """About how much memory training on these batches' training rows in memory takes."""
    per_row = 8  # the label and the batch order
    for info in store.schema.input_spec().values():
        per_row += (64 if info.dtype == "string" else 4) * int(np.prod(info.shape, dtype=np.int64))
    rows = sum(store.batch_rows(b) for b in batch_ids) * (1 - store.meta.holdout_fraction)
    return int(rows * per_row * COPIES)


# Above this estimate (`training_bytes`) rows are left in the store by default, where the
# strategies can train on them in pieces. Measured (`scripts/bench_scale.py --sizes
# 0.1,0.25,0.5,1,2 --epochs 5`, finetune_all, 20 float features, 2 cores): in pieces is slower
# on small data (55-63 % of the in-memory rows/s up to 500,000 rows, where in memory the driver
# stays under 1 GiB: 980 MiB at 500,000) and as fast from 1 million rows (96-100 %), where in
# memory the driver grows (1,212 MiB at 1 M, 1,651 MiB at 2 M) and in pieces stays near 1 GiB
# (1,019 and 1,062 MiB). 500,000 rows of that store are an estimate of 141 MB, 1 million 282 MB.
PIECES_FROM = 192 << 20


def default_memory_budget(in_pieces: bool = False) -> int:
    """The memory budget when the user gives none: PIECES_FROM where the strategies can train
    on rows read in pieces (the measured crossover), else a quarter of this machine's memory."""
    if in_pieces:
        return PIECES_FROM
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _size(n: float) -> str:
    """A size in the largest binary unit that keeps it at least 1 (e.g. `1.25 GiB`, `10 KiB`)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def _over_budget(store: Store, train_ids: Sequence[str], memory_budget: int | None, in_pieces: bool) -> bool:
    """Whether these batches' training rows are to be left in the store: they need more memory
    than the budget. UserError if so and the strategies cannot train in pieces."""
    need = 0 if memory_budget is None else training_bytes(store, train_ids)
    if memory_budget is None or need <= memory_budget:
        return False
    if not in_pieces:
        able = ", ".join(strategies.names(in_pieces=True))
        raise UserError(
            f"the training rows need about {_size(need)} in memory, over --memory-budget {_size(memory_budget)}, "
            "and this strategy trains on rows in memory only; raise --memory-budget, or use one that "
            f"reads the store in pieces: {able}"
        )
    return True


def _left_in_store(
    store: Store, old_train: Sequence[str], old_ids: Sequence[str], new_ids: Sequence[str]
) -> tuple[StoredRows, StoredRows, StoredRows, StoredRows]:
    """The old training, new training, old held-out and new held-out rows, left in the store."""
    return (
        StoredRows.of(store, old_train),
        StoredRows.of(store, new_ids),
        StoredRows.of(store, old_ids, "holdout"),
        StoredRows.of(store, new_ids, "holdout"),
    )


def with_old_rows(
    store: Store, data: UpdateData, memory_budget: int | None = None, in_pieces: bool = False
) -> UpdateData:
    """`data` with the old batches' training rows, for data loaded without them: in memory, or
    left in the store (all of the update's rows) if the budget calls for it (as `load_update_data`)."""
    if len(data.old) or not data.old_ids:
        return data
    if not data.new.in_memory or _over_budget(store, data.old_ids + data.new_ids, memory_budget, in_pieces):
        old, new, old_holdout, new_holdout = _left_in_store(store, data.old_ids, data.old_ids, data.new_ids)
        return replace(data, old=old, new=new, old_holdout=old_holdout, new_holdout=new_holdout)
    return replace(data, old=load_rows(store, data.old_ids)[0])


def model_spec(store: Store) -> ModelSpec:
    """The store's recipe for fresh networks, with the imported architecture if it has one."""
    spec = ModelSpec.parse(store.meta.model)
    return replace(spec, architecture=store.architecture()) if spec.kind == "imported" else spec
