"""The optimizers the compiled loop runs, as Keras defines them, and a model's own `compile()`.

Keras's common optimizers, SGD (momentum, Nesterov), Adam, AdamW, RMSprop (momentum,
centered) and Adagrad, with the settings every Keras optimizer shares: decoupled weight
decay and gradient clipping (`clipnorm`, `global_clipnorm`, `clipvalue`). Each step is the
update rule of Keras 3's optimizer of that name, in the same order (clip the gradients,
decay the weights, apply the rule), through TensorFlow's fused kernel where one computes
exactly Keras's rule; `tests/trainer/test_optimizers.py` checks every one against `fit`.

A model imported with `ctrain init --model model.keras` carries the `compile()` it was saved
with; `from_compile_config` reads the optimizer and loss from it as the loop's settings, and
names whatever the loop cannot honour (a learning-rate schedule, EMA, AMSGrad, an optimizer or
loss of another kind) so the user is told, never surprised.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from io import BytesIO
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
ADAMW_DECAY = 0.004  # Keras's AdamW's weight_decay, when `optimizer=adamw` is given without one

# Keras's class names, and the settings of each the loop honours (LoopConfig's names).
_CLASSES = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop", "Adagrad": "adagrad"}
_OWN = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("beta_1", "beta_2", "epsilon"),
    "adamw": ("beta_1", "beta_2", "epsilon"),
    "rmsprop": ("rho", "momentum", "epsilon", "centered"),
    "adagrad": ("initial_accumulator_value", "epsilon"),
}
CLIPS = ("clipnorm", "global_clipnorm", "clipvalue")  # Keras allows one at a time
_SHARED = ("weight_decay", *CLIPS)
# Keras settings with no effect at these values; any other value is not honoured.
_INERT: dict[str, Any] = {
    "use_ema": False,
    "amsgrad": False,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}
_CLASSIFICATION_LOSSES = ("binary_crossentropy", "sparse_categorical_crossentropy", "categorical_crossentropy")
_REGRESSION_LOSSES = {
    "mean_squared_error": "mse",
    "mse": "mse",
    "mean_absolute_error": "mae",
    "mae": "mae",
    "huber": "huber",
    "huber_loss": "huber",
}


@dataclass(frozen=True)
class UpdateRule:
    """What decides the shape of an optimizer's compiled step (its trace): the rule and the
    settings that add or remove operations. Numeric settings travel as tensors."""

    name: str
    nesterov: bool = False
    centered: bool = False
    decay: bool = False
    clip: str = ""  # "clipnorm", "global_clipnorm", "clipvalue" or ""

    @property
    def slots_per_variable(self) -> int:
        return {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 3 if self.centered else 2, "adagrad": 1}[self.name]


def _clip(config: Any) -> tuple[str, float]:
    """The clip the settings set (its name and value), or ("", 0.0)."""
    return next(((k, getattr(config, k)) for k in CLIPS if getattr(config, k)), ("", 0.0))


def rule_of(config: Any) -> UpdateRule:
    clip = _clip(config)[0]
    return UpdateRule(config.optimizer, bool(config.nesterov), bool(config.centered), weight_decay(config) > 0, clip)


def weight_decay(config: Any) -> float:
    if config.optimizer == "adamw" and not config.weight_decay:
        return ADAMW_DECAY
    return float(config.weight_decay)


def hyper(config: Any) -> list[float]:
    """The numeric settings, in the order `step` reads them."""
    clip = _clip(config)[1]
    first = config.beta_1 if config.optimizer in ("adam", "adamw") else config.momentum
    return [config.learning_rate, first, config.beta_2, config.epsilon, config.rho, weight_decay(config), clip]


def new_slots(rule: UpdateRule, trainable: list[Any], config: Any) -> list[Any]:
    """Fresh optimizer state for `trainable`, as Keras's optimizer builds it."""
    import tensorflow as tf

    start = config.initial_accumulator_value if rule.name == "adagrad" else 0.0
    slots = [tf.Variable(tf.fill(tf.shape(v), start)) for v in trainable for _ in range(rule.slots_per_variable)]
    if rule.name in ("adam", "adamw"):
        slots.append(tf.Variable(0.0))
    return slots


def step(rule: UpdateRule, params: list[Any], grads: list[Any], slots: list[Any], hp: Any) -> None:
    """One optimizer step inside the compiled loop: Keras's order and update rules."""
    import tensorflow as tf

    lr, first, beta_2, eps, rho, decay, clip = tf.unstack(hp)
    if rule.clip == "clipnorm":
        grads = [tf.clip_by_norm(g, clip) for g in grads]
    elif rule.clip == "global_clipnorm":
        grads, _ = tf.clip_by_global_norm(grads, clip)
    elif rule.clip == "clipvalue":
        grads = [tf.clip_by_value(g, -clip, clip) for g in grads]
    if rule.decay:
        for v in params:
            v.assign_sub(v * decay * lr)
    k = rule.slots_per_variable
    if rule.name == "sgd":
        for v, g, accum in zip(params, grads, slots, strict=True):
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=v.handle, accum=accum.handle, lr=lr, grad=g, momentum=first, use_nesterov=rule.nesterov
            )
    elif rule.name in ("adam", "adamw"):
        t = slots[-1]
        t.assign_add(1.0)
        b1p, b2p = tf.pow(first, t), tf.pow(beta_2, t)
        for i, (v, g) in enumerate(zip(params, grads, strict=True)):
            m, s = slots[k * i], slots[k * i + 1]
            tf.raw_ops.ResourceApplyAdam(
                var=v.handle, m=m.handle, v=s.handle, beta1_power=b1p, beta2_power=b2p, lr=lr, beta1=first,
                beta2=beta_2, epsilon=eps, grad=g,
            )  # fmt: skip
    elif rule.name == "rmsprop":
        for i, (v, g) in enumerate(zip(params, grads, strict=True)):
            ms, mom = slots[k * i], slots[k * i + 1]
            if rule.centered:
                tf.raw_ops.ResourceApplyCenteredRMSProp(
                    var=v.handle, mg=slots[k * i + 2].handle, ms=ms.handle, mom=mom.handle, lr=lr, rho=rho,
                    momentum=first, epsilon=eps, grad=g,
                )  # fmt: skip
            else:
                tf.raw_ops.ResourceApplyRMSProp(
                    var=v.handle, ms=ms.handle, mom=mom.handle, lr=lr, rho=rho, momentum=first, epsilon=eps, grad=g
                )
    else:  # adagrad: Keras divides by sqrt(accumulator + epsilon), TensorFlow's kernel by sqrt(accumulator) + epsilon
        for v, g, accum in zip(params, grads, slots, strict=True):
            accum.assign_add(tf.square(g))
            v.assign_sub(lr * g / tf.sqrt(accum + eps))


def keras_optimizer(config: Any) -> Any:
    """The Keras optimizer the loop's settings stand for (to compile a model as it was trained)."""
    import keras

    shared = {k: getattr(config, k) or None for k in _SHARED}
    shared["weight_decay"] = weight_decay(config) or None
    own = {k: getattr(config, k) for k in _OWN[config.optimizer]}
    cls = {v: k for k, v in _CLASSES.items()}[config.optimizer]
    return getattr(keras.optimizers, cls)(learning_rate=config.learning_rate, **own, **shared)


def compile_config(architecture: bytes | None) -> dict[str, Any]:
    """The `compile_config` a `.keras` archive was saved with ({} if it was not compiled)."""
    if not architecture:
        return {}
    try:
        with zipfile.ZipFile(BytesIO(architecture)) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError):
        return {}
    found = config.get("compile_config") if isinstance(config, dict) else None
    return found if isinstance(found, dict) else {}


def from_compile_config(compiled: dict[str, Any], task: str) -> tuple[dict[str, Any], str, list[str]]:
    """The loop's settings from a model's `compile_config`: (settings, a short description,
    what is not honoured, one phrase each). Nothing if the model was not compiled."""
    settings: dict[str, Any] = {}
    words: list[str] = []
    ignored: list[str] = []
    optimizer = compiled.get("optimizer")
    if isinstance(optimizer, str):  # compile(optimizer="adam"): Keras's defaults of that class
        optimizer = {"class_name": {k.lower(): k for k in _CLASSES}.get(optimizer.lower(), optimizer), "config": {}}
    if isinstance(optimizer, dict):
        cls, cfg = str(optimizer.get("class_name")), optimizer.get("config") or {}
        name = _CLASSES.get(cls)
        if name is None:
            ignored.append(f"optimizer {cls} (the loop runs {', '.join(_CLASSES)})")
        else:
            settings["optimizer"] = name
            lr = cfg.get("learning_rate", _default_lr(name))
            if isinstance(lr, dict):  # a schedule: its starting rate
                ignored.append(f"the learning-rate schedule {lr.get('class_name')} (its initial rate is used)")
                lr = (lr.get("config") or {}).get("initial_learning_rate")
            if isinstance(lr, int | float):
                settings["learning_rate"] = float(f"{lr:.7g}")  # float32 in the file: 0.0010000000474974513
            for key in (*_OWN[name], *_SHARED):
                if key in cfg and cfg[key] is not None:
                    value = cfg[key]
                    settings[key] = value if isinstance(value, bool) else float(f"{value:.7g}")
            ignored += [f"{k}={cfg[k]}" for k, inert in _INERT.items() if k in cfg and cfg[k] not in (inert, 0)]
            shown = [f"{k} {settings[k]:g}" for k in ("learning_rate", *_OWN[name], *_SHARED)
                     if isinstance(settings.get(k), float) and settings[k]]  # fmt: skip
            shown += [k for k in _OWN[name] if settings.get(k) is True]
            words.append(f"{cls} ({', '.join(shown)})")
    loss = _loss_name(compiled.get("loss"))
    if loss:
        supported = _CLASSIFICATION_LOSSES if task == "classification" else tuple(_REGRESSION_LOSSES)
        # Keras saves no Huber delta (its get_config leaves it out): a reloaded model has 1, as here.
        if loss in supported and not _from_logits(compiled.get("loss")):
            words.append(f"loss {loss}")
            if task == "regression":
                settings["loss"] = _REGRESSION_LOSSES[loss]
        else:
            usual = "cross-entropy" if task == "classification" else "mean squared error"
            ignored.append(f"loss {loss}{' from logits' if _from_logits(compiled.get('loss')) else ''} "
                           f"(trained with {usual})")  # fmt: skip
    return settings, ", ".join(words), ignored


def _default_lr(name: str) -> float:
    return 0.01 if name == "sgd" else 0.001


def _loss_name(loss: Any) -> str:
    """A compiled loss's name: a string as given, a loss object's `name` (`huber_loss`), or a
    loss function's name (Keras serialises `keras.losses.mae` with its name as the config)."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict):
        cfg = loss.get("config") or {}
        if isinstance(cfg, str):
            return cfg
        return str(cfg.get("name") or loss.get("class_name") or "")
    return ""


def _from_logits(loss: Any) -> bool:
    cfg = loss.get("config") if isinstance(loss, dict) else None
    return isinstance(cfg, dict) and bool(cfg.get("from_logits"))
