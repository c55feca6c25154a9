"""The import rules of docs/architecture.md, checked by walking each module's imports (no module is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dqnrun"
# Modules that receive built objects and never see a config (only cli, train_task, api, lifecycle, evaluate,
# export, validate and builders do).
CONFIG_FREE = ["loop", "learner", "replay", "networks", "schedules", "mlp_update", "loggers", "metrics", "checkpoint",
               "envs/__init__", "envs/atari"]


def imports(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CONFIG_FREE)
def test_modules_below_the_builders_never_see_a_config(module: str) -> None:
    bad = {n for n in imports(module) if n.split(".")[0] in ("omegaconf", "hydra")}
    assert not bad, f"dqnrun/{module}.py imports {bad}"


@pytest.mark.parametrize("module", CONFIG_FREE)
def test_imports_point_downward(module: str) -> None:
    upward = {"dqnrun.cli", "dqnrun.train_task", "dqnrun.api", "dqnrun.lifecycle", "dqnrun.builders",
              "dqnrun.evaluate", "dqnrun.export", "dqnrun.report", "dqnrun.sweep"}
    assert not imports(module) & upward, f"dqnrun/{module}.py imports {imports(module) & upward}"


def test_only_the_builders_instantiate_configs() -> None:
    for path in PKG.rglob("*.py"):
        if path.name in ("builders.py",):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(
            n.func, "attr", None)) == "instantiate"]
        assert not calls, f"{path.relative_to(PKG)} calls instantiate"
