"""The prediction log `ctrain serve` keeps, delayed labels joined to it (`ctrain label`), and
shadow candidates judged on them."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.api import open_store
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.predlog import KEY, PREDICTION, SHADOW_PREDICTION, VERSION, Logged, PredictionLog, read_log
from continual_trainer.serve.served import Served
from tests.conftest import make_table


def _rows(n: int, seed: int, first_id: int = 0) -> tuple[pa.Table, pa.Table]:
    """(rows to serve, with an `id` column; their labels, keyed by id)."""
    table = make_table(n=n, seed=seed)
    ids = pa.array([f"r{first_id + i}" for i in range(n)])
    return table.drop(["y"]).append_column("id", ids), pa.table({"id": ids, "y": table.column("y")})


def _logged(store: Store, rows: pa.Table, request: str = "r") -> Logged:
    """What serve hands the log for `rows` (keyed by their `id`), all predicted class 0."""
    typed = store.schema.typed_rows(store.schema.conform(rows, "rows"))
    n = rows.num_rows
    return Logged(typed, n, rows.column("id").to_pylist(), request, time.time(), "v", np.zeros(n, np.int64))


def _serve(served: Served, rows: pa.Table, per_request: int = 10) -> list[dict]:
    return [served.predict(rows.slice(i, per_request), served.current) for i in range(0, rows.num_rows, per_request)]


def test_every_answered_row_is_logged_with_its_key_version_and_prediction(tiny_store: str) -> None:
    served = Served(tiny_store, id_column="id")
    served.start()
    rows, _ = _rows(25, seed=4)
    answers = _serve(served, rows)
    anonymous = served.predict(rows.drop(["id"]).slice(0, 3), served.current, request="req-7")
    served.stop()  # writes what waits
    assert anonymous["ids"] == ["req-7-0", "req-7-1", "req-7-2"] and anonymous["request_id"] == "req-7"
    logged = read_log(Store.open(tiny_store))
    assert logged is not None and logged.num_rows == 28
    assert logged.column(KEY).to_pylist() == [*rows.column("id").to_pylist(), *anonymous["ids"]]
    assert set(logged.column(VERSION).to_pylist()) == {served.current.version}
    assert logged.column(PREDICTION).to_pylist() == [p for a in (*answers, anonymous) for p in a["predictions"]]
    for name in ("f0", "f4"):  # the features as served
        assert logged.column(name).to_pylist()[:25] == rows.column(name).to_pylist()


def test_log_sample_keeps_a_fraction_and_zero_keeps_none(tiny_store: str) -> None:
    served = Served(tiny_store, log_sample=0.0)
    served.start()
    _serve(served, _rows(30, seed=4)[0])
    served.stop()
    assert served.log is None and read_log(Store.open(tiny_store)) is None
    sampled = PredictionLog(Store.open(tiny_store), Store.open(tiny_store).schema, sample=0.25)
    sampled.add(_logged(Store.open(tiny_store), _rows(2000, seed=5)[0]))
    sampled.close()
    assert 350 < sampled.logged < 650  # 500 expected; a binomial draw with sd ~19


def test_a_full_queue_drops_and_counts_rows_and_an_unwritable_store_fails_them_without_blocking(
    tiny_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.open(tiny_store)
    item = _logged(store, _rows(6, seed=4)[0])
    full = PredictionLog(store, store.schema, max_queued=10, roll_seconds=3600)
    full._taken -= 10  # the writer is held up: ten rows still wait in the queue
    full.add(item)
    full._taken += 10
    full.add(item)
    full.close()
    assert (full.logged, full.dropped) == (6, 6)

    def refuse(data: bytes) -> str:
        raise UserError(f"{store.display}: cannot write predictions/log/x.parquet (No space left on device)")

    monkeypatch.setattr(store, "write_prediction_log", refuse)
    broken = PredictionLog(store, store.schema)
    start = time.perf_counter()
    broken.add(item)
    assert time.perf_counter() - start < 1.0
    broken.close()
    assert (broken.logged, broken.failed) == (0, 6)


def test_labels_join_the_log_into_a_batch_that_records_where_it_came_from(tiny_store: str, tmp_path: Path) -> None:
    served = Served(tiny_store, id_column="id")
    served.start()
    rows, labels = _rows(40, seed=6)
    answers = _serve(served, rows)
    served.stop()
    version = served.current.version
    # 30 known labels, one repeated, two unknown keys
    arrived = pa.concat_tables([labels.slice(0, 30), labels.slice(0, 1), pa.table({"id": ["x1", "x2"], "y": [0, 1]})])
    pq.write_table(arrived, tmp_path / "labels.parquet")
    store = open_store(tiny_store)
    before = len(store.batches())
    r = store.label(str(tmp_path / "labels.parquet"), key="id")
    assert (r["labels"], r["matched"], r["duplicated"], r["unknown"], r["late"]) == (33, 30, 1, 2, 0)
    assert r["added"] and r["versions"] == [version] and len(store.batches()) == before + 1
    predicted = [p for a in answers for p in a["predictions"]][:30]
    truth = labels.column("y").to_pylist()[:30]
    expected = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert r["live"][version] == {"rows": 30, "accuracy": pytest.approx(expected, abs=1e-6)}
    s = Store.open(tiny_store)
    batch = pq.read_table(io.BytesIO(s.read_batch(r["batch"])))
    assert batch.column_names == [*s.schema.features, "y"]
    assert batch.column("f2").to_pylist() == rows.column("f2").to_pylist()[:30]
    assert batch.column("y").to_pylist() == truth
    origin = s.batch_info(r["batch"])["origin"]
    assert origin["kind"] == "prediction-log" and origin["versions"] == [version] and origin["from"] <= origin["to"]
    again = store.label(str(tmp_path / "labels.parquet"), key="id", late_after=0.0)
    assert (again["matched"], again["duplicated"], again["batch"]) == (0, 31, None)
    late = store.label(labels.slice(30, 10), key="id", late_after=0.0)  # an Arrow table; labels after 0 s are late
    assert (late["matched"], late["late"]) == (10, 10)
    page = store.write_report(str(tmp_path / "report"))
    text = (Path(page["page"]).parent / "report.md").read_text()
    assert (
        f"| {version} | served | accuracy {(expected * 30 + late['live'][version]['accuracy'] * 10) / 40:.3f} | 40 |"
        in text
    )


def test_a_shadow_scores_every_request_and_is_promoted_once_labels_show_it_better(tiny_store: str) -> None:
    """The labels are made to favour the shadow where the two disagree (the true label elsewhere):
    it must be promoted, and only once enough rows are labelled (tests/continual_trainer/test_gate.py
    covers worse and tied shadows)."""
    store = open_store(tiny_store)
    candidate = store.update("fresh_new", epochs=3, promote="never").version
    served = Served(tiny_store, id_column="id", shadow=candidate)
    served.start()
    rows, labels = _rows(60, seed=7)
    _serve(served, rows)
    served.stop()
    assert served.shadow_rows == 60 and 0 <= served.shadow_agree <= 60
    logged = read_log(Store.open(tiny_store))
    shadow_predictions = logged.column(SHADOW_PREDICTION).to_pylist()
    assert None not in shadow_predictions and len(shadow_predictions) == 60
    answered = logged.column(PREDICTION).to_pylist()
    assert any(p != q for p, q in zip(shadow_predictions, answered, strict=True)), "the premise: they disagree"
    truth = [
        s if s != a else t for s, a, t in zip(shadow_predictions, answered, labels.column("y").to_pylist(), strict=True)
    ]
    labels = pa.table({"id": labels.column("id"), "y": pa.array(truth, pa.int64())})
    shadow_right = sum(p == t for p, t in zip(shadow_predictions, truth, strict=True))
    waiting = store.label(labels.slice(0, 20), promote="auto", min_shadow_rows=50)
    assert waiting["promoted"] is None  # 20 labelled rows: not enough
    r = store.label(labels.slice(20, 40), promote="auto", min_shadow_rows=50)
    history = {h["version"]: h for h in store.versions()}
    assert history[candidate]["live"]["shadow"]["rows"] == 60
    assert history[candidate]["live"]["shadow"]["accuracy"] == pytest.approx(shadow_right / 60, abs=1e-6)
    agree = sum(p == q for p, q in zip(shadow_predictions, answered, strict=True))
    assert history[candidate]["live"]["shadow"]["agreement"] == {"rows": 60, "accuracy": pytest.approx(agree / 60)}
    assert r["promoted"] == candidate and store.current == candidate


def test_label_through_the_cli_reports_counts_and_mistakes_in_one_line(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from continual_trainer.cli import main

    served = Served(tiny_store, id_column="id")
    served.start()
    rows, labels = _rows(12, seed=8)
    _serve(served, rows)
    served.stop()
    pq.write_table(labels.rename_columns(["key", "truth"]), tmp_path / "l.parquet")
    given = ["label", "--store", tiny_store, "--data", str(tmp_path / "l.parquet")]
    assert main([*given, "--key", "key", "--label", "truth", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["matched"] == 12 and out["batch"]
    assert main(given) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'id' (--key)" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main([*given, "--key", "key", "--late-after", "soon"])
    assert exit_.value.code == 2 and "not a duration" in capsys.readouterr().err


def test_a_version_that_loads_but_cannot_score_is_refused_at_warm_up(
    tiny_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import continual_trainer.serve.served as serving
    from continual_trainer.trainer.candidate import Candidate
    from continual_trainer.trainer.light import DenseStack

    store = open_store(tiny_store)
    first = store.current
    bad = store.update("finetune_new", epochs=2, promote="never").version
    real = serving.stored_candidate

    class CannotScore(DenseStack):
        def output(self, x: dict) -> np.ndarray:
            raise ValueError("input shape mismatch")

    member = CannotScore("broken", None, None, ((np.zeros((5, 1), np.float32), None, "sigmoid"),))

    def stored(s: Store, version: str):
        if version == bad:
            return SimpleNamespace(for_scoring=lambda: Candidate((member,), (1.0,)))
        return real(s, version)

    monkeypatch.setattr(serving, "stored_candidate", stored)
    served = Served(tiny_store, log_sample=0)
    served.start()
    store.promote(bad)
    assert served.refresh() is False
    assert served.current.version == first and "input shape mismatch" in served.refused[bad]
    served.stop()


def test_served_traffic_that_moved_fires_the_features_trigger_without_labels(
    tiny_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from continual_trainer.cli import main

    store = open_store(tiny_store)
    with pytest.raises(UserError, match="no served rows"):
        store.drift(served=True)
    served = Served(tiny_store)
    served.start()
    like_training = make_table(seed=0).drop(["y"])  # init's rows: the distribution the model learned
    _serve(served, like_training, per_request=40)
    served.stop()
    quiet = store.drift(served=True)
    assert quiet["rows"] == 120 and not quiet["fire"] and not quiet["features"]["fire"], quiet
    time.sleep(1.1)
    served = Served(tiny_store)
    served.start()
    _serve(served, make_table(seed=0, shift=2.0).drop(["y"]), per_request=40)
    served.stop()
    moved = store.drift(served=True, since=1.0)  # the last second: the moved rows only
    assert moved["rows"] == 120 and moved["fire"] and "most shifted" in moved["features"]["detail"]
    assert "fires below 0.005" in moved["features"]["detail"]  # the threshold beside the statistic
    assert main(["drift", "--store", tiny_store, "--served", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["rows"] == 240
    assert main(["drift", "--store", tiny_store, "--served", "--trigger", "performance"]) == 2
    assert "needs labels" in capsys.readouterr().err


def test_a_stream_takes_label_files_from_its_inbox_and_learns_the_joined_rows(tiny_store: str, tmp_path: Path) -> None:
    served = Served(tiny_store, id_column="id")
    served.start()
    rows, labels = _rows(40, seed=9)
    _serve(served, rows)
    served.stop()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(labels, inbox / "a-labels.parquet")
    pq.write_table(pa.table({"id": ["nobody"], "y": [1]}), inbox / "b-unknown-labels.parquet")
    store = open_store(tiny_store)
    events = store.stream(str(inbox), policy="finetune_new", trigger="always", label_key="id", epochs=2)
    first, second = events
    assert first["status"] in ("updated", "kept") and first["rows"] == 40
    origin = Store.open(tiny_store).batch_info(first["batch"])["origin"]
    assert origin["kind"] == "prediction-log" and origin["labels"] == "a-labels.parquet"
    assert second["status"] == "rejected" and "none of its 1 label(s) matched" in second["reason"]
    learned = Store.open(tiny_store).manifest(first["version"]).batches_seen
    assert first["batch"] in learned


def test_a_stream_watching_served_traffic_judges_each_log_file_once_and_fires_when_it_moved(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from continual_trainer.cli import main

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    argv = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--watch-served"]
    argv += ["--trigger", "performance,features"]

    def serve_rows(table: pa.Table) -> None:
        served = Served(tiny_store)
        served.start()
        _serve(served, pa.concat_tables([table] * 5), per_request=100)  # 600 rows: enough to judge
        served.stop()

    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["served"] == []  # nothing served yet
    serve_rows(make_table(seed=0).drop(["y"]))  # what the model learned
    assert main([*argv, "--json"]) == 0
    (steady,) = json.loads(capsys.readouterr().out.splitlines()[-1])["served"]
    assert steady["rows"] == 600 and steady["fire"] is False and "performance" not in steady
    assert main([*argv, "--json"]) == 0  # the same files are not judged again
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["served"] == []
    serve_rows(make_table(seed=0, shift=2.0).drop(["y"]))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "served traffic (600 rows" in out and "drifted from what the current version learned" in out
    assert out.strip().splitlines()[-1].endswith(f"report --store {tiny_store}  (the stream on one page)")
    assert [e["fire"] for e in Store.open(tiny_store).events("served-drift")] == [False, True]
