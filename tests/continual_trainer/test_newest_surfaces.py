"""Nothing lost, nothing stuck, on the newest surfaces: label files and inbox files that cannot be
used never wedge a stream, a failed `label` consumes nothing, `verify` sees the whole store, flags
are checked where they enter, and what a user wrote reaches the terminal escaped. Each test names
what broke before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.api import open_store
from continual_trainer.cli import main
from continual_trainer.data.errors import UserError, terminal_safe
from continual_trainer.data.storage import Store
from continual_trainer.serve.served import Served
from tests.conftest import make_table, snapshot


def _served(uri: str, n: int = 20, seed: int = 4, shadow: str | None = None) -> pa.Table:
    """Serve `n` rows keyed by `id` (r0, r1, ...) and return their labels."""
    table = make_table(n=n, seed=seed)
    ids = pa.array([f"r{i}" for i in range(n)])
    served = Served(uri, id_column="id", shadow=shadow)
    served.start()
    served.predict(table.drop(["y"]).append_column("id", ids), served.current)
    served.stop()
    return pa.table({"id": ids, "y": table.column("y")})


@pytest.mark.parametrize(
    "keys",
    [
        pa.array([[1], [2]], pa.list_(pa.int64())),
        pa.array([{"a": 1}, {"a": 2}]),
        pa.array([b"\xff\xfe", b"ok"], pa.binary()),
    ],
    ids=["list", "struct", "bytes"],
)
def test_a_label_file_whose_keys_are_unusable_is_exit_2_and_quarantined_by_a_stream(
    keys: pa.Array, tiny_store: str, tmp_path: Path, capsys
) -> None:
    """Before: `label` exited 1 ("unexpected ArrowNotImplementedError"), and a stream exited 1 on
    every start because the file was never set aside."""
    _served(tiny_store)
    pq.write_table(pa.table({"id": keys, "y": [0, 1]}), tmp_path / "bad.parquet")
    assert main(["label", "--store", tiny_store, "--data", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key column 'id'" in err[0], err
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.replace(tmp_path / "bad.parquet", inbox / "a-labels.parquet")
    pq.write_table(make_table(n=60, seed=7, shift=0.2), inbox / "b.parquet")
    argv = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--label-key", "id"]
    for _ in range(2):  # a second start goes past the file too
        assert main([*argv, "--policy", "keep", "--json"]) == 0
    events = [e for e in Store.open(tiny_store).stream_events() if e.get("file") == "a-labels.parquet"]
    assert [e["status"] for e in events] == ["rejected"] and "quarantined in" in events[0]["reason"]
    assert any(name == "a-labels.parquet" for name, _, _ in Store.open(tiny_store).quarantined())


def test_label_with_promote_auto_whose_shadow_is_gone_writes_nothing_and_a_retry_joins(tiny_store: str, capsys) -> None:
    """Before: the batch and the labelled keys were written, then exit 2; a retry matched nothing
    (every key counted as duplicated)."""
    import shutil

    store = open_store(tiny_store)
    shadow = store.update("finetune_new", epochs=2, promote="never").version
    labels = _served(tiny_store, shadow=shadow)
    member = next((Path(tiny_store) / "models" / shadow).glob("member-*.keras"))
    member.write_bytes(b"damaged")
    before = snapshot(tiny_store)
    with pytest.raises(UserError, match=f"shadow version {shadow} cannot be promoted.*nothing was written"):
        store.label(labels, promote="auto", min_shadow_rows=1)
    assert snapshot(tiny_store) == before
    shutil.rmtree(Path(tiny_store) / "models" / shadow)  # the shadow deleted outright: the same
    before = snapshot(tiny_store)
    with pytest.raises(UserError, match="nothing was written"):
        store.label(labels, promote="auto", min_shadow_rows=1)
    assert snapshot(tiny_store) == before
    again = store.label(labels)  # without promote: the rows join
    assert again["matched"] == 20 and again["duplicated"] == 0 and again["batch"]


def test_a_label_that_dies_before_its_commit_leaves_nothing_and_one_that_dies_after_is_finished_by_a_retry(
    tiny_store: str, tmp_path: Path
) -> None:
    labels = _served(tiny_store)
    pq.write_table(labels, tmp_path / "labels.parquet")
    argv = [sys.executable, "-m", "continual_trainer", "label", "--store", tiny_store, "--data",
            str(tmp_path / "labels.parquet"), "--json"]  # fmt: skip
    before = snapshot(tiny_store)
    env = {**os.environ, "CTRAIN_FAILPOINT": "label.before-commit"}
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 77
    unlocked = {k: v for k, v in snapshot(tiny_store).items() if not k.startswith("locks/")}
    assert unlocked == before  # but the dead process's lock, which the next label breaks
    env = {**os.environ, "CTRAIN_FAILPOINT": "write.after-rename"}  # the batch's first file in place, then killed
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 77
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["matched"] == 20
    assert Store.open(tiny_store).verify()[0] == []


def test_verify_sees_current_the_prediction_log_labelled_keys_and_retired_batches(tiny_store: str, capsys) -> None:
    """Before: a store whose CURRENT was deleted after promotions passed; CURRENT replaced by a
    folder printed only "OSError"; the log, labelled keys and retirements were never read."""
    labels = _served(tiny_store)
    store = open_store(tiny_store)
    store.label(labels)
    batch = store.batches()[0]["batch"]
    store.drop(batch, reason="bad rows")
    root = Path(tiny_store)
    assert main(["verify", "--store", tiny_store]) == 0
    capsys.readouterr()
    current = (root / "CURRENT").read_text().strip()
    (root / "CURRENT").unlink()
    next((root / "predictions" / "log").iterdir()).write_bytes(b"not parquet")
    (root / "predictions" / "labelled" / "000099-ffffffffffff.parquet").write_bytes(b"PAR1")
    next(root.glob("batches/*/retired.json")).write_text("[damaged")
    assert main(["verify", "--store", tiny_store]) == 1
    out = capsys.readouterr().out
    assert "CURRENT is missing, yet" in out and f"promote --store {tiny_store} {current}" in out
    assert "predictions/log/" in out and "not a readable Parquet file" in out
    assert "records labelled keys of a batch the store lacks" in out
    assert "retirement record is damaged" in out
    (root / "CURRENT").mkdir()
    assert main(["verify", "--store", tiny_store]) == 1
    captured = capsys.readouterr()
    assert "CURRENT cannot be read (" in captured.out and "is a directory" in captured.out
    assert "Traceback" not in captured.err


def test_promote_refuses_a_version_whose_files_fail_their_sha256(tiny_store: str, capsys) -> None:
    """Before: `promote` made a version with a corrupted member current."""
    store = open_store(tiny_store)
    version = store.update("finetune_new", epochs=2, promote="never").version
    member = next((Path(tiny_store) / "models" / version).glob("member-*.keras"))
    member.write_bytes(member.read_bytes()[:-4] + b"XXXX")
    current = store.current
    assert main(["promote", "--store", tiny_store, version]) == 2
    assert "fails its sha256 check" in capsys.readouterr().err
    assert Store.open(tiny_store).current() == current


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "--port", "99999"], "--port: '99999': must be"),
        (["serve", "--port", "0"], "--port: '0': must be"),
        (["serve", "--poll", "0"], "--poll: '0': must be"),
        (["serve", "--poll", "-1"], "--poll: '-1': must be"),
        (["serve", "--workers", "0"], "--workers: '0': must be"),
        (["drift", "--served", "--since", "1e308d"], "longer than 100 years"),
        (["label", "--data", "x.parquet", "--late-after", "1e308d"], "longer than 100 years"),
    ],
)
def test_flags_are_checked_where_they_enter(argv: list[str], words: str, tiny_store: str, capsys) -> None:
    """Before: `serve --port 99999` exited 1 (OverflowError), `--poll 0` spun a core, `drift --since
    1e308d` exited 1 "unexpected"."""
    with pytest.raises(SystemExit) as exit_:
        main([argv[0], "--store", tiny_store, *argv[1:]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_serve_options_are_checked_in_the_python_api_too(tiny_store: str) -> None:
    store = open_store(tiny_store)
    for options, words in (({"port": 99999}, "port=99999: a port is 1 to 65535"), ({"poll": 0}, "poll=0: at least")):
        with pytest.raises(UserError, match=words):
            store.serve(**options)


def test_a_sweep_with_a_huge_num_samples_is_refused_naming_the_cap(tiny_store: str, tmp_path: Path) -> None:
    """Before: it hung silently while drawing configurations."""
    (tmp_path / "s.yaml").write_text(
        "strategies: [finetune_new]\nsearch: random\nnum_samples: 1000000000\nparams:\n"
        "  finetune_new:\n    learning_rate: {loguniform: [0.001, 0.1]}\n"
    )
    start = time.monotonic()
    with pytest.raises(UserError, match="num_samples must be a whole number from 1 to 10,000"):
        open_store(tiny_store).sweep(str(tmp_path / "s.yaml"))
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_a_file_removed_from_the_inbox_mid_run_is_skipped_and_two_archiving_streams_share_one_inbox(
    tiny_store: str, tmp_path: Path
) -> None:
    """Before: a file gone between the listing and its read killed the stream (exit 1), and of two
    `stream --archive` runs on one inbox one exited 1. Forced: both streams wait at the point
    between listing and reading until the test has moved a file away."""
    inbox, archive = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    for i in range(3):
        pq.write_table(make_table(n=60, seed=10 + i, shift=0.2), inbox / f"f{i}.parquet")
    gate = tmp_path / "go"
    env = {**os.environ, "CTRAIN_FAILPOINT": f"stream.before-read=wait:{gate}"}
    argv = [sys.executable, "-m", "continual_trainer", "stream", "--store", tiny_store, "--inbox", str(inbox),
            "--once", "--policy", "keep", "--archive", str(archive), "--json"]  # fmt: skip
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    time.sleep(3)  # both have listed the inbox and wait before the first read
    os.remove(inbox / "f2.parquet")  # a user takes a file back
    gate.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    events = Store.open(tiny_store).stream_events()
    assert sorted(e["file"] for e in events) == ["f0.parquet", "f1.parquet"]  # each once, by one of the two
    assert sorted(os.listdir(archive)) == ["f0.parquet", "f1.parquet"] and os.listdir(inbox) == []
    assert any("left the inbox before it was read" in err for _, err in outs)


def test_user_text_reaches_the_terminal_escaped_and_json_as_it_is(tiny_store: str, tmp_path: Path, capsys) -> None:
    """Before: a drop reason or an inbox file name with escape sequences and newlines reached the
    terminal raw."""
    hostile = "bad\x1b[2J\nrows\u202e"
    batch = open_store(tiny_store).batches()[-1]["batch"]
    assert main(["drop", "--store", tiny_store, batch, "--reason", hostile]) == 0
    capsys.readouterr()
    assert main(["batches", "--store", tiny_store]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "bad\\x1b[2J\\nrows\\u202e" in out
    assert main(["batches", "--store", tiny_store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["batches"]
    assert any((r["retired"] or {}).get("reason") == hostile for r in rows)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "evil\x1b[31m\nname.parquet").write_bytes(b"not parquet")
    pq.write_table(make_table(n=60, seed=7, shift=0.2), inbox / "good.parquet")
    assert main(["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "keep"]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err and "evil\\x1b[31m\\nname.parquet" in captured.out
    assert terminal_safe("tab\there") == "tab\\there" and terminal_safe("é ok") == "é ok"


def test_decisions_null_keys_bool_labels_and_export_leftovers(tiny_store: str, tmp_path: Path) -> None:
    """The unclear cases, decided: a row whose id is null gets a key of its own (never "None");
    true/false labels are refused in a store of integer classes; a SavedModel export removes the
    hidden folders of exports that were killed."""
    served = Served(tiny_store, id_column="id")
    served.start()
    table = make_table(n=3, seed=4).drop(["y"]).append_column("id", pa.array(["k0", None, None]))
    answer = served.predict(table, served.current, request="req")
    served.stop()
    assert answer["ids"] == ["k0", "req-1", "req-2"]
    bools = make_table(n=40, seed=5).set_column(5, "y", pa.array(np.arange(40) % 2 == 0))
    pq.write_table(bools, tmp_path / "bools.parquet")
    with pytest.raises(UserError, match="holds true/false, but the store's classes are \\[0, 1\\]"):
        open_store(tiny_store).ingest(str(tmp_path / "bools.parquet"))
    from continual_trainer.scoring import _remove_dead_exports

    out = tmp_path / "exported"
    (out / ".3.999999.tmp").mkdir(parents=True)  # killed mid-export (no such process)
    (out / f".4.{os.getpid()}.tmp").mkdir()  # an export under way in a live process
    (out / "2").mkdir()
    _remove_dead_exports(str(out))
    assert sorted(os.listdir(out)) == [f".4.{os.getpid()}.tmp", "2"]


def test_serving_imports_nothing_of_training_or_the_cli() -> None:
    """`ctrain serve`'s modules load without the training loop, the strategies, the sweep or
    TensorFlow (a Dense stack is scored in NumPy)."""
    code = (
        "import sys, continual_trainer.serve.app, continual_trainer.serve.server, continual_trainer.serve.served;"
        "bad = [m for m in sys.modules if m.startswith(('tensorflow', 'keras', 'ray', 'continual_trainer.strategies',"
        " 'continual_trainer.trainer.loop', 'continual_trainer.sweep', 'continual_trainer.updates'))];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("debug", ["", "1"])
def test_other_libraries_warnings_show_only_with_ctrain_debug(debug: str) -> None:
    code = (
        "import warnings; import continual_trainer.cli.program as p; p.quiet_third_parties();"
        "warnings.warn_explicit('from keras', UserWarning, 'functional.py', 1, module='keras.src.models.functional');"
        "warnings.warn_explicit('from numpy', RuntimeWarning, 'x.py', 1, module='numpy.core');"
        "warnings.warn_explicit('ours', UserWarning, 'y.py', 1, module='continual_trainer.x')"
    )
    env = {**os.environ, "CTRAIN_DEBUG": debug}
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stderr
    assert "ours" in err
    assert ("from keras" in err and "from numpy" in err) is (debug == "1"), err
