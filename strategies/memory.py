"""A bounded replay memory of old training rows, kept with each version.

The memory is part of a version's state (`Candidate.state`): its rows' inputs, labels,
batch order, the number of rows offered to it so far and, for dark experience replay,
the logits the model gave each row when it was stored. The store keeps those arrays as
pickle-free `.npy` files, checksummed like every file of a version, so an update that
replays reads the memory, never the old batches.

Selection is seeded and one of:
- `reservoir`: every training row offered so far has the same chance to be in memory
  (Vitter's algorithm R, applied batch after batch);
- `class_balanced`: the same number of rows of every class seen (a class with fewer rows
  gives its share to the others), drawn at random within each class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.strategies.registry import describes_state

if TYPE_CHECKING:
    import keras

SELECTIONS = ("reservoir", "class_balanced")
_PREFIX = "memory."


@dataclass(frozen=True)
class Memory:
    """Rows kept from earlier batches.

    Attributes:
        rows: the kept rows (their `order` says which batch each came from).
        seen: training rows offered to the memory so far (reservoir sampling's count).
        logits: with dark experience replay, shape (n, k): the logits the model gave each
            row when it was stored, NaN for classes the model did not know then; else None.
    """

    rows: Rows
    seen: int
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def to_state(self) -> dict[str, np.ndarray]:
        out = {f"{_PREFIX}x.{name}": a for name, a in self.rows.x.items()}
        out[f"{_PREFIX}y"] = self.rows.y
        out[f"{_PREFIX}order"] = self.rows.order
        out[f"{_PREFIX}seen"] = np.asarray(self.seen, np.int64)
        if self.logits is not None:
            out[f"{_PREFIX}logits"] = self.logits.astype(np.float32)
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Memory | None:
        """The memory a version keeps, or None if it keeps none."""
        if f"{_PREFIX}y" not in state:
            return None
        x = {
            key[len(_PREFIX) + 2 :]: a.astype(object) if a.dtype.kind == "U" else a
            for key, a in state.items()
            if key.startswith(f"{_PREFIX}x.")
        }
        logits = state.get(f"{_PREFIX}logits")
        rows = Rows(x, state[f"{_PREFIX}y"], state[f"{_PREFIX}order"].astype(np.int32))
        return cls(rows, int(state[f"{_PREFIX}seen"]), logits)


def has_memory(state: Mapping[str, Any]) -> bool:
    return f"{_PREFIX}y" in state


def select(
    memory: Memory | None,
    new: Rows,
    size: int,
    selection: str,
    seed: int,
    new_logits: np.ndarray | None = None,
) -> Memory:
    """The memory after `new` training rows were offered to it (with their logits, for DER)."""
    rng = np.random.default_rng(seed)
    if memory is None:
        memory = Memory(new.take(np.zeros(0, np.int64)), 0, None if new_logits is None else new_logits[:0])
    logits = _joined_logits(memory, len(new), new_logits)
    pool = Rows.concat([memory.rows, new])
    if selection == "reservoir":
        keep = _reservoir(len(memory), memory.seen, len(new), size, rng)
    elif selection == "class_balanced":
        if pool.y.dtype.kind == "f":
            raise UserError("selection=class_balanced needs classes; this store predicts numbers: use reservoir")
        keep = _balanced(pool.y, size, rng)
    else:
        raise ValueError(f"unknown selection {selection!r}")
    return Memory(pool.take(keep), memory.seen + len(new), None if logits is None else logits[keep])


def _joined_logits(memory: Memory, n_new: int, new_logits: np.ndarray | None) -> np.ndarray | None:
    if new_logits is None:
        return None
    old = memory.logits if memory.logits is not None else np.full((len(memory), 0), np.nan, np.float32)
    width = max(old.shape[1], new_logits.shape[1])
    return np.concatenate([pad_logits(old, width), pad_logits(new_logits, width)]).astype(np.float32)


def pad_logits(logits: np.ndarray, width: int) -> np.ndarray:
    """Logits widened to `width` classes with NaN (classes the model did not know). A
    sigmoid unit's logit z becomes the softmax pair (0, z), as `new_head` maps the unit."""
    if logits.shape[1] == width:
        return logits
    if logits.shape[1] == 1 and width > 1:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    out = np.full((len(logits), width), np.nan, np.float32)
    out[:, : logits.shape[1]] = logits
    return out


def _reservoir(n_memory: int, seen: int, n_new: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into memory + new rows that algorithm R keeps."""
    slots = list(range(n_memory))
    start = 0
    while len(slots) < size and start < n_new:  # a memory not yet full takes rows as they come
        slots.append(n_memory + start)
        start += 1
    if start < n_new:
        t = seen + np.arange(start, n_new)  # rows offered before each one
        j = rng.integers(0, t + 1)
        for i in np.flatnonzero(j < size):
            slots[j[i]] = n_memory + start + int(i)
    return np.asarray(slots, np.int64)


def _balanced(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `size` indices with as equal a count per class as the rows allow."""
    classes, counts = np.unique(y, return_counts=True)
    quota = np.zeros(len(classes), np.int64)
    left = size
    while left > 0 and (quota < counts).any():  # water-filling: small classes give their share away
        open_ = np.flatnonzero(quota < counts)
        share = max(left // len(open_), 1)
        for c in open_:
            add = min(share, counts[c] - quota[c], left)
            quota[c] += add
            left -= add
            if left == 0:
                break
    keep = [rng.choice(np.flatnonzero(y == c), int(q), replace=False) for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def logits_of(model: keras.Model, x: Mapping[str, np.ndarray], regression: bool = False) -> np.ndarray:
    """A network's logits per row: log-probabilities for a softmax head (the logits up to a
    per-row constant, which the matching loss ignores), the logit of a sigmoid unit, the
    prediction itself for regression."""
    from continual_trainer.trainer.candidate import member_output

    out = member_output(model, x)
    if regression:
        return out.astype(np.float32)
    if out.shape[1] == 1:
        p = np.clip(out, 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p)).astype(np.float32)
    return np.log(np.clip(out, 1e-7, None)).astype(np.float32)


@describes_state
def summary(state: Mapping[str, np.ndarray], batch_ids: Sequence[str]) -> dict[str, Any]:
    """The memory a version keeps, for its manifest: its rows, rows offered, rows per batch."""
    out: dict[str, Any] = {}
    memory = Memory.from_state(state)
    if memory is None:
        return out
    orders, counts = np.unique(memory.rows.order, return_counts=True)
    per_batch = {
        (batch_ids[int(o)] if int(o) < len(batch_ids) else str(int(o))): int(c)
        for o, c in zip(orders, counts, strict=True)
    }
    out["memory"] = {"rows": len(memory), "seen": memory.seen, "logits": memory.logits is not None}
    out["memory"]["per_batch"] = per_batch
    return out
