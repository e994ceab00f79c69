"""Mutation testing of the modules that hold the product's rules (`make mutate`).

mutmut (https://mutmut.readthedocs.io) changes one operator, constant or call at a time in a
module and runs the tests that reach the changed function; a mutant the tests do not notice
"survived". The score is the share of mutants killed.

mutmut finds a module by its file's path, and this checkout's folders install as subpackages of
`continual_trainer` (`data/store/core.py` is `continual_trainer.data.store.core`), so the
package is first laid out as installed in build/mutate/ (pyproject's package-dir), with the tests,
and mutmut runs there; the checkout is never modified.

    python scripts/mutate.py                 # every rule module, then the score
    python scripts/mutate.py sampling gate   # some groups (see GROUPS)
    python scripts/mutate.py --survivors     # the last run's survivors (cd build/mutate/GROUP; mutmut show NAME)

The modules, and the tests that guard them, are `GROUPS` below. Survivors judged
equivalent (no test can tell them apart) are listed, with why, in the Development page
(docs/development.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutate"

# Each rule: where it lives (as installed), and the tests that guard it. Each group is its own
# mutmut run (in build/mutate/<group>/), so a mutant runs only its group's tests that reach it.
GROUPS = {
    "gate": (
        ["continual_trainer/promotion.py", "continual_trainer/trainer/evaluate.py",
         "continual_trainer/trainer/forgetting.py"],
        ["tests/continual_trainer/test_gate.py", "tests/trainer/test_evaluate.py",
         "tests/continual_trainer/test_forgetting.py", "tests/continual_trainer/test_rules.py"],
    ),
    "versions": (
        ["continual_trainer/data/store/versions.py"],
        ["tests/data/test_store.py", "tests/data/test_races.py", "tests/continual_trainer/test_rules.py"],
    ),
    "store": (
        ["continual_trainer/data/store/core.py"],
        ["tests/data/test_store_rules.py", "tests/data/test_store.py", "tests/data/test_races.py"],
    ),
    "sampling": (["continual_trainer/data/sampling.py"], ["tests/data/test_sampling.py", "tests/data/test_store.py"]),
    "triggers": (["continual_trainer/triggers.py"], ["tests/continual_trainer/test_triggers.py"]),
    "typing": (
        ["continual_trainer/data/columns.py", "continual_trainer/serve/edge.py"],
        ["tests/data/test_columns.py", "tests/continual_trainer/test_serve_edge.py",
         "tests/continual_trainer/test_typing_rules.py"],
    ),
}  # fmt: skip

# Groups whose tests train networks: TensorFlow is imported (not run) before mutmut forks.
PRELOAD_TENSORFLOW = {"gate", "triggers"}

# Tests too slow to run once per mutant (each has a faster neighbour covering its rule).
DESELECT = [
    "tests/data/test_races.py::test_two_inits_on_one_path_one_wins_and_the_store_agrees_with_its_model",
    "tests/data/test_columns.py::test_a_new_column_kind_is_one_class",
    "tests/continual_trainer/test_triggers.py::test_stream_with_triggers_and_report_on_s3",
]

# Lines whose mutants no test can see: typing-only imports and log calls (regular expressions).
QUIET = ["if TYPE_CHECKING:", "log.debug(", "log.info("]

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def install_layout(target: Path) -> None:
    """The package's files laid out under `target` as installed (pyproject's packages and
    package-dir), copied, not built: several groups may be staged at once."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip lays it out (one staging at a time)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
        subprocess.run([*pip, "--target", str(target), str(ROOT)], check=True)
        return
    with open(ROOT / "pyproject.toml", "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    for package in setuptools["packages"]:
        parent = max((p for p in mapped if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / mapped[parent] / package[len(parent) + 1 :].replace(".", "/")
        dest = target / package.replace(".", "/")
        dest.mkdir(parents=True, exist_ok=True)
        for source in folder.iterdir():
            if source.is_file() and (source.suffix in (".py", ".html") or source.name == "py.typed"):
                shutil.copy2(source, dest / source.name)


def stage(group: str) -> Path:
    """build/mutate/<group>/: the package as installed, the tests, and mutmut's settings."""
    work = BUILD / group
    shutil.rmtree(work, ignore_errors=True)
    install_layout(work)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    modules, tests = GROUPS[group]
    if group in PRELOAD_TENSORFLOW:  # imported once in mutmut's fork server, not in every mutant's process
        with open(work / "tests" / "conftest.py", "a") as conftest:
            conftest.write("\nimport keras  # noqa: E402,F401  (scripts/mutate.py)\n")
    args = ["-p", "no:cacheprovider", "-m", "not ray and not stress"]
    args += [f"--deselect={t}" for t in DESELECT]
    (work / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n"
        'testpaths = ["tests"]\n'
        f"markers = {json.dumps(['slow: slow', 'ray: ray', 'stress: stress'])}\n"
        'filterwarnings = ["ignore::DeprecationWarning"]\n'
        "[tool.mutmut]\n"
        'source_paths = ["continual_trainer"]\n'
        f"only_mutate = {json.dumps(modules)}\n"
        f"pytest_add_cli_args = {json.dumps(args)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        # forked from a process that has imported the tests but run none: TensorFlow's thread
        # pools do not survive a fork from a process that has used them
        'process_isolation = "forkserver"\n'
        # a mutant's process imports what its test needs (seconds of CPU on a busy machine): a
        # timeout must mean a mutant that hangs, not an import
        "timeout_constant = 30.0\n"
        f"do_not_mutate_patterns = {json.dumps([re.escape(p) for p in QUIET])}\n"
    )
    return work


def results(work: Path) -> dict[str, str]:
    """Each mutant's status after a run (mutmut's own listing)."""
    if not (work / "mutants").is_dir():
        return {}
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, capture_output=True, text=True
    ).stdout
    status = {}
    for line in out.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name and "__mutmut_" in name:
            status[name] = state
    return status


def changed(mutant: str) -> list[str]:
    """The lines a mutant changes (`mutmut show`, run in its group's folder)."""
    for group in GROUPS:
        work = BUILD / group
        if (work / "mutants").is_dir() and any(module_of(mutant) == m[:-3].replace("/", ".") for m in GROUPS[group][0]):
            shown = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", mutant], cwd=work, capture_output=True, text=True
            ).stdout
            return [line for line in shown.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return []


def module_of(mutant: str) -> str:
    return mutant.split(".x_")[0].split(".xǁ")[0]


def report(status: dict[str, str]) -> int:
    """One line per module: mutants, how each ended, and the score (killed or timed out, over
    the mutants tested; a run stopped early leaves some `not checked`)."""
    by_module: dict[str, Counter[str]] = {}
    for name, state in status.items():
        by_module.setdefault(module_of(name), Counter())[state] += 1
    total = Counter[str]()
    heads = ("mutants", "tested", "killed", "timeout", "survived", "no tests", "score")
    print(f"{'module':<40} " + " ".join(f"{h:>8}" for h in heads))

    def line(name: str, counts: Counter[str]) -> None:
        n, tested = sum(counts.values()), sum(counts.values()) - counts["not checked"]
        killed = sum(counts[s] for s in KILLED)
        cells = (n, tested, killed - counts["timeout"], counts["timeout"], counts["survived"], counts["no tests"])
        score = f"{killed / tested:.1%}" if tested else "-"
        print(f"{name:<40} " + " ".join(f"{c:>8}" for c in cells) + f" {score:>8}")

    for module, counts in sorted(by_module.items()):
        total.update(counts)
        line(module, counts)
    if not total:
        print("no mutants: did mutmut run?")
        return 1
    line("all", total)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "groups", nargs="*", choices=[[], *GROUPS], help=f"rule groups (default: all of {', '.join(GROUPS)})"
    )
    ap.add_argument("--survivors", action="store_true", help="list the last run's survivors, do not run")
    ap.add_argument("--report", action="store_true", help="the last run's scores, do not run")
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    args = ap.parse_args()
    groups = args.groups or list(GROUPS)
    status: dict[str, str] = {}
    for group in groups:
        if not (args.survivors or args.report):
            work = stage(group)
            run = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
            subprocess.run(run, cwd=work, check=False, stdout=subprocess.DEVNULL)
        status.update(results(BUILD / group))
    if args.survivors:
        unchecked = sum(1 for state in status.values() if state == "not checked")
        if unchecked:
            print(f"({unchecked} mutants not checked: their group's run was stopped before it reached them)")
        for name, state in sorted(status.items()):
            if state not in KILLED and state != "not checked":
                print(f"{state:<10} {name}")
                for line in changed(name):
                    print(f"    {line}")
        return 0
    return report(status)


if __name__ == "__main__":
    sys.exit(main())
