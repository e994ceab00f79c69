"""The documentation cannot rot: the site builds strictly, every `ctrain` command written in the
README or a page of `docs/` is one the program accepts (a synopsis line's flags exist for its
command), every Python block compiles, the README's journey and every block of the guides run
as written, and the generated pages (CLI reference, strategies) say what the parser and the registry say."""

from __future__ import annotations

import argparse
import ast
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from continual_trainer.cli import build_parser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BIN = Path(sys.executable).parent
PROGRAMS = ("ctrain ", ".venv/bin/ctrain ", "python -m continual_trainer ")


def blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, text), continuation lines joined."""
    return [
        (lang, body.replace("\\\n", " ")) for lang, body in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S)
    ]


def commands(page: Path) -> list[str]:
    """Every `ctrain` command line in a page's code blocks, without its comment or a trailing `&`."""
    found = []
    for _, body in blocks(page):
        for line in body.splitlines():
            line = line.split("  #")[0].strip().removesuffix("&").strip()
            for program in PROGRAMS:
                if line.startswith(program):
                    found.append(line.removeprefix(program))
    return found


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def problem(line: str, subcommands: dict[str, argparse.ArgumentParser]) -> str | None:
    """Why `line` (a command without the program) is not one `ctrain` accepts, or None. A
    synopsis (`[--wide]`, `a | b`, `...`) is held to naming only flags its command has."""
    words = shlex.split(line)
    if not words or words[0] not in subcommands:
        return f"no command {words[:1]}"
    if any(mark in line for mark in ("[", " | ", "...")):
        known = {o for a in subcommands[words[0]]._actions for o in a.option_strings}
        unknown = sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line)) - known)
        return f"unknown flags {unknown}" if unknown else None
    try:
        build_parser().parse_args(words)
    except SystemExit:
        return "the parser refuses it"
    return None


def test_every_command_in_the_documentation_is_one_ctrain_accepts(capsys) -> None:
    subcommands = _subcommands()
    written = [(page.relative_to(ROOT), line) for page in PAGES for line in commands(page)]
    assert len(written) > 30
    wrong = [f"{page}: ctrain {line} ({why})" for page, line in written if (why := problem(line, subcommands))]
    capsys.readouterr()
    assert wrong == []


def test_the_command_check_catches_a_renamed_flag_or_command(capsys) -> None:
    subcommands = _subcommands()
    assert problem("history --store ./s --wide", subcommands) is None
    assert problem("history --store ./s --wider", subcommands) == "the parser refuses it"
    assert problem("history --store ./s [--wider]", subcommands) == "unknown flags ['--wider']"
    assert problem("histories --store ./s", subcommands) is not None
    capsys.readouterr()


def test_every_python_block_compiles() -> None:
    python = [(page, body) for page in PAGES for lang, body in blocks(page) if lang == "python"]
    assert len(python) >= 3
    for page, body in python:
        ast.parse(body, filename=str(page))


def test_the_generated_pages_say_what_the_parser_and_the_registry_say() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from docs_hooks import cli_reference, strategy_reference

    from continual_trainer import strategies

    cli = cli_reference()
    assert all(f"## ctrain {name}\n" in cli for name in _subcommands())
    assert "`--max-flip-rate` X" in cli and "`--store` STORE (required)" in cli
    table = strategy_reference()
    assert all(f"### `{name}`" in table for name in strategies.names())
    assert "| `memory_size` |" in table  # a parameter, with its default and limits


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """As `make docs` and CI build it: a broken link or an unreadable docstring fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "ctrain update" in page and "--promote-on" in page


@pytest.mark.slow
def test_the_readmes_journey_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's journey, each line run as written (in this process, in a folder holding
    `examples/`, as the program's `main` and the script's `__main__`), with fewer epochs: the
    commands, flags and files are the README's."""
    from continual_trainer.cli import main

    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    (journey,) = [b for lang, b in blocks(ROOT / "README.md") if "examples/make_data.py" in b]
    ran = []
    for line in journey.splitlines():
        line = line.split("  #")[0].strip()
        if not line:
            continue
        line = line.replace("--epochs 30", "--epochs 3").replace("--set epochs=20", "--set epochs=2")
        words = shlex.split(line)
        if words[0] == "python":
            monkeypatch.setattr(sys, "argv", words[1:])
            runpy.run_path(words[1], run_name="__main__")
        else:
            assert words[0] == "ctrain" and main([*words[1:], "--quiet"]) == 0, (line, capsys.readouterr().err)
        ran.append(words[0] if words[0] == "python" else words[1])
    assert ran == ["python", "init", "ingest", "update", "history", "predict", "rollback"]
    assert (tmp_path / "scored.parquet").is_file()


# Every shell and Python block of the guides (and the strategy page's "write your own"), run as
# written in a folder set up as the page says (its data made first), with fewer epochs. Shell
# lines: `ctrain` in this process (as the program's `main`), `python script` as its `__main__`,
# `python -c` and `curl` as processes, a line ending in `&` as a background process that
# `kill %1` stops; a `$ command` line followed by its output is run and its output compared.
EXECUTED = {
    "guides/keras-model.md": 3,
    "guides/mlflow.md": 1,
    "guides/python-api.md": 1,
    "guides/serving.md": 2,
    "strategies.md": 1,
}
# Run by another test: the Ray guide's job command needs a Ray head, which the cluster tests start.
EXECUTED_ELSEWHERE = {"guides/ray.md": "tests/cluster/test_jobs.py"}
FEWER = {"--epochs 30": "--epochs 2", "epochs=20": "epochs=2", "epochs=30": "epochs=2", "epochs=50": "epochs=3"}


class Shell:
    """Runs a page's blocks in `folder`, one line at a time."""

    def __init__(self, folder: Path, capsys, monkeypatch) -> None:
        self.folder, self.capsys, self.monkeypatch = folder, capsys, monkeypatch
        self.background: list[subprocess.Popen] = []
        self.port = _free_port()
        monkeypatch.chdir(folder)
        monkeypatch.syspath_prepend(str(folder))  # builders named relative to the working directory

    def block(self, lang: str, body: str) -> None:
        if lang == "python":  # as a script of its own (a dataclass needs its module in sys.modules)
            (self.folder / "block.py").write_text(body)
            runpy.run_path(str(self.folder / "block.py"), run_name="__main__")
            return
        lines = body.splitlines()
        if lines[0].startswith("$ "):  # a command and its output
            self.line(lines[0][2:])
            out = self.capsys.readouterr().out
            shown = [line.split("  #")[0].rstrip() for line in lines[1:] if "..." not in line]
            assert [line for line in shown if line.strip() and line not in out] == []
            return
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            return
        for many, few in FEWER.items():
            line = line.replace(many, few)
        line = line.replace("8000", str(self.port)).removeprefix(".venv/bin/")
        words = shlex.split(line.removesuffix("&"))
        if line.endswith("&"):
            assert words[0] == "ctrain", line
            self.background.append(subprocess.Popen([str(BIN / "ctrain"), *words[1:]], stderr=subprocess.PIPE))
        elif words == ["kill", "%1"]:
            server = self.background.pop(0)
            server.send_signal(2)
            assert server.wait(60) == 0, server.stderr.read().decode()[-2000:] if server.stderr else ""
        elif words[0] == "curl":
            done = subprocess.run(words, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 and '"predictions"' in done.stdout, (line, done.stdout, done.stderr)
        elif words[0] == "python" and words[1] == "-c":
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (line, done.stderr[-2000:])
        elif words[0] == "python":
            self.monkeypatch.setattr(sys, "argv", words[1:])
            runpy.run_path(words[1], run_name="__main__")
        else:
            from continual_trainer.cli import main

            assert words[0] == "ctrain" and main(words[1:]) == 0, (line, self.capsys.readouterr().err[-2000:])

    def close(self) -> None:
        for server in self.background:
            server.kill()
            server.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _examples(folder: Path) -> None:
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))


def _a_store_with_a_new_batch(folder: Path) -> None:
    """`./store` with a first model and a new batch, as the MLflow guide starts from."""
    import pyarrow.parquet as pq

    from continual_trainer.cli import main
    from tests.conftest import make_table

    pq.write_table(make_table(n=400, seed=0), folder / "old.parquet")
    pq.write_table(make_table(n=300, seed=1, shift=0.5), folder / "new.parquet")
    assert main(["init", "--store", "store", "--data", "old.parquet", "--label", "y", "--epochs", "2"]) == 0
    assert main(["ingest", "--store", "store", "new.parquet"]) == 0


def _diagnoses(folder: Path) -> None:
    """The Python guide's files: a diagnosis label, a patient id and a note to keep out."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    frame.insert(0, "patient_id", [f"p{i:04d}" for i in range(len(frame))])
    frame["note"] = "seen"
    parts = {"old": frame.iloc[:300], "new": frame.iloc[300:500], "score": frame.iloc[500:].drop(columns="diagnosis")}
    for name, part in parts.items():
        pd.DataFrame(part).to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "inbox").mkdir()


def _diabetes_store(folder: Path) -> None:
    """The serving guide's store (the diabetes example's first model) and the visit's outcome."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from continual_trainer.cli import main

    _examples(folder)
    runpy.run_path(str(folder / "examples" / "make_data.py"), run_name="not main")["main"](str(folder / "data"))
    argv = ["init", "--store", "diabetes", "--data", "data/diabetes-old.parquet", "--label", "progression"]
    assert main([*argv, "--epochs", "2"]) == 0
    pq.write_table(pa.table({"visit": ["v1"], "progression": [151.0]}), folder / "outcomes.parquet")


SETUP = {
    "guides/keras-model.md": _examples,
    "guides/mlflow.md": _a_store_with_a_new_batch,
    "guides/python-api.md": _diagnoses,
    "guides/serving.md": _diabetes_store,
    "strategies.md": _a_store_with_a_new_batch,
}


def test_the_guides_with_blocks_are_the_ones_executed() -> None:
    """A page of the guides that gains a code block is executed below (or this fails)."""
    found = {
        str(page.relative_to(ROOT / "docs")): len(blocks(page))
        for page in sorted((ROOT / "docs" / "guides").glob("*.md"))
        if blocks(page)
    }
    elsewhere = {page: 1 for page in EXECUTED_ELSEWHERE}
    assert found == {**{k: v for k, v in EXECUTED.items() if k.startswith("guides/")}, **elsewhere}
    for page, test in EXECUTED_ELSEWHERE.items():
        assert page in (ROOT / test).read_text()
    assert len(blocks(ROOT / "docs" / "strategies.md")) == EXECUTED["strategies.md"]


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(EXECUTED))
def test_every_block_of_a_guide_runs_as_written(page: str, tmp_path: Path, capsys, monkeypatch) -> None:
    shell = Shell(tmp_path, capsys, monkeypatch)
    SETUP[page](tmp_path)
    try:
        for lang, body in blocks(ROOT / "docs" / page):
            shell.block(lang, body)
        if page == "strategies.md":  # the strategy written there updates a store
            shell.line("ctrain update --store store --strategy blend --set share=0.3 --set epochs=2")
    finally:
        shell.close()
        if page == "strategies.md":
            from continual_trainer.strategies import registry

            registry._REGISTRY.remove("blend")
