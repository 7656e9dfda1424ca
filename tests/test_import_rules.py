"""The import rule of docs/ARCHITECTURE.md, checked on every module's imports (lazy ones too).

Layers, lowest first; a module imports only its own layer or lower ones:
  0 base:    errors, io, precision, viz
  1 data:    data/
  2 nets:    diffusion/, models/  (models/ never imports diffusion/)
  3 core:    core/, config       (the shared core: tasks, run records, seeds, metrics, ...)
  4 stages:  train/, generate/, seg/, eval/  (never each other: what two stages share is core)
  5 chains:  chain, demo, factory (run the commands through the root command they are given)
  6 cli:     cli                  (composes every sub-app; nothing imports it: no cycle)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pairforge"

LAYERS = {
    "errors": 0,
    "io": 0,
    "precision": 0,
    "viz": 0,
    "data": 1,
    "diffusion": 2,
    "models": 2,
    "core": 3,
    "config": 3,
    "train": 4,
    "generate": 4,
    "seg": 4,
    "eval": 4,
    "chain": 5,
    "demo": 5,
    "factory": 5,
    "cli": 6,
}
STAGES = {"train", "generate", "seg", "eval"}
FORBIDDEN_PAIRS = {("models", "diffusion")}


def _part(module: str) -> str:
    """pairforge.seg.features -> seg; pairforge.cli -> cli; pairforge -> pairforge."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def _imports(path: Path):
    """Every pairforge module named by an import statement of `path` (any nesting level)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "pairforge":  # from pairforge import seg
                names = [f"pairforge.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "pairforge" or name.startswith("pairforge."):
                yield node.lineno, name


def violations(modules) -> list[str]:
    found = []
    for name, path in modules:
        source = _part(name)
        if source == "pairforge":  # the package __init__
            continue
        if source not in LAYERS:
            found.append(f"{name}: part {source!r} has no layer in test_import_rules.LAYERS")
            continue
        for line, imported in _imports(path):
            target = _part(imported)
            if target == source or target == "pairforge":
                continue
            where = f"{name}:{line} imports {imported}"
            if target not in LAYERS:
                found.append(f"{where}: {target!r} has no layer")
            elif LAYERS[target] > LAYERS[source]:
                found.append(f"{where}: {source} (layer {LAYERS[source]}) must not import upward")
            elif source in STAGES and target in STAGES:
                found.append(f"{where}: stages never import each other; share it through core")
            elif (source, target) in FORBIDDEN_PAIRS:
                found.append(f"{where}: {source} must not import {target}")
    return found


def test_every_import_follows_the_layer_rule():
    assert violations(_modules()) == []


@pytest.mark.parametrize(
    ("module", "statement", "reason"),
    [
        ("pairforge.seg.head", "from pairforge.eval.sets import load_eval_set", "stages"),
        ("pairforge.eval.fid", "import pairforge.train.run", "stages"),
        ("pairforge.core.run", "from pairforge.train.checkpoint import x", "upward"),
        ("pairforge.models.sdm", "from pairforge.diffusion import guidance", "models"),
        ("pairforge.models.sr", "from pairforge.diffusion.schedule import x", "models"),
        ("pairforge.demo", "def f():\n    from pairforge.cli import app", "upward"),
        ("pairforge.data.views", "from pairforge import core", "upward"),
    ],
)
def test_the_checker_catches_a_forbidden_direction(tmp_path, module, statement, reason):
    path = tmp_path / "module.py"
    path.write_text(statement + "\n")
    found = violations([(module, path)])
    assert len(found) == 1 and reason in found[0]
