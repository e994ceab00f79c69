"""The rule the product rests on: `--promote auto` makes a candidate current only when it is
better than the current version on the same held-out rows; a worse candidate and a tie are kept
but not promoted; a better one that forgets or flips too much is refused by the gate. The rule is
tested where each command applies it (update, stream, sweep --promote best, label --promote
auto), so that making auto promote everything fails several tests (checked: replacing `wins` by
True in `promotion.promote_version` fails the update, stream and sweep tests below)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.api import open_store
from continual_trainer.data.storage import Store
from continual_trainer.serve.served import Served
from continual_trainer.trainer.evaluate import better
from tests.conftest import make_table

# Candidates of known quality against tiny_store's first model (3 epochs of mlp:8,4): a network
# that barely trained on the new rows (worse), the current model itself (a tie), and the current
# model trained on for many epochs on every row (better). Each test checks the premise first.
WORSE = ("fresh_new", {"epochs": 1, "learning_rate": 1e-6})
TIE = ("keep", {})
BETTER = ("finetune_all", {"epochs": 80, "learning_rate": 0.05})
NOT_BETTER = "not better than the current model"


def _holdout(metrics: dict) -> dict:
    return {k.removeprefix("holdout_"): v for k, v in metrics.items() if k.startswith("holdout_")}


@pytest.mark.parametrize(
    ("candidate", "promoted"), [(WORSE, False), (TIE, False), (BETTER, True)], ids=["worse", "tie", "better"]
)
def test_update_auto_promotes_only_a_better_candidate(candidate, promoted: bool, tiny_store: str) -> None:
    store = open_store(tiny_store)
    before = store.current
    strategy, params = candidate
    outcome = store.update(strategy, promote="auto", **params)
    mine, theirs = _holdout(outcome.metrics), _holdout(outcome.current_metrics)
    assert better(mine, theirs) is promoted, (mine, theirs)  # the premise: this candidate is what it says
    assert outcome.promoted is promoted
    assert store.current == (outcome.version if promoted else before)
    if not promoted:
        assert outcome.reason.startswith(NOT_BETTER), outcome.reason
        assert ("a tie" in outcome.reason) is (candidate is TIE), outcome.reason  # a tie is called a tie
    assert outcome.version in [v["version"] for v in store.versions()]  # kept either way


@pytest.mark.parametrize(
    ("candidate", "status"), [(WORSE, "kept"), (TIE, "kept"), (BETTER, "updated")], ids=["worse", "tie", "better"]
)
def test_stream_auto_promotes_only_a_better_candidate(candidate, status: str, tiny_store: str, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(n=120, seed=11, shift=0.5), inbox / "day.parquet")
    store = open_store(tiny_store)
    before = store.current
    strategy, params = candidate
    (event,) = store.stream(str(inbox), policy=strategy, trigger="always", **params)
    assert event["status"] == status, event
    assert store.current == (event["version"] if status == "updated" else before)
    if status == "kept":
        assert event["reason"].startswith(NOT_BETTER), event["reason"]


@pytest.mark.parametrize(("candidate", "promoted"), [(TIE, False), (BETTER, True)], ids=["tie", "better"])
def test_sweep_promote_best_promotes_only_a_better_winner(
    candidate, promoted: bool, tiny_store: str, tmp_path: Path
) -> None:
    strategy, params = candidate
    lines = ["strategies:", f"  - {strategy}"]
    if params:
        lines += ["params:"] + [f"  {k}: {v}" for k, v in params.items()]
    (tmp_path / "s.yaml").write_text("\n".join(lines) + "\n")
    store = open_store(tiny_store)
    before = store.current
    store.sweep(str(tmp_path / "s.yaml"), promote_best=True)
    outcome = store.last_outcome
    assert outcome is not None and outcome.promoted is promoted, outcome
    assert store.current == (outcome.version if promoted else before)
    if not promoted:
        assert outcome.reason.startswith(NOT_BETTER), outcome.reason


def _serve_with_shadow(uri: str, shadow: str, n: int = 300) -> tuple[pa.Table, list, list]:
    """Serve `n` rows keyed by id with a shadow; (the rows' ids, served predictions, shadow's)."""
    table = make_table(n=n, seed=21, shift=0.5).drop(["y"])
    ids = pa.array([f"k{i}" for i in range(n)])
    served = Served(uri, id_column="id", shadow=shadow)
    served.start()
    served.predict(table.append_column("id", ids), served.current)
    served.stop()
    from continual_trainer.predlog import PREDICTION, SHADOW_PREDICTION, read_log

    logged = read_log(Store.open(uri))
    return ids, logged.column(PREDICTION).to_pylist(), logged.column(SHADOW_PREDICTION).to_pylist()


@pytest.mark.parametrize("outcome", ["shadow worse", "tie", "shadow better"])
def test_label_auto_promotes_a_shadow_only_when_its_live_metric_is_better(outcome: str, tiny_store: str) -> None:
    """The labels decide who was right: on the rows where served and shadow disagree, the truth
    is the served prediction (shadow worse), the shadow's (shadow better), or half each (a tie)."""
    store = open_store(tiny_store)
    before = store.current
    shadow = store.update("fresh_new", epochs=3, promote="never").version
    ids, served, shadowed = _serve_with_shadow(tiny_store, shadow)
    differ = [i for i, (a, b) in enumerate(zip(served, shadowed, strict=True)) if a != b]
    assert len(differ) >= 10, "the premise: the two versions disagree on enough rows"
    if outcome == "tie" and len(differ) % 2:
        differ = differ[:-1]  # that row goes unlabelled: an even number of disagreements
    agree = [i for i, (a, b) in enumerate(zip(served, shadowed, strict=True)) if a == b]
    rows = sorted(agree + differ)
    shadow_right = set(differ if outcome == "shadow better" else differ[::2] if outcome == "tie" else [])
    truth = [shadowed[i] if i in shadow_right else served[i] for i in rows]
    labels = pa.table({"id": pa.array([ids[i].as_py() for i in rows]), "y": pa.array(truth, pa.int64())})
    r = store.label(labels, promote="auto", min_shadow_rows=50)
    live = r["shadow"][shadow]
    mine, theirs = live["accuracy"], live["served"]["accuracy"]
    assert (mine > theirs, mine == theirs) == (outcome == "shadow better", outcome == "tie"), (mine, theirs)
    assert r["promoted"] == (shadow if outcome == "shadow better" else None), r
    assert store.current == (shadow if outcome == "shadow better" else before)


def test_the_gate_refuses_a_better_candidate_that_flips_too_many_rows_or_forgets(tiny_store: str) -> None:
    store = open_store(tiny_store)
    before = store.current
    strategy, params = BETTER
    refused = store.update(strategy, promote="auto", max_flip_rate=0.0, **params)
    flips = refused.metrics.get("holdout_negative_flip_rate")
    assert better(_holdout(refused.metrics), _holdout(refused.current_metrics))
    if flips:  # it got some rows wrong that the current model got right: over a limit of 0
        assert refused.promoted is False and store.current == before
        assert "negative flip rate" in refused.reason and "--max-flip-rate 0" in refused.reason
    allowed = store.update(strategy, promote="auto", max_flip_rate=1.0, max_forgetting=1.0, **params)
    assert allowed.promoted is True and store.current == allowed.version


def test_the_gate_forgetting_and_flip_rules_on_their_own() -> None:
    from continual_trainer.data.manifest import Manifest
    from continual_trainer.trainer.forgetting import Gate

    earlier = Manifest(parent=None, strategy="x", weights=(1.0,), metrics={"batch_b1_accuracy": 0.9},
                       batches_seen=("b1",))  # fmt: skip
    metrics = {"batch_b1_accuracy": 0.7, "batch_b2_accuracy": 0.9, "holdout_negative_flip_rate": 0.05}
    gate = Gate(max_forgetting=0.1)
    why = gate.refuses(metrics, [earlier])
    assert why is not None and "forgets batch b1" in why and "> --max-forgetting 0.1" in why
    assert Gate(max_forgetting=0.25).refuses(metrics, [earlier]) is None  # 0.2 forgotten: within
    assert "negative flip rate 0.050 > --max-flip-rate 0.01" in (Gate(max_flip_rate=0.01).refuses(metrics, []) or "")
    assert Gate(max_flip_rate=0.05).refuses(metrics, []) is None  # at the limit: allowed
    assert not Gate().active and Gate().refuses(metrics, [earlier]) is None


@pytest.mark.parametrize(
    ("candidate", "current", "wins"),
    [
        ({"accuracy": 0.91, "log_loss": 0.3}, {"accuracy": 0.90, "log_loss": 0.2}, True),  # accuracy first
        ({"accuracy": 0.90, "log_loss": 0.3}, {"accuracy": 0.90, "log_loss": 0.3}, False),  # a tie
        ({"accuracy": 0.90, "log_loss": 0.25}, {"accuracy": 0.90, "log_loss": 0.3}, True),  # then log loss
        ({"accuracy": 0.89, "log_loss": 0.01}, {"accuracy": 0.90, "log_loss": 0.3}, False),
        ({"rmse": 1.0, "mae": 0.9}, {"rmse": 1.1, "mae": 0.5}, True),  # regression: lower rmse first
        ({"rmse": 1.0, "mae": 0.8}, {"rmse": 1.0, "mae": 0.8}, False),  # a tie
        ({"rmse": 1.0, "mae": 0.7}, {"rmse": 1.0, "mae": 0.8}, True),  # then lower mae
        ({"rmse": 1.2, "mae": 0.1}, {"rmse": 1.0, "mae": 0.8}, False),
        ({"accuracy": None}, {"accuracy": 0.5}, False),  # missing ranks last
        ({"accuracy": 0.5}, {}, True),  # anything beats no metrics at all
        ({}, {"accuracy": 0.5}, False),
    ],
)
def test_better_is_strict_and_orders_by_the_tasks_metrics(candidate: dict, current: dict, wins: bool) -> None:
    assert better(candidate, current) is wins


def test_a_committed_version_records_what_made_it(tiny_store: str) -> None:
    """Whatever auto decides, the version is kept with its making: the strategy and its
    parameters, the seed, the recipe, which batches it saw and trained on, both sides' metrics,
    where it ran and where its preprocessing comes from."""
    from continual_trainer.strategies import get
    from continual_trainer.trainer.models import ModelSpec, preprocessing_of

    store = open_store(tiny_store)
    raw = Store.open(tiny_store)
    (old,), (new,) = (
        raw.manifest(raw.current()).batches_seen,
        [b for b in raw.batch_ids() if b not in raw.manifest(raw.current()).batches_seen],
    )
    for strategy, trains_on_old in (("finetune_new", False), ("finetune_all", True)):
        outcome = store.update(strategy, promote="never", seed=3, epochs=1)
        m = raw.manifest(outcome.version)
        assert strategy in outcome.version and m.strategy == strategy and m.parent == outcome.parent
        params = get(strategy).make_params({"epochs": "1"})
        assert m.params == dataclasses.asdict(params) and m.seed == 3 and m.model == "mlp:8,4"
        assert m.batches_seen == (old, new)
        assert m.batches_trained == ((old, new) if trains_on_old else (new,))
        assert m.metrics == outcome.metrics and m.current_metrics == outcome.current_metrics
        assert m.current_metrics["holdout_accuracy"] is not None and m.train_seconds > 0
        assert m.execution["mode"] == "local" and m.origin == {}
        assert m.preprocessing == preprocessing_of(ModelSpec.parse("mlp:8,4"), get(strategy).can.starts_from)
        assert m.preprocessing == "the current model's, kept (never retrained)"  # both start from the current one
        assert outcome.reason == "--promote never" and not outcome.promoted
        assert outcome.to_json()["warnings"] == outcome.warnings
    outcome = store.update("keep", promote="always")
    event = raw.events("promote")[-1]
    assert event["version"] == outcome.version and event["by"] == "update"
    assert event["reason"] == "--promote always: promoted"
