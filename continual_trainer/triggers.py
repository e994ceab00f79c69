"""Whether an arriving batch calls for an update: drift triggers, one registry.

A trigger looks at one arriving labelled file before anything is trained and decides
whether the stream should update the model now. Each is registered like a strategy:
a name, a frozen parameter dataclass whose fields declare their constraints, and a
function `fn(observation, params, state) -> Decision`. `state` is what the trigger kept
from the previous file (a sequential detector's sums); it is stored in that file's stream
event, so a stream that restarts goes on where it stopped, and it is reset once the model
changes (to what the trigger put under `carry`, if the stream's own update changed it).

- `always`: every file (the stream's behaviour without triggers);
- `every`: every `files` files or once `rows` rows arrived since the last update;
- `performance`: the current model's error on the arriving rows against its error on the
  held-out rows of the newest batches it learned: a two-sample z-test on per-row losses (0/1
  error, or squared error in label standard deviations) with a minimum effect `drop`, a
  Page-Hinkley detector over the per-file differences for slow drifts, (`follow`) again
  after an update that gained more than `drop`, so that after a drift the stream keeps
  updating while it pays, and (`grow`) each time the rows since the last try reach the rows
  the model learned of its concept, for what more data brings without a drift;
- `features`: the arriving rows against the held-out rows of the batches the current model
  learned (the same distribution as its training rows): a Kolmogorov-Smirnov test per numeric
  feature (every element of a tensor), chi-squared per categorical column, Bonferroni-corrected,
  and a domain classifier (gradient boosting telling the two apart; its out-of-fold ROC AUC
  against the Mann-Whitney null), each at half of `alpha`.

Several triggers combine with `any` (the default) or `all`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.trainer import params as P
from continual_trainer.trainer.params import Boolean, Choice, Interval, Params, param
from continual_trainer.trainer.registry import Registry

__all__ = [
    "Decision",
    "Observation",
    "Trigger",
    "TriggerSet",
    "get",
    "names",
    "register",
]

COMBINE = ("any", "all")
MAX_SAMPLE = 2000  # rows of each side the feature tests use at most (seeded)


@dataclass(frozen=True)
class Observation:
    """What a trigger sees for one arriving file.

    Attributes:
        rows: the file's rows (inputs, labels).
        reference: held-out rows of the batches the current model learned.
        loss: per-row loss of the current model on `rows` (0/1 error, or squared error in
            label standard deviations for regression).
        reference_loss: the same on `reference`.
        files_since_update, rows_since_update: files and rows that arrived since the model
            last changed, this one included.
        seed: fixes the samples and the domain classifier.
        columns: an input's column names where it holds several side by side (the numeric
            input), to name them in decisions.
        last_gain: if the current version came from the stream's last update, what that
            update gained on its new rows' holdout (accuracy points, or the fall in RMSE in
            label standard deviations).
        learned_rows: rows of the batches the current model has seen (0: unknown).
    """

    rows: Rows
    reference: Rows
    loss: np.ndarray
    reference_loss: np.ndarray
    files_since_update: int = 1
    rows_since_update: int = 0
    seed: int = 0
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    last_gain: float | None = None
    learned_rows: int = 0


@dataclass(frozen=True)
class Decision:
    """A trigger's verdict on one file: whether it fires, its statistic, why, and its state.

    `window`, when it fires: how many of the latest files (this one included) show the change,
    so that the update learns those and not the files before it; None: every new file.
    `because`: the trigger's rules that fired, where it has several."""

    fire: bool
    statistic: float | None = None
    detail: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    window: int | None = None
    because: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TriggerFn = Callable[[Observation, Any, Mapping[str, Any]], Decision]


@dataclass(frozen=True)
class Trigger:
    """A registered trigger; `needs_labels` says whether it reads the rows' labels (the
    current model's loss on them), so whether it can judge served traffic, which has none."""

    name: str
    params: type
    fn: TriggerFn
    summary: str
    needs_labels: bool = True

    def make_params(self, values: Mapping[str, Any] | None = None) -> Any:
        return P.build_for(self.name, self.params, values, "trigger_params")


_TRIGGERS = Registry[Trigger]("trigger", "trigger", group="continual_trainer.triggers")


def register(name: str, params: type, summary: str, needs_labels: bool = True) -> Callable[[TriggerFn], TriggerFn]:
    """Register `fn(observation, params, state) -> Decision` under `name`."""

    def decorate(fn: TriggerFn) -> TriggerFn:
        _TRIGGERS.add(name, Trigger(name, params, fn, summary, needs_labels))
        return fn

    return decorate


def get(name: str) -> Trigger:
    return _TRIGGERS.get(name)


def names() -> list[str]:
    return _TRIGGERS.names()


# -- the triggers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoParams(Params):
    """A trigger without parameters."""


@register("always", NoParams, "every file", needs_labels=False)
def always(obs: Observation, params: NoParams, state: Mapping[str, Any]) -> Decision:
    return Decision(True, None, "every file")


@dataclass(frozen=True)
class EveryParams(Params):
    files: int = param(5, Interval(int, 1), "update every this many files")
    rows: int = param(0, Interval(int, 0), "... or once this many rows arrived since the last update (0: off)")


@register("every", EveryParams, "every N files or N rows", needs_labels=False)
def every(obs: Observation, params: EveryParams, state: Mapping[str, Any]) -> Decision:
    by_rows = params.rows > 0 and obs.rows_since_update >= params.rows
    fire = obs.files_since_update >= params.files or by_rows
    detail = f"{obs.files_since_update} file(s), {obs.rows_since_update} rows since the last update"
    return Decision(fire, float(obs.files_since_update), detail)


@dataclass(frozen=True)
class PerformanceParams(Params):
    drop: float = param(
        0.02, Interval(float, 0), "smallest error rise that counts (accuracy points; RMSE²: label std units)"
    )
    z: float = param(2.5, Interval(float, 0, low_open=True), "z-score the rise must reach (2.5: one-sided p 0.006)")
    detector: str = param("page_hinkley", Choice(("page_hinkley", "none")), "sequential detector over files")
    ph_delta: float = param(0.01, Interval(float, 0), "Page-Hinkley: tolerated rise per file")
    ph_lambda: float = param(0.2, Interval(float, 0, low_open=True), "Page-Hinkley: alarm threshold")
    follow: bool = param(True, Boolean(), "update again while the last update gained more than drop")
    window: bool = param(True, Boolean(), "an update learns the files since the error rose, not the older new ones")
    grow: float = param(
        1.0,
        Interval(float, 0),
        "also update once the rows since the last try reach this multiple of the rows learned (0: off)",
    )


@register("performance", PerformanceParams, "the current model's error on the new rows rose")
def performance(obs: Observation, params: PerformanceParams, state: Mapping[str, Any]) -> Decision:
    loss, ref = obs.loss, obs.reference_loss
    if not len(loss) or not len(ref):
        return Decision(False, None, "no rows to compare", dict(state))
    rise = float(loss.mean() - ref.mean())
    se = math.sqrt(loss.var(ddof=1) / len(loss) + ref.var(ddof=1) / len(ref)) if min(len(loss), len(ref)) > 1 else 0
    z = rise / se if se > 0 else (math.inf if rise > 0 else 0.0)
    now = rise > params.drop and z >= params.z
    # Page-Hinkley over the per-file rises (Page 1954; Gama et al. 2013): alarm when the
    # cumulative deviation above the running mean exceeds ph_lambda.
    n = int(state.get("n", 0)) + 1
    mean = float(state.get("mean", 0.0)) + (rise - float(state.get("mean", 0.0))) / n
    m = float(state.get("m", 0.0)) + rise - mean - params.ph_delta
    low = min(float(state.get("low", 0.0)), m)
    slow = params.detector == "page_hinkley" and m - low > params.ph_lambda
    # An update that paid more than `drop` is followed by another: after a drift the model
    # keeps learning the new concept until updating stops paying.
    paying = params.follow and obs.last_gain is not None and obs.last_gain > params.drop
    detail = (
        f"error {loss.mean():.3f} vs {ref.mean():.3f} on the newest learned batches' holdout (z {z:.1f}); "
        f"fires on a rise above {params.drop:g} with z ≥ {params.z:g}"
    )
    if slow and not now:
        detail += f"; Page-Hinkley {m - low:.3f} > {params.ph_lambda:g}"
    if paying and not (now or slow):
        detail += f"; the last update gained {obs.last_gain:.3f}"
    rises = [*list(state.get("rises", []))[-49:], rise]
    # The change began where the latest run of files whose error rose by more than half of
    # `drop` began: those files, not the ones before, are what an update should learn.
    window = 0
    for r in reversed(rises):
        if r <= params.drop / 2:
            break
        window += 1
    # Without a drift a model still gains from more rows, by roughly as much per doubling of
    # its data (a learning curve is about linear in log rows): update, on every new row, each
    # time the rows since the last try reach `grow` times the rows it learned of its concept
    # (since the last drift it was updated for; at first, every row it has seen).
    basis = int(state.get("basis") or obs.learned_rows)
    waiting = int(state.get("waiting", 0)) + len(obs.rows)
    sizes = [*list(state.get("sizes", []))[-49:], len(obs.rows)]
    grown = params.grow > 0 and basis > 0 and waiting >= params.grow * basis
    drifted = now or slow or paying
    if grown and not drifted:
        detail += f"; {waiting} rows since the last try, {basis} learned"
    fire = drifted or grown
    learns = max(window, 1) if drifted and params.window else None
    # What the model will have learned of its concept if the update is promoted.
    after = sum(sizes[-learns:]) if (now or slow) and learns else basis + waiting
    state_out = {
        "n": n,
        "mean": mean,
        "m": m,
        "low": low,
        "rises": rises,
        "sizes": sizes,
        "basis": basis,
        "waiting": 0 if fire else waiting,
        "carry": {"basis": after} if fire else {},
    }
    because = tuple(
        rule for rule, hit in (("rise", now), ("page_hinkley", slow), ("follow", paying), ("grow", grown)) if hit
    )
    return Decision(fire, rise, detail, state_out, learns, because)


@dataclass(frozen=True)
class FeaturesParams(Params):
    alpha: float = param(0.01, Interval(float, 0, 1, low_open=True, high_open=True), "family-wise false-alarm rate")
    multivariate: bool = param(True, Boolean(), "also a domain classifier over all numeric inputs")


@register("features", FeaturesParams, "the new rows' features differ from those the model learned", needs_labels=False)
def features(obs: Observation, params: FeaturesParams, state: Mapping[str, Any]) -> Decision:
    from scipy import stats

    rng = np.random.default_rng(obs.seed)
    new, ref = _sample(obs.rows, rng), _sample(obs.reference, rng)
    if len(new) < 5 or len(ref) < 5:
        return Decision(False, None, "too few rows to compare")
    tests: list[tuple[str, float]] = []
    a, b = new.matrix(), ref.matrix()
    names = _column_names(new, obs.columns)
    for j in range(a.shape[1]):
        if a[:, j].min() == a[:, j].max() == b[:, j].min() == b[:, j].max():
            continue
        tests.append((names[j], float(stats.ks_2samp(a[:, j], b[:, j]).pvalue)))
    for name, values in new.x.items():
        if values.dtype == object:
            tests.append((name, _chi2(values, ref.x[name])))
    worst_name, worst_p = min(tests, key=lambda t: t[1]) if tests else ("", 1.0)
    adjusted = min(1.0, worst_p * max(len(tests), 1))  # Bonferroni
    fire = adjusted < params.alpha / (2 if params.multivariate else 1)
    threshold = params.alpha / (2 if params.multivariate else 1)
    detail = (
        f"most shifted {worst_name!r} (adjusted p {adjusted:.2g}, {len(tests)} tests; fires below {threshold:g})"
        if tests
        else "no tests"
    )
    statistic = adjusted
    if params.multivariate and a.shape[1]:
        auc, p = _domain_auc(a, b, obs.seed)
        detail += f"; domain classifier ROC AUC {auc:.3f} (p {p:.2g})"
        fire = fire or p < params.alpha / 2
        statistic = min(statistic, p)
    return Decision(fire, statistic, detail)


def _sample(rows: Rows, rng: np.random.Generator) -> Rows:
    if len(rows) <= MAX_SAMPLE:
        return rows
    return rows.take(np.sort(rng.choice(len(rows), MAX_SAMPLE, replace=False)))


def _column_names(rows: Rows, columns: Mapping[str, tuple[str, ...]]) -> list[str]:
    """A name per column of `rows.matrix()`: the column's, else the input's with the element's index."""
    out = []
    for name, a in rows.x.items():
        if a.dtype == object:
            continue
        width = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        known = columns.get(name, ())
        out += list(known) if len(known) == width else [name] if width == 1 else [f"{name}[{i}]" for i in range(width)]
    return out


def _chi2(new: np.ndarray, ref: np.ndarray) -> float:
    from scipy import stats

    values = sorted(set(new.tolist()) | set(ref.tolist()))
    if len(values) < 2:
        return 1.0
    table = np.array([[np.sum(new == v) for v in values], [np.sum(ref == v) for v in values]])
    return float(stats.chi2_contingency(table)[1])


def _domain_auc(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    """Out-of-fold ROC AUC of a classifier telling `a`'s rows from `b`'s, and its one-sided
    p-value under "no difference" (the Mann-Whitney normal approximation)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.concatenate([a, b])
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    model = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, random_state=seed)
    folds = StratifiedKFold(2, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, p))
    n1, n2 = len(a), len(b)
    z = (auc - 0.5) / math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))
    return auc, float(0.5 * math.erfc(z / math.sqrt(2)))


# -- several triggers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerSet:
    """Triggers with their parameters, combined by `any` or `all`."""

    triggers: tuple[tuple[Trigger, Any], ...]
    combine: str = "any"

    @classmethod
    def parse(cls, text: str = "always", values: Mapping[str, Any] | None = None, combine: str = "any") -> TriggerSet:
        """`performance,features` and `--trigger-set key=value` (for each trigger that has the key)."""
        if combine not in COMBINE:
            raise UserError.about("combine", combine, "choose any or all")
        chosen = [get(n.strip()) for n in text.split(",") if n.strip()]
        if not chosen:
            raise UserError.about("trigger", None, "give at least one trigger")
        values = dict(values or {})
        unused = set(values) - {f.name for t in chosen for f in dataclasses.fields(t.params)}
        if unused:
            raise UserError.about(
                sorted(unused)[0], None, f"no trigger of {text!r} has this parameter", group="trigger_params"
            )
        fields = {t.name: {f.name for f in dataclasses.fields(t.params)} for t in chosen}
        made = tuple((t, t.make_params({k: v for k, v in values.items() if k in fields[t.name]})) for t in chosen)
        return cls(made, combine)

    @property
    def names(self) -> list[str]:
        return [t.name for t, _ in self.triggers]

    def decide(self, obs: Observation, states: Mapping[str, Any]) -> tuple[bool, dict[str, Decision]]:
        decisions = {t.name: t.fn(obs, p, dict(states.get(t.name) or {})) for t, p in self.triggers}
        fired = [d.fire for d in decisions.values()]
        return (any(fired) if self.combine == "any" else all(fired)), decisions

    @staticmethod
    def window(decisions: Mapping[str, Decision]) -> int | None:
        """The latest files an update should learn: the widest window of the triggers that
        fired; None (every new file) if one of them gives none."""
        windows = [d.window for d in decisions.values() if d.fire]
        sized = [w for w in windows if w is not None]
        return max(sized) if windows and len(sized) == len(windows) else None


def per_row_loss(pred: np.ndarray, y: np.ndarray, target_std: float = 1.0) -> np.ndarray:
    """The performance trigger's per-row loss: 0/1 error of class probabilities, or the squared
    error in label standard deviations."""
    if pred.ndim == 2:
        return (pred.argmax(axis=1) != y).astype(np.float64)
    return ((pred - y) / target_std) ** 2
