"""Checks the two import rules of docs/architecture.md over every module of the package.

1. A module never imports another package's private module (``drivetrain.x._y`` from outside ``x``).
2. The layers: a module imports only the modules its layer may depend on (``ALLOWED`` below).

Every import counts, at the top of a module or inside a function. Prints each breach as
``path:line: message`` and exits 1 when there is one. Run by ``make lint`` and by the test suite.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "drivetrain"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

BASE = {"errors", "clock", "stats", "__init__"}
STAGES = ["spec", "data", "model", "simulate", "optimize", "policy", "serve"]
#: What each top-level part of the package may import besides the base modules and itself.
ALLOWED: dict[str, set[str]] = {
    **{stage: set(STAGES[:i]) for i, stage in enumerate(STAGES)},
    "evaluate": {"spec", "data"},
    "twin": {"spec", "data"},
    "report": {"spec", "data", "evaluate", "adapt", "contract"},
    "contract": {"spec", "data", "evaluate", "policy"},
    "assembly": {*STAGES, "evaluate"},
    "adapt": {*STAGES, "evaluate", "assembly", "pacing"},
    "explain": {*STAGES, "evaluate", "assembly"},
    "loop": {*STAGES, "evaluate", "assembly", "adapt", "twin"},
    "twin_loop": {*STAGES, "evaluate", "assembly", "adapt", "twin", "pacing"},
    "demo": {*STAGES, "evaluate", "assembly", "adapt", "explain", "twin", "loop", "twin_loop", "report"},
    "cli": {*STAGES, "evaluate", "assembly", "adapt", "explain", "twin", "loop", "twin_loop", "report", "demo", "contract"},
}
ALLOWED["__main__"] = {"cli"}
ALLOWED["exploration"] = set()
ALLOWED["pacing"] = {"spec", "data", "policy"}
ALLOWED["policy"] |= {"exploration"}
ALLOWED["clock"] = {"errors"}
ALLOWED["stats"] = {"errors"}
ALLOWED["errors"] = set()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if alias.name.startswith("_")
                      and not alias.name.startswith("__")]
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def breaches(root: Path = ROOT) -> list[str]:
    out: dict[tuple[str, int], str] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        here = ".".join(rel.with_suffix("").parts)
        part = _part(here)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        for line, name in _imports(tree):
            target = _part(name)
            pieces = name.split(".")
            private = [p for p in pieces[2:] if p.startswith("_") and not p.startswith("__")]
            if private and target != part:
                out.setdefault((str(rel), line), f"{rel}:{line}: imports {name}, a private name of drivetrain.{target}:"
                                                  f" export it from drivetrain.{target} instead")
            if target != part and target not in BASE and target not in ALLOWED.get(part, set()):
                out.setdefault((str(rel), line), f"{rel}:{line}: drivetrain.{part} imports drivetrain.{target}, against the"
                                                  f" layers (it may import {sorted(ALLOWED.get(part, set())) or 'no other part'})")
    return list(out.values())


def main() -> int:
    found = breaches()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
