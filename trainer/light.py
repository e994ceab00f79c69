"""Scoring a plain Dense stack in NumPy, straight from its `.keras` file, without TensorFlow.

Importing TensorFlow and loading a model through Keras cost a scoring process about two
seconds before its first row; for a `predict` on a day's file, or a stream file whose
trigger stays quiet, that is most of the work. The networks `mlp:` builds (and any
Sequential model of the same layers) are a few matrix products: `DenseStack` reads their
configuration (`config.json`, JSON: no code runs, as in Keras's safe mode) and weights
(`model.weights.h5`) from the archive and computes what the model's call computes, in
float32 as Keras does (the same numbers to float32 rounding). Anything else in the file (other
layers, other dtypes, several inputs, quantization) makes `read` return None, and the
member is loaded by Keras as before.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from continual_trainer.data.errors import UserError


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softmax": _softmax,
}
_EPSILON = 1e-7  # keras.config.epsilon(): Normalization divides by max(sqrt(variance), epsilon)


@dataclass(frozen=True)
class DenseStack:
    """A model that is, at inference, optional normalisation then Dense layers.

    Attributes:
        name: the model's name (in messages).
        mean, scale: the Normalization layer's mean and max(sqrt(variance), epsilon), or None.
        layers: (kernel, bias or None, activation name) of each Dense layer, in order.
        rescale: a last Rescaling layer's (scale, offset) (a regression head's label units), or None.
    """

    name: str
    mean: np.ndarray | None
    scale: np.ndarray | None
    layers: tuple[tuple[np.ndarray, np.ndarray | None, str], ...]
    rescale: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def units(self) -> int:
        return int(self.layers[-1][0].shape[1])

    def output(self, x: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's output for every row, shape (n, units), as float64 (as `member_output`)."""
        if len(x) != 1:
            raise UserError(f"model {self.name!r} takes one input; the store's columns give {list(x)}")
        h = np.asarray(next(iter(x.values())), np.float32)
        h = h.reshape(len(h), -1)
        if self.mean is not None and self.scale is not None:
            h = (h - self.mean) / self.scale
        for kernel, bias, activation in self.layers:
            h = h @ kernel
            if bias is not None:
                h = h + bias
            h = ACTIVATIONS[activation](h).astype(np.float32, copy=False)
        if self.rescale is not None:
            h = h * self.rescale[0] + self.rescale[1]
        return h.astype(np.float64)


def read(data: bytes) -> DenseStack | None:
    """The `.keras` archive's model as a `DenseStack`, or None if it is anything else."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
        return _stack(config, weights)
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile):
        return None


def _stack(config: Mapping[str, Any], weights: bytes) -> DenseStack | None:
    import h5py  # type: ignore[import-untyped]

    if config.get("class_name") != "Sequential":
        return None
    layers = config["config"]["layers"]
    if layers and layers[0]["class_name"] == "InputLayer":
        if not _float32(layers[0]["config"].get("dtype")):
            return None
        layers = layers[1:]
    mean = scale = None
    rescale = None
    dense: list[tuple[np.ndarray, np.ndarray | None, str]] = []
    used: dict[str, int] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        for k, layer in enumerate(layers):
            kind, c = layer["class_name"], layer["config"]
            # Keras names each layer's weights by its class in snake case, numbered by order.
            base = {"Dense": "dense", "Normalization": "normalization", "Dropout": "dropout"}.get(kind)
            if kind == "Rescaling" and k == len(layers) - 1 and _float32(c.get("dtype")):
                rescale = (np.asarray(c["scale"], np.float32), np.asarray(c.get("offset", 0.0), np.float32))
                continue
            if base is None or not _float32(c.get("dtype")):
                return None
            count = used.get(base, 0)
            used[base] = count + 1
            key = f"layers/{base}" + (f"_{count}" if count else "") + "/vars"
            values = [np.asarray(h5[key][str(i)]) for i in range(len(h5[key]))] if key in h5 else []
            if kind == "Dropout":
                continue  # identity at inference
            if kind == "Normalization":
                if k != 0 or c.get("invert") or list(c.get("axis") or [-1]) != [-1]:
                    return None
                if c.get("mean") is not None and c.get("variance") is not None:
                    m, v = c["mean"], c["variance"]  # given when the model was built
                elif len(values) >= 2:
                    m, v = values[0], values[1]  # adapted: the layer's mean and variance weights
                else:
                    return None
                mean = np.asarray(m, np.float32).reshape(-1)
                scale = np.maximum(np.sqrt(np.asarray(v, np.float32).reshape(-1)), np.float32(_EPSILON))
                continue
            activation = c.get("activation")
            if activation not in ACTIVATIONS or c.get("lora_rank") or c.get("quantization_config"):
                return None
            use_bias = bool(c.get("use_bias", True))
            if len(values) != (2 if use_bias else 1) or values[0].ndim != 2:
                return None
            kernel = values[0].astype(np.float32)
            bias = values[1].astype(np.float32) if use_bias else None
            if (dense and dense[-1][0].shape[1] != kernel.shape[0]) or kernel.shape[1] != int(c["units"]):
                return None
            dense.append((kernel, bias, str(activation)))
    if not dense or (mean is not None and mean.shape[0] not in (1, dense[0][0].shape[0])):
        return None
    return DenseStack(str(config["config"].get("name", "model")), mean, scale, tuple(dense), rescale)


def _float32(dtype: Any) -> bool:
    """A layer computing in float32 (its dtype as a string or a Keras dtype policy)."""
    if dtype is None:
        return True
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype == "float32"
