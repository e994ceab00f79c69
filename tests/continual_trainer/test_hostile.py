"""The hostile probe's classes of faults: races, output paths, stuck inits, poison values, signals, odd input.

Each test checks a rule for its whole class (see issue 12), through the CLI.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table, snapshot
from tests.continual_trainer.test_reliability import check_store, leftovers

CTRAIN = [sys.executable, "-m", "continual_trainer"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- 1. races ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_ingests_of_the_same_bytes_keep_one_copy(tiny_store: str, tmp_path: Path) -> None:
    """Forced, not hoped for: every ingest waits, once it found the bytes new, at the failpoint
    `ingest.after-check` until all four are started, then all go on together. Without the batch
    lock all four pass the check and race for one folder (checked: removing `with
    self.lock("batches")` from `add_batch` makes this test fail)."""
    path = tmp_path / "b.parquet"
    pq.write_table(make_table(seed=42), path)
    for round_ in range(2):
        gate = tmp_path / f"go-{round_}"
        env = {**os.environ, "CTRAIN_FAILPOINT": f"ingest.after-check=wait:{gate}"}
        procs = [
            subprocess.Popen([*CTRAIN, "ingest", "--store", tiny_store, str(path)], stderr=subprocess.PIPE, env=env)
            for _ in range(4)
        ]
        time.sleep(4)  # every one started and waits: at the point, or for the lock held by one there
        gate.touch()
        assert all(p.wait(timeout=120) == 0 for p in procs), [p.stderr.read() for p in procs]
    store = Store.open(tiny_store)
    digests = [store.batch_info(b)["sha256"] for b in store.batch_ids()]
    assert len(digests) == len(set(digests)) == 3  # old, new and b: one copy


@pytest.mark.slow
def test_store_opens_in_a_tight_loop_never_break_ingests_or_updates(tiny_store: str, tmp_path: Path) -> None:
    files = []
    for i in range(6):
        files.append(tmp_path / f"f{i}.parquet")
        pq.write_table(make_table(seed=300 + i), files[-1])
    stop = time.monotonic() + 600
    opened = 0

    def open_loop() -> None:
        nonlocal opened
        while time.monotonic() < stop:
            Store.open(tiny_store).batch_ids()
            opened += 1

    writers = [[*CTRAIN, "ingest", "--store", tiny_store, str(f)] for f in files]
    writers += [[*CTRAIN, "update", "--store", tiny_store, "--strategy", "fresh_all", "--set", "epochs=2"]] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        openers = [pool.submit(open_loop) for _ in range(2)]
        results = [subprocess.run(w, capture_output=True, text=True, timeout=300) for w in writers[:3]]
        procs = [subprocess.Popen(w, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for w in writers[3:]]
        results += [subprocess.CompletedProcess(p.args, p.wait(timeout=300), "", p.stderr.read()) for p in procs]
        stop = time.monotonic()
        for f in openers:
            f.result()
    assert [r.returncode for r in results] == [0] * len(writers), [r.stderr for r in results if r.returncode]
    assert opened > 10
    check_store(tiny_store)
    assert len(Store.open(tiny_store).batch_ids()) == 2 + len(files)


@pytest.mark.slow
def test_two_streams_on_one_inbox_process_each_file_once(tiny_store: str, tmp_path: Path) -> None:
    """Forced: both streams list the inbox and wait at the failpoint `stream.before-read` until
    both are there, then read the first file together. Without the claim a stream takes before it
    works on a file, both process it (checked: `claim_stream_file` returning True always makes this
    test fail)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(4):
        pq.write_table(make_table(seed=500 + i, shift=0.1 * i), inbox / f"f{i}.parquet")
    argv = [*CTRAIN, "stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "finetune_new"]
    gate = tmp_path / "go"
    env = {**os.environ, "CTRAIN_FAILPOINT": f"stream.before-read=wait:{gate}"}
    procs = [
        subprocess.Popen([*argv, "--set", "epochs=30", "--local"], stderr=subprocess.PIPE, env=env) for _ in range(2)
    ]
    time.sleep(4)
    gate.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    events = Store.open(tiny_store).stream_events()
    assert sorted(e["file"] for e in events) == [f"f{i}.parquet" for i in range(4)]
    check_store(tiny_store)


# -- 2. outputs inside a store ---------------------------------------------------------------------


def test_no_output_inside_the_store_symlinks_included(tiny_store: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.parquet"
    pq.write_table(make_table(seed=3).drop_columns(["y"]), src)
    link = tmp_path / "link"
    link.symlink_to(Path(tiny_store) / "models")
    before = snapshot(tiny_store)
    for out in (Path(tiny_store) / "CURRENT", Path(tiny_store) / "new.parquet", link / "x.parquet"):
        code, _, err = run(capsys, "predict", "--store", tiny_store, "--data", str(src), "--out", str(out))
        assert code == 2 and one_line(err) and "is inside the store" in err, err
    alias = tmp_path / "alias.parquet"  # the input under another name
    alias.symlink_to(src)
    data = src.read_bytes()
    code, _, err = run(capsys, "predict", "--store", tiny_store, "--data", str(src), "--out", str(alias))
    assert code == 2 and "is the input file" in err and src.read_bytes() == data
    assert snapshot(tiny_store) == before
    assert run(capsys, "history", "--store", tiny_store)[0] == 0


# -- 4. a failed init leaves nothing, or a store init can finish --------------------------------------


def test_a_failed_init_leaves_no_store_and_a_half_one_is_finished(tmp_path: Path, write_parquet, capsys) -> None:
    data = write_parquet(make_table(seed=0), "old.parquet")
    store = str(tmp_path / "s")
    for bad in (["--learning-rate", "inf"], ["--learning-rate", "nan"], ["--epochs", "0"]):
        code, _, err = run(capsys, "init", "--store", store, "--data", data, "--label", "y", *bad)
        assert code == 2 and one_line(err) and not os.path.exists(store), err
    # Training that diverges: nothing is written.
    code, _, err = run(capsys, "init", "--store", store, "--data", data, "--label", "y", "--learning-rate", "1e30")
    assert code == 2 and one_line(err) and "training diverged" in err and not os.path.exists(store), err
    # A store an init left before its first version (as a kill at that moment would): init finishes it.
    from continual_trainer.data.parquet import read_bytes
    from continual_trainer.data.schema import Schema
    from continual_trainer.data.storage import StoreMeta

    half = Store.create(store, StoreMeta(Schema(tuple(f"f{i}" for i in range(5)), "y", (0, 1)), "mlp:8"))
    half.add_batch(read_bytes(data), {"source": "old.parquet", "rows": 120})
    # The killed init's claim names a process that is gone (a live one's refuses: test_races.py).
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = json.loads((Path(store) / "init.claim").read_text())
    (Path(store) / "init.claim").write_text(json.dumps({**claim, "pid": int(gone.stdout)}))
    assert run(capsys, "update", "--store", store, "--strategy", "fresh_all")[0] == 2  # "no current model"
    code, out, err = run(capsys, "init", "--store", store, "--data", data, "--label", "y", "--epochs", "3", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["promoted"]
    assert len(Store.open(store).batch_ids()) == 1
    check_store(store)
    other = write_parquet(make_table(seed=9), "other.parquet")
    code, _, err = run(capsys, "init", "--store", store, "--data", other, "--label", "y")
    assert code == 2 and "a store already exists here" in err


# -- 5. poison values ----------------------------------------------------------------------------


def test_values_are_checked_as_the_model_computes_them(tiny_store: str, write_parquet, tmp_path: Path, capsys) -> None:
    big = make_table(seed=5)
    f1 = big.column("f1").to_numpy().copy()
    f1[[3, 7]] = 1e39  # finite as float64, infinite as float32
    poisoned = big.set_column(1, "f1", pa.array(f1))
    before = snapshot(tiny_store)
    code, _, err = run(capsys, "ingest", "--store", tiny_store, write_parquet(poisoned, "p.parquet"))
    assert code == 2 and one_line(err) and "p.parquet" in err and "'f1' has 2 value(s) beyond float32" in err
    assert snapshot(tiny_store) == before
    score = write_parquet(poisoned.drop_columns(["y"]), "score.parquet")
    code, _, err = run(capsys, "predict", "--store", tiny_store, "--data", score, "--out", str(tmp_path / "o.parquet"))
    assert code == 2 and one_line(err) and "'f1' has 2 value(s) beyond float32" in err
    assert not (tmp_path / "o.parquet").exists()
    code, _, err = run(capsys, "update", "--store", tiny_store, "--strategy", "fresh_new", "--set", "learning_rate=inf")
    assert code == 2 and one_line(err) and "learning_rate must be > 0 and finite" in err


def test_a_diverging_update_writes_nothing(tiny_store: str, write_parquet, capsys) -> None:
    # 9e14 passes ingest (under its 1e15 bound) and is far outside what the first batch's
    # statistics normalise; with a learning rate far too high the loss becomes NaN.
    poison = make_table(seed=8).set_column(0, "f0", pa.array(np.full(120, 9e14)))
    assert run(capsys, "ingest", "--store", tiny_store, write_parquet(poison, "poison.parquet"))[0] == 0
    before = snapshot(tiny_store)
    argv = ["update", "--store", tiny_store, "--strategy", "finetune_all", "--set", "epochs=3"]
    code, _, err = run(capsys, *argv, "--set", "learning_rate=1e25")
    assert code == 2 and one_line(err) and "training diverged" in err and "9e+14" in err, err
    assert snapshot(tiny_store) == before
    assert run(capsys, "history", "--store", tiny_store)[0] == 0


# -- 6. signals ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_commands_within_seconds_and_leave_nothing_half_written(
    sig: int, code: int, tiny_store: str, tmp_path: Path
) -> None:
    data = tmp_path / "big.parquet"
    pq.write_table(make_table(n=4000, seed=1), data)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(n=4000, seed=2, shift=0.3), inbox / "a.parquet")
    store_files = snapshot(tiny_store)
    commands = {
        "init": ["init", "--store", str(tmp_path / "new-store"), "--data", str(data), "--label", "y",
                 "--epochs", "100000"],
        "update": ["update", "--store", tiny_store, "--strategy", "fresh_all", "--set", "epochs=100000"],
        "stream": ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "fresh_all",
                   "--set", "epochs=100000", "--local"],
    }  # fmt: skip
    env = {**os.environ, "CTRAIN_STATUS_SECONDS": "0.2"}  # progress lines: the test sees training under way
    for name, argv in commands.items():
        err_path = tmp_path / f"{name}.err"
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen(
                [*CTRAIN, *argv],
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
                env=env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a shell's background job
            )
            deadline = time.monotonic() + 120
            while ": epochs " not in err_path.read_text():  # training has started: its progress is reported
                assert proc.poll() is None, f"{name} ended before the signal: {err_path.read_text()[-300:]}"
                assert time.monotonic() < deadline, f"{name} never reported training"
                time.sleep(0.1)
            sent = time.monotonic()
            proc.send_signal(sig)
            proc.communicate(timeout=60)
        progress = f"ctrain: {name}: "  # the status lines asked for above; the rest must be one line
        err = "\n".join(line for line in err_path.read_text().splitlines() if not line.startswith(progress))
        assert proc.returncode == code, (name, err[-500:])
        assert time.monotonic() - sent < 5, f"{name} took {time.monotonic() - sent:.1f} s to stop"
        assert one_line(err) and ("interrupted" if code == 130 else "terminated") in err, err
    assert not (tmp_path / "new-store").exists()
    store = Store.open(tiny_store)
    assert len(store.versions()) == 1 and store.stream_events() == []  # no version, no marker: redone next time
    check_store(tiny_store)
    assert set(snapshot(tiny_store)) - set(store_files) <= {
        p for p in snapshot(tiny_store) if p.startswith("batches/")
    }  # the stream's file was ingested (it is kept and learned next time); nothing else is new
    assert leftovers(tiny_store) == []


# -- 8-10. odd input ------------------------------------------------------------------------------


def test_predict_ignores_an_unusable_label_column_and_keeps_the_class_type(
    tiny_store: str, write_parquet, tmp_path: Path, capsys
) -> None:
    base = make_table(seed=4).drop_columns(["y"])
    cases = {
        "null": pa.nulls(base.num_rows),
        "strings": pa.array(["?"] * base.num_rows),
        "nan": pa.array(np.full(base.num_rows, np.nan)),
    }
    for name, label in cases.items():
        src = write_parquet(base.append_column("y", label), f"{name}.parquet")
        out = tmp_path / f"{name}-out.parquet"
        code, _, err = run(capsys, "predict", "--store", tiny_store, "--data", src, "--out", str(out))
        assert code == 0, (name, err)
        table = pq.read_table(out)
        assert str(table.column("y").to_pylist()) == str(pq.read_table(src).column("y").to_pylist())  # as it came
        assert table.schema.field("prediction").type == pa.int64()  # the store's class type, not the label's


def test_paths_from_the_user_never_leave_the_store(tiny_store: str, tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.parquet"
    pq.write_table(make_table(seed=3).drop_columns(["y"]), src)
    argv = ["predict", "--store", tiny_store, "--data", str(src), "--out", str(tmp_path / "o.parquet")]
    for version in ("../..", "../models", "a/b"):
        code, _, err = run(capsys, *argv, "--version", version)
        assert code == 2 and one_line(err) and "no model version" in err
    code, _, err = run(capsys, "sweep", "--store", tiny_store, "--resume", "../..", "--local")
    assert code == 2 and "no such sweep" in err
    for option in (["--seed", str(2**70)], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["update", "--store", tiny_store, "--strategy", "keep", *option])
        assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_features_named_like_outputs_and_labels_that_are_ids_are_refused_at_init(
    tmp_path: Path, write_parquet, capsys
) -> None:
    t = make_table(seed=1)
    clash = t.rename_columns(["prediction", *t.column_names[1:]])
    code, _, err = run(capsys, "init", "--store", str(tmp_path / "a"), "--data", write_parquet(clash), "--label", "y")
    assert code == 2 and one_line(err) and "may not be called 'prediction'" in err
    many = t.set_column(5, "y", pa.array(np.arange(t.num_rows)))  # an id, not a class
    src = write_parquet(many, "ids.parquet")
    code, _, err = run(capsys, "init", "--store", str(tmp_path / "b"), "--data", src, "--label", "y")
    assert code == 2 and one_line(err) and "120 distinct values in 120 rows" in err and "--task regression" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_duplicate_columns_and_a_directory_as_output_are_one_line(
    tiny_store: str, write_parquet, tmp_path: Path, capsys
) -> None:
    t = make_table(seed=2)
    dup = pa.table([*t.columns, t.column("f0")], names=[*t.column_names, "f0"])
    code, _, err = run(capsys, "ingest", "--store", tiny_store, write_parquet(dup, "dup.parquet"))
    assert code == 2 and one_line(err) and "column 'f0' appears 2 times" in err
    out_dir = tmp_path / "out-dir"
    out_dir.mkdir()
    src = write_parquet(t.drop_columns(["y"]), "x.parquet")
    code, _, err = run(capsys, "predict", "--store", tiny_store, "--data", src, "--out", str(out_dir))
    assert code == 2 and one_line(err) and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


@pytest.mark.slow
def test_a_file_size_limit_during_ingest_is_exit_2_and_leaves_nothing(tiny_store: str, tmp_path: Path) -> None:
    big = tmp_path / "big.parquet"
    pq.write_table(make_table(n=20000, seed=7), big)
    limit = big.stat().st_size // 2
    before = snapshot(tiny_store)
    proc = subprocess.run(
        [*CTRAIN, "ingest", "--store", tiny_store, str(big)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert proc.returncode == 2 and one_line(proc.stderr) and "cannot write" in proc.stderr, proc.stderr
    assert snapshot(tiny_store) == before
    assert leftovers(tiny_store) == []
