"""Scoring Keras members through one compiled TensorFlow function, for a server.

Calling a Keras model eagerly costs about a millisecond of Python and dispatch per call, far
more than the arithmetic of a request's few rows; `model.predict` costs more again (Keras's
documentation advises `model(x)` or a `tf.function` for small inputs). A server that answers
thousands of requests a second traces the members once into one `tf.function` with an input
signature (the batch dimension left open, so every request size reuses the same graph) and
calls that: one dispatch per request, or per batch of requests.

The signature is the members' inputs as `trainer.models.feed` feeds them (a column of shape
`(1,)` per input for a model with one input per column, strings for `StringLookup` inputs),
fixed at the first call, which a server makes on warm-up rows before it answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from continual_trainer.trainer.models import _as_input, _dict_inputs, model_inputs

__all__ = ["CompiledMembers"]


class CompiledMembers:
    """The raw outputs of several Keras members (`trainer.candidate.member_output`'s, float64),
    computed by one compiled function.

    Args:
        members: the Keras models (a weight-0 member is given as None and gets None back).
    """

    def __init__(self, members: list[Any]) -> None:
        self.members = members
        self._run: Callable[[dict[str, Any]], Any] | None = None
        self._plan: list[tuple[Any, dict[str, tuple[str, Any]], bool]] = []

    def _compile(self, x: Mapping[str, np.ndarray]) -> None:
        import tensorflow as tf

        signature: dict[str, Any] = {}
        for model in self.members:
            if model is None:
                continue
            tensors = model_inputs(model)
            if len(tensors) == 1:  # the store's one input, whatever the model calls it
                ((name, tensor),) = tensors.items()
                fed = {name: (next(iter(x)), tensor)}
            else:
                fed = {name: (name, tensor) for name, tensor in tensors.items()}
            for key, (_, tensor) in fed.items():
                signature.setdefault(key, tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype, name=key))
            self._plan.append((model, fed, len(tensors) == 1 and not _dict_inputs(model)))

        def run(inputs: dict[str, Any]) -> tuple[Any, ...]:
            outputs = []
            for model, fed, bare in self._plan:
                arg = inputs[next(iter(fed))] if bare else {key: inputs[key] for key in fed}
                outputs.append(model(arg, training=False))
            return tuple(outputs)

        self._run = tf.function(run, input_signature=[signature], reduce_retracing=True)

    def __call__(self, x: Mapping[str, np.ndarray]) -> list[np.ndarray | None]:
        """Each member's raw output for the rows of `x` (model inputs by the store's names)."""
        if self._run is None:
            self._compile(x)
        assert self._run is not None
        inputs: dict[str, np.ndarray] = {}
        for _, fed, _ in self._plan:
            for key, (source, tensor) in fed.items():
                if key not in inputs:
                    inputs[key] = _as_input(x[source], tensor)
        outputs = iter(self._run(inputs))
        return [None if m is None else np.asarray(next(outputs), np.float64) for m in self.members]
