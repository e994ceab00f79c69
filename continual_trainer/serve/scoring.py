"""A served version's scorer, and the batcher that scores requests arriving together as one.

A version is scored the fastest way its members allow: plain Dense stacks in NumPy, straight
from their files (`trainer.light`, no TensorFlow); anything else (a CNN, a model built the Keras
way with one input per column and `StringLookup`, an ensemble of such) through one compiled
`tf.function` with an input signature (`trainer.compiled`), traced and warmed up on rows of the
newest batch before the version answers a request. Never `model.predict` per request.

Batching (as TF Serving's batching and Ray Serve's `@serve.batch` do): requests that arrive
while the event loop is busy are scored as one call, up to `max_rows` rows, waiting at most
`wait` seconds for company (0, the default, waits for nobody: it gathers only requests that are
already queued). The answers are the same with batching on or off: each request gets its own
rows' slice of the batch's predictions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from continual_trainer.data.schema import Schema
from continual_trainer.trainer.candidate import Candidate, member_output
from continual_trainer.trainer.light import DenseStack

__all__ = ["Batcher", "Scorer"]

Inputs = Mapping[str, np.ndarray]


class Scorer:
    """A candidate's predictions (`Candidate.predict`'s) for model inputs, computed in NumPy
    when every member is a Dense stack, else by one compiled function."""

    def __init__(self, candidate: Candidate, n_classes: int) -> None:
        self.candidate = candidate
        self.n_classes = n_classes
        used = [m if w else None for m, w in candidate.used()]
        if all(m is None or isinstance(m, DenseStack) for m in used):
            self.compiled = False
            self._outputs: Callable[[Inputs], list[np.ndarray | None]] = lambda x: [
                None if m is None else member_output(m, x) for m in used
            ]
        else:
            from continual_trainer.trainer.compiled import CompiledMembers

            self.compiled = True
            self._outputs = CompiledMembers(used)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.candidate.combine(self._outputs(inputs), self.n_classes)


@dataclass
class _Waiting:
    inputs: Inputs
    n: int
    future: asyncio.Future[Any]


class Batcher:
    """Scores requests' rows with `score` (inputs -> any result sliceable by rows, or a tuple of
    such), several requests at a time.

    Args:
        score: the function scoring a batch of inputs.
        max_rows: the most rows in one call (1: no batching).
        wait: seconds a request waits for others (0: only those already queued).
    """

    def __init__(self, score: Callable[[Inputs], Any], max_rows: int = 64, wait: float = 0.0) -> None:
        self.score = score
        self.max_rows = max_rows
        self.wait = wait
        self._waiting: list[_Waiting] = []
        self._rows = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self.calls = 0  # scoring calls made (a batch is one)

    async def __call__(self, inputs: Inputs, n: int) -> Any:
        """The result for these rows (scored alone or with other requests')."""
        if self.max_rows <= 1 or n >= self.max_rows:
            self.calls += 1
            return self.score(inputs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(_Waiting(inputs, n, future))
        self._rows += n
        if self._rows >= self.max_rows:
            self._flush()
        elif self._scheduled is None:
            self._scheduled = loop.call_later(self.wait, self._flush) if self.wait > 0 else loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        waiting, self._waiting, self._rows = self._waiting, [], 0
        if not waiting:
            return
        self.calls += 1
        try:
            if len(waiting) == 1:
                results = [self.score(waiting[0].inputs)]
            else:
                joined = {k: np.concatenate([w.inputs[k] for w in waiting]) for k in waiting[0].inputs}
                results = _split(self.score(joined), [w.n for w in waiting])
        except Exception as exc:  # every request of the batch fails as it would have alone
            for w in waiting:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        for w, result in zip(waiting, results, strict=True):
            if not w.future.done():  # a client that went away has cancelled its future
                w.future.set_result(result)


def _split(result: Any, sizes: list[int]) -> list[Any]:
    """A batch's result cut into each request's rows."""
    edges = np.cumsum([0, *sizes]).tolist()
    if isinstance(result, tuple):
        parts = [_split(r, sizes) if r is not None else [None] * len(sizes) for r in result]
        return [tuple(p[i] for p in parts) for i in range(len(sizes))]
    return [result[a:b] for a, b in pairwise(edges)]


def warm_up(scorer: Scorer, schema: Schema, typed: Mapping[str, np.ndarray]) -> None:
    """Score typed rows once (traces a compiled scorer; raises if the version cannot score them)."""
    scorer(schema.inputs_of(typed))
