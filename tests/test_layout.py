"""The seams hold: one layer per folder, imports point down and never in a circle; only the store builds
store paths; nothing tests a strategy's name; Ray stays in cluster/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
# The folders, bottom layer first: each imports only the ones before it at module level
# (a function may import a layer above it when it runs, e.g. the Ray executor chosen by name).
PACKAGES = ("data", "trainer", "strategies", "continual_trainer", "cluster")
STORE_MODULES = {
    "data/storage.py",
    *(f"data/store/{m}.py" for m in ("core", "batches", "versions", "runs", "predictions")),
}
LAYOUT = re.compile(r"^(models|batches|sweeps|stream|quarantine|locks|predictions)/|^member-")
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


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "continual_trainer" else ["continual_trainer", *parts])


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "continual_trainer"


def module_imports(text: str, modules: set[str]) -> set[str]:
    """The project modules a file imports when it is imported (its top-level statements;
    `if TYPE_CHECKING:` blocks and imports inside functions run later or never)."""
    found = set()
    for node in ast.parse(text).body:
        for inner in [node, *(node.body if isinstance(node, ast.Try) else [])]:
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                for alias in inner.names:
                    name = f"{inner.module}.{alias.name}"
                    found.add(name if name in modules else inner.module)
            elif isinstance(inner, ast.Import):
                found.update(alias.name for alias in inner.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {m: module_imports(p.read_text(), set(paths)) - {m} for m, p in paths.items()}


def upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(PACKAGES)}
    return sorted(
        f"{m} imports {t}, a layer above it"
        for m, ts in graph.items()
        for t in ts
        if rank[_folder(t)] > rank[_folder(m)]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of files that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_the_layers_and_never_in_a_circle() -> None:
    graph = import_graph()
    assert upward(graph) == []
    assert cycles(graph) == []


def test_the_layer_rules_would_catch_an_import_up_or_around() -> None:
    modules = {"continual_trainer.trainer.loop", "continual_trainer.sweep", "continual_trainer.data.rows"}
    up = module_imports("import os\nfrom continual_trainer.sweep import run_sweep\n", modules)
    assert upward({"continual_trainer.trainer.loop": up}) != []
    assert upward({"continual_trainer.sweep": {"continual_trainer.trainer.loop"}}) == []
    lazy = "def f():\n    from continual_trainer.sweep import run_sweep\n"
    assert module_imports(lazy, modules) == set()
    ring = {
        "continual_trainer.data.rows": {"continual_trainer.sweep"},
        "continual_trainer.sweep": {"continual_trainer.data.rows"},
    }
    assert cycles(ring) == [["continual_trainer.data.rows", "continual_trainer.sweep"]]


# What the CLI may import: the Python API (and the error types it raises), the parameter
# constraints that validate flags, and the terminal's progress reporter. Everything else it
# reaches through the API, which owns the wiring (executor, gate, policy, MLflow mirror).
CLI_IMPORTS = {
    "continual_trainer",
    "continual_trainer.api",
    "continual_trainer.data.errors",
    "continual_trainer.trainer.params",
    "continual_trainer.trainer.progress",
}


def cli_imports(text: str) -> set[str]:
    """Every project module a CLI module imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("continual_trainer"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("continual_trainer"))
    return found


def test_the_cli_goes_through_the_python_api() -> None:
    """Every room of the CLI package imports the API and the CLI's own modules, nothing else."""
    rooms = sorted((ROOT / "continual_trainer" / "cli").glob("*.py"))
    assert len(rooms) >= 8
    for room in rooms:
        imported = {m for m in cli_imports(room.read_text()) if not m.startswith("continual_trainer.cli")}
        assert imported - CLI_IMPORTS == set(), room.name


def test_no_function_of_the_cli_is_longer_than_a_screen() -> None:
    """The CLI's rooms keep each command's options, handler and output small (about 80 lines)."""
    long = [
        f"{room.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for room in (ROOT / "continual_trainer" / "cli").glob("*.py")
        for node in ast.walk(ast.parse(room.read_text()))
        if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert long == []


def test_the_cli_rule_would_catch_a_route_around_the_api() -> None:
    around = "def cmd_x(args):\n    from continual_trainer.scoring import predict\n"
    assert cli_imports(around) - CLI_IMPORTS == {"continual_trainer.scoring"}


# Modules meant to be imported by users, strategy and trigger authors, and executors' writers.
PUBLIC = (
    "continual_trainer",
    "continual_trainer.api",
    "continual_trainer.strategies",
    "continual_trainer.executor",
    "continual_trainer.triggers",
    "continual_trainer.promotion",
    "continual_trainer.sweep",
    "continual_trainer.stream",
    "continual_trainer.data.errors",
    "continual_trainer.cli",
)


def test_every_public_module_declares_its_surface_and_it_resolves() -> None:
    import importlib

    for name in PUBLIC:
        module = importlib.import_module(name)
        surface = getattr(module, "__all__", None)
        assert surface, f"{name} declares no __all__"
        missing = [n for n in surface if not hasattr(module, n)]
        assert missing == [], (name, missing)


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines, its docstring aside (documentation is not what makes code long)."""
    first = node.body[0]
    documented = (
        isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    )
    doc_lines = first.end_lineno - first.lineno + 1 if documented and len(node.body) > 1 else 0
    return node.end_lineno - node.lineno + 1 - doc_lines


def test_the_application_floor_keeps_files_and_functions_short() -> None:
    """The application layer (`continual_trainer/`: its rooms, the API, the CLI, serving) holds
    no file over 600 lines and no function over 80 (its docstring aside): a use case that grows
    gets a room of its own."""
    long_files, long_functions = [], []
    for path in sorted((ROOT / "continual_trainer").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        if len(text.splitlines()) > 600:
            long_files.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 80:
                long_functions.append(f"{name}:{node.name} ({_code_lines(node)} lines)")
    assert long_files == [] and long_functions == []
