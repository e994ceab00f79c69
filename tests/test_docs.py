"""The documentation cannot rot: the site builds strictly, every `ctrain` command written in the
README or a page of `docs/` is one the program accepts (a synopsis line's flags exist for its
command), every Python block compiles, the README's journey runs as written, and the
generated pages (CLI reference, strategies) say what the parser and the registry say."""

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
