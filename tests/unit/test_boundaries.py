"""Package boundaries (DESIGN.md): what each package may import, checked on every import statement of its
files (function-level imports included), so a convenience import across the actor/learner line fails here."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = {"configs", "commerce", "rewards", "sync", "actor", "learner", "launch", "zoo"}
# Our packages each one may import (third-party rules below). learner -> commerce: the pair-row reader and
# the task classifier live in commerce, which the rewards already build on.
ALLOWED = {
    "configs": set(),
    "commerce": set(),
    "rewards": {"commerce"},
    "sync": set(),
    "actor": {"sync", "configs", "rewards"},
    "learner": {"sync", "configs", "rewards", "commerce"},
    "zoo": {"commerce"},
    "launch": {"configs", "sync", "learner", "commerce", "zoo", "rewards"},
}
BENCH_EXTRA = {"zoo", "configs"}
"""A package's ``bench.py`` (and ``*_bench.py``) builds offline models of the real shapes (zoo) from a run config:
a tool, not the runtime, so it may reach those two."""
HEAVY = {"torch", "vllm", "deepspeed", "transformers", "numpy", "peft", "trl"}
NO_THIRD_PARTY_BEYOND = {"configs": {"pydantic", "yaml"}, "commerce": set(), "rewards": set()}


def imports(pkg: str) -> dict[str, set[str]]:
    """Top-level module -> files of ``pkg`` importing it."""
    out: dict[str, set[str]] = {}
    for f in sorted((REPO / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                out.setdefault(n.split(".")[0], set()).add(f.relative_to(REPO).as_posix())
    return out


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_package_imports_only_what_design_allows(pkg):
    used = imports(pkg)
    wrong = {}
    for m, files in used.items():
        if m in OURS - {pkg} - ALLOWED[pkg]:
            bad = sorted(f for f in files if not (f.endswith("bench.py") and m in BENCH_EXTRA))
            if bad:
                wrong[m] = bad
    assert not wrong, f"{pkg} imports {wrong}"
    if pkg in NO_THIRD_PARTY_BEYOND:
        third = {m: sorted(f) for m, f in used.items()
                 if m not in OURS and m not in sys.stdlib_module_names and m not in NO_THIRD_PARTY_BEYOND[pkg]
                 and m != "__future__"}
        assert not third, f"{pkg} imports third-party {third}"
    if pkg == "sync":
        assert not {"vllm", "deepspeed", "transformers", "peft"} & set(used), "sync imports an engine"


def test_rewards_and_sync_wire_import_without_heavy_packages():
    import subprocess

    code = ("import sys, rewards, sync, sync.wire, sync.limits, commerce, configs; "
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
