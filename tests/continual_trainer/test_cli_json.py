"""Every command with --json: exit 0 and one JSON object on the last line (errors too)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import build_parser, main
from tests.conftest import make_table

COMMANDS_TESTED: set[str] = set()


def run_json(capsys, *argv: str) -> dict:
    COMMANDS_TESTED.add(argv[0])
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert isinstance(last, dict)
    return last


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, table in {
        "old": make_table(seed=0),
        "new": make_table(seed=1, shift=0.3),
        "score": make_table(seed=2).drop_columns(["y"]),
    }.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(table, paths[name])
    (tmp_path / "inbox").mkdir()
    paths["inbox"] = str(tmp_path / "inbox")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("strategies: [keep, finetune_new]\nparams: {epochs: 2}\n")
    paths["sweep"] = str(sweep)
    return paths


@pytest.mark.slow
def test_every_command_prints_json_on_its_last_line(tmp_path: Path, inputs, capsys, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    store = "store"  # relative, as users type it
    first = run_json(capsys, "init", "--store", store, "--data", inputs["old"], "--label", "y", "--epochs", "3")
    assert first["promoted"] and first["version"]
    assert run_json(capsys, "ingest", "--store", store, inputs["new"])["batches"][0]["added"]
    upd = run_json(
        capsys, "update", "--store", store, "--strategy", "finetune_new", "--set", "epochs=2", "--promote", "never"
    )
    assert upd["version"] and "holdout_accuracy" in upd["metrics"]
    assert len(run_json(capsys, "history", "--store", store)["versions"]) == 2
    pred = run_json(capsys, "predict", "--store", store, "--data", inputs["score"], "--out", "scored.parquet")
    assert pred["rows"] == 120 and os.path.exists("scored.parquet")
    sweep = run_json(capsys, "sweep", "--store", store, "--config", inputs["sweep"], "--local")
    assert sweep["finished"] == sweep["trials"] == 2 and sweep["executor"] == "this process (no Ray)"
    for policy in ("finetune_new", "best"):  # best crashed with --json (on_event=None)
        drop_file(inputs["inbox"], policy)
        stream = run_json(
            capsys,
            "stream",
            "--store",
            store,
            "--inbox",
            inputs["inbox"],
            "--once",
            "--policy",
            policy,
            "--candidates",
            "finetune_new,fresh_new",
            "--set",
            "epochs=2",
            "--local",
        )
        assert len(stream["events"]) == 1 and stream["events"][0]["status"] in ("updated", "kept")
    versions = [v["version"] for v in run_json(capsys, "history", "--store", store)["versions"]]
    back = run_json(capsys, "rollback", "--store", store, "--reason", "test")
    assert back["previous"] == versions[-1] and back["version"] != back["previous"]
    again = run_json(capsys, "promote", "--store", store, back["previous"][-4:])
    assert again == {"version": back["previous"], "previous": back["version"]}
    dry = run_json(capsys, "gc", "--store", store, "--keep", "0", "--dry-run")
    assert dry["dry_run"] and set(dry["deleted"]) <= set(versions)
    report = run_json(capsys, "report", "--store", store)
    assert os.path.exists(report["page"]) and "plots/stream.png" in report["files"]
    shown = run_json(capsys, "inputs", "--store", store)
    assert shown["inputs"]["numeric"]["keras"] == 'keras.Input(shape=(5,), dtype="float32", name="numeric")'
    exported = run_json(capsys, "export", "--store", store, "--out", "model.keras")
    assert exported["format"] == "keras" and os.path.isfile("model.keras")
    split = run_json(capsys, "split", "--data", inputs["old"], "--out-train", "t.parquet", "--out-holdout", "h.parquet")
    assert split["train_rows"] + split["holdout_rows"] == 120
    assert run_json(capsys, "verify", "--store", store) == {"ok": True, "problems": [], "notes": []}
    batches = run_json(capsys, "batches", "--store", store)["batches"]
    assert [b["retired"] for b in batches] == [None] * len(batches)
    dropped = run_json(capsys, "drop", "--store", store, batches[-1]["batch"], "--reason", "test")
    assert dropped == {"batch": batches[-1]["batch"], "retired": True}
    demo = run_json(capsys, "demo", "--store", "demo-store", "--local")
    assert len(demo["results"]) >= 9 and demo["executor"] == "this process (no Ray)"
    served = serve_json(store)
    assert served["version"] == next(v["version"] for v in run_json(capsys, "history", "--store", store)["versions"]
                                     if v["current"])  # fmt: skip
    drift = run_json(capsys, "drift", "--store", store, "--data", inputs["new"], "--trigger", "features")
    assert set(drift) == {"fire", "features"} and isinstance(drift["fire"], bool)
    pq.write_table(pa.table({"id": ["a", "b"], "y": [0, 1]}), "labels.parquet")
    labelled = run_json(capsys, "label", "--store", store, "--data", "labels.parquet")
    assert (labelled["unknown"], labelled["matched"], labelled["batch"]) == (2, 0, None)  # nothing served yet
    synced = run_json(capsys, "mlflow", "sync", "--store", store, "--mlflow", "sqlite:///mlflow.db")
    assert synced["version"] == served["version"] and synced["model"] == "ctrain-store"
    assert set(build_parser()._subparsers._group_actions[0].choices) <= COMMANDS_TESTED


def serve_json(store: str) -> dict:
    """`ctrain serve --json` runs until stopped: its one JSON object is printed when it is ready
    (and is its last line); it answers, and Ctrl-C stops it with exit 0."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.continual_trainer.test_serve import _free_port

    COMMANDS_TESTED.add("serve")
    port = _free_port()
    argv = [sys.executable, "-m", "continual_trainer", "serve", "--store", store, "--port", str(port), "--json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        ready = json.loads(line)
        from continual_trainer.serve import wait_ready

        wait_ready(ready["url"])
        with urllib.request.urlopen(f"{ready['url']}/version") as r:
            assert json.loads(r.read())["version"] == ready["version"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "" and err.strip() == "", (out, err)
    return ready


def drop_file(inbox: str, tag: str) -> None:
    """A new labelled file in the inbox for each stream run."""
    pq.write_table(make_table(seed=len(tag), shift=0.5), Path(inbox) / f"{tag}.parquet")


def test_errors_with_json_are_one_json_object_too(tmp_path: Path, capsys) -> None:
    code = main(["history", "--store", str(tmp_path / "nowhere"), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1
    last = json.loads(out.strip().splitlines()[-1])
    assert last["exit_code"] == 2 and "not a ctrain store" in last["error"]
