"""``python -m rewards.audit PAIRS.jsonl [--completions FILE]``: the handoff's parser against the new one.

The handoff says: run the parser fix "against ``data/pairs/eval.jsonl`` first and measure how many
previously-failing extractions now parse correctly". For every extraction item the reference record
is rendered the ways small models write it (fences of any case, PT-BR decimal commas, prose around,
trailing commas, Python literals, single quotes, a second object after the first, compact JSON), or
real completions are read from ``--completions`` (one JSON string per line, or jsonl objects with a
``completion`` key and optionally ``reference``). Both parsers run on each text; the table shows,
per rendering, how many each one parses and parses *correctly* (equal to the reference), and the
mean extraction reward each would give. Exit status 0.

``handoff_extract_json`` is the handoff's ``_extract_json`` (indentation restored), kept verbatim in
behaviour, bugs included: once a PT-BR decimal forces its rewrite, it merges ``[1,2,3]`` into
``[1.2,3]``; it spans two objects with its greedy
``\\{[\\s\\S]*\\}`` and knows no single quotes, trailing commas or Python literals.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .common import as_dict, combine
from .extraction import COMPONENTS, schema_score, values_score
from .jsonx import extract_json


def _normalize_pt_decimals(s: str) -> str:
    """Convert PT-BR decimals (4,5) to JSON-valid (4.5), only outside quoted strings."""
    result, in_string, escape_next = [], False, False
    i = 0
    while i < len(s):
        c = s[i]
        if escape_next:
            result.append(c)
            escape_next = False
            i += 1
            continue
        if c == '\\' and in_string:
            result.append(c)
            escape_next = True
            i += 1
            continue
        if c == '"':
            in_string = not in_string
            result.append(c)
            i += 1
            continue
        if not in_string:
            m = re.match(r'(\d+),(\d+)', s[i:])
            if m:
                result.append(m.group(1) + '.' + m.group(2))
                i += len(m.group(0))
                continue
        result.append(c)
        i += 1
    return ''.join(result)


def handoff_extract_json(text: str) -> dict | None:
    """The handoff's ``_extract_json``, verbatim in behaviour (it can raise on odd input: callers catch).

    >>> handoff_extract_json('{"sentiment_score": 4,5}')
    {'sentiment_score': 4.5}
    >>> handoff_extract_json('{"ids": [1,2,3], "nota": 4,5}')
    {'ids': [1.2, 3], 'nota': 4.5}
    """
    stripped = re.sub(r'^```(?:json)?\s*|\s*```$', '', text.strip(), flags=re.MULTILINE).strip()
    for attempt in [stripped, _normalize_pt_decimals(stripped)]:
        try:
            result = json.loads(attempt)
            if isinstance(result, dict):
                return result
        except (json.JSONDecodeError, TypeError):
            pass
        # Try finding first {...} block
        match = re.search(r'\{[\s\S]*\}', attempt)
        if match:
            try:
                result = json.loads(match.group())
                if isinstance(result, dict):
                    return result
            except (json.JSONDecodeError, TypeError):
                pass
    return None


def _pt(x: float) -> str:
    return repr(float(x)).replace(".", ",")


def _with_pt_score(js: str, ref: dict) -> str:
    v = ref.get("sentiment_score")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return re.sub(r'("sentiment_score":\s*)-?[\d.eE+-]+', lambda m: m.group(1) + _pt(v), js, count=1)
    return js


def renderings(ref: dict) -> dict[str, str]:
    """The same record written the ways small models write it (deterministic)."""
    pretty = json.dumps(ref, ensure_ascii=False, indent=2)
    compact = json.dumps(ref, ensure_ascii=False, separators=(",", ":"))
    pt_pretty = _with_pt_score(pretty, ref)
    trailing = re.sub(r"\n}$", ",\n}", pt_pretty)
    python_lits = pt_pretty.replace(": true", ": True").replace(": false", ": False").replace(": null", ": None")
    return {
        "json_fence": f"```json\n{pretty}\n```",
        "pt_decimal_fence": f"```json\n{pt_pretty}\n```",
        "pt_decimal_bare": pt_pretty,
        "prose_around": f"Aqui está a análise da avaliação:\n```json\n{pt_pretty}\n```\nEspero ter ajudado!",
        "upper_fence_no_lang": f"```JSON\n{pt_pretty}\n```" if len(ref) % 2 else f"```\n{pt_pretty}\n```",
        "trailing_comma": f"```json\n{trailing}\n```",
        "python_literals": python_lits,
        "single_quotes": repr(ref).replace(repr(ref.get("sentiment_score")), _pt(ref.get("sentiment_score") or 0), 1),
        "two_objects": f"```json\n{pt_pretty}\n```\nObservação:\n```json\n{{\"confianca\": 0,9}}\n```",
        "compact_pt": _with_pt_score(compact, ref),
    }


def _equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _reward(record: dict | None, ref: dict | None) -> float:
    if record is None:
        return 0.0
    parts = {"valid_json": 1.0, "schema": schema_score(record), "values": values_score(record, ref) if ref else None}
    return combine(COMPONENTS, parts)


def _safe_handoff(text: str) -> dict | None:
    try:
        return handoff_extract_json(text)
    except Exception:  # noqa: BLE001 - e.g. RecursionError on deep nesting
        return None


def audit(cases: list[tuple[str, str, dict | None]]) -> dict:
    """Run both parsers over (kind, text, reference) cases; return per-kind counts and examples."""
    table: dict[str, dict[str, float]] = {}
    examples: list[dict] = []
    for kind, text, ref in cases:
        old, new = _safe_handoff(text), extract_json(text)
        row = table.setdefault(kind, {"n": 0, "handoff_parsed": 0, "handoff_correct": 0, "new_parsed": 0,
                                      "new_correct": 0, "handoff_reward": 0.0, "new_reward": 0.0})
        row["n"] += 1
        row["handoff_parsed"] += old is not None
        row["new_parsed"] += new is not None
        if ref is not None:
            row["handoff_correct"] += old is not None and _equal(old, ref)
            row["new_correct"] += new is not None and _equal(new, ref)
        row["handoff_reward"] += _reward(old, ref)
        row["new_reward"] += _reward(new, ref)
        if (old is None) != (new is None) and len(examples) < 8:
            examples.append({"kind": kind, "text": text[:160], "handoff": old is not None, "new": new is not None})
    total = {k: sum(r[k] for r in table.values()) for k in next(iter(table.values()), {})}
    for row in list(table.values()) + ([total] if total else []):
        for k in ("handoff_reward", "new_reward"):
            row[k] = round(row[k] / row["n"], 4) if row.get("n") else 0.0
    return {"per_kind": table, "total": total, "examples": examples}


def load_cases(pairs: Path, completions: Path | None) -> list[tuple[str, str, dict | None]]:
    refs = []
    with pairs.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("task") == "extraction":
                ref = as_dict(row.get("reference")) or extract_json(row.get("answer") or "")
                refs.append(ref)
    if completions is None:
        return [(kind, text, ref) for ref in refs if ref for kind, text in renderings(ref).items()]
    cases = []
    with completions.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = line.rstrip("\n")
            if isinstance(obj, dict):
                text = str(obj.get("completion", ""))
                ref = as_dict(obj.get("reference")) or (refs[i] if i < len(refs) else None)
            else:
                text, ref = str(obj), None
            cases.append(("completion", text, ref))
    return cases


def format_report(result: dict) -> str:
    head = (f"{'rendering':22s} {'n':>5s} {'handoff ok':>10s} {'correct':>8s} {'new ok':>7s} {'correct':>8s} "
            f"{'reward old':>10s} {'reward new':>10s}")
    lines = [head, "-" * len(head)]
    rows = list(result["per_kind"].items()) + ([("TOTAL", result["total"])] if result["total"] else [])
    for kind, r in rows:
        lines.append(f"{kind:22s} {r['n']:5d} {r['handoff_parsed']:10d} {r['handoff_correct']:8d} "
                     f"{r['new_parsed']:7d} {r['new_correct']:8d} {r['handoff_reward']:10.3f} {r['new_reward']:10.3f}")
    t = result["total"]
    if t:
        fixed = t["new_parsed"] - t["handoff_parsed"]
        lines.append(f"\nhandoff parser fails {t['n'] - t['handoff_parsed']}/{t['n']}; new parser fails "
                     f"{t['n'] - t['new_parsed']}/{t['n']}; {fixed} previously-failing completions now parse "
                     f"({t['new_correct']} parse to exactly the reference, handoff: {t['handoff_correct']}).")
    if result["examples"]:
        lines.append("\nexamples where the parsers disagree:")
        for e in result["examples"]:
            who = "only new parses" if e["new"] else "only handoff parses"
            lines.append(f"  [{e['kind']}] {who}: {e['text']!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewards.audit", description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", type=Path, help="pairs jsonl (e.g. data/pairs/eval.jsonl)")
    ap.add_argument("--completions", type=Path, default=None,
                    help="real completions: one JSON string per line, or jsonl with a 'completion' key")
    ap.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    args = ap.parse_args(argv)
    cases = load_cases(args.pairs, args.completions)
    if not cases:
        print(f"audit: no extraction items in {args.pairs}", file=sys.stderr)
        return 0
    result = audit(cases)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
