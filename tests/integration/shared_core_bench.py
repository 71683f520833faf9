"""``python tests/integration/shared_core_bench.py MODEL_DIR [REPEATS] [--json PATH]``: max_staleness 0 vs 1
with actor and learner on the same core (the one-GPU layout's CPU counterpart), the overlap test's work
(tests/integration/test_e2e_overlap.py), REPEATS rounds of both in turn. Prints a table, writes JSON."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from e2e_helpers import Launch, e2e_overrides, read_metrics  # noqa: E402
from test_e2e_overlap import SETTINGS  # noqa: E402

PARTS = ("perf/step_s", "perf/train_s", "perf/generation_wait_s", "perf/sync_s")


def main(argv: list[str]) -> int:
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    args = [a for a in argv if a != "--json" and a != json_path]
    model, repeats = Path(args[0]), int(args[1]) if len(args) > 1 else 2
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for rep in range(repeats):
            for staleness in (0, 1):
                run = d / f"s{staleness}-{rep}"
                over = e2e_overrides(model, d / "pairs", **SETTINGS, **{"sync.max_staleness": staleness})
                with Launch(run, over, d / f"{run.name}.log", "--actor-cores", "0", "--learner-cores", "0") as la:
                    if la.wait(timeout=300) != 0:
                        print(la.log()[-3000:], file=sys.stderr)
                        return 1
                steps = [r for r in read_metrics(run) if "perf/step_s" in r][2:]
                rows.append({"round": rep + 1, "max_staleness": staleness,
                             **{k: round(statistics.median(r[k] for r in steps), 3) for k in PARTS}})
    print("| round | max_staleness | step s | train s | generation wait s | sync s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['round']} | {r['max_staleness']} | " + " | ".join(f"{r[k]:.3f}" for k in PARTS) + " |")
    med = {s: statistics.median(r["perf/step_s"] for r in rows if r["max_staleness"] == s) for s in (0, 1)}
    print(f"median step s: staleness 0 {med[0]:.3f}, staleness 1 {med[1]:.3f}, ratio {med[1] / med[0]:.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps({"settings": SETTINGS, "rows": rows, "median_step_s": med}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
