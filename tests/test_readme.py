"""The documentation's claims name their proof, and the proof exists: every Reliability row cites
the tests that hold it (file and test name), every figure of the Speed table the script that
reproduces it, and every test, script and example the README or a page of `docs/` names is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README = "\n".join(p.read_text() for p in PAGES)  # the README and the documentation site's pages
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
CITED_FILE = re.compile(r"(?<![\w/])((?:tests|scripts|examples|data|trainer|strategies|cluster)/[\w/.-]+\.(?:py|yaml))")


def section(title: str) -> str:
    """A page of the documentation site by its title (`Reliability` is docs/reliability.md)."""
    return (ROOT / "docs" / f"{title.lower().replace(' ', '-')}.md").read_text()


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in `text`, header and rule left out."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines[2:]]


def test_every_file_the_readme_names_exists() -> None:
    missing = sorted({path for path in CITED_FILE.findall(README) if not (ROOT / path).exists()})
    assert missing == []


def test_every_test_the_readme_cites_exists_where_it_says() -> None:
    cited = CITED_TEST.findall(README)
    assert len(cited) > 40
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (ROOT / path).exists() or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)
    ]
    assert missing == []


def test_every_reliability_row_cites_the_tests_that_hold_it() -> None:
    rows = table(section("Reliability"))
    assert len(rows) >= 20
    uncited = [row[0][:60] for row in rows if not CITED_TEST.search(row[1])]
    assert uncited == []


def test_every_speed_figure_names_the_script_that_reproduces_it() -> None:
    rows = table(section("Speed"))
    assert len(rows) >= 8
    script = None
    for what, _, _, reproduce in rows:
        named = re.search(r"`python (scripts/\w+\.py)", reproduce)
        script = named.group(1) if named else script if reproduce == "same script" else None
        assert script is not None and (ROOT / script).exists(), f"{what[:60]}: {reproduce}"


def test_the_checks_above_fail_on_a_wrong_citation() -> None:
    assert CITED_TEST.findall("`tests/data/test_store.py::test_nothing_like_this`") == [
        ("tests/data/test_store.py", "test_nothing_like_this")
    ]
    assert not re.search(r"^def test_nothing_like_this\(", (ROOT / "tests/data/test_store.py").read_text(), re.M)
    assert CITED_FILE.findall("see scripts/bench_nothing.py and `tests/x/test_y.py`") == [
        "scripts/bench_nothing.py",
        "tests/x/test_y.py",
    ]


def test_every_figure_a_benchmark_backs_is_marked_in_the_readme_and_a_changed_one_is_caught() -> None:
    """`make bench-check` compares each measured figure with the number the README prints (marked
    `<!-- name -->`): every name a script backs is marked, and a printed number changed by 30 %
    is reported against the figure that was measured for it."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_check import TOLERANCE, against_readme, printed

    backed = set()
    for script in (ROOT / "scripts").glob("bench_*.py"):
        backed |= set(re.findall(r'readme=f?"([\w.{}\[\]-]+)"', script.read_text()))
    numbers = printed(README)
    fixed = {name for name in backed if "{" not in name}
    assert fixed and fixed <= set(numbers), sorted(fixed - set(numbers))
    for name, shown in sorted(numbers.items()):
        check = {"figure": shown, "readme": name}
        assert against_readme(check, numbers) is None
        marked = re.search(r"\*\*([^*]*?)([\d,]*\.?\d+)([^*]*)\*\*<!-- " + re.escape(name) + " -->", README)
        assert marked is not None
        changed = README.replace(marked.group(0), marked.group(0).replace(marked.group(2), f"{shown * 1.3:.4g}", 1), 1)
        moved = printed(changed)
        assert moved[name] == pytest.approx(shown * 1.3, rel=0.01) and against_readme(check, moved) is not None
        assert against_readme({"figure": shown * (1 + TOLERANCE / 2), "readme": name}, numbers) is None
