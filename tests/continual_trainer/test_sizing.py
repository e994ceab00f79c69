"""`update` and sweeps sized to the rows, as streams are; the plan is said before training and
what the user sets always wins."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from continual_trainer import strategies
from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table


def _store(tmp_path: Path, n: int) -> str:
    pq.write_table(make_table(n=n, seed=0), tmp_path / "old.parquet")
    pq.write_table(make_table(n=n, seed=1, shift=0.3), tmp_path / "new.parquet")
    store = str(tmp_path / "s")
    assert (
        main(["init", "--store", store, "--data", str(tmp_path / "old.parquet"), "--label", "y", "--epochs", "2"]) == 0
    )
    assert main(["ingest", "--store", store, str(tmp_path / "new.parquet")]) == 0
    return store


def _params(store: str, version: str) -> dict:
    return Store.open(store).manifest(version).params


def test_an_update_on_many_rows_is_sized_and_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CTRAIN_STATUS_SECONDS", "1000")
    store = _store(tmp_path, 30_000)
    capsys.readouterr()
    base = [
        "update",
        "--store",
        store,
        "--strategy",
        "finetune_new",
        "--promote",
        "never",
        "--json",
        "--set",
        "epochs=2",
    ]
    assert main(base) == 0
    out, err = capsys.readouterr()
    sized = _params(store, json.loads(out.strip().splitlines()[-1])["version"])
    # 24,000 training rows (80 % of 30,000): batch 64 gives about 400 steps per epoch, the
    # learning rate grows by the square root of the batch's growth (64 / 32)
    default = strategies.get("finetune_new").make_params({})
    assert sized["batch_size"] == 64 and abs(sized["learning_rate"] - default.learning_rate * 2**0.5) < 1e-9
    assert sized["patience"] == 15 and sized["max_seconds"] == 300
    assert "plan: finetune_new on 24,000 training rows: up to 2 epochs, batch 64" in err and "at most 300 s" in err
    assert main([*base, "--set", "batch_size=64", "--set", "patience=0"]) == 0
    out, err = capsys.readouterr()
    mine = _params(store, json.loads(out.strip().splitlines()[-1])["version"])
    assert mine["batch_size"] == 64 and mine["patience"] == 0 and mine["max_seconds"] == 300
    assert "batch" not in err.split("plan:")[1].split("(sized")[0] and "patience" not in err.split("plan:")[1]


def test_small_data_keeps_the_reference_recipe(tmp_path: Path, capsys) -> None:
    store = _store(tmp_path, 300)
    capsys.readouterr()
    argv = ["update", "--store", store, "--strategy", "finetune_new", "--promote", "never", "--json"]
    assert main([*argv, "--set", "epochs=2"]) == 0
    out, err = capsys.readouterr()
    params = _params(store, json.loads(out.strip().splitlines()[-1])["version"])
    assert params["batch_size"] == 32 and params["patience"] == 0 and not params["max_seconds"] and "plan:" not in err


def test_a_sweep_sizes_each_trial_but_keeps_its_grid(tmp_path: Path, capsys) -> None:
    store = _store(tmp_path, 8000)
    (tmp_path / "sweep.yaml").write_text(
        "strategies: [finetune_new, {finetune_all: {batch_size: 64}}]\nparams: {epochs: 2}\n"
    )
    capsys.readouterr()
    assert main(["sweep", "--store", store, "--config", str(tmp_path / "sweep.yaml"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "plan: " in err and "(each trial sized likewise)" in err
    sweep = json.loads(out.strip().splitlines()[-1])
    assert sweep["finished"] == 2


def test_the_store_is_read_in_pieces_by_default_from_the_crossover(tmp_path: Path, monkeypatch) -> None:
    """Without --memory-budget: rows over `PIECES_FROM` are left in the store for a strategy
    that can read them in pieces, and held in memory (up to a quarter of the machine) for one
    that cannot; an explicit budget still decides."""
    import continual_trainer as ct
    from continual_trainer import updatedata
    from continual_trainer.strategies import Capabilities, registry

    seen: dict[str, bool] = {}

    def noting(name: str):
        def fn(inputs, params):
            seen[name] = inputs.new.in_memory
            return inputs.current

        return fn

    keep = strategies.get("keep").params
    strategies.register("pieces_ok", keep, "test", Capabilities(in_pieces=True))(noting("pieces_ok"))
    strategies.register("memory_only", keep, "test")(noting("memory_only"))
    try:
        store = ct.open_store(_store(tmp_path, 300))
        store.update("pieces_ok", promote="never")
        store.update("memory_only", promote="never")
        assert seen == {"pieces_ok": True, "memory_only": True}  # 240 rows: far below the crossover
        monkeypatch.setattr(updatedata, "PIECES_FROM", 1024)
        store.update("pieces_ok", promote="never")
        store.update("memory_only", promote="never")
        assert seen == {"pieces_ok": False, "memory_only": True}
        store.update("pieces_ok", promote="never", memory_budget="1GiB")
        assert seen["pieces_ok"] is True
    finally:
        registry._REGISTRY.remove("pieces_ok")
        registry._REGISTRY.remove("memory_only")


def test_a_stream_files_budget_is_what_is_left_of_it_shared_by_the_rounds_of_candidates() -> None:
    from continual_trainer.sizing import MIN_TRAINING_SECONDS, TRAINING_SHARE, stream_budget

    assert stream_budget(10.0, 4, 2) == TRAINING_SHARE * 10 / 2  # two rounds of two
    assert stream_budget(40.0, 4, 1) == TRAINING_SHARE * 40 / 4  # one at a time: four rounds
    assert stream_budget(10.0, 3, 2) == TRAINING_SHARE * 10 / 2
    assert stream_budget(10.0, 1, 8) == TRAINING_SHARE * 10  # a lone candidate has it all
    assert stream_budget(-3.0, 4, 2) == MIN_TRAINING_SECONDS  # the file is late: the floor, not nothing


def test_a_stream_candidate_trains_within_its_files_budget(tmp_path: Path) -> None:
    """Each candidate of a file above the sizing threshold gets a share of what is left of the
    file's budget (counted from the file's pick-up, after TensorFlow's start), never the whole
    budget and never less than the floor."""
    import continual_trainer as ct
    from continual_trainer.sizing import MIN_TRAINING_SECONDS, STREAM_SECONDS, TRAINING_SHARE

    store = _store(tmp_path, 300)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(n=7000, seed=2, shift=0.5), inbox / "big.parquet")
    events = ct.open_store(store).stream(
        str(inbox), policy="best", candidates=["finetune_new", "fresh_new"], params={"epochs": 2}
    )
    tried = events[0]["candidates"]
    assert len(tried) == 2
    for candidate in tried:  # at most one round's share of what was left once the file was read and scored
        assert MIN_TRAINING_SECONDS <= candidate["settings"]["max_seconds"] < TRAINING_SHARE * STREAM_SECONDS


def test_fine_tuning_an_ensemble_shares_the_candidates_budget_among_its_members(monkeypatch) -> None:
    """`max_seconds` is a candidate's budget: fine-tuning an ensemble of two trains each member
    for half of it (else an ensemble's candidate took twice its budget)."""
    from types import SimpleNamespace

    from continual_trainer.strategies import retrain

    budgets: list[float] = []
    monkeypatch.setattr(retrain, "clone", lambda model: model)
    monkeypatch.setattr(retrain, "model_classes", lambda model: 2)
    monkeypatch.setattr(retrain, "fit", lambda model, inputs, params, seed_offset: budgets.append(params.max_seconds))
    params = strategies.get("finetune_all").make_params({"max_seconds": "6"})
    current = SimpleNamespace(members=("a", "b"), weights=(0.5, 0.5))
    retrain.finetune(SimpleNamespace(current=current, regression=False, n_classes=2), params)
    assert budgets == [3.0, 3.0]
    budgets.clear()
    retrain.finetune(SimpleNamespace(current=SimpleNamespace(members=("a",), weights=(1.0,)), regression=False,
                                     n_classes=2), params)  # fmt: skip
    assert budgets == [6.0]


def test_a_replay_memory_is_sized_to_the_rows_unless_the_user_set_it() -> None:
    """200 rows (the literature's benchmarks) stand poorly for batches of thousands: from the
    sizing threshold a replay memory keeps at least a quarter of the rows an update trains on."""
    from continual_trainer.sizing import MAX_MEMORY_ROWS, scaled

    replay = strategies.get("replay").make_params()
    assert scaled(replay, 4000, 6.0).memory_size == 200  # below the threshold: the recipe
    assert scaled(replay, 8000, 6.0).memory_size == 2000
    assert scaled(strategies.get("derpp").make_params(), 10_000_000, 6.0).memory_size == MAX_MEMORY_ROWS
    mine = strategies.get("der").make_params({"memory_size": "300"})
    assert scaled(mine, 8000, 6.0, frozenset({"memory_size"})).memory_size == 300
    big = strategies.get("replay").make_params({"memory_size": "5000"})
    assert scaled(big, 8000, 6.0).memory_size == 5000  # never smaller than asked
