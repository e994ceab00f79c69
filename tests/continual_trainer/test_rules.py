"""The rules of promotion, rollback and the version store, on a store of hand-made versions (no
training, no TensorFlow): each assertion names the rule it guards, so that a mutant of the rule
(`make mutate`, group `gate` and `versions`) fails here in milliseconds."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.parquet import HOST
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta, VersionGone
from continual_trainer.data.store.core import sha256
from continual_trainer.promotion import (
    Promotion,
    check_promote,
    promote_by_hand,
    promote_version,
    rollback,
    scores_below,
    stored_manifest,
)
from continual_trainer.trainer.evaluate import better, headline, learned_nothing, rank_key, score_regression
from continual_trainer.trainer.forgetting import Forgetting, Gate, forgetting, matrix_row


@pytest.fixture()
def store(bare_store: Store) -> Store:
    return bare_store


def _version(
    store: Store, parent: str | None, name: str, seen: tuple[str, ...] = ("b1",), **metrics: float | None
) -> str:
    version = store.new_version_id(name)
    manifest = Manifest(parent=parent, strategy=name, weights=(1.0,), batches_seen=seen, metrics=dict(metrics))
    store.write_version(version, [(f"{name} bytes".encode(), 2)], manifest)
    return version


def test_a_promotion_is_checked_once_where_it_is_made_and_keeps_its_gate() -> None:
    with pytest.raises(UserError, match="promote"):
        Promotion("sometimes")
    with pytest.raises(UserError, match="promote_on"):
        Promotion("auto", "old")
    gated = Promotion("auto", "new", Gate(0.01, None))
    loser = gated.but("never")
    assert (loser.mode, loser.on, loser.gate) == ("never", "new", gated.gate) and gated.mode == "auto"
    assert Promotion() == Promotion("auto", "holdout", Gate()) and not Promotion().gate.active


def test_the_promote_modes_and_what_each_says(store: Store) -> None:
    first = _version(store, None, "first")
    assert promote_version(store, first, None, "never", wins=True) == (False, "--promote never")
    assert store.current() is None
    said = promote_version(store, first, None, "auto", wins=False, tie=True)
    assert said == (False, "not better than the current model on the holdout (a tie: the current one stays)")
    said = promote_version(store, first, None, "auto", wins=False, on="new")
    assert said == (False, "not better than the current model on the new batches' holdout")
    assert store.current() is None
    assert promote_version(store, first, None, "auto", wins=True) == (
        True,
        "better than the current model on the holdout",
    )
    assert store.current() == first
    event = store.events("promote")[-1]
    assert event["by"] == "update" and event["reason"] == "--promote auto: better than the current model on the holdout"
    second = _version(store, first, "second")
    assert promote_version(store, second, first, "always", wins=False, by="sweep") == (True, "promoted")
    assert store.events("promote")[-1]["by"] == "sweep" and store.current() == second
    late = _version(store, first, "late")  # trained from `first`, but `second` was promoted meanwhile
    promoted, reason = promote_version(store, late, first, "always", wins=True)
    assert not promoted and reason == (f"another update promoted {second} first; this version is kept but not promoted")
    assert store.current() == second and late in store.versions()


def test_an_unknown_promote_mode_or_comparison_is_a_users_mistake() -> None:
    check_promote("auto", "new")
    with pytest.raises(UserError, match="choose one of auto, always, never"):
        check_promote("sometimes")
    with pytest.raises(UserError, match="choose one of"):
        check_promote("auto", "train")


def test_a_worse_version_promoted_by_hand_is_named_with_both_scores(store: Store, caplog) -> None:
    good = _version(store, None, "good", holdout_accuracy=0.9, holdout_log_loss=0.3)
    store.promote(good, None)
    worse = _version(store, good, "worse", holdout_accuracy=0.8, holdout_log_loss=0.2)
    assert scores_below(store, worse, None) is None
    assert scores_below(store, good, worse) is None  # better
    warning = scores_below(store, worse, good)
    assert warning == (
        f"{worse} scores holdout accuracy 0.8000, worse than 0.9000 of {good}, the version it replaced, on the "
        "same holdout rows (`ctrain rollback` undoes this)"
    )
    with caplog.at_level(logging.WARNING):
        assert promote_by_hand(store, worse, "trying it") == (worse, good)
    assert warning in caplog.text and store.current() == worse
    assert store.events("promote")[-1] == {**store.events("promote")[-1], "by": "promote", "reason": "trying it"}
    assert promote_by_hand(store, "current") == (worse, worse)  # already current: nothing happens
    assert len(store.events("promote")) == 2
    promote_by_hand(store, good)
    assert store.events("promote")[-1]["reason"] == "by hand"


def test_a_tie_on_the_headline_is_worse_only_on_the_second_metric(store: Store) -> None:
    a = _version(store, None, "a", holdout_accuracy=0.9, holdout_log_loss=0.3)
    b = _version(store, None, "b", holdout_accuracy=0.9, holdout_log_loss=0.4)
    assert scores_below(store, b, a) == (
        f"{b} ties {a}, the version it replaced, on holdout accuracy (0.9000) but has a worse log_loss "
        "(0.4000 vs 0.3000) on the same rows (`ctrain rollback` undoes this)"
    )
    assert scores_below(store, a, b) is None
    c = _version(store, None, "c", holdout_accuracy=0.9, holdout_log_loss=0.3)
    assert scores_below(store, c, a) is None  # equal on both: no warning


def test_scores_are_compared_only_on_the_same_rows_and_known_metrics(store: Store) -> None:
    a = _version(store, None, "a", ("b1",), holdout_accuracy=0.9)
    other_rows = _version(store, None, "o", ("b1", "b2"), holdout_accuracy=0.5)
    assert scores_below(store, other_rows, a) is None
    no_metrics = _version(store, None, "n", ("b1",))
    assert scores_below(store, no_metrics, a) is None and scores_below(store, a, no_metrics) is None
    missing = _version(store, None, "m", ("b1",), holdout_accuracy=None, holdout_log_loss=0.1)
    assert scores_below(store, missing, a) is None
    tie_unknown = _version(store, None, "t", ("b1",), holdout_accuracy=0.9, holdout_log_loss=None)
    known = _version(store, None, "k", ("b1",), holdout_accuracy=0.9, holdout_log_loss=0.2)
    assert scores_below(store, tie_unknown, known) is None


def test_regression_versions_are_compared_on_rmse_then_mae(store: Store) -> None:
    a = _version(store, None, "a", holdout_rmse=1.0, holdout_mae=0.8)
    b = _version(store, None, "b", holdout_rmse=2.0, holdout_mae=0.5)
    assert scores_below(store, b, a) == (
        f"{b} scores holdout rmse 2.0000, worse than 1.0000 of {a}, the version it replaced, on the same "
        "holdout rows (`ctrain rollback` undoes this)"
    )
    c = _version(store, None, "c", holdout_rmse=1.0, holdout_mae=0.9)
    assert "has a worse mae (0.9000 vs 0.8000)" in (scores_below(store, c, a) or "")


def test_rollback_undoes_the_last_change_and_a_second_rollback_redoes_it(store: Store) -> None:
    with pytest.raises(UserError, match="no current version to roll back from"):
        rollback(store)
    first = _version(store, None, "first")
    store.promote(first, None)
    with pytest.raises(UserError, match="was the store's first current version; nothing to undo"):
        rollback(store)
    second = _version(store, first, "second")
    third = _version(store, second, "third")
    store.promote(second, first)
    store.promote(third, second)
    assert rollback(store) == (second, third) and store.current() == second
    event = store.events("promote")[-1]
    assert event["by"] == "rollback" and event["reason"] == f"rolled back from {third}"
    assert rollback(store, reason="again") == (third, second)  # the last change was the rollback: redo
    assert store.events("promote")[-1]["reason"] == "again"
    assert rollback(store, to=first) == (first, third)
    with pytest.raises(UserError, match=f"{first} is already the current version"):
        rollback(store, to="current")


def test_rollback_to_the_parent_and_past_a_deleted_version(store: Store) -> None:
    first = _version(store, None, "first")
    second = _version(store, first, "second")
    store.promote(first, None)
    store.promote(second, first)
    assert rollback(store, to="parent") == (first, second)
    # the version current before is gone: said so, with the way out
    store.promote(second, first)
    third = _version(store, second, "third")
    store.promote(third, second)
    manifest = store.manifest(second)
    store._delete_version(second, manifest)
    with pytest.raises(UserError, match=rf"{second}, current before {third}, no longer exists.*--to VERSION"):
        rollback(store)


def test_rollback_of_a_store_without_events_follows_the_lineage(store: Store) -> None:
    first = _version(store, None, "first")
    second = _version(store, first, "second")
    store.promote(first, None)
    store.promote(second, first)
    for name in store._list_files("events"):
        store._delete(f"events/{name}")
    assert store.events("promote") == []
    assert rollback(store) == (first, second)


def test_a_hand_promotion_that_loses_the_race_says_so(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _version(store, None, "first")
    second = _version(store, first, "second")
    store.promote(first, None)
    monkeypatch.setattr(type(store), "promote", lambda self, *a, **k: False)
    with pytest.raises(UserError, match=f"another process promoted {first} meanwhile; run it again"):
        promote_by_hand(store, second)


def test_versions_are_named_by_id_prefix_suffix_current_or_parent(store: Store) -> None:
    with pytest.raises(UserError, match="no current version yet"):
        store.resolve("current")
    first = _version(store, None, "alpha")
    second = _version(store, first, "beta")
    store.promote(first, None)
    with pytest.raises(UserError, match=f"the current version {first} has no parent"):
        store.resolve("parent")
    store.promote(second, first)
    assert store.resolve("current") == second and store.resolve("parent") == first
    assert store.resolve(second) == second and store.resolve(second[-4:]) == second
    assert store.resolve(first[:-5]) == first  # the prefix up to the strategy: unique
    with pytest.raises(UserError, match=r"names 2 versions") as many:
        store.resolve(first[:8])  # the date: both
    assert first in str(many.value) and second in str(many.value)
    wrong = second[:-1] + ("0" if second[-1] != "0" else "1")
    with pytest.raises(UserError, match=rf"no model version {wrong!r}; did you mean {second}( or|\?)"):
        store.resolve(wrong)
    with pytest.raises(UserError, match=r"no model version 'zzzzzz'; see `ctrain history`"):
        store.resolve("zzzzzz")
    with pytest.raises(UserError, match="no model version ''"):
        store.resolve("")


def test_a_gone_version_cannot_be_promoted_and_its_manifest_reads_as_none(store: Store) -> None:
    first = _version(store, None, "first")
    doomed = _version(store, None, "doomed")
    store.promote(first, None)
    manifest_of = stored_manifest(store)
    assert manifest_of(doomed) is not None
    assert store.prune(0, dry_run=True) == [doomed] and doomed in store.versions()
    assert store.prune(0) == [doomed]
    assert manifest_of(doomed) is None
    with pytest.raises(VersionGone, match=f"version {doomed} no longer exists"):
        store.promote(doomed, first)
    assert store.events("delete")[-1]["version"] == doomed


def test_gc_keeps_the_newest_unpromoted_the_lineage_and_every_version_ever_promoted(store: Store) -> None:
    first = _version(store, None, "first")
    store.promote(first, None)
    once = _version(store, first, "once")
    store.promote(once, first)
    store.promote(first, once)  # `once` was current once: kept
    spare = [_version(store, first, f"spare{i}") for i in range(3)]
    assert store.prune(1) == spare[:2]
    assert set(store.versions()) == {first, once, spare[2]}
    assert store.prune(5) == []


def test_a_versions_fingerprint_changes_when_a_file_is_rewritten(store: Store) -> None:
    version = _version(store, None, "v")
    before = store.fingerprint(version)
    assert [name for name, *_ in before] == sorted(name for name, *_ in before)
    assert {"member-0.keras", "manifest.json"} <= {name for name, *_ in before}
    assert all(size > 0 for _, size, _ in before)
    member = Path(store._path(f"models/{version}/member-0.keras"))
    member.write_bytes(b"repaired and longer bytes")
    assert store.fingerprint(version) != before
    assert store.fingerprint("no-such-version") == ()


# -- the ranking, the warnings of a model that learned nothing, forgetting and the gate's words


def test_models_rank_by_accuracy_then_log_loss_or_by_rmse_then_mae_missing_last() -> None:
    assert better({"accuracy": 0.9, "log_loss": 0.5}, {"accuracy": 0.8, "log_loss": 0.1})
    assert better({"accuracy": 0.8, "log_loss": 0.1}, {"accuracy": 0.8, "log_loss": 0.2})
    assert not better({"accuracy": 0.8, "log_loss": 0.2}, {"accuracy": 0.8, "log_loss": 0.2})  # a tie
    assert better({"accuracy": 0.1}, {"accuracy": None}) and not better({"accuracy": None}, {"accuracy": 0.1})
    assert better({"accuracy": 0.5}, {}) and not better({}, {"accuracy": 0.5}) and not better({}, {})
    assert better({"rmse": 1.0, "mae": 5.0}, {"rmse": 2.0, "mae": 0.1})
    assert better({"rmse": 1.0, "mae": 0.5}, {"rmse": 1.0, "mae": 0.6})
    assert not better({"rmse": None, "mae": 0.1}, {"rmse": 9.0, "mae": 9.0})
    assert rank_key({"rmse": 2.0, "mae": 1.0}) == (-2.0, -1.0)
    assert rank_key({"accuracy": 0.7}) == (0.7, -math.inf) and rank_key({}) == (-math.inf, -math.inf)
    assert headline("regression") == ("rmse", "mae") and headline("classification") == ("accuracy", "log_loss")


def test_what_learning_nothing_looks_like_is_said_in_words() -> None:
    one_class = {"holdout_predicted_classes": 1.0, "holdout_majority": 0.6, "holdout_accuracy": 0.6}
    assert learned_nothing(one_class) == ["it predicts the same class for every holdout row"]
    assert learned_nothing({"holdout_predicted_classes": 1.0, "holdout_majority": 1.0}) == []  # a one-class holdout
    assert learned_nothing({"holdout_predicted_classes": 1.0}) == []  # majority unknown: nothing said
    chance = {"holdout_roc_auc": 0.515, "holdout_accuracy": 0.7, "holdout_majority": 0.5}
    assert learned_nothing(chance) == ["its ROC AUC is 0.515, no better than chance"]
    assert learned_nothing({**chance, "holdout_roc_auc": 0.485}) == ["its ROC AUC is 0.485, no better than chance"]
    assert learned_nothing({**chance, "holdout_roc_auc": 0.53}) == []
    majority = {"holdout_accuracy": 0.6, "holdout_majority": 0.6}
    assert learned_nothing(majority) == [
        "its accuracy 0.600 is no better than always predicting the most frequent class (0.600)"
    ]
    assert learned_nothing({"holdout_accuracy": 0.61, "holdout_majority": 0.6}) == []
    assert learned_nothing(majority, prefix="new_") == []
    assert learned_nothing({"new_accuracy": 0.5, "new_majority": 0.6}, prefix="new_") == [
        "its accuracy 0.500 is no better than always predicting the most frequent class (0.600)"
    ]
    flat = {"holdout_prediction_std": 0.009, "holdout_baseline_rmse": 1.0, "holdout_rmse": 1.2}
    assert learned_nothing(flat) == ["its predictions are (nearly) constant"]
    assert learned_nothing({**flat, "holdout_prediction_std": 0.011}) == [
        "its RMSE 1.200 is no better than always predicting the mean (1.000)"
    ]
    assert learned_nothing({**flat, "holdout_prediction_std": 0.5, "holdout_rmse": 1.0}) == [
        "its RMSE 1.000 is no better than always predicting the mean (1.000)"
    ]
    assert learned_nothing({**flat, "holdout_prediction_std": 0.5, "holdout_rmse": 0.99}) == []
    assert learned_nothing({"holdout_rmse": 1.0, "holdout_baseline_rmse": 0.0, "holdout_prediction_std": 0.0}) == []


def test_regression_scores_keep_the_baseline_and_the_spread_of_predictions() -> None:
    y, pred = np.array([1.0, 2.0, 3.0, 6.0]), np.array([1.0, 1.0, 4.0, 4.0])
    got = score_regression(pred, y)
    assert got == {
        "mae": 1.0,
        "rmse": math.sqrt(6 / 4),
        "r2": pytest.approx(1 - 6 / 14),
        "rows": 4.0,
        "baseline_rmse": pytest.approx(math.sqrt(14 / 4)),
        "prediction_std": 1.5,
    }
    assert score_regression(np.array([2.0]), np.array([1.0]))["r2"] is None


def _ancestor(**metrics: float) -> Manifest:
    return Manifest(parent=None, strategy="a", metrics=dict(metrics))


def test_forgetting_is_the_worst_loss_on_an_earlier_batch_and_transfer_its_mean_change() -> None:
    assert matrix_row({"batch_b1_accuracy": 0.9, "batch_b2_accuracy": None, "holdout_accuracy": 0.5}) == (
        "accuracy",
        {"b1": 0.9},
    )
    assert matrix_row({"batch_x_y_rmse": 2.0}) == ("rmse", {"x_y": 2.0})
    older, newer = _ancestor(batch_b1_accuracy=0.9), _ancestor(batch_b1_accuracy=0.8, batch_b2_accuracy=0.95)
    now = {"batch_b1_accuracy": 0.7, "batch_b2_accuracy": 0.9, "batch_b3_accuracy": 0.6}
    got = forgetting(now, [newer, older])  # nearest first
    assert got.batch == "b1" and got.best_before == 0.9 and got.now == 0.7
    assert got.worst == pytest.approx(0.2)
    # transfer against the version that learned each batch (the oldest that scored it)
    assert got.backward_transfer == pytest.approx(((0.7 - 0.9) + (0.9 - 0.95)) / 2)
    assert forgetting({"batch_b3_accuracy": 0.6}, [newer]) == Forgetting()
    errors = forgetting({"batch_b1_rmse": 3.0}, [_ancestor(batch_b1_rmse=2.0), _ancestor(batch_b1_rmse=2.5)])
    assert errors.worst == pytest.approx(1.0) and errors.best_before == 2.0
    assert errors.backward_transfer == pytest.approx(2.5 - 3.0)


def test_the_gate_refuses_in_words_that_name_the_batch_and_the_limit() -> None:
    ancestors = [_ancestor(batch_b1_accuracy=0.9)]
    forgets = {"batch_b1_accuracy": 0.7, "holdout_negative_flip_rate": 0.01}
    assert not Gate().active and Gate(max_forgetting=0.0).active and Gate(max_flip_rate=0.0).active
    assert Gate().refuses(forgets, ancestors) is None
    assert Gate(max_forgetting=0.1).refuses(forgets, ancestors) == (
        "forgets batch b1: accuracy 0.700, 0.900 before (forgetting 0.200 > --max-forgetting 0.1)"
    )
    assert Gate(max_forgetting=0.2).refuses({"batch_b1_accuracy": 0.75}, ancestors) is None
    assert Gate(max_forgetting=0.25).refuses(forgets, ancestors) is None
    assert Gate(max_flip_rate=0.005).refuses(forgets, ancestors) == (
        "negative flip rate 0.010 > --max-flip-rate 0.005 (holdout rows the current model got right and this one "
        "gets wrong)"
    )
    assert Gate(max_flip_rate=0.01).refuses(forgets, ancestors) is None
    assert Gate(max_flip_rate=0.0).refuses({"batch_b1_accuracy": 0.9}, ancestors) is None  # no flip rate known


def test_forgetting_exactly_at_the_limit_passes_and_the_first_of_equal_losses_is_named() -> None:
    ancestors = [_ancestor(batch_b1_accuracy=1.0, batch_b2_accuracy=1.0)]
    at_limit = {"batch_b1_accuracy": 0.75, "batch_b2_accuracy": 0.75}
    assert Gate(max_forgetting=0.25).refuses(at_limit, ancestors) is None
    assert forgetting(at_limit, ancestors).batch == "b1"


def test_rollback_finds_the_last_promotion_of_the_current_version_past_a_lost_event(store: Store) -> None:
    v1 = _version(store, None, "v1")
    v3 = _version(store, v1, "v3")
    v2 = _version(store, v3, "v2")  # its lineage says v3; its promotion's event says v1
    store.promote(v1, None)
    store.promote(v2, v1)
    store.promote(v3, v2)
    store.promote(v2, v3)
    *_, last = store._list_files("events")
    store._delete(f"events/{last}")  # the event of v2's second promotion is lost
    assert rollback(store) == (v1, v2)  # the last event that made v2 current: v1 before it


def test_a_reference_naming_many_versions_lists_four_and_says_there_are_more(store: Store) -> None:
    made = sorted(_version(store, None, "same") for _ in range(5))
    with pytest.raises(UserError) as five:
        store.resolve("-same-")  # in the middle: neither a prefix nor a suffix
    with pytest.raises(UserError) as many:
        store.resolve(made[0][:8])
    assert str(many.value).endswith(f"names 5 versions ({', '.join(made[:4])}, ...); give more of it")
    store._delete_version(made[4], store.manifest(made[4]))
    with pytest.raises(UserError) as four:
        store.resolve(made[0][:8])
    assert str(four.value).endswith(f"names 4 versions ({', '.join(made[:4])}); give more of it")
    assert "no model version '-same-'" in str(five.value)


def test_a_mistyped_reference_suggests_at_most_three_close_versions(store: Store) -> None:
    made = [_version(store, None, "abc") for _ in range(5)]
    suffix = made[0][-4:]
    typo = suffix[:-1] + ("x" if suffix[-1] != "x" else "y")
    with pytest.raises(UserError) as wrong:
        store.resolve(typo)
    said = str(wrong.value)
    assert made[0] in said and said.count("-abc-") <= 3
    prefix_typo = "1" + made[0][1:12]  # a mistyped year, as long as a prefix
    with pytest.raises(UserError, match="did you mean"):
        store.resolve(prefix_typo)


def test_gc_keeps_an_unpromoted_parent_of_the_current_version(store: Store) -> None:
    v1 = _version(store, None, "v1")
    v2 = _version(store, v1, "v2")  # never promoted itself
    v3 = _version(store, v2, "v3")
    store.promote(v1, None)
    store.promote(v3, v1)
    spare = _version(store, v1, "spare")
    assert store.prune(0) == [spare]
    assert set(store.versions()) == {v1, v2, v3}


def test_gc_never_follows_a_version_folder_that_leads_out_of_the_store(store: Store, tmp_path: Path, caplog) -> None:
    v1 = _version(store, None, "v1")
    store.promote(v1, None)
    outside = tmp_path / "outside"
    linked = _version(store, v1, "linked")
    Path(store._path(f"models/{linked}")).rename(outside)
    Path(store._path(f"models/{linked}")).symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        assert store.prune(0) == []
    assert "leads out of the store; left alone" in caplog.text
    assert sorted(p.name for p in outside.iterdir()) == [".writer", "manifest.json", "member-0.keras"]


def test_gc_removes_the_manifest_first_so_a_crash_leaves_no_half_version(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continual_trainer.data import failpoints

    v1 = _version(store, None, "v1")
    store.promote(v1, None)
    doomed = _version(store, v1, "doomed")

    def crash(name: str) -> None:
        if name == "gc.after-manifest-delete":
            raise KeyboardInterrupt(name)

    monkeypatch.setattr(failpoints, "reached", crash)
    with pytest.raises(KeyboardInterrupt):
        store.prune(0)
    assert doomed not in store.versions()  # gone from the moment its manifest is
    assert Path(store._path(f"models/{doomed}/member-0.keras")).exists()  # its files not yet


def test_a_current_file_naming_no_committed_version_is_damaged(store: Store) -> None:
    for raw in (b"not-a-version-here\n", b"\xff\xfe\n", b"a/../../b\n"):
        Path(store._path("CURRENT")).write_bytes(raw)
        with pytest.raises(UserError, match="CURRENT is damaged: it names no committed version"):
            store.current()
    Path(store._path("CURRENT")).write_bytes(b"\n")
    assert store.current() is None


def test_a_versions_fingerprint_sees_a_rewrite_of_the_same_size(store: Store) -> None:
    version = _version(store, None, "v")
    member = Path(store._path(f"models/{version}/member-0.keras"))
    before = store.fingerprint(version)
    member.write_bytes(member.read_bytes()[::-1])
    os.utime(member, ns=(1, 10**18))
    assert store.fingerprint(version) != before


def test_a_version_is_committed_in_order_and_its_manifest_is_sorted_json(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continual_trainer.data import failpoints

    reached: list[str] = []
    monkeypatch.setattr(failpoints, "reached", lambda name: None if name.startswith("write.") else reached.append(name))
    v1 = store.new_version_id("fresh")
    assert v1.split("-")[-2] == "fresh" and len(v1.split("-")[-1]) == 4
    manifest = store.write_version(
        v1, [(b"net", 2)], Manifest(parent=None, strategy="s", weights=(1.0,)), {"state-m.npy": b"memory"}
    )
    assert reached == ["version.after-members", "version.after-manifest"]
    assert manifest.files == {"member-0.keras": sha256(b"net"), "state-m.npy": sha256(b"memory")}
    assert manifest.created.endswith("+00:00") and manifest.version == v1
    raw = Path(store._path(f"models/{v1}/manifest.json")).read_text()
    assert raw == json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n"
    assert store.read_member(v1, "state-m.npy") == b"memory"
    reached.clear()
    assert store.promote(v1, None, by="init", reason="first")
    assert reached == ["promote.before-swap", "promote.after-swap"]
    reached.clear()
    doomed = _version(store, v1, "doomed")
    reached.clear()
    assert store.prune(0) == [doomed]
    assert reached == ["gc.after-listing", "gc.after-manifest-delete"]


def test_a_version_refuses_files_that_are_not_its_own_and_a_failed_write_leaves_nothing(store: Store) -> None:
    made = Manifest(parent=None, strategy="s", weights=(1.0,))
    with pytest.raises(ValueError, match="1 members but 2 weights"):
        store.write_version("v-a", [(b"x", 2)], Manifest(parent=None, strategy="s", weights=(0.5, 0.5)))
    with pytest.raises(ValueError, match="0 members but 0 weights"):
        store.write_version("v-a", [], Manifest(parent=None, strategy="s", weights=()))
    for bad in (".hidden", "member-9.keras", "manifest.json", "a/b", "x" * 201, ""):
        version = store.new_version_id("bad")
        with pytest.raises(ValueError, match="cannot be a file of a version"):
            store.write_version(version, [(b"x", 2)], made, {bad: b"y"})
        assert not Path(store._path(f"models/{version}")).exists(), bad  # abandoned: the folder is gone
    taken = store.new_version_id("taken")
    assert store._claim(f"models/{taken}", ".writer")
    with pytest.raises(RuntimeError, match=f"version {taken} is being written by another process"):
        store.write_version(taken, [(b"x", 2)], made)
    assert store.versions() == []


def test_writing_a_version_clears_a_dead_writers_uncommitted_one(store: Store, dead_pid: int) -> None:
    left = Path(store._path("models/20260101-000000-000-dead-abcd"))
    left.mkdir(parents=True)
    (left / ".writer").write_text(json.dumps({"host": HOST, "pid": dead_pid}))
    (left / "member-0.keras").write_bytes(b"half")
    _version(store, None, "next")
    assert not left.exists()


def test_names_that_are_no_version_are_refused_before_any_file_is_read(store: Store) -> None:
    for ref in ("..", ".hidden", "a/b", "x" * 201, ""):
        with pytest.raises(UserError, match="no model version"):
            store.manifest(ref)
    version = _version(store, None, "v")
    Path(store._path(f"models/{version}/manifest.json")).write_text('{"parent": 3}')
    with pytest.raises(UserError, match=rf"models/{version}/manifest.json is damaged \("):
        store.manifest(version)


def test_a_current_file_that_cannot_be_read_says_what_it_should_be(store: Store) -> None:
    Path(store._path("CURRENT")).mkdir()
    with pytest.raises(UserError) as unreadable:
        store.current()
    message = str(unreadable.value)
    assert message.startswith(f"{store.display}: CURRENT cannot be read (")
    assert message.endswith("); it should be a file naming the current version") and "\n" not in message


def test_compare_and_swap_on_s3_is_conditional_on_what_was_read(s3_server) -> None:
    uri = s3_server()
    store = Store.create(uri, StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4"))
    store.release_init()
    assert store._conditional is not None
    v1, v2, v3 = (_version(store, None, f"v{i}") for i in (1, 2, 3))
    assert not store.promote(v1, v2)  # nothing current yet: only `None` is what it was
    assert store.promote(v1, None) and store.current() == v1
    assert not store.promote(v2, None)  # another won first
    assert store.promote(v2, v1) and store.current() == v2
    assert not store.promote(v3, v1) and store.current() == v2
    assert [e["version"] for e in store.events("promote")] == [v1, v2]
    # the swap is an If-Match on the ETag read: CURRENT changed after the read, the put loses
    seen = store._conditional.get("CURRENT")
    assert seen is not None and seen[0] == f"{v2}\n".encode()
    store._conditional.put_if_unchanged("CURRENT", f"{v1}\n".encode(), seen[1])
    assert not store._conditional.put_if_unchanged("CURRENT", f"{v3}\n".encode(), seen[1])
    assert store.current() == v1
