"""One executor: every command that trains or scores hands its work to it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import continual_trainer as ct
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.demo import run_demo
from continual_trainer.executor import EXECUTORS, Job, LocalExecutor, deferred_executor, executor_name, make_executor
from continual_trainer.promotion import Promotion
from continual_trainer.scoring import predict
from continual_trainer.stream import Policy, run_stream
from continual_trainer.sweep import SweepSpec, run_sweep
from continual_trainer.updates import update
from tests.conftest import make_table


class Recording(LocalExecutor):
    """The local executor, noting which of its operations each command used."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def run(self, *args, **kwargs):
        self.calls.append("run")
        return super().run(*args, **kwargs)

    def sweep(self, *args, **kwargs):
        self.calls.append("sweep")
        return super().sweep(*args, **kwargs)

    def score(self, *args, **kwargs):
        self.calls.append("score")
        return super().score(*args, **kwargs)


@pytest.mark.slow
def test_update_predict_sweep_stream_and_demo_go_through_the_executor(tiny_store: str, tmp_path: Path) -> None:
    used = {}
    ex = Recording()
    update(Store.open(tiny_store), "finetune_new", {"epochs": "2"}, promotion=Promotion("never"), executor=ex)
    used["update"], ex.calls = ex.calls, []

    score = tmp_path / "score.parquet"
    pq.write_table(make_table(seed=5).drop_columns(["y"]), score)
    predict(tiny_store, str(score), str(tmp_path / "out.parquet"), executor=ex)
    used["predict"], ex.calls = ex.calls, []

    run_sweep(Store.open(tiny_store), ex, SweepSpec.parse("strategies: [keep]"))
    used["sweep"], ex.calls = ex.calls, []

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=6, shift=0.4), inbox / "f.parquet")
    run_stream(tiny_store, str(inbox), Policy("finetune_new", values={"epochs": "2"}), ex, once=True)
    used["stream"], ex.calls = ex.calls, []

    run_demo(ex, str(tmp_path / "demo"))
    used["demo"] = ex.calls
    first = {command: calls[0] for command, calls in used.items()}  # the local sweep runs its trials with `run`
    assert first == {"update": "run", "predict": "score", "sweep": "sweep", "stream": "run", "demo": "run"}


def test_data_parallel_work_needs_ray(tiny_store: str) -> None:
    with pytest.raises(UserError, match="runs on Ray actors"):
        update(Store.open(tiny_store), "finetune_new", {"epochs": "1"}, executor=LocalExecutor(), actors=2)


def test_without_ray_address_work_stays_in_this_process(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert executor_name() == executor_name(False) == "local" and executor_name(True) == "ray"
    assert isinstance(make_executor(), LocalExecutor)
    assert isinstance(make_executor("local"), LocalExecutor)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert executor_name() == "ray" and executor_name(False) == "local"


def test_executors_are_chosen_by_name_from_one_registry(monkeypatch) -> None:
    """A new executor is one registration; an unknown name is the user's mistake, naming the choices."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    made: list[int] = []
    EXECUTORS.add("recording", lambda actors: made.append(actors) or Recording())
    try:
        assert isinstance(make_executor("recording", actors=3), Recording) and made == [3]
        deferred = deferred_executor("recording", actors=2)
        assert made == [3] and "recording" in deferred.where  # nothing made until work needs it
        with pytest.raises(UserError, match="unknown executor; choose one of local, ray, recording"):
            make_executor("slurm")
    finally:
        EXECUTORS.remove("recording")


def test_an_executor_is_named_from_the_api_and_the_cli(tiny_store: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """`executor="NAME"` in the API and `--executor NAME` on the CLI reach any registered
    executor; --ray and --local stay shorthands; a name nobody registered is one line, exit 2."""
    from continual_trainer.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    made: list[Recording] = []
    EXECUTORS.add("recording", lambda actors: made.append(Recording()) or made[-1])
    try:
        store = ct.open_store(tiny_store)
        store.update("finetune_new", executor="recording", promote="never", epochs=1)
        assert made[-1].calls == ["run"]
        score = tmp_path / "score.parquet"
        pq.write_table(make_table(n=20, seed=4).drop_columns(["y"]), score)
        out = str(tmp_path / "out.parquet")
        assert (
            main(["predict", "--store", tiny_store, "--data", str(score), "--out", out, "--executor", "recording"]) == 0
        )
        assert made[-1].calls == ["score"]
        argv = ["update", "--store", tiny_store, "--strategy", "keep", "--promote", "never", "--executor", "recording"]
        assert main(argv) == 0 and made[-1].calls == ["run"] and len(made) == 3
        capsys.readouterr()
        assert main([*argv[:-1], "slurm"]) == 2
        err = capsys.readouterr().err.strip()
        assert "unknown executor; choose one of local, ray, recording" in err and len(err.splitlines()) == 1
        with pytest.raises(SystemExit) as both:  # one place to say where: --executor or a shorthand
            main([*argv, "--ray"])
        assert both.value.code == 2
        assert executor_name(name="local") == "local" and executor_name(True, name="ray") == "ray"
        with pytest.raises(UserError, match="--ray asks for the ray executor"):
            executor_name(True, name="recording")
    finally:
        EXECUTORS.remove("recording")


@pytest.fixture
def side_by_side():
    """Two strategies of a user's: one waits until another job runs beside it, one works
    (reporting progress, as the training loop does) until it is stopped."""
    import threading

    from continual_trainer import strategies
    from continual_trainer.strategies import registry
    from continual_trainer.trainer.progress import Stopped, report

    met = threading.Barrier(2, timeout=60)
    seen: dict[str, object] = {}

    def meet(inputs, params):
        met.wait()  # both jobs must be running at once to pass
        return inputs.current

    def work(inputs, params):
        try:
            for i in range(20_000):  # bounded: 20 s or more if nothing stops it
                report("steps", i, 20_000)
                threading.Event().wait(0.001)
        except Stopped:
            seen["stopped"] = True
            raise
        return inputs.current

    keep = strategies.get("keep").params
    strategies.register("meet", keep, "test: waits for a job beside it")(meet)
    strategies.register("work", keep, "test: works until stopped")(work)
    yield seen
    registry._REGISTRY.remove("meet")
    registry._REGISTRY.remove("work")


def _jobs(*names: str) -> list[Job]:
    from continual_trainer import strategies

    return [Job(strategies.get(n), strategies.get(n).make_params({}), 0) for n in names]


def test_local_jobs_run_side_by_side_with_the_results_they_have_alone(tiny_store: str, side_by_side) -> None:
    from continual_trainer import strategies
    from continual_trainer.updatedata import load_update_data
    from continual_trainer.versions import stored_candidate

    store = Store.open(tiny_store)
    pq.write_table(make_table(n=120, seed=5), Path(tiny_store).parent / "more.parquet")
    ct.open_store(tiny_store).ingest(str(Path(tiny_store).parent / "more.parquet"))
    data, current = load_update_data(store), None
    current = stored_candidate(store, data.parent)
    met = LocalExecutor(workers=2).run(data, current, _jobs("meet", "meet"))
    assert [type(o).__name__ for o in met] == ["TrialResult"] * 2
    jobs = [
        Job(strategies.get(n), strategies.get(n).make_params({"epochs": 30}), s)
        for n in ("finetune_all", "fresh_new")
        for s in (0, 1)
    ]
    done: list[int] = []
    alone = LocalExecutor(workers=1).run(data, current, jobs)
    beside = LocalExecutor(workers=2).run(data, current, jobs, on_done=lambda i, _: done.append(i))
    assert sorted(done) == [0, 1, 2, 3]
    assert [o.metrics for o in beside] == [o.metrics for o in alone]


def test_an_interrupt_stops_the_jobs_running_beside_it(tiny_store: str, side_by_side) -> None:
    from continual_trainer.trainer.progress import STOP
    from continual_trainer.updatedata import load_update_data
    from continual_trainer.versions import stored_candidate

    store = Store.open(tiny_store)
    pq.write_table(make_table(n=120, seed=5), Path(tiny_store).parent / "more.parquet")
    ct.open_store(tiny_store).ingest(str(Path(tiny_store).parent / "more.parquet"))
    data = load_update_data(store)

    def interrupt(i: int, outcome) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(workers=2).run(
            data, stored_candidate(store, data.parent), _jobs("keep", "work"), on_done=interrupt
        )
    assert side_by_side == {"stopped": True} and not STOP.is_set()
