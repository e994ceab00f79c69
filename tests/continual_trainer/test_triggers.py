"""Drift triggers, training budgets and the store report."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer import triggers as T
from continual_trainer.cli import main
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.data.storage import Store
from continual_trainer.executor import LocalExecutor
from continual_trainer.stream import Policy, run_stream
from continual_trainer.trainer.loop import LoopConfig, train
from tests.conftest import make_table

matplotlib.use("Agg")


def _rows(n: int, seed: int, shift: float = 0.0, colours: tuple[str, ...] = ("a", "b", "c")) -> Rows:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 1] += shift
    return Rows(
        {"numeric": x, "colour": rng.choice(colours, n).astype(object)},
        (x[:, 0] > 0).astype(np.int32),
        np.zeros(n, np.int32),
    )


def _obs(rows: Rows, reference: Rows, loss: float = 0.1, ref_loss: float = 0.1, seed: int = 0) -> T.Observation:
    rng = np.random.default_rng(seed + 1000)
    return T.Observation(
        rows,
        reference,
        (rng.random(len(rows)) < loss).astype(float),
        (rng.random(len(reference)) < ref_loss).astype(float),
        seed=seed,
    )


def test_triggers_are_registered_with_declared_parameters() -> None:
    from continual_trainer.trainer import params as P

    assert T.names() == ["always", "every", "performance", "features"]
    for name in T.names():
        trigger = T.get(name)
        for f in trigger.params.__dataclass_fields__:
            assert P.constraint_of(trigger.params, f) is not None, f"{name}.{f}"
    with pytest.raises(UserError, match="unknown trigger; choose one of always, every"):
        T.get("vibes")
    with pytest.raises(UserError, match=r"^nope: no trigger"):
        T.TriggerSet.parse("performance", {"nope": "1"})
    with pytest.raises(UserError, match="drop must be"):
        T.TriggerSet.parse("performance,features", {"drop": "-1"})
    both = T.TriggerSet.parse("performance,features", {"alpha": "0.05", "z": "2"}, "all")
    assert both.names == ["performance", "features"] and both.triggers[1][1].alpha == 0.05
    window = T.TriggerSet.window
    assert window({"a": T.Decision(True, window=2), "b": T.Decision(True, window=3)}) == 3
    assert window({"a": T.Decision(True, window=2), "b": T.Decision(True)}) is None  # one wants every file
    assert window({"a": T.Decision(True, window=2), "b": T.Decision(False)}) == 2


@pytest.mark.slow
def test_features_keeps_quiet_on_the_same_distribution_and_names_the_shifted_column() -> None:
    reference = _rows(400, seed=0)
    alarms = [
        T.features(_obs(_rows(300, seed=s), reference, seed=s), T.FeaturesParams(), {}).fire for s in range(1, 21)
    ]
    assert sum(alarms) <= 1  # alpha 0.01 family-wise: about 0.2 expected in 20 files
    shifted = T.features(_obs(_rows(300, seed=50, shift=0.5), reference), T.FeaturesParams(), {})
    assert shifted.fire and "'numeric[1]'" in shifted.detail and shifted.statistic < 1e-3
    colours = T.features(_obs(_rows(300, seed=51, colours=("a", "a", "a", "c")), reference), T.FeaturesParams(), {})
    assert colours.fire and "'colour'" in colours.detail


def test_features_domain_classifier_sees_what_no_single_column_shows() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 2)).astype(np.float32)
    b = rng.normal(size=(600, 2)).astype(np.float32)
    b[:, 1] = np.where(rng.random(600) < 0.5, 1, -1) * np.abs(b[:, 0])  # same marginals, a new dependence
    a[:, 1] = rng.permutation(np.abs(a[:, 0])) * np.where(rng.random(600) < 0.5, 1, -1)
    rows = lambda x: Rows({"numeric": x}, np.zeros(len(x), np.int32), np.zeros(len(x), np.int32))  # noqa: E731
    params = T.FeaturesParams()
    decision = T.features(_obs(rows(b), rows(a)), params, {})
    assert decision.fire and "domain classifier ROC AUC" in decision.detail
    univariate = T.features(_obs(rows(b), rows(a)), T.FeaturesParams(multivariate=False), {})
    assert not univariate.fire


def test_performance_fires_on_a_clear_rise_and_page_hinkley_on_a_slow_one() -> None:
    reference = _rows(500, seed=0)
    params = T.PerformanceParams()
    assert not T.performance(_obs(_rows(500, 1), reference, 0.1, 0.1), params, {}).fire
    clear = T.performance(_obs(_rows(500, 2), reference, 0.4, 0.1), params, {})
    assert clear.fire and clear.statistic == pytest.approx(0.3, abs=0.06)
    # A rise of 0.01 more per file: too small for the z-test each time, not for Page-Hinkley.
    state: dict = {}
    fired_at = None
    for i in range(1, 40):
        decision = T.performance(_obs(_rows(500, i), reference, 0.1 + 0.01 * i, 0.1, seed=i), params, state)
        state = decision.state
        if decision.fire:
            fired_at = i
            break
    assert fired_at is not None and fired_at < 20
    off = T.PerformanceParams(detector="none", drop=0.5)
    assert not T.performance(_obs(_rows(500, 3), reference, 0.3, 0.1), off, {"m": 9.0, "low": 0.0, "n": 5}).fire


def test_performance_also_updates_each_time_the_data_doubles() -> None:
    """Without a drift, an update once the rows since the last try match the rows seen:
    learning all of them (no window), and the count starts again after each try."""
    reference, params = _rows(500, seed=0), T.PerformanceParams()
    state: dict = {}
    fired = []
    for i in range(12):
        obs = dataclasses.replace(_obs(_rows(100, i), reference, 0.1, 0.1, seed=i), learned_rows=300)
        decision = T.performance(obs, params, state)
        state = decision.state
        fired.append(decision.fire)
        if decision.fire:
            assert decision.window is None and "300 rows since the last try, 300 learned" in decision.detail
    assert [i for i, f in enumerate(fired) if f] == [2, 5, 8, 11]
    assert not any(T.performance(obs, T.PerformanceParams(grow=0), {"waiting": 10**6}).fire for _ in range(2))
    unknown = dataclasses.replace(obs, learned_rows=0)  # nothing known about what the model saw: no rule
    assert not T.performance(unknown, params, {"waiting": 10**6}).fire


def test_every_counts_files_and_rows() -> None:
    obs = _obs(_rows(10, 0), _rows(10, 1))
    params = T.EveryParams(files=3, rows=1000)
    assert not T.every(obs, params, {}).fire
    assert T.every(T.Observation(obs.rows, obs.reference, obs.loss, obs.reference_loss, 3, 30), params, {}).fire
    assert T.every(T.Observation(obs.rows, obs.reference, obs.loss, obs.reference_loss, 1, 1000), params, {}).fire


def _stream_inbox(tmp_path: Path, flips: int) -> Path:
    """Five files of the store's concept, then files with the labels reversed."""
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    for i in range(5 + flips):
        table = make_table(n=400, seed=0)  # the store's first batch: resampled, the same distribution
        rng = np.random.default_rng(i)
        x = table.to_pandas().sample(n=200, replace=True, random_state=i)
        if i >= 5:
            x["y"] = 1 - x["y"]
        x = x.reset_index(drop=True)
        x["f4"] = x["f4"] + rng.normal(scale=0.01, size=len(x))
        pq.write_table(pa.Table.from_pandas(x, preserve_index=False), inbox / f"f{i:02d}.parquet")
    return inbox


@pytest.fixture
def store_of_table0(tmp_path: Path, write_parquet) -> str:
    uri = str(tmp_path / "store")
    main(["init", "--store", uri, "--data", write_parquet(make_table(n=400, seed=0)), "--label", "y", "--epochs", "30"])
    return uri


def test_a_stream_with_triggers_updates_only_when_they_fire(store_of_table0: str, tmp_path: Path, capsys) -> None:
    inbox = _stream_inbox(tmp_path, flips=2)
    argv = ["stream", "--store", store_of_table0, "--inbox", str(inbox), "--once", "--policy", "finetune_all"]
    argv += ["--set", "epochs=5", "--trigger", "performance", "--trigger-set", "grow=0", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    events = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"]
    assert [e["status"] for e in events[:5]] == ["ingested"] * 5
    assert all(not e["triggers"]["performance"]["fire"] for e in events[:5])
    assert events[5]["triggers"]["performance"]["fire"] and events[5]["status"] in ("updated", "kept")
    assert (
        events[5]["candidates"][0]["strategy"] == "finetune_all" and "accuracy" in events[5]["candidates"][0]["holdout"]
    )
    assert [e["since_update"]["files"] for e in events[:6]] == [1, 2, 3, 4, 5, 6]
    # The update learned the file where the error rose, not the five quiet ones before it.
    assert events[5]["triggers"]["performance"]["window"] == 1 and events[5]["learned"] == [events[5]["batch"]]
    # Page-Hinkley's state went from file to file through the events.
    assert [e["triggers"]["performance"]["state"]["n"] for e in events[:6]] == [1, 2, 3, 4, 5, 6]
    store = Store.open(store_of_table0)
    assert len(store.batch_ids()) == 1 + 7  # every file kept as a batch, updated or not
    # The quiet files became old data: finetune_all learned them as such.
    made = store.manifest(events[5]["version"])
    assert made.batches_trained == tuple(store.batch_ids()[:7]) == made.batches_seen
    # Exactly once: a second run finds nothing to do.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"] == []
    # Text output: a damaged file is rejected (and a run that learned nothing is exit 2).
    (inbox / "f99.parquet").write_bytes((inbox / "f00.parquet").read_bytes()[:-8] + b"garbage!")
    assert main(argv[:-1]) == 2
    assert "f99.parquet: rejected" in capsys.readouterr().out


def test_the_grow_rule_updates_a_quiet_stream_as_its_data_doubles(store_of_table0: str, tmp_path: Path, capsys) -> None:
    inbox = _stream_inbox(tmp_path, flips=0)  # five files of 200 rows; the store's model saw 400
    argv = ["stream", "--store", store_of_table0, "--inbox", str(inbox), "--once", "--policy", "finetune_new"]
    assert main([*argv, "--set", "epochs=3", "--trigger", "performance", "--json"]) == 0
    events = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"]
    decisions = [e["triggers"]["performance"] for e in events]
    assert [d["fire"] for d in decisions[:2]] == [False, True]
    assert decisions[1]["because"] == ["grow"] and decisions[1]["window"] is None
    assert decisions[1]["state"]["carry"] == {"basis": 800}
    # Promoted, the new model learned 800 rows of its concept and waits for 800 more; kept, the
    # old one waits for another 400.
    promoted = events[1]["status"] == "updated"
    assert decisions[2]["state"]["basis"] == (800 if promoted else 400)
    assert [d["fire"] for d in decisions[2:]] == ([False, False, False] if promoted else [False, True, False])


def test_stream_trigger_flags_are_checked(store_of_table0: str, tmp_path: Path, capsys) -> None:
    inbox = _stream_inbox(tmp_path, flips=0)
    base = ["stream", "--store", store_of_table0, "--inbox", str(inbox), "--once", "--policy", "keep"]
    for extra, message in (
        (["--trigger", "vibes"], "unknown trigger"),
        (["--trigger", "features", "--trigger-set", "alpha=2"], "alpha must be"),
        (["--trigger", "every", "--trigger-set", "drop=1"], "no trigger of 'every' has"),
        (["--set", "seed=1"], "--set seed: no strategy of the policy has this parameter"),  # a name the API takes too
        (["--set", "once=1"], "--set once: no strategy of the policy has this parameter"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def _check_report(folder: Path) -> None:
    page = (folder / "index.html").read_text()
    referenced = re.findall(r'src="([^"]+)"', page)
    assert referenced and all((folder / r).exists() for r in referenced), referenced
    for png in folder.glob("plots/*.png"):
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert (folder / "report.md").read_text().startswith("# Store report")
    for mentioned in re.findall(r"\]\((plots/[^)]+)\)", (folder / "report.md").read_text()):
        assert (folder / mentioned).exists()


def test_report_shows_the_store_life(store_of_table0: str, tmp_path: Path, capsys) -> None:
    inbox = _stream_inbox(tmp_path, flips=1)
    run_stream(
        store_of_table0,
        str(inbox),
        Policy(
            "best",
            ["finetune_new", "fresh_all"],
            values={"epochs": "5"},
            triggers=T.TriggerSet.parse("features,performance"),
        ),
        LocalExecutor(),
        once=True,
    )
    assert main(["report", "--store", store_of_table0]) == 0
    out = capsys.readouterr().out
    page = Path(re.search(r"report: (\S+index.html)", out).group(1))
    _check_report(page.parent)
    assert {p.name for p in page.parent.glob("plots/*.png")} == {
        "holdout_over_time.png",
        "stream.png",
        "accuracy_matrix.png",
    }
    text = page.read_text()
    assert "f05.parquet" in text and "finetune_new" in text and "performance" in text
    assert main(["report", "--store", store_of_table0, "--out", str(tmp_path / "out"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["page"].endswith("index.html") and "plots/stream.png" in payload["files"]
    _check_report(tmp_path / "out")
    assert main(["report", "--store", str(tmp_path / "nothing")]) == 2


def test_early_stopping_restores_the_best_epoch_and_a_budget_stops_in_time() -> None:
    from sklearn.datasets import make_classification

    from continual_trainer.data.schema import InputInfo
    from continual_trainer.trainer.models import ModelSpec, build_model

    x, y = make_classification(600, 10, n_informative=4, flip_y=0.3, random_state=0)  # noisy: it overfits
    x = x.astype(np.float32)
    spec = {"numeric": InputInfo((10,), "float32")}
    model = build_model(ModelSpec((64, 64)), spec, 2, 0)
    result = train(model, x, y, LoopConfig(epochs=300, learning_rate=0.05, patience=5))
    assert result.stopped == "patience" and len(result.epoch_loss) < 300
    assert result.best_epoch == len(result.epoch_loss) - 5
    same = build_model(ModelSpec((64, 64)), spec, 2, 0)  # the same run without stopping, to the best epoch
    again = train(same, x, y, LoopConfig(epochs=300, learning_rate=0.05, patience=5))
    np.testing.assert_allclose(model.predict(x, verbose=0), same.predict(x, verbose=0), atol=1e-5)
    assert again.best_epoch == result.best_epoch
    budget = build_model(ModelSpec((64, 64)), spec, 2, 0)
    quick = train(budget, x, y, LoopConfig(epochs=100_000, max_seconds=0.5))
    assert quick.stopped == "budget" and len(quick.epoch_loss) < 100_000 and quick.seconds < 5


def test_every_strategy_takes_the_budget_parameters() -> None:
    from continual_trainer import strategies

    for name in strategies.names(trains=True):
        params = strategies.get(name).make_params({"patience": "3", "max_seconds": "10"})
        assert params.loop().patience == 3 and params.loop().max_seconds == 10


@pytest.mark.slow
def test_stream_with_triggers_and_report_on_s3(s3_server, write_parquet, tmp_path: Path, capsys) -> None:
    uri = s3_server()
    assert (
        main(
            [
                "init",
                "--store",
                uri,
                "--data",
                write_parquet(make_table(n=400, seed=0)),
                "--label",
                "y",
                "--epochs",
                "20",
            ]
        )
        == 0
    )
    inbox = _stream_inbox(tmp_path, flips=1)
    argv = ["stream", "--store", uri, "--inbox", str(inbox), "--once", "--policy", "finetune_new", "--set", "epochs=3"]
    assert main([*argv, "--trigger", "performance,features", "--json"]) == 0
    events = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"]
    assert len(events) == 6 and events[-1]["triggers"]["performance"]["fire"]
    assert main(["report", "--store", uri, "--json"]) == 0  # into the store, on S3
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["folder"].startswith("s3://") and "/reports/report-" in payload["folder"]
    assert "plots/stream.png" in payload["files"]
    assert main(["report", "--store", uri, "--out", str(tmp_path / "local")]) == 0
    _check_report(tmp_path / "local")


def test_the_python_api_checks_drift_streams_with_triggers_and_reports(store_of_table0: str, tmp_path: Path) -> None:
    import continual_trainer as ct

    store = ct.open_store(store_of_table0)
    same = make_table(n=400, seed=0).to_pandas().sample(n=200, random_state=1)
    quiet = store.drift(same)
    assert quiet["fire"] is False and set(quiet) == {"fire", "performance", "features"}
    moved = same.assign(f2=same.f2 + 1.5)
    loud = store.drift(moved, trigger="features", alpha=0.05)
    assert loud["fire"] and "'f2'" in loud["features"]["detail"]  # named by its column
    assert len(Store.open(store_of_table0).batch_ids()) == 1  # nothing kept
    with pytest.raises(UserError, match="missing feature"):
        store.drift(same.drop(columns=["f1"]))
    events = store.stream(
        str(_stream_inbox(tmp_path, flips=1)),
        policy="finetune_new",
        trigger="performance",
        trigger_params={"grow": 0},
        epochs=3,
    )
    assert [e["status"] for e in events][:5] == ["ingested"] * 5 and events[5]["triggers"]["performance"]["fire"]
    page = store.report(str(tmp_path / "api-report"))
    assert page.endswith("index.html") and (tmp_path / "api-report" / "index.html").exists()


def test_stream_settings_scale_with_the_rows_unless_the_user_set_them() -> None:
    from continual_trainer import strategies
    from continual_trainer.sizing import scaled

    fresh = strategies.get("fresh_all").make_params()
    assert scaled(fresh, 4000, 6.0) == fresh  # small batches keep the reference recipe
    big = scaled(fresh, 55_000, 6.0)
    assert big.batch_size == 128 and big.learning_rate == pytest.approx(0.01 * 2)
    assert big.patience == 15 and big.max_seconds == 6.0 and big.epochs == fresh.epochs
    assert scaled(fresh, 10_000_000, 6.0).batch_size == 1024
    mine = strategies.get("fresh_all").make_params({"batch_size": "64", "patience": "2"})
    kept = scaled(mine, 55_000, 6.0, frozenset({"batch_size", "patience"}))
    assert (kept.batch_size, kept.learning_rate, kept.patience, kept.max_seconds) == (64, 0.01, 2, 6.0)
    keep = strategies.get("keep").make_params()
    assert scaled(keep, 55_000, 6.0) is keep


def test_a_stream_above_its_memory_budget_decides_and_learns_the_same_from_the_store(
    store_of_table0: str, tmp_path: Path, capsys
) -> None:
    inbox = _stream_inbox(tmp_path, flips=2)
    copy = str(tmp_path / "copy")
    shutil.copytree(store_of_table0, copy)
    argv = ["stream", "--inbox", str(inbox), "--once", "--policy", "finetune_all", "--set", "epochs=5"]
    argv += ["--trigger", "performance", "--trigger-set", "grow=0", "--json"]
    capsys.readouterr()
    assert main([*argv, "--store", store_of_table0]) == 0
    memory = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"]
    assert main([*argv, "--store", copy, "--memory-budget", "1KB"]) == 0  # the candidates read the store
    pieces = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"]
    same = ("status", "drift", "triggers", "since_update", "learned")
    for m, p in zip(memory[:6], pieces[:6], strict=True):  # up to and with the update: the same decisions
        assert {k: p[k] for k in same} == {k: m[k] for k in same}
    assert pieces[5]["status"] in ("updated", "kept") and pieces[5]["learned"] == [pieces[5]["batch"]]
    ours, theirs = (
        Store.open(copy).manifest(pieces[5]["version"]),
        Store.open(store_of_table0).manifest(memory[5]["version"]),
    )
    assert ours.batches_trained == theirs.batches_trained  # the quiet files learned as old data, read in pieces
    assert abs(ours.metrics["holdout_accuracy"] - theirs.metrics["holdout_accuracy"]) < 0.05
    # Settings that need every row at once fail that file in one line.
    more = tmp_path / "more"
    more.mkdir()
    pq.write_table(make_table(n=200, seed=9), more / "g.parquet")
    bad = ["stream", "--store", copy, "--inbox", str(more), "--once", "--policy", "finetune_all"]
    bad += ["--set", "weighting=importance", "--memory-budget", "1KB"]
    assert main([*bad, "--json"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert "update failed" in error and "weighting=importance" in error and "above the memory budget" in error


def test_a_stream_line_says_why_its_trigger_fired() -> None:
    from continual_trainer.stream import StreamEvent

    detail = "most shifted 'ANC' (adjusted p 0.036, 16 tests; fires below 0.005)"
    triggers = {"features": {"fire": True, "detail": detail}, "performance": {"fire": False}}
    event = StreamEvent("day-12.parquet", "ab" * 32, "updated", batch="000012-ab", rows=500, triggers=triggers)
    assert f"trigger: features fired: {detail}" in event.line()


def test_the_chi_square_test_of_a_categorical_column_is_scipys() -> None:
    from scipy import stats

    new = np.array(["a"] * 30 + ["b"] * 10)
    ref = np.array(["a"] * 10 + ["b"] * 25 + ["c"] * 5)
    table = [[30, 10, 0], [10, 25, 5]]
    assert T._chi2(new, ref) == pytest.approx(stats.chi2_contingency(table)[1], rel=1e-12)
    assert T._chi2(np.array(["a", "a"]), np.array(["a"])) == 1.0  # one value on both sides: nothing to test
    assert T._chi2(np.array(["a"] * 20), np.array(["b"] * 20)) < 1e-6  # two values: tested


def test_the_performance_triggers_loss_is_the_error_rate_or_the_squared_error_in_label_deviations() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert T.per_row_loss(proba, np.array([0, 0, 1])).tolist() == [0.0, 1.0, 1.0]
    assert T.per_row_loss(np.array([1.0, 3.0]), np.array([2.0, 3.0]), target_std=2.0).tolist() == [0.25, 0.0]
    assert T.per_row_loss(np.array([1.0]), np.array([3.0])).tolist() == [4.0]


def test_a_trigger_set_combines_its_triggers_and_their_windows() -> None:
    def fixed(fire: bool, window: int | None) -> T.Trigger:
        return T.Trigger(f"t{fire}{window}", T.NoParams, lambda o, p, s: T.Decision(fire, window=window), "")

    obs = _obs(_rows(50, 0), _rows(50, 1))
    both = ((fixed(True, 3), T.NoParams()), (fixed(False, 9), T.NoParams()))
    assert T.TriggerSet(both, "any").decide(obs, {})[0] is True
    assert T.TriggerSet(both, "all").decide(obs, {})[0] is False
    _, decisions = T.TriggerSet(both, "any").decide(obs, {})
    assert T.TriggerSet.window(decisions) == 3  # the one that fired; the other's window does not count
    wide = T.TriggerSet(((fixed(True, 3), T.NoParams()), (fixed(True, 5), T.NoParams())))
    assert T.TriggerSet.window(wide.decide(obs, {})[1]) == 5
    every = T.TriggerSet(((fixed(True, 3), T.NoParams()), (fixed(True, None), T.NoParams())))
    assert T.TriggerSet.window(every.decide(obs, {})[1]) is None  # one says every new file
    assert T.TriggerSet.window({}) is None
    assert T.TriggerSet.parse("always").names == ["always"] and T.TriggerSet.parse().combine == "any"
    with pytest.raises(UserError, match="choose any or all"):
        T.TriggerSet.parse("always", combine="most")
    with pytest.raises(UserError, match="give at least one trigger"):
        T.TriggerSet.parse(" , ")


def test_the_feature_tests_sample_at_most_max_sample_rows_seeded() -> None:
    """More than MAX_SAMPLE rows: exactly MAX_SAMPLE distinct rows, in their order, the same for
    the same seed; at most MAX_SAMPLE: the rows themselves."""
    n = T.MAX_SAMPLE + 1500
    rows = Rows({"numeric": np.arange(n, dtype=np.float32)[:, None]}, np.zeros(n, np.int32), np.zeros(n, np.int32))
    picked = T._sample(rows, np.random.default_rng(3)).x["numeric"][:, 0]
    assert len(picked) == T.MAX_SAMPLE == len(np.unique(picked)) and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, T._sample(rows, np.random.default_rng(3)).x["numeric"][:, 0])
    assert not np.array_equal(picked, T._sample(rows, np.random.default_rng(4)).x["numeric"][:, 0])
    exactly = rows.take(np.arange(T.MAX_SAMPLE))
    assert T._sample(exactly, np.random.default_rng(3)) is exactly


def test_the_feature_tests_name_every_column_they_judge() -> None:
    """Names for the columns of `rows.matrix()`: a column's own name, the store's column names of
    a grouped input, an element index for a tensor; strings are judged apart (not here)."""
    n = 4
    x = {
        "city": np.array(["a"] * n, dtype=object),
        "numeric": np.zeros((n, 2), np.float32),
        "image": np.zeros((n, 2, 2), np.float32),
        "age": np.zeros((n,), np.float32),
    }
    names = T._column_names(Rows(x, np.zeros(n, np.int32), np.zeros(n, np.int32)), {"numeric": ("x0", "x1")})
    assert names == ["x0", "x1", "image[0]", "image[1]", "image[2]", "image[3]", "age"]


def test_trigger_mistakes_name_the_argument_they_are_in() -> None:
    """What the CLI turns into its flags: `combine`, `trigger`, and the trigger parameters'
    group (`--trigger-set`), with the trigger named."""
    with pytest.raises(UserError) as bad_combine:
        T.TriggerSet.parse("performance", combine="most")
    assert bad_combine.value.option == "combine" and str(bad_combine.value) == "combine='most': choose any or all"
    with pytest.raises(UserError) as none:
        T.TriggerSet.parse(" , ")
    assert none.value.option == "trigger" and str(none.value) == "trigger: give at least one trigger"
    with pytest.raises(UserError) as unused:
        T.TriggerSet.parse("performance", {"bins": 3})
    assert unused.value.option == "bins" and unused.value.group == "trigger_params"
    assert "no trigger of 'performance' has this parameter" in str(unused.value)
    with pytest.raises(UserError) as bad_value:
        T.TriggerSet.parse("features", {"alpha": "2"})
    assert bad_value.value.group == "trigger_params" and "features" in str(bad_value.value)
    assert T.TriggerSet.parse("performance,features", combine="all").combine == "all"


def test_the_domain_classifier_is_seeded_and_its_p_value_is_mann_whitneys() -> None:
    """The multivariate test: out-of-fold ROC AUC of a classifier telling the sides apart, the
    same for the same seed, and its one-sided p-value the Mann-Whitney normal approximation
    (no continuity correction) of that AUC; alike sides give an AUC near 0.5, apart ones near 1."""
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    auc, p = T._domain_auc(a, b, seed=1)
    assert (auc, p) == T._domain_auc(a, b, seed=1)
    assert (auc, p) != T._domain_auc(a, b, seed=2)  # other folds
    z = (auc - 0.5) / np.sqrt((300 + 200 + 1) / (12 * 300 * 200))
    assert p == pytest.approx(stats.norm.sf(z), rel=1e-9) and abs(auc - 0.5) < 0.1
    far_auc, far_p = T._domain_auc(a + 2.0, b, seed=1)
    assert far_auc > 0.9 and far_p < 1e-12
