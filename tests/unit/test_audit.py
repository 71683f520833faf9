"""rewards.audit (handoff parser vs new parser) and rewards.bench CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from commerce import build
from rewards.audit import audit, handoff_extract_json, load_cases, renderings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("audit") / "data", seed=2, orders=3000)


def test_handoff_parser_restored_behaviour():
    assert handoff_extract_json('```json\n{"sentiment_score": 4,5}\n```') == {"sentiment_score": 4.5}
    assert handoff_extract_json('{"a": 1,}') is None
    assert handoff_extract_json("{'a': 1}") is None
    assert handoff_extract_json('{"a": True}') is None


def test_audit_counts_renderings(data):
    cases = load_cases(Path(data["eval"]), None)
    result = audit(cases)
    t = result["total"]
    assert t["n"] == 104 * len(renderings({"sentiment_score": 1.0}))
    assert t["new_parsed"] == t["new_correct"] == t["n"]
    assert t["handoff_parsed"] < t["n"]
    assert result["per_kind"]["trailing_comma"]["handoff_parsed"] == 0
    assert result["per_kind"]["json_fence"]["handoff_parsed"] == 104


def test_audit_cli(data, tmp_path):
    out = tmp_path / "audit.json"
    r = subprocess.run([sys.executable, "-m", "rewards.audit", data["eval"], "--json", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "handoff parser fails" in r.stdout and "trailing_comma" in r.stdout
    assert json.loads(out.read_text())["total"]["n"] > 0


def test_audit_with_real_completions(data, tmp_path):
    comp = tmp_path / "completions.jsonl"
    lines = [json.dumps('{"sentiment": "negative", "sentiment_score": 1,5}'),
             json.dumps({"completion": "```json\n{'sentiment': 'positive',}\n```"}),
             json.dumps("sem json")]
    comp.write_text("\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "rewards.audit", data["eval"], "--completions", str(comp)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "handoff parser fails 2/3; new parser fails 1/3" in r.stdout


def test_bench_cli(data, tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "rewards.bench", "--repeats", "3", "--db", data["db"],
                        "--pairs", data["train"], "--json", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    figures = json.loads(out.read_text())
    assert set(figures) == {"extraction", "sql_qa", "insights", "push"}
    assert all(f["ms_per_32_p50"] > 0 for f in figures.values())
