"""Sweeps without Ray: the grid, outputs, resume, ranking and failed trials."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.executor import LocalExecutor
from continual_trainer.sweep import SweepSpec, run_sweep, summarize

matplotlib.use("Agg")

SPEC = """
strategies:
  - keep
  - finetune_all:
      weighting: [none, recency]
params: {epochs: 3}
seeds: [0, 1]
"""


def test_spec_expands_the_grid_and_validates_early() -> None:
    spec = SweepSpec.parse(SPEC)
    assert len(spec.trials) == 2 + 2 * 2
    assert {t.strategy for t in spec.trials} == {"keep", "finetune_all"}
    keep = [t for t in spec.trials if t.strategy == "keep"]
    assert all(t.params == {} for t in keep)  # shared params apply only where they exist
    assert len({t.trial_id for t in spec.trials}) == len(spec.trials)
    for bad, message in [
        ("strategies: [retrain]", "unknown strategy"),
        ("strategies: [keep]\nparams: {epochs: 3}", "no listed strategy has parameter(s) epochs"),
        ("strategies: [{fresh_new: {epochs: [0]}}]", "epochs must be >= 1"),
        ("strategies: [keep]\nseeds: x", "`seeds` must be"),
        ("strategies: [keep]\ncolour: blue", "unknown key(s) colour"),
        ("strategies: [keep]\nmax_failures: -1", "max_failures must be >= 0"),
        ("strategies: [keep]\ncpus_per_trial: zero", "cpus_per_trial=zero: expected a number"),
        ("strategies: [keep]\ngpus_per_trial: -1", "gpus_per_trial must be >= 0"),
        ("strategies: [keep", "not valid YAML"),
    ]:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SweepSpec.parse(bad)


def test_example_sweep_file_parses() -> None:
    path = Path(__file__).parents[2] / "examples" / "sweep.yaml"
    assert len(SweepSpec.parse(path.read_text()).trials) == 8 * 3
    search = SweepSpec.parse((path.parent / "search.yaml").read_text())
    assert len(search.trials) == 2 * 8 * 2  # strategies x num_samples x seeds


def test_local_sweep_writes_results_report_and_plots_and_resumes(tiny_store: str) -> None:
    store = Store.open(tiny_store)
    result = run_sweep(store, LocalExecutor(), SweepSpec.parse(SPEC))
    assert result.finished == result.trials == 6 and not result.failures
    folder = Path(result.folder)
    table = pq.read_table(folder / "results.parquet")
    assert table.num_rows == 6 and len(set(table.column("trial_id").to_pylist())) == 6
    assert {"holdout_accuracy", "old_accuracy", "new_accuracy", "train_seconds", "seed", "params"} <= set(
        table.column_names
    )
    # Forgetting along the current lineage, flips and one accuracy-matrix column per batch.
    assert {"forgetting", "backward_transfer", "negative_flip_rate"} <= set(table.column_names)
    batches = [c for c in table.column_names if c.startswith("batch_")]
    assert [f"batch_{b}_accuracy" for b in store.batch_ids()] == batches
    keep = table.filter(pa.compute.equal(table.column("strategy"), "keep"))
    assert keep.column("forgetting").to_pylist() == [0.0, 0.0] and keep.column("negative_flip_rate")[0].as_py() == 0
    report = (folder / "report.md").read_text()
    assert "| 1 |" in report and "finetune_all" in report and "±" in report and "| forgetting | flips |" in report
    files = store.report_files(result.sweep_id)
    for png in ("plots/accuracy_by_strategy.png", "plots/accuracy_vs_seconds.png", "plots/accuracy_matrix.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG" and png in report
    image = matplotlib.image.imread(folder / "plots/accuracy_matrix.png")  # decodes
    assert image.shape[0] > 100 and image.shape[1] > 100
    for mentioned in re.findall(r"`(plots/[^`]+)`", report):  # the report names only files that exist
        assert mentioned in files

    # Resume: finished trials are not redone; a lost one is.
    trials = folder / "trials"
    kept = {p.name: p.read_bytes() for p in trials.iterdir()}
    lost = sorted(kept)[0]
    (trials / lost).unlink()
    again = run_sweep(store, LocalExecutor(), resume=result.sweep_id)
    assert again.finished == 6
    for name, body in kept.items():
        if name != lost:
            assert (trials / name).read_bytes() == body
    assert (trials / lost).exists()
    # Once its batches are learned, a resume says so (its trials compared on data now gone by).
    import continual_trainer as ct

    ct.open_store(tiny_store).update("keep", promote="always")
    with pytest.raises(UserError, match="the batches it compared on were learned since"):
        run_sweep(store, LocalExecutor(), resume=result.sweep_id)


def test_a_sweep_whose_trials_all_fail_through_the_users_input_raises_it(tiny_store: str) -> None:
    spec = SweepSpec.parse("strategies: [{graft: {freeze: 9, epochs: 2}}]\nseeds: [0, 1]")
    with pytest.raises(UserError, match=r"none of 2 trials finished.*only 2 hidden layers"):
        run_sweep(Store.open(tiny_store), LocalExecutor(), spec)


def test_ranking_is_accuracy_then_log_loss_as_in_promotion() -> None:
    def rec(strategy: str, acc: float, loss: float) -> dict:
        return {"strategy": strategy, "params": "{}", "holdout_accuracy": acc, "holdout_log_loss": loss}

    rows = summarize([rec("a", 0.9, 0.5), rec("b", 0.9, 0.3), rec("c", 0.8, 0.1)])
    assert [r["strategy"] for r in rows] == ["b", "a", "c"]


SEARCH = """
search: random
num_samples: 6
strategies:
  - finetune_all:
      learning_rate: {loguniform: [0.0001, 0.1]}
      weighting: {choice: [none, recency]}
  - fresh_all:
      epochs: {randint: [2, 5]}
      old_fraction: [0.5, 1.0]
params: {epochs: 3}
seeds: [0, 1]
"""


def test_a_random_search_samples_tune_style_spaces_the_same_way_every_time() -> None:
    spec = SweepSpec.parse(SEARCH)
    assert len(spec.trials) == 2 * 6 * 2  # strategies x samples x seeds
    ft = [t.params for t in spec.trials if t.strategy == "finetune_all"]
    assert all(1e-4 <= p["learning_rate"] <= 0.1 and p["weighting"] in ("none", "recency") for p in ft)
    assert len({p["learning_rate"] for p in ft}) == 6 and {p["epochs"] for p in ft} == {3}
    rates = sorted({p["learning_rate"] for p in ft})
    assert rates[0] < 0.003 < rates[-1]  # log-uniform: spread over the decades, not bunched near 0.1
    fresh = [t.params for t in spec.trials if t.strategy == "fresh_all"]
    assert all(p["epochs"] in (2, 3, 4) and p["old_fraction"] in (0.5, 1.0) for p in fresh)
    again = SweepSpec.parse(SEARCH)
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in spec.trials]  # resumable: same trials
    other = SweepSpec.parse(SEARCH + "search_seed: 1\n")
    assert [t.trial_id for t in other.trials] != [t.trial_id for t in spec.trials]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategies: [{finetune_all: {learning_rate: {uniform: [0.001, 0.1]}}}]", "add `search: random`"),
        ("search: random\nstrategies: [{finetune_all: {learning_rate: {loguniform: [0, 1]}}}]", "0 < low < high"),
        ("search: random\nnum_samples: 0\nstrategies: [keep]", "num_samples must be"),
        ("search: bayes\nstrategies: [keep]", "search must be one of grid, random, tpe"),
        ("num_samples: 3\nstrategies: [keep]", "apply to `search: random`"),
        ("search: random\nstrategies: [{finetune_all: {old_fraction: {uniform: [0.5, 3]}}}]", "a sampled finetune_all"),
    ],
)
def test_search_spaces_are_checked_before_any_work(text: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        SweepSpec.parse(text)


def test_a_configuration_drawn_twice_is_one_trial() -> None:
    """Trials are known by their content: asked for 8 configurations of a space of 2, a search
    has 2 trials per seed, and the sweep's count says so (it counted a configuration drawn twice
    twice, and the sweep then said 30 of 32 trials finished with none failed)."""
    spec = SweepSpec.parse(
        "search: random\nnum_samples: 8\nstrategies:\n  - finetune_new:\n"
        "      epochs: {randint: [1, 3]}\nseeds: [0, 1]\n"
    )
    assert sorted((t.params["epochs"], t.seed) for t in spec.trials) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert len({t.trial_id for t in spec.trials}) == len(spec.trials)


def test_a_random_search_runs_and_resumes_like_a_grid(tiny_store: str) -> None:
    spec = SweepSpec.parse(
        "search: random\nnum_samples: 3\nstrategies:\n  - finetune_new:\n"
        "      learning_rate: {loguniform: [0.001, 0.1]}\nparams: {epochs: 2}\n"
    )
    store = Store.open(tiny_store)
    result = run_sweep(store, LocalExecutor(), spec)
    assert result.finished == result.trials == 3
    assert len(set(result.table.column("params").to_pylist())) == 3
    assert run_sweep(store, LocalExecutor(), resume=result.sweep_id).finished == 3


# Four learning rates, two of them too small to learn anything in 8 epochs; one at a time,
# so that the order in which trials reach the rungs is the spec's.
ASHA = """
scheduler: asha
grace_period: 2
reduction_factor: 2
max_concurrent: 1
strategies:
  - fresh_all:
      learning_rate: [0.05, 0.02, 0.00001, 0.000003]
params: {epochs: 8}
"""


def test_asha_judges_a_trial_against_those_that_reached_its_rung_before_it() -> None:
    from continual_trainer.schedule import Asha

    asha = Asha((2, 6), reduction_factor=2)
    assert asha.decide("a", 2, 0.80)  # the first at a rung goes on: nothing to compare with
    assert asha.decide("b", 2, 0.90)  # at least the median of [0.80]
    assert not asha.decide("c", 2, 0.70)  # below the median of [0.80, 0.90]
    assert asha.decide("b", 4, 0.91)  # between rungs: nothing to judge
    assert asha.decide("b", 6, 0.95) and not asha.decide("a", 6, 0.85)
    assert asha.decide("a", 6, 0.10)  # judged once per rung
    again = Asha((2, 6), reduction_factor=2)
    again.replay([("a", [(2, 0.80)]), ("b", [(2, 0.90)])])
    assert not again.decide("c", 2, 0.70)  # a resumed sweep decides as the first run did


def test_asha_judges_a_trial_only_against_its_bracket_how_its_strategy_starts() -> None:
    """A network trained from scratch scores far below fine-tuned ones at the first rungs; in
    its own bracket it is compared with its peers only (before: 7 of 8 fresh_all trials stopped)."""
    from continual_trainer.schedule import Asha
    from continual_trainer.sweep import _starts
    from continual_trainer.sweep_results import mostly_stopped

    assert (_starts("finetune_all"), _starts("fresh_all"), _starts("no_such_strategy")) == ("current", "scratch", "")
    asha = Asha((2,), reduction_factor=2, brackets={"ft1": "current", "ft2": "current", "fr1": "scratch",
                                                    "fr2": "scratch", "fr3": "scratch"})  # fmt: skip
    assert asha.decide("ft1", 2, 0.95) and asha.decide("ft2", 2, 0.96)
    assert asha.decide("fr1", 2, 0.60)  # the first of its bracket: nothing to compare with
    assert asha.decide("fr2", 2, 0.70) and not asha.decide("fr3", 2, 0.50)  # against 0.60 and 0.70 only
    one = Asha((2,), reduction_factor=2)  # without brackets, as before: a fresh network stops
    assert one.decide("ft1", 2, 0.95) and one.decide("ft2", 2, 0.96) and not one.decide("fr1", 2, 0.60)
    records = [{"strategy": "fresh_all"}, {"strategy": "finetune_all"}, {"strategy": "finetune_all"}]
    stopped = [{"strategy": "fresh_all"}] * 2 + [{"strategy": "finetune_all"}]
    assert mostly_stopped(records, stopped) == [
        "ASHA stopped 2 of 3 fresh_all trials early: its place rests on the rest"
    ]  # finetune_all: 1 of 3, not most


def test_asha_settings_are_checked_and_rungs_follow_the_epochs() -> None:
    from continual_trainer.schedule import AshaSettings

    spec = SweepSpec.parse(ASHA)
    assert spec.asha == AshaSettings(grace_period=2, reduction_factor=2)
    assert spec.asha.rungs(8) == (2, (2, 4))
    assert AshaSettings().rungs(150) == (6, (6, 18, 54))  # grace: epochs / 3^3
    assert SweepSpec.parse("strategies: [keep]").asha is None
    for bad, message in [
        ("scheduler: hyperband\nstrategies: [keep]", "scheduler must be one of fifo, asha"),
        ("scheduler: asha\nreduction_factor: 1\nstrategies: [keep]", "reduction_factor must be a whole number >= 2"),
        ("grace_period: 3\nstrategies: [keep]", "apply to `scheduler: asha`"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            SweepSpec.parse(bad)


def test_asha_stops_hopeless_trials_early_and_keeps_the_grids_winner(tiny_store: str) -> None:
    store = Store.open(tiny_store)
    fifo = ASHA.replace("scheduler: asha", "scheduler: fifo").replace("grace_period: 2\nreduction_factor: 2\n", "")
    grid = run_sweep(store, LocalExecutor(), SweepSpec.parse(fifo))
    assert grid.finished == 4 and grid.stopped == 0
    result = run_sweep(store, LocalExecutor(), SweepSpec.parse(ASHA))
    stopped = {r["params"]: r for r in store.trial_records(result.sweep_id).values() if "stopped_epochs" in r}
    # Both learning rates too small to learn stop at the first rung: 2 of their 8 epochs.
    assert {json.loads(p)["learning_rate"] for p in stopped} >= {0.00001, 0.000003}
    assert all(r["stopped_epochs"] < 8 for r in stopped.values())
    assert result.stopped == len(stopped) and result.finished == 4 - len(stopped)
    assert summarize(result.table.to_pylist())[0]["params"] == summarize(grid.table.to_pylist())[0]["params"]
    # A finished trial reported its holdout score every 2 epochs.
    curve = json.loads(result.table.column("curve")[0].as_py())
    assert [e for e, _ in curve] == [2, 4, 6, 8]
    report = (Path(result.folder) / "report.md").read_text()
    assert f"Stopped early by ASHA: {len(stopped)} trial(s)" in report and "after 2 epochs" in report
    # Resuming the finished sweep reruns nothing, stopped trials included.
    kept = {p.name: p.read_bytes() for p in (Path(result.folder) / "trials").iterdir()}
    again = run_sweep(store, LocalExecutor(), resume=result.sweep_id)
    assert again.stopped == result.stopped
    assert {p.name: p.read_bytes() for p in (Path(result.folder) / "trials").iterdir()} == kept


def test_tpe_proposes_from_the_scores_it_is_told() -> None:
    """Told how good each learning rate was (best at 0.01), TPE's later proposals lie near it
    (its first ones are random: Optuna's start-up trials)."""
    from continual_trainer.search import Tpe

    tpe = Tpe({"learning_rate": {"loguniform": [0.00001, 1.0]}, "epochs": 5}, seed=0, name="test")
    distance = []
    for _ in range(40):
        ticket, params = tpe.ask()
        assert params["epochs"] == 5  # plain values stay
        distance.append(abs(np.log10(params["learning_rate"]) + 2))
        tpe.tell(ticket, -distance[-1])
    # Random proposals over [1e-5, 1] lie a median 1.4 decades away (0.6 or nearer: 24 %).
    assert np.median(distance[-20:]) < 0.6


TPE = """
search: tpe
num_samples: 3
strategies:
  - finetune_new:
      learning_rate: {loguniform: [0.001, 0.1]}
params: {epochs: 2}
seeds: [0, 1]
"""


def test_a_tpe_search_runs_each_configuration_on_every_seed_and_resumes(tiny_store: str) -> None:
    spec = SweepSpec.parse(TPE)
    assert spec.trials == () and spec.planned == 3 * 2
    store = Store.open(tiny_store)
    result = run_sweep(store, LocalExecutor(), spec)
    assert result.finished == result.trials == 6 and not result.failures
    rows = result.table.to_pylist()
    assert len({r["params"] for r in rows}) == 3
    assert sorted(r["seed"] for r in rows) == [0, 0, 0, 1, 1, 1]
    # A lost trial is rerun on resume; the searcher is told the others and proposes nothing new.
    trials = Path(result.folder) / "trials"
    lost = sorted(trials.iterdir())[0]
    lost.unlink()
    again = run_sweep(store, LocalExecutor(), resume=result.sweep_id)
    assert again.finished == 6 and lost.exists()
    assert {r["params"] for r in again.table.to_pylist()} == {r["params"] for r in rows}


def test_tpe_on_a_space_smaller_than_num_samples_runs_what_the_space_holds(tiny_store: str) -> None:
    """`keep` has one configuration and a two-value list two: asked for 5 of each, TPE runs 1 + 2
    (it looped forever proposing `keep` again)."""
    spec = SweepSpec.parse(
        "search: tpe\nnum_samples: 5\nstrategies:\n  - keep\n  - finetune_new:\n"
        "      weighting: [none, recency]\nparams: {epochs: 1}\n"
    )
    result = run_sweep(Store.open(tiny_store), LocalExecutor(), spec)
    assert result.finished == result.trials == 3
    assert sorted(result.table.column("strategy").to_pylist()) == ["finetune_new", "finetune_new", "keep"]


def test_a_sweep_result_reads_as_a_sentence_in_python(tiny_store: str, tmp_path: Path) -> None:
    from continual_trainer.api import open_store

    (tmp_path / "s.yaml").write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    result = open_store(tiny_store).sweep(str(tmp_path / "s.yaml"))
    text = repr(result)
    assert text.startswith(f"SweepResult({result.sweep_id}: 2 of 2 trial(s) finished, 0 failed")
    assert "best " in text and "pyarrow" not in text and "\n" not in text
