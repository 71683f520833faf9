"""Reading and writing pair files in tests (rows as dicts; a string row is written as it is, for broken lines)."""

from __future__ import annotations

import json
from pathlib import Path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path
