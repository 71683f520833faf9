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
LAZY_ONLY = {"commerce/sources.py": {"datasets", "huggingface_hub"}}
"""Third-party imports a stdlib-only package may make in one file, inside a function only: ``commerce.sources`` reads
parquet/JSON/CSV files and Hub datasets through ``datasets`` when a pair source is not JSONL (``import commerce`` and a
JSONL run or check never load it: :func:`test_a_jsonl_run_and_check_never_import_datasets`)."""


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


def top_level_importers(module: str) -> set[str]:
    """Files of :data:`LAZY_ONLY` importing ``module`` at module level (not inside a function)."""
    out = set()
    for rel in LAZY_ONLY:
        for node in ast.parse((REPO / rel).read_text()).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if any(n.split(".")[0] == module for n in names):
                out.add(rel)
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
        third = {m: sorted(f for f in files if m not in LAZY_ONLY.get(f, ()) or f in top_level_importers(m))
                 for m, files in used.items()
                 if m not in OURS and m not in sys.stdlib_module_names and m not in NO_THIRD_PARTY_BEYOND[pkg]
                 and m != "__future__"}
        third = {m: f for m, f in third.items() if f}
        assert not third, f"{pkg} imports third-party {third}"
    if pkg == "sync":
        assert not {"vllm", "deepspeed", "transformers", "peft"} & set(used), "sync imports an engine"


def test_rewards_and_sync_wire_import_without_heavy_packages():
    import subprocess

    code = ("import sys, rewards, sync, sync.wire, sync.limits, commerce, configs; "
            f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_jsonl_run_and_check_never_import_datasets(tmp_path):
    """``datasets`` (and pyarrow) load only for a parquet/JSON/CSV/Hub source: a JSONL check stays stdlib."""
    import json
    import subprocess

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"task": "push", "prompt": "Escreva uma notificação para o pedido 12."}) + "\n")
    code = ("import sys, commerce, commerce.check, commerce.rows; from commerce.__main__ import main; "
            f"rc = main(['check', '--pairs', {str(f)!r}]); "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'huggingface_hub') if m in sys.modules), rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[] 0", out.stdout + out.stderr
