"""Network recipes, building networks from them, feeding them inputs, saving them as `.keras` bytes.

A store records how it builds a fresh network (`fresh_*`, new ensemble members):
- `mlp:20,10` (the default): Dense layers (relu, he_normal) and a head; numeric and
  tensor inputs normalised with the store's first-batch statistics inside the model,
  categorical ones looked up in the store's vocabulary and embedded;
- `package.module:function`: a builder, `function(inputs, n_outputs, seed) -> keras.Model`,
  where `inputs` maps input names to `data.schema.InputInfo` (shape, dtype, vocabulary,
  statistics), `n_outputs` is the head's width (1 for two classes with a sigmoid, k for k
  classes with a softmax, 1 for regression with a linear output) and `seed` fixes the
  initialisation; it must be importable wherever the store is updated (a job's working
  directory ships it to a cluster);
- `imported`: the architecture of the `.keras` model imported by `init --model`, kept in
  the store, cloned with freshly seeded initial weights.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import NUMERIC
from continual_trainer.trainer.light import DenseStack

if TYPE_CHECKING:
    import keras

    from continual_trainer.data.schema import InputInfo

KINDS = ("mlp", "builder", "imported")


@dataclass(frozen=True)
class ModelSpec:
    """How a store builds a fresh network (see the module's docstring).

    Attributes:
        hidden: the `mlp` recipe's hidden sizes.
        kind: `mlp`, `builder` or `imported`.
        builder: `package.module:function` for `builder`.
        architecture: the imported `.keras` bytes for `imported` (not part of the recipe's text).
    """

    hidden: tuple[int, ...] = (20, 10)
    kind: str = "mlp"
    builder: str = ""
    architecture: bytes | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def compile_config(self) -> dict[str, Any]:
        """The `compile()` the imported architecture was saved with ({} if none), read once."""
        from continual_trainer.trainer.optimizers import compile_config

        return compile_config(self.architecture)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        if text == "imported":
            return cls((), "imported")
        kind, _, rest = text.partition(":")
        if kind == "mlp":
            try:
                hidden = tuple(int(s) for s in rest.split(",") if s.strip()) if rest else ()
            except ValueError:
                raise UserError.about("model", text, "hidden sizes must be whole numbers, e.g. mlp:20,10") from None
            if any(h < 1 for h in hidden):
                raise UserError.about("model", text, "hidden sizes must be >= 1")
            return cls(hidden, "mlp")
        if rest and all(part.isidentifier() for part in [*kind.split("."), rest]):
            return cls((), "builder", text)
        raise UserError.about(
            "model",
            text,
            f"unknown model family {kind!r}; use mlp:UNITS,UNITS,..., a builder package.module:function, "
            "or a .keras file",
        )

    def __str__(self) -> str:
        if self.kind == "mlp":
            return f"mlp:{','.join(map(str, self.hidden))}"
        return self.builder if self.kind == "builder" else "imported"


def n_outputs(n_classes: int) -> int:
    """The head's width: one sigmoid unit for two classes, one softmax unit per class for more,
    one linear unit for regression (`n_classes` 0)."""
    return 1 if n_classes in (0, 2) else n_classes


def head_layer(n_classes: int, seed: int, name: str = "head") -> keras.layers.Dense:
    import keras

    activation = "linear" if n_classes == 0 else "sigmoid" if n_classes == 2 else "softmax"
    return keras.layers.Dense(
        n_outputs(n_classes),
        activation=activation,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name=name,
    )


def hidden_layers(sizes: tuple[int, ...], seed: int, prefix: str = "hidden") -> list[keras.layers.Dense]:
    import keras

    return [
        keras.layers.Dense(
            units,
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=seed + i),
            name=f"{prefix}_{i + 1}",
        )
        for i, units in enumerate(sizes)
    ]


def build_model(
    spec: ModelSpec,
    inputs: Mapping[str, InputInfo] | int,
    n_classes: int,
    seed: int,
    target: tuple[float, float] | None = None,
    adapt: bool = False,
) -> keras.Model:
    """A fresh network of the recipe for these inputs and classes (`n_classes` 0: regression).

    `inputs` may be a number of numeric features (one un-normalised `numeric` input);
    `target` is a regression label's mean and std, which the `mlp` head rescales to.
    `adapt`: `inputs` carry the statistics of the rows the network will train on, and an
    imported architecture's `Normalization` layers that read a model input take them (its
    lookups and bins keep the imported state: their width fixes the next layer's shape).
    """
    if isinstance(inputs, int):
        from continual_trainer.data.schema import InputInfo

        inputs = {NUMERIC: InputInfo((inputs,), "float32")}
    if spec.kind == "builder":
        return _from_builder(spec.builder, inputs, n_classes, seed)
    if spec.kind == "imported":
        if spec.architecture is None:
            raise ValueError("an imported recipe needs its architecture")
        model = with_head(reinitialised(from_bytes(spec.architecture), seed), n_classes, seed)
        if adapt:
            readapt(model, inputs)
        return model
    return _mlp(spec.hidden, inputs, n_classes, seed, target)


def readapt(model: keras.Model, inputs: Mapping[str, InputInfo]) -> None:
    """Give every `Normalization` layer fed directly by a model input that input's statistics
    in `inputs` (per feature, or one over all elements for a layer normalising so)."""
    import keras

    tensors = model_inputs(model)
    single = len(tensors) == 1 and len(inputs) == 1
    for name, tensor in tensors.items():
        info = next(iter(inputs.values())) if single else inputs.get(name)
        if info is None or info.mean is None or info.variance is None:
            continue
        source = tensor._keras_history.operation
        for layer in _all_layers(model):
            if type(layer) is not keras.layers.Normalization or layer.input_mean is not None:
                continue  # only adapted layers: a Normalization given its mean is the user's choice
            if not any(node.parent_nodes and node.parent_nodes[0].operation is source for node in layer._inbound_nodes):
                continue
            size = int(np.prod(layer.adapt_mean.shape))
            mean, var = np.asarray(info.mean, np.float64), np.asarray(info.variance, np.float64)
            if size != len(mean):
                if size != 1:
                    continue  # statistics of another layout than the layer's: keep what it has
                mean, var = np.array([mean.mean()]), np.array([var.mean() + mean.var()])
            layer.adapt_mean.assign(mean.reshape(layer.adapt_mean.shape))
            layer.adapt_variance.assign(var.reshape(layer.adapt_variance.shape))
            layer.finalize_state()


def _mlp(
    hidden: tuple[int, ...],
    inputs: Mapping[str, InputInfo],
    n_classes: int,
    seed: int,
    target: tuple[float, float] | None = None,
) -> keras.Model:
    """The default recipe; a single numeric input gives a Sequential Dense stack (the fast path)."""
    import keras

    body = [*hidden_layers(hidden, seed), head_layer(n_classes, seed + 1000)]
    if n_classes == 0 and target is not None:  # predict standardised values, output the label's units
        body.append(keras.layers.Rescaling(scale=target[1], offset=target[0], name="to_label_units"))
    floor = std_floor(inputs)
    if list(inputs) == [NUMERIC]:
        info = inputs[NUMERIC]
        norm = [_normalization(info, "normalize", floor)] if info.mean is not None else []
        return keras.Sequential([keras.Input(info.shape, name=NUMERIC), *norm, *body], name="mlp")
    tensors, parts = {}, []
    for i, (name, info) in enumerate(inputs.items()):
        tensors[name] = inp = keras.Input(info.shape, dtype=info.dtype, name=name)
        if info.dtype == "string":
            ids = keras.layers.StringLookup(vocabulary=list(info.vocabulary), name=f"lookup_{i}")(inp)
            size = len(info.vocabulary) + 1
            parts.append(
                keras.layers.Embedding(
                    size,
                    min(16, max(2, round(1.6 * size**0.56))),
                    embeddings_initializer=keras.initializers.RandomUniform(-0.05, 0.05, seed=seed + 500 + i),
                    name=f"embed_{i}",
                )(ids)
            )
            continue
        h = keras.layers.Flatten(name=f"flatten_{i}")(inp) if len(info.shape) > 1 else inp
        if not info.shape:  # one numeric column: a feature of its own
            h = keras.layers.Reshape((1,), name=f"column_{i}")(inp)
        parts.append(_normalization(info, f"normalize_{i}", floor)(h) if info.mean is not None else h)
    h = keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]
    for layer in body:
        h = layer(h)
    return keras.Model(tensors, h, name="mlp")


STD_FLOOR = 0.1  # of the median standard deviation of the store's numeric columns


def preprocessing_of(spec: ModelSpec, starts_from: str) -> str:
    """Where a version's input statistics and vocabularies come from, in words, for its
    manifest: kept from the current model, or (new members) as `build_model(adapt=True)` and
    `reinitialised` set them for the store's recipe."""
    if spec.kind == "imported":
        fresh = (
            "new members: adapted Normalization layers on model inputs re-adapted on the rows they trained on; "
            "lookup vocabularies, bins and other preprocessing state copied from the imported model"
        )
    else:
        fresh = (
            "new members: input statistics computed on the rows they trained on (standard deviations of numeric "
            "columns floored at a tenth of their median); vocabularies: the store's"
        )
    return {
        "current": "the current model's, kept (never retrained)",
        "body": "the current model's, kept with its frozen body",
        "members": f"current members keep theirs; {fresh}",
    }.get(starts_from, fresh)


def std_floor(inputs: Mapping[str, InputInfo]) -> float:
    """The smallest standard deviation the `mlp` recipe divides a numeric column by: a tenth of
    the median over the numeric columns that vary (1 if none does).

    A column that barely varies in the rows the statistics come from (a flag, a code, a new
    sensor, a pixel the first classes rarely touch) would otherwise be multiplied by hundreds
    once it varies: the network then sees inputs far outside anything it trained on and can
    collapse to one class. Tensors have one statistic over all their elements and no floor."""
    stds = [
        float(np.sqrt(v))
        for info in inputs.values()
        if info.columns and info.variance is not None
        for v in info.variance
        if v > 1e-12
    ]
    return STD_FLOOR * float(np.median(stds)) if stds else 1.0


def _normalization(info: InputInfo, name: str, floor: float = 1.0) -> keras.layers.Layer:
    """(x - mean) / std with the given statistics: a numeric column's std at least `floor`
    (see `std_floor`), a constant tensor's 1."""
    import keras

    mean = list(info.mean or ())
    if info.columns:
        variance = [max(float(np.sqrt(max(v, 0.0))), floor) ** 2 for v in info.variance or ()]
    else:
        variance = [v if v > 1e-12 else 1.0 for v in info.variance or ()]
    if len(mean) == 1 and info.shape != (1,):  # a tensor or one column: one mean and variance over its elements
        return keras.layers.Normalization(axis=None, mean=mean[0], variance=variance[0], name=name)
    return keras.layers.Normalization(mean=mean, variance=variance, name=name)


def _from_builder(text: str, inputs: Mapping[str, InputInfo], n_classes: int, seed: int) -> keras.Model:
    import keras

    module_name, _, function = text.partition(":")
    if os.getcwd() not in sys.path:  # a builder next to the user's data, as `python -m` would find it
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"model builder {text}: cannot import it here ({exc})") from None
    try:
        model = fn(dict(inputs), n_outputs(n_classes), seed)
    except Exception as exc:  # the user's code: any failure is theirs to see, in one line
        raise UserError(f"model builder {text} raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(model, keras.Model):
        raise UserError(f"model builder {text} returned {type(model).__name__}, not a keras.Model")
    check_model(model, inputs, n_classes, f"model builder {text}")
    return model


def check_model(model: keras.Model, inputs: Mapping[str, InputInfo], n_classes: int, what: str) -> None:
    """UserError unless `model` takes these inputs and has one output of the right width; a
    model whose inputs do not fit hears of every mismatch at once, each with the
    `keras.Input(...)` line that would fit."""
    if len(model.outputs) != 1:
        raise UserError(f"{what}: the model has {len(model.outputs)} outputs; ctrain trains models with one")
    units = int(model.outputs[0].shape[-1])
    if units != n_outputs(n_classes):
        kind = "regression" if n_classes == 0 else f"{n_classes} classes"
        raise UserError(f"{what}: the model's output has {units} unit(s); {kind} needs {n_outputs(n_classes)}")
    problems = input_problems(model, inputs)
    if problems:
        raise UserError(
            f"{what}: the model's inputs do not fit the store's columns ({len(problems)} problem(s)): "
            + "; ".join(problems)
            + " (`ctrain inputs` prints every input the store feeds)"
        )


def input_problems(model: keras.Model, inputs: Mapping[str, InputInfo]) -> list[str]:
    """Every way `model`'s inputs differ from the ones the store's columns give, in words."""
    tensors = model_inputs(model)
    if len(tensors) == 1 and len(inputs) == 1:  # one input: fed whatever its name
        ((name, info),) = inputs.items()
        problem = _mismatch(next(iter(tensors.values())), info)
        return [f"its one input {problem}; fits: {input_line(name, info)}"] if problem else []
    problems = []
    for name, tensor in tensors.items():
        found = inputs.get(name)
        if found is None:
            problems.append(f"input {name!r} has no column of that name")
        elif problem := _mismatch(tensor, found):
            problems.append(f"input {name!r} {problem}; fits: {input_line(name, found)}")
    problems += [
        f"column {name!r} feeds no input; add {input_line(name, info)} (or leave the column out with --ignore)"
        for name, info in inputs.items()
        if name not in tensors
    ]
    return problems


def _mismatch(tensor: Any, info: InputInfo) -> str:
    """How a model input differs from what a store input gives ("" if it can be fed)."""
    shape = tuple(tensor.shape[1:])
    string = str(tensor.dtype) == "string"
    if string != (info.dtype == "string"):
        given = "strings" if info.dtype == "string" else "numbers"
        return f"has dtype {tensor.dtype}; the store gives {given}"
    want = tuple(info.shape)
    fits = [want, (1,)] if want == () else [want]
    if any(len(shape) == len(w) and all(d is None or d == e for d, e in zip(shape, w, strict=True)) for w in fits):
        return ""
    return f"has shape {shape}; the store gives {want or (1,)}"


def input_line(name: str, info: InputInfo) -> str:
    """The `keras.Input` a store input fits, as code."""
    dtype = "string" if info.dtype == "string" else "float32"
    return f'keras.Input(shape={tuple(info.shape) or (1,)!r}, dtype="{dtype}", name="{name}")'


def numeric_layout(model: keras.Model, columns: Sequence[str]) -> str:
    """How the store should feed numeric columns to `model`: `columns` (one input each) if
    the model has an input named after one of them, else `grouped` (one `numeric` input)."""
    names = list(model_inputs(model))
    return "columns" if len(names) > 1 and set(names) & set(columns) else "grouped"


def model_inputs(model: keras.Model) -> dict[str, Any]:
    """The model's input tensors by the name they are fed by (a dict-structured model's keys,
    else the input layers' names)."""
    if _dict_inputs(model):
        return dict(model.input)
    return {t.name: t for t in model.inputs}


def input_names(model: keras.Model) -> list[str]:
    """The names the model's inputs are fed by."""
    return list(model_inputs(model))


def input_structure(model: keras.Model) -> Any:
    """The model's inputs as it was built with them (a dict, a list), to build a new model on."""
    if _dict_inputs(model):
        return dict(model.input)
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _dict_inputs(model: keras.Model) -> bool:
    try:
        return isinstance(model.input, dict)
    except (AttributeError, ValueError):
        return False


def feed(model: keras.Model, x: Mapping[str, np.ndarray]) -> Any:
    """The inputs as `model` takes them: the one array for a single-input model, else a dict
    by input name; a column's values shaped `(n, 1)` for an input of shape `(1,)` and cast to
    an integer input's dtype (an `IntegerLookup` on a column the store holds as numbers)."""
    tensors = model_inputs(model)
    if len(tensors) == 1:
        if len(x) != 1:
            raise UserError(f"model {model.name!r} takes one input; the store's columns give {list(x)}")
        ((name, tensor),) = tensors.items()
        value = _as_input(next(iter(x.values())), tensor)
        return {name: value} if _dict_inputs(model) else value
    missing = [n for n in tensors if n not in x]
    if missing:
        raise UserError(f"model {model.name!r} needs input(s) {missing}; the store's columns give {list(x)}")
    return {n: _as_input(x[n], t) for n, t in tensors.items()}


def _as_input(value: np.ndarray, tensor: Any) -> np.ndarray:
    if value.ndim == len(tensor.shape) - 1:
        value = value.reshape(*value.shape, 1)
    dtype = str(tensor.dtype)
    if dtype.startswith(("int", "uint")) and value.dtype.kind == "f":
        value = value.astype(dtype)
    return value


def model_classes(model: keras.Model) -> int:
    """How many classes a classifier's head predicts (a single sigmoid unit: two)."""
    units = model.units if isinstance(model, DenseStack) else int(model.outputs[0].shape[-1])
    return 2 if units == 1 else units


def output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer producing the model's output."""
    return model.outputs[0]._keras_history.operation


def with_head(model: keras.Model, n_classes: int, seed: int) -> keras.Model:
    """`model` if its output fits `n_classes`, else the same body with a new Dense head."""
    if int(model.outputs[0].shape[-1]) == n_outputs(n_classes):
        return model
    import keras

    body_output = output_layer(model).input
    return keras.Model(model.inputs, head_layer(n_classes, seed + 1000, name="head")(body_output), name=model.name)


def reinitialised(model: keras.Model, seed: int) -> keras.Model:
    """A clone of `model`'s architecture with fresh initial weights, seeded layer by layer.

    Preprocessing state is the data's, not the training's: every layer that can be adapted
    (`Normalization`, `StringLookup`/`IntegerLookup`, `Discretization`, ...) keeps the state it
    has in `model` (statistics, vocabulary, bins), so a fresh member of an imported
    architecture reads its inputs as the imported model does.
    """
    import keras

    counter = iter(range(10**6))

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        offset = next(counter)
        for key, value in list(config.items()):
            if key.endswith("_initializer") and isinstance(value, dict) and "seed" in value.get("config", {}):
                config[key] = {**value, "config": {**value["config"], "seed": seed + 97 * offset + len(key)}}
        return layer.__class__.from_config(config)

    fresh = keras.models.clone_model(model, clone_function=clone_layer)
    for source, target in zip(_all_layers(model), _all_layers(fresh), strict=True):
        if is_preprocessing(source):
            copy_state(source, target)
    return fresh


def is_preprocessing(layer: keras.layers.Layer) -> bool:
    """A layer whose state comes from the data (`adapt`), not from training."""
    return callable(getattr(layer, "adapt", None)) and not any(v.trainable for v in layer.weights)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model._flatten_layers(include_self=False)]


def copy_state(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Give `target` (a layer of the same configuration) `source`'s variables and assets as
    Keras's own saving does (so a lookup's vocabulary and a Normalization's derived mean come
    along), without writing a model file."""
    store: dict[str, Any] = {}
    source.save_own_variables(store)
    if hasattr(source, "save_assets"):
        with tempfile.TemporaryDirectory() as tmp:
            source.save_assets(tmp)
            target.load_assets(tmp)
    target.load_own_variables(store)


def set_weights(model: keras.Model, weights: list[np.ndarray]) -> None:
    """`model.set_weights`, then every layer that derives state from its variables (an adapted
    `Normalization`'s mean and variance) derives it again, as loading a model file does."""
    model.set_weights(weights)
    for layer in _all_layers(model):
        # Only layers whose state is in the variables just assigned: a lookup's or a
        # Discretization's finalize_state rebuilds its state from what `adapt` accumulated.
        if layer.weights and is_preprocessing(layer) and callable(getattr(layer, "finalize_state", None)):
            layer.finalize_state()


def clone(model: keras.Model) -> keras.Model:
    """An independent copy with the same weights, trainable flags and preprocessing state.

    It goes through the `.keras` format (in memory), as Keras's own saving is the one path
    that carries every kind of state: variables, adapted statistics, lookup vocabularies
    (assets) and layers' derived tensors. `clone_model` + `set_weights` loses the last two
    (an adapted `Normalization` kept its build-time mean 0 and variance 1).
    """
    return from_bytes(to_bytes(model))


def to_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def from_bytes(data: bytes, source: str = "") -> keras.Model:
    """Load a `.keras` archive with safe mode on (no arbitrary code in the file runs).

    With `source` (a file a user gave), any failure is a UserError naming it.
    """
    from continual_trainer.trainer.progress import import_keras_quietly

    import_keras_quietly()
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        if not source:
            return keras.models.load_model(path, compile=False, safe_mode=True)
        try:
            return keras.models.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # a file from outside: every way it can be wrong is the user's to see
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise UserError(f"{source}: not a Keras model that loads in safe mode ({first[:200]})") from None
