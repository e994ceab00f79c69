"""The command line contract: JSON output, exit codes, and one clear line for every mistake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from tests.conftest import make_table, snapshot


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_init_ingest_update_predict_history(tmp_path: Path, write_parquet, capsys) -> None:
    store = str(tmp_path / "store")
    old = write_parquet(make_table(seed=0), "old.parquet")
    code, out, _ = run(
        capsys, "init", "--store", store, "--data", old, "--label", "y", "--model", "mlp:8,4", "--epochs", "5", "--json"
    )
    assert code == 0
    first = last_json(out)
    assert first["promoted"] and first["version"] and "holdout_accuracy" in first["metrics"]

    new = write_parquet(make_table(seed=1, shift=0.3), "new.parquet")
    code, out, _ = run(capsys, "ingest", "--store", store, new)
    assert code == 0 and "added as batch 000002-" in out
    code, out, _ = run(capsys, "ingest", "--store", store, new, "--json")
    assert code == 0 and last_json(out)["batches"][0]["added"] is False

    code, out, _ = run(
        capsys,
        "update",
        "--store",
        store,
        "--strategy",
        "ensemble_new",
        "--set",
        "epochs=2",
        "--promote",
        "never",
        "--json",
    )
    second = last_json(out)
    assert code == 0 and not second["promoted"] and second["members"] == 2

    code, out, _ = run(
        capsys,
        "update",
        "--store",
        store,
        "--strategy",
        "finetune_all",
        "--set",
        "epochs=3",
        "--set",
        "weighting=recency",
        "--promote",
        "always",
        "--json",
    )
    assert code == 0
    third = last_json(out)
    assert third["promoted"] and third["parent"] == first["version"]
    assert {"holdout_accuracy", "old_accuracy", "new_accuracy", "new_roc_auc"} <= set(third["metrics"])

    code, out, _ = run(capsys, "history", "--store", store, "--json")
    versions = last_json(out)["versions"]
    assert [v["version"] for v in versions] == [first["version"], second["version"], third["version"]]
    assert [v["current"] for v in versions] == [False, False, True]

    data = make_table(seed=5).drop_columns(["y"]).append_column("id", pa.array(range(120)))
    src = write_parquet(data, "score.parquet")
    out_path = str(tmp_path / "pred.parquet")
    code, out, _ = run(capsys, "predict", "--store", store, "--data", src, "--out", out_path, "--json")
    assert code == 0 and last_json(out)["version"] == third["version"]
    pred = pq.read_table(out_path)
    assert pred.column_names == [*data.column_names, "prediction", "probability"]
    p = pred.column("probability").to_numpy()
    assert ((p > 0.5) == (pred.column("prediction").to_numpy() == 1)).all()
    code, out, _ = run(
        capsys, "predict", "--store", store, "--data", src, "--out", out_path, "--version", first["version"], "--json"
    )
    assert code == 0 and last_json(out)["version"] == first["version"]


def test_new_class_flow_through_the_cli(tiny_store: str, write_parquet, capsys) -> None:
    three = write_parquet(make_table(seed=7, n_classes=3), "three.parquet")
    code, _, err = run(capsys, "ingest", "--store", tiny_store, three)
    assert code == 2 and "--new-classes" in err and "new_head" in err
    code, out, _ = run(capsys, "ingest", "--store", tiny_store, "--new-classes", three)
    assert code == 0 and "new classes [2]" in out
    code, _, err = run(capsys, "update", "--store", tiny_store, "--strategy", "finetune_new")
    assert code == 2 and "use one of" in err and "new_head" in err
    code, out, _ = run(
        capsys,
        "update",
        "--store",
        tiny_store,
        "--strategy",
        "new_head",
        "--set",
        "epochs=5",
        "--promote",
        "always",
        "--json",
    )
    assert code == 0 and last_json(out)["promoted"]


def _table_bytes(table: pa.Table) -> bytes:
    from continual_trainer.data.parquet import table_to_bytes

    return table_to_bytes(table)


def _bad_inputs() -> dict[str, tuple[object, str]]:
    """name -> (file content: a table or raw bytes, expected words in the message)."""
    good = make_table(seed=11)
    nan = good.column("f1").to_numpy().copy()
    nan[3] = np.nan
    inf = good.column("f2").to_numpy().copy()
    inf[0] = np.inf
    label_nan = good.column("y").to_numpy().astype(float)
    label_nan[5] = np.nan
    return {
        "not_parquet": (b"id,y\n1,0\n", "not a Parquet file"),
        "truncated": (_table_bytes(good)[:-40], "not a Parquet file (or truncated)"),
        "empty_file": (b"", "the file is empty"),
        "zero_rows": (good.slice(0, 0), "has no rows"),
        "no_label": (good.drop_columns(["y"]), "missing label column 'y'"),
        "no_feature": (good.drop_columns(["f3"]), "missing feature column(s) f3"),
        "string_feature": (
            good.set_column(2, "f2", pa.array(["x"] * good.num_rows)),
            "'f2' is string here; the store holds it as numeric",
        ),
        "nan_feature": (good.set_column(1, "f1", pa.array(nan)), "'f1' has 1 NaN or infinite"),
        "inf_feature": (good.set_column(2, "f2", pa.array(inf)), "'f2' has 1 NaN or infinite"),
        "nan_label": (good.set_column(5, "y", pa.array(label_nan)), "missing or NaN values"),
        "unknown_class": (make_table(seed=2, n_classes=3), "--new-classes"),
        "extra_feature": (good.append_column("f5", pa.array(np.zeros(good.num_rows))), "f5 are not in the store"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_batches_exit_2_with_one_line_and_are_quarantined(
    case: str, tiny_store: str, write_parquet, capsys
) -> None:
    content, expected = _bad_inputs()[case]
    path = write_parquet(content, f"{case}.parquet")
    before = snapshot(tiny_store)
    code, _, err = run(capsys, "ingest", "--store", tiny_store, path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and expected in err and f"{case}.parquet" in err
    assert snapshot(tiny_store) == before
    quarantined = os.listdir(os.path.join(tiny_store, "quarantine"))
    assert len(quarantined) == 1 and quarantined[0].endswith(f"{case}.parquet")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["update", "--strategy", "retrain_everything"], "unknown strategy; choose one of keep"),
        (["update", "--strategy", "fresh_new", "--set", "epochz=3"], "has no parameter 'epochz'"),
        (["update", "--strategy", "fresh_new", "--set", "epochs=-1"], "epochs must be >= 1"),
        (["update", "--strategy", "fresh_new", "--set", "learning_rate=fast"], "expected a number"),
        (["update", "--strategy", "fresh_new", "--set", "epochs"], "expected key=value"),
        (["update", "--strategy", "ensemble_new", "--set", "ensemble_weights=magic"], "ensemble_weights must be"),
        (["update", "--strategy", "graft", "--set", "freeze=9"], "only 2 hidden layers"),
        (["update", "--strategy", "fresh_new", "--promote", "sometimes"], "invalid choice: 'sometimes'"),
        (["predict", "--data", "{missing}", "--out", "{out}"], "no such file"),
        (["predict", "--data", "{new}", "--out", "{out}", "--version", "v0"], "no model version 'v0'"),
        (["predict", "--data", "{new}", "--out", "{new}"], "is the input file"),
        (["ingest", "{missing}"], "no such file"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    argv: list[str], expected: str, tiny_store: str, tmp_path: Path, capsys
) -> None:
    new = os.path.join(str(tmp_path), "inputs", "new.parquet")
    subs = {"{missing}": str(tmp_path / "missing.parquet"), "{out}": str(tmp_path / "o.parquet"), "{new}": new}
    argv = [subs.get(a, a) for a in argv]
    if argv[0] != "frobnicate":
        argv[1:1] = ["--store", tiny_store]
    before = snapshot(tiny_store)
    with pytest.raises(SystemExit) if argv[0] == "frobnicate" or "--promote" in argv else _nothing() as exc:
        code, _, err = run(capsys, *argv)
    if exc is not None and getattr(exc, "value", None) is not None:
        code, err = exc.value.code, capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert snapshot(tiny_store) == before
    assert not os.path.exists(str(tmp_path / "o.parquet"))


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_store_problems_exit_2(tmp_path: Path, tiny_store: str, capsys) -> None:
    code, _, err = run(capsys, "history", "--store", str(tmp_path / "nope"))
    assert code == 2 and "not a ctrain store" in err
    meta_path = os.path.join(tiny_store, "store.json")
    meta = json.loads(Path(meta_path).read_text())
    Path(meta_path).write_text(json.dumps({**meta, "format_version": 7}))
    code, _, err = run(capsys, "update", "--store", tiny_store, "--strategy", "keep")
    assert code == 2 and "format version 7 is newer" in err


def test_update_without_new_batches_is_a_reported_no_op(tiny_store: str, capsys) -> None:
    first = ["update", "--store", tiny_store, "--strategy", "fresh_new", "--set", "epochs=2", "--promote", "always"]
    assert run(capsys, *first)[0] == 0
    before = snapshot(tiny_store)
    code, out, _ = run(capsys, "update", "--store", tiny_store, "--strategy", "fresh_new", "--json")
    assert code == 0 and "no new batches since version" in out and last_json(out)["version"] is None
    assert snapshot(tiny_store) == before


def test_init_refuses_an_existing_store_and_bad_data(tiny_store: str, write_parquet, capsys) -> None:
    path = write_parquet(make_table(), "again.parquet")
    code, _, err = run(capsys, "init", "--store", tiny_store, "--data", path, "--label", "y")
    assert code == 2 and "a store already exists" in err
    code, _, err = run(capsys, "init", "--store", tiny_store + "2", "--data", path, "--label", "target")
    assert code == 2 and "no label column 'target'" in err and not os.path.exists(tiny_store + "2")
    code, _, err = run(capsys, "init", "--store", tiny_store + "3", "--data", path, "--label", "y", "--model", "cnn:3")
    assert code == 2 and "unknown model family" in err


@pytest.mark.slow
def test_real_process_prints_one_line_and_no_traceback(tiny_store: str, write_parquet) -> None:
    """Through a real `python -m continual_trainer`: TensorFlow's start-up noise must not reach stderr."""
    bad = write_parquet(b"garbage", "garbage.parquet")
    for argv in (
        ["ingest", "--store", tiny_store, bad],
        ["update", "--store", tiny_store, "--strategy", "graft", "--set", "freeze=7"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "continual_trainer", *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"},
        )
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("ctrain: error: ")


@pytest.mark.parametrize(
    ("call", "argv", "in_python", "on_the_command_line"),
    [
        (
            lambda s: s.update("retrain_everything"),
            ["update", "--strategy", "retrain_everything"],
            "strategy='retrain_everything': unknown strategy",
            "--strategy retrain_everything: unknown strategy",
        ),
        (
            lambda s: s.update("graft", freeze=9),
            ["update", "--strategy", "graft", "--set", "freeze=9"],
            "freeze=9: the current model has only 2 hidden layers",
            "--set freeze=9: the current model has only 2 hidden layers",
        ),
        (
            lambda s: s.update("fresh_new", epochz=3),
            ["update", "--strategy", "fresh_new", "--set", "epochz=3"],
            "epochz: fresh_new has no parameter 'epochz'",
            "--set epochz: fresh_new has no parameter 'epochz'",
        ),
        (
            lambda s: s.sweep(resume="sweep-nope"),
            ["sweep", "--resume", "sweep-nope", "--local"],
            "resume='sweep-nope': no such sweep",
            "--resume sweep-nope: no such sweep",
        ),
        (
            lambda s: s.stream("/no/such/inbox", trigger="vibes"),
            ["stream", "--inbox", "/no/such/inbox", "--trigger", "vibes", "--once"],
            "trigger='vibes': unknown trigger",
            "--trigger vibes: unknown trigger",
        ),
    ],
)
def test_mistakes_name_the_api_argument_in_python_and_the_flag_on_the_command_line(
    call, argv: list[str], in_python: str, on_the_command_line: str, tiny_store: str, capsys
) -> None:
    import continual_trainer as ct

    with pytest.raises(ct.UserError) as raised:
        call(ct.open_store(tiny_store))
    assert str(raised.value).startswith(in_python) and "--" not in str(raised.value), raised.value
    code, _, err = run(capsys, argv[0], "--store", tiny_store, *argv[1:])
    assert code == 2 and err.startswith(f"ctrain: error: {on_the_command_line}"), err
