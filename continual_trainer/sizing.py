"""Training settings sized to the rows: what `update`, each sweep trial and each stream
candidate train with when the user does not say.

The strategies' defaults are the reference recipe, made for the tutorial's 500 rows (batch 32,
up to 100 epochs, no early stopping). On 167,000 rows that is 5,200 steps per epoch and about
five minutes of training that nothing announced. From SCALE_FROM training rows the settings
grow with the rows (`scaled`): a batch giving about STEPS_PER_EPOCH steps per epoch, the
learning rate scaled by the square root of the batch's growth, early stopping on a set-aside
share, a wall-clock budget, and a replay memory of at least a quarter of the rows (200 rows,
the literature's benchmark size, stand for 8,000 poorly: on the Keras-way census model replay
then lands 0.7 points under keep, with 2,000 rows 0.3 above). Settings the user gave (`--set`,
a sweep's parameters) always stay; below SCALE_FROM nothing changes, so the reference
experiment keeps its recipe.

Before sizing, a store whose network was imported (`ctrain init --model model.keras`) trains
with the optimizer and settings the model was compiled with (`compiled`): what `fit` would
use; and it stops early below SCALE_FROM rows too (see `sized`). Settings the user gave stay
here too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from continual_trainer.trainer.loop import LoopConfig

if TYPE_CHECKING:
    from continual_trainer.executor import Job
    from continual_trainer.updatedata import UpdateData

SCALE_FROM = 5000  # training rows from which the settings scale
STEPS_PER_EPOCH = 400
PATIENCE = 15
UPDATE_SECONDS = 300.0  # the budget of an update's training, and of each sweep trial's
STREAM_SECONDS = 15.0  # one stream file's wall-clock budget, from its pick-up to its commit
TRAINING_SHARE = 0.45  # of what is left of it when the candidates start: their training (the rest scores them)
MIN_TRAINING_SECONDS = 2.0  # a candidate trains at least this long, however late it starts
STOP_EARLY_FROM = 100  # training rows from which an imported model stops early (a tenth held out to stop on)
MEMORY_SHARE = 4  # a replay memory keeps at least a quarter of the rows an update trains on ...
MAX_MEMORY_ROWS = 50_000  # ... up to this many
SIZED = ("batch_size", "learning_rate", "patience", "max_seconds", "memory_size")


def scaled(params: Any, rows: int, seconds: float, user_keys: frozenset[str] = frozenset()) -> Any:
    """Training settings for `rows` rows: the reference recipe (made for 500 rows) up to
    SCALE_FROM rows; above, a batch giving about STEPS_PER_EPOCH steps per epoch (a power of
    two, at most 1024) with the learning rate scaled by the square root of its growth, early
    stopping (`patience` PATIENCE), a wall-clock budget of `seconds`, and a replay memory of
    at least a quarter of the rows (at most MAX_MEMORY_ROWS). Keys in `user_keys` stay."""
    if rows < SCALE_FROM or not isinstance(params, LoopConfig):
        return params
    changes: dict[str, Any] = {}
    batch = min(1024, 2 ** round(math.log2(max(rows / STEPS_PER_EPOCH, 1))))
    if "batch_size" not in user_keys and batch > params.batch_size:
        changes["batch_size"] = batch
        if "learning_rate" not in user_keys:
            changes["learning_rate"] = params.learning_rate * math.sqrt(batch / params.batch_size)
    if "patience" not in user_keys and not params.patience:
        changes["patience"] = PATIENCE
    if "max_seconds" not in user_keys and not params.max_seconds:
        changes["max_seconds"] = round(seconds, 2)
    memory = getattr(params, "memory_size", None)  # a replay memory: sized to the rows it stands for
    if memory is not None and "memory_size" not in user_keys:
        sized_memory = max(memory, min(MAX_MEMORY_ROWS, rows // MEMORY_SHARE))
        if sized_memory != memory:
            changes["memory_size"] = sized_memory
    return dataclasses.replace(params, **changes)


def stream_budget(left: float, candidates: int, width: int) -> float:
    """Each stream candidate's training budget when `left` seconds of its file's budget
    (STREAM_SECONDS) remain and the candidates run `width` at a time: TRAINING_SHARE of what
    is left, divided among the rounds they take (at least MIN_TRAINING_SECONDS)."""
    rounds = math.ceil(max(candidates, 1) / max(1, min(width, candidates)))
    return max(MIN_TRAINING_SECONDS, TRAINING_SHARE * left / rounds)


def compiled(params: Any, data: UpdateData, user_keys: frozenset[str] = frozenset()) -> Any:
    """`params` with the optimizer settings and the regression loss the store's imported model
    was compiled with, for the keys the user did not set (unchanged for `mlp:` and builder
    stores, or uncompiled models). `--set optimizer=...` drops the model's optimizer settings,
    not its loss."""
    if not isinstance(params, LoopConfig):
        return params
    settings, _, _ = _compiled_settings(data)
    if "optimizer" in user_keys:  # the user chose the optimizer: none of the model's settings for it
        settings = {k: v for k, v in settings.items() if k == "loss"}
    changes = {k: v for k, v in settings.items() if k not in user_keys}
    return dataclasses.replace(params, **changes) if changes else params


def _compiled_settings(data: UpdateData) -> tuple[dict[str, Any], str, list[str]]:
    from continual_trainer.trainer.optimizers import from_compile_config

    spec = data.model_spec
    if spec.kind != "imported":
        return {}, "", []
    return from_compile_config(spec.compile_config, "regression" if data.regression else "classification")


def training_rows(job: Job, data: UpdateData) -> int:
    """The rows a job trains on: the new ones, and the old ones too if its strategy learns them."""
    trains_old = getattr(job.params, "trains_on_old", lambda: False)()
    return len(data.new) + (len(data.old) if trains_old else 0)


def sized(job: Job, data: UpdateData, seconds: float, user_keys: frozenset[str], scale: bool = True) -> Job:
    """`job` with the imported model's compiled settings (see `compiled`), then its settings
    scaled to the rows it trains on (see `scaled`) unless `scale` is off. An imported model
    stops early below SCALE_FROM rows too (from STOP_EARLY_FROM): the reference recipe's 100
    epochs without stopping were made for the tutorial's network, not for the user's."""
    params = compiled(job.params, data, user_keys)
    if scale:
        rows = training_rows(job, data)
        params = scaled(params, rows, seconds, user_keys)
        imported = data.model_spec.kind == "imported" and isinstance(params, LoopConfig)
        if imported and rows >= STOP_EARLY_FROM and not params.patience and "patience" not in user_keys:
            params = dataclasses.replace(params, patience=PATIENCE)
    return dataclasses.replace(job, params=params)


def sized_and_said(jobs: list[tuple[Job, frozenset[str]]], data: UpdateData, seconds: float) -> list[Job]:
    """Each job (with the keys its user set) sized to its rows; the first plan that changed
    anything is told to the user (once: a sweep's trials are sized alike)."""
    from continual_trainer.trainer.progress import say

    out = [sized(job, data, seconds, keys) for job, keys in jobs]
    said = compiled_said(data, [keys for job, keys in jobs if isinstance(job.params, LoopConfig)])
    if said:
        say(said)
    lines = [
        plan(dataclasses.replace(job, params=compiled(job.params, data, keys)), new, training_rows(new, data))
        for (job, keys), new in zip(jobs, out, strict=True)
    ]
    told = [line for line in lines if line]
    if told:
        say(told[0] + (" (each trial sized likewise)" if len(jobs) > 1 else ""))
    return out


def compiled_said(data: UpdateData, user_keys: list[frozenset[str]]) -> str | None:
    """One line saying the imported model trains as it was compiled, and what is not honoured."""
    settings, words, ignored = _compiled_settings(data)
    if not settings and not ignored:
        return None
    line = ""
    if settings and user_keys and not all("optimizer" in keys for keys in user_keys):
        line = f"plan: trains as the model was compiled: {words} (--set optimizer=... and its settings choose your own)"
    if ignored:
        line += ("; " if line else "plan: ") + f"not honoured from the model's compile(): {'; '.join(ignored)}"
    return line or None


def plan(job: Job, sized_job: Job, rows: int) -> str | None:
    """One line saying what sizing changed, or None if nothing (small data, or all set)."""
    changed = [k for k in SIZED if getattr(job.params, k, None) != getattr(sized_job.params, k, None)]
    if not changed:
        return None
    p = sized_job.params
    words = {
        "batch_size": f"batch {p.batch_size}",
        "learning_rate": f"learning_rate {p.learning_rate:.3g}",
        "patience": f"early stopping (patience {p.patience})",
        "max_seconds": f"at most {p.max_seconds:g} s",
        "memory_size": f"a replay memory of {getattr(p, 'memory_size', 0):,} rows",
    }
    settings = ", ".join([f"up to {p.epochs} epochs", *(words[k] for k in changed)])
    return (
        f"plan: {job.strategy.name} on {rows:,} training rows: {settings} "
        f"(sized to the rows; --set {changed[0]}=... and the others choose your own)"
    )
