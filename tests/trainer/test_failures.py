"""Failures that are not a user's mistake are one line too: the machine's (a read-only or full
disk) exit 2, anything unexpected exit 1; with --json every failure prints its JSON object, and
the traceback shows only under CTRAIN_DEBUG=1."""

from __future__ import annotations

import errno
import json

import pytest

from continual_trainer.trainer.cli import main


def _run(capsys, *argv: str) -> tuple[int, list[str], dict]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("number", "text"), [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")]
)
def test_a_read_only_or_full_disk_is_one_line(
    number: int, text: str, tiny_store: str, write_parquet, capsys, monkeypatch
) -> None:
    from tests.conftest import make_table

    new = write_parquet(make_table(seed=3), "new.parquet")

    def refuse(directory: str, data: bytes) -> str:
        raise OSError(number, text, f"{directory}/.tmp-x")

    monkeypatch.setattr("continual_trainer.data.storage.write_temp", refuse)  # locks, claims and files alike
    for argv in (
        ["ingest", "--store", tiny_store, new],
        ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=1"],
        ["gc", "--store", tiny_store],
    ):
        code, err, shown = _run(capsys, *argv)
        assert code == 2 and len(err) == 1 and text in err[0], (argv, err)
        assert shown == {"error": err[0].removeprefix("ctrain: error: "), "exit_code": 2}


def test_an_unexpected_error_is_one_line_with_exit_1_and_a_traceback_only_when_asked(
    tiny_store: str, capsys, monkeypatch
) -> None:
    def broken(uri: str) -> list:
        raise RuntimeError("the history went missing\nsecond line")

    monkeypatch.setattr("continual_trainer.trainer.commands.history", broken)
    code, err, shown = _run(capsys, "history", "--store", tiny_store)
    assert code == 1 and err == ["ctrain: error: unexpected RuntimeError: the history went missing"]
    assert shown["exit_code"] == 1
    monkeypatch.setenv("CTRAIN_DEBUG", "1")
    code, err, _ = _run(capsys, "history", "--store", tiny_store)
    assert code == 1 and err[0].startswith("Traceback") and err[-1].startswith("ctrain: error: unexpected")
