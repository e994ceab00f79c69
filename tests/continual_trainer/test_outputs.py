"""One output guard: every flag that names a path a command writes refuses a path inside a store
(relative, through a symbolic link, the store's own files), and an archive that is the inbox or
inside it; the parser's writing flags are found by their type, so a new one cannot skip the test."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import build_parser, main, written
from tests.conftest import make_table, snapshot

# The least each command needs beside its writing flag ({store}, {data}, {inbox} filled in). A
# command with a new writing flag must be added here, or the test below fails.
NEEDS = {
    "predict": ["--store", "{store}", "--data", "{data}", "--out", "{out}"],
    "export": ["--store", "{store}", "--out", "{out}"],
    "report": ["--store", "{store}", "--out", "{out}"],
    "split": ["--data", "{data}", "--out-train", "{out}", "--out-holdout", "{other}"],
    "stream": ["--store", "{store}", "--inbox", "{inbox}", "--once", "--archive", "{out}"],
}


def writing_flags() -> list[tuple[str, str]]:
    """(command, flag) for every flag of type `written`."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return [
        (name, action.option_strings[0])
        for name, sub in commands.items()
        for action in sub._actions
        if action.type is written
    ]


def test_every_flag_that_names_an_output_is_a_written_path_and_its_command_is_tested() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    untyped = [
        f"{name} {flag}"
        for name, sub in commands.items()
        for action in sub._actions
        for flag in action.option_strings
        if flag.startswith(("--out", "--archive")) and action.type is not written
    ]
    assert untyped == []
    flags = writing_flags()
    assert {name for name, _ in flags} == set(NEEDS), "add the command's arguments to NEEDS"
    for name, flag in flags:
        assert flag in NEEDS[name], f"{name} {flag} is not exercised by NEEDS"


@pytest.mark.parametrize("where", ["own file", "relative", "through a link", "deep inside"])
def test_no_writing_flag_writes_inside_a_store(
    where: str, tiny_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data = tmp_path / "rows.parquet"
    pq.write_table(make_table(n=40, seed=3), data)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "link").symlink_to(tiny_store)
    monkeypatch.chdir(tmp_path)
    target = {
        "own file": f"{tiny_store}/store.json",
        "relative": os.path.relpath(f"{tiny_store}/models/out.parquet", tmp_path),
        "through a link": "link/out.parquet",
        "deep inside": f"{tiny_store}/batches/new/out.keras",
    }[where]
    before = snapshot(tiny_store)
    for name, flag in writing_flags():
        argv = [a.format(store=tiny_store, data=data, inbox=inbox, out="elsewhere.parquet", other="o.parquet")
                for a in NEEDS[name]]  # fmt: skip
        argv[argv.index(flag) + 1] = target
        assert main([name, *argv]) == 2, (name, flag)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} " in err[0] and "is inside the store" in err[0], (name, err)
    assert snapshot(tiny_store) == before


def test_an_archive_that_is_the_inbox_or_inside_it_is_refused(tiny_store: str, tmp_path: Path, capsys) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(n=40, seed=3), inbox / "a.parquet")
    for archive in (inbox, inbox / "done", f"{inbox}/./"):
        argv = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--archive", str(archive)]
        assert main(argv) == 2
        assert "is the inbox or inside it" in capsys.readouterr().err
    assert sorted(os.listdir(inbox)) == ["a.parquet"]
