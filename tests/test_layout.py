"""The seams hold: only the store builds store paths; nothing tests a strategy's name; Ray stays in cluster/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("data", "trainer", "strategies", "cluster")
STORE_MODULES = {"data/storage.py"}
LAYOUT = re.compile(r"^(models|batches|sweeps|stream|quarantine|locks)/|^member-")
MARKERS = {"CURRENT", "store.json", "manifest.json", "batch.json", "data.parquet", "reason.txt", "sweep.yaml"}
PRIVATE_STORE = re.compile(r"\.(_path|_read|_read_json|_write|_write_json|_exists|_list\w*|_fs|_root|_claim|_delete)\b")


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            out.append((node.lineno, str(node.values[0].value)))
    return out


def test_no_module_outside_the_store_builds_a_store_path() -> None:
    found = []
    for path in sources():
        rel = str(path.relative_to(ROOT))
        if rel in STORE_MODULES:
            continue
        text = path.read_text()
        for lineno, value in _strings(ast.parse(text)):
            if LAYOUT.match(value) or value in MARKERS:
                found.append(f"{rel}:{lineno} names a store path: {value!r}")
        for lineno, line in enumerate(text.splitlines(), 1):
            if PRIVATE_STORE.search(line) and not rel.startswith("data/manifest"):
                found.append(f"{rel}:{lineno} reaches into the store's raw I/O: {line.strip()}")
    assert found == []


def test_the_scan_would_catch_a_path_built_elsewhere() -> None:
    bad = ast.parse('store._write(f"sweeps/{sweep_id}/x.json", b"")\nname = "manifest.json"')
    assert any(LAYOUT.match(v) for _, v in _strings(bad))
    assert any(v in MARKERS for _, v in _strings(bad))
    assert PRIVATE_STORE.search('store._write("x", b"")')
    for line in ('if strategy.name.startswith("finetune_"):', 'require_new=strategy_name != "keep"'):
        assert NAME_TESTS.search(line) and STRATEGY_NAMES.search(line)


STRATEGY_NAMES = re.compile(r"""["'](keep|finetune_|fresh_|ensemble_|graft|new_head)""")
NAME_TESTS = re.compile(r"""(\.name|strategy_name|name)\s*(==|!=|in\b|\.startswith)""")


def test_no_code_tests_a_strategys_name() -> None:
    """Capabilities are declared when a strategy registers and asked for; names are only registered."""
    found = []
    for path in sources():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if NAME_TESTS.search(code) and STRATEGY_NAMES.search(code):
                found.append(f"{path.relative_to(ROOT)}:{lineno} tests a strategy's name: {line.strip()}")
    assert found == []


def test_only_cluster_imports_ray() -> None:
    found = []
    for path in sources():
        rel = str(path.relative_to(ROOT))
        if rel.startswith("cluster/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{rel} imports {name}" for name in names if name.split(".")[0] == "ray"]
    assert found == []


def test_the_scans_read_every_package() -> None:
    assert {str(p.relative_to(ROOT)).split("/")[0] for p in sources()} == set(PACKAGES)
