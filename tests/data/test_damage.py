"""Damaged or missing store files: every command exits 0, or 2 with one line naming the file; never a traceback.

For every kind of file a store holds, each of four kinds of damage (deleted, truncated,
garbage, valid JSON of the wrong shape) is applied to a copy of one store, then every
command runs against it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from tests.conftest import make_table

SWEEP_ID: list[str] = []
DAMAGE = {
    "deleted": None,
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x00\xffnot what was here\x01" * 8,
    "wrong-shape JSON": lambda data: b'["a", "list", 3]',
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A store holding every kind of file, and the inputs the commands use."""
    tmp = tmp_path_factory.mktemp("damage")
    files = {}
    for name, table in {
        "old": make_table(seed=0),
        "b2": make_table(seed=1, shift=0.2),
        "b4": make_table(seed=3, shift=0.6),
        "b5": make_table(seed=4, shift=0.7),
        "score": make_table(seed=5).drop_columns(["y"]),
    }.items():
        files[name] = tmp / f"{name}.parquet"
        pq.write_table(table, files[name])
    inbox = tmp / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=2, shift=0.4), inbox / "b3.parquet")
    (inbox / "junk.parquet").write_bytes(b"not parquet")  # a quarantined file
    sweep = tmp / "sweep.yaml"
    sweep.write_text("strategies: [keep]\n")
    files["sweep"] = sweep
    store = tmp / "store"
    at = ["--store", str(store)]
    steps = [
        ["init", *at, "--data", str(files["old"]), "--label", "y", "--model", "mlp:4", "--epochs", "2"],
        ["ingest", *at, str(files["b2"])],
        ["update", *at, "--strategy", "finetune_new", "--set", "epochs=1", "--promote", "always"],
        ["stream", *at, "--inbox", str(inbox), "--once", "--policy", "fresh_new", "--set", "epochs=1", "--local"],
        ["ingest", *at, str(files["b4"])],
        ["sweep", *at, "--config", str(sweep), "--local", "--quiet"],
    ]
    for argv in steps:
        assert main(argv) == 0, argv
    SWEEP_ID[:] = [next((store / "sweeps").iterdir()).name]
    return store, files


def kinds(store: Path) -> dict[str, Path]:
    """One file of each kind (its path with ids replaced by `*`); of batches the first and the
    newest, of versions the current one."""
    current = (store / "CURRENT").read_text().strip() if (store / "CURRENT").exists() else ""
    out: dict[str, Path] = {}
    for path in sorted(store.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(store).as_posix()
        kind = re.sub(r"(batches|models|quarantine|sweeps|events|processed|trials)/[^/]+", r"\1/*", rel)
        if kind.startswith("models/") and rel.split("/")[1] != current:
            continue
        if kind.startswith("batches/") and f"first {kind}" not in out:
            out[f"first {kind}"] = path
        out[kind] = path
    return out


def commands(store: str, files: dict[str, Path], tmp: Path) -> dict[str, list[str]]:
    inbox = tmp / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["b5"], inbox / "b5.parquet")
    sweep_id = SWEEP_ID[0]
    return {
        "history": ["history", "--store", store],
        "predict": ["predict", "--store", store, "--data", str(files["score"]), "--out", str(tmp / "out.parquet")],
        "update": ["update", "--store", store, "--strategy", "finetune_new", "--set", "epochs=1", "--promote", "never"],
        "ingest": ["ingest", "--store", store, str(files["b5"])],
        "stream": ["stream", "--store", store, "--inbox", str(inbox), "--once", "--policy", "finetune_new",
                   "--set", "epochs=1", "--local"],
        "sweep": ["sweep", "--store", store, "--config", str(files["sweep"]), "--local", "--quiet"],
        "resume": ["sweep", "--store", store, "--resume", sweep_id, "--local", "--quiet"],
    }  # fmt: skip


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except ValueError:
        return False
    return True


def test_the_template_holds_every_kind_of_file(template) -> None:
    store, _ = template
    expected = {"store.json", "CURRENT", "batches/*/batch.json", "batches/*/data.parquet", "models/*/manifest.json"}
    expected |= {"models/*/member-0.keras", "stream/events/*", "stream/processed/*", "sweeps/*/sweep.yaml"}
    expected |= {"sweeps/*/trials/*", "quarantine/*/reason.txt"}
    assert expected <= set(kinds(store))


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_command_on_every_damaged_file(template, damage: str, tmp_path: Path, capsys) -> None:
    source, files = template
    failures = []
    for kind, path in kinds(source).items():
        if damage == "wrong-shape JSON" and not _is_json(path):
            continue  # JSON in a Parquet or Keras file is garbage, which "garbage" covers
        for name in commands(str(tmp_path / "s"), files, tmp_path / "work"):
            store = tmp_path / "s"  # a fresh damaged copy for every command: commands change stores
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(tmp_path / "work", ignore_errors=True)
            shutil.copytree(source, store)
            target = kinds(store)[kind]
            if DAMAGE[damage] is None:
                target.unlink()
            else:
                target.write_bytes(DAMAGE[damage](target.read_bytes()))
            code = main(commands(str(store), files, tmp_path / "work")[name])
            err = capsys.readouterr().err.strip()
            what = kind.removeprefix("first ")
            named = target.name in err or target.parent.name in err or what.split("/")[0] in err
            if code not in (0, 2) or (code == 2 and (len(err.splitlines()) != 1 or not named)):
                failures.append(f"{damage} {kind}, {name}: exit {code}: {err[-300:]}")
    assert not failures, "\n".join(failures)
