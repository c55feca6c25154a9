"""The import rules and size limits of docs/architecture.md, checked by reading the source (no module is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dqnrun"
# The layers that may see a config object: the entry layer, the config layer, the lifecycle, the builders (each
# algorithm's `build` module is part of them), policy loading and evaluation (they rebuild from a stored config),
# and the sweep's Hydra callback. Everything else receives built objects and plain values.
CONFIG_AWARE = ("dqnrun", "dqnrun.__main__", "dqnrun.api", "dqnrun.builders", "dqnrun.cli", "dqnrun.config",
                "dqnrun.evaluate", "dqnrun.export", "dqnrun.policy", "dqnrun.run.lifecycle", "dqnrun.sweep",
                # a population's launcher, grouping and engine: the lifecycle of many runs at once
                "dqnrun.population.launch", "dqnrun.population.grouping", "dqnrun.population.engine",
                "dqnrun.population.evaluation", "dqnrun.population.spec")
# What a module below the builders must never import: the layers above it.
UPPER = ("dqnrun.api", "dqnrun.builders", "dqnrun.cli", "dqnrun.config.compose", "dqnrun.config.preflight",
         "dqnrun.evaluate", "dqnrun.export", "dqnrun.policy", "dqnrun.report", "dqnrun.run.lifecycle", "dqnrun.sweep")
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 300, 160


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def is_config_aware(module: str) -> bool:
    return module == "dqnrun" or any(module == p or module.startswith(p + ".") for p in CONFIG_AWARE[1:]) or (
        module.startswith("dqnrun.algos.") and module.endswith((".build", ".rules")))


def imported_names(module: str) -> set[str]:
    """Every module name an import statement in ``module`` names, at any depth (function-level imports too)."""
    path = MODULES[module]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    return names


def dqnrun_imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports (a name that is an attribute counts as its module)."""
    out = set()
    for name in imported_names(module):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module and not module.startswith(name + "."):  # a package's own face is no import
            out.add(name)
    return out


def test_the_import_graph_of_the_whole_package_has_no_cycle() -> None:
    graph = {m: dqnrun_imports(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_nothing_imports_the_command_line() -> None:
    for m in MODULES:
        if m.startswith("dqnrun.cli") or m == "dqnrun.__main__":
            continue
        bad = {n for n in dqnrun_imports(m) if n.startswith("dqnrun.cli")}
        assert not bad, f"{m} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not is_config_aware(m)))
def test_modules_below_the_builders_never_see_a_config(module: str) -> None:
    bad = {n for n in imported_names(module) if n.split(".")[0] in ("omegaconf", "hydra")}
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not is_config_aware(m) and not m.startswith(
    "dqnrun.report")))
def test_imports_point_downward(module: str) -> None:
    upward = {n for n in dqnrun_imports(module) if any(n == u or n.startswith(u + ".") for u in UPPER)}
    assert not upward, f"{module} imports {upward}"


def test_only_the_builders_instantiate_configs() -> None:
    for m, path in MODULES.items():
        if m == "dqnrun.builders":
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", getattr(n.func, "attr", None)) == "instantiate"]
        assert not calls, f"{m} calls instantiate"


def test_the_report_reads_run_files_only() -> None:
    """`dqnrun report` reads run directories of any dqnrun version: it imports no training code, only the
    stdlib-only definitions of the run's files and of the key spellings."""
    allowed = {"dqnrun.run.artifacts", "dqnrun.config.keys"}
    for m in MODULES:
        if m.startswith("dqnrun.report"):
            other = {n for n in dqnrun_imports(m) if not n.startswith("dqnrun.report")}
            assert other <= allowed, f"{m} imports {other - allowed}"
    for m in allowed:
        third_party = {n.split(".")[0] for n in imported_names(m)} - {"dqnrun", "__future__"}
        import sys

        assert third_party <= set(sys.stdlib_module_names), f"{m} imports {third_party}"


def spans(path: Path) -> list[tuple[str, str, int]]:
    """(kind, qualified name, lines) of every class and function (methods and nested functions included)."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((kind, prefix + child.name, child.end_lineno - first + 1))  # type: ignore[operator]
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(path.read_text()), "")
    return out


def test_no_class_is_longer_than_300_lines_and_no_function_longer_than_160() -> None:
    too_long = [f"{m}.{name}: {kind} of {n} lines"
                for m, path in MODULES.items() for kind, name, n in spans(path)
                if n > (MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES)]
    assert not too_long, too_long


def test_the_size_check_sees_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(200))
    (tmp := Path(__file__).with_name("_long_tmp.py")).write_text(f"def f():\n{body}\n")
    try:
        assert spans(tmp) == [("function", "f", 201)]
    finally:
        tmp.unlink()
