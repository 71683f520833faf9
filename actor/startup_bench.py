"""An actor engine's start-up, throughput and shutdown: inline (``actor.inline_engine``) against separate processes.

``python -m actor.startup_bench [--model DIR] [--json P]`` (default model: the tiny shape, built into a temporary
directory)

Each variant runs in a fresh Python process, as an actor would: ``separate`` is vLLM's default on this CPU platform
(EngineCore and a worker process, each importing torch and vLLM again), ``inline`` runs EngineCore and the worker in
the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Both serve ``merged`` and ``adapter`` mode, float32,
eager (``actor.enforce_eager``, as the tests run them). Columns: seconds from process start to the engine built
(``ready_s``, imports included) and of ``RolloutEngine`` alone (``engine_s``), generation of 16 x 128 tokens (median
of three, after one warm-up request), a weight load with its readback, and ``close``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAT = [{"role": "user", "content": "Resuma a avaliação: o produto chegou atrasado e com defeito."}]


def measure(model: str, adapter: str, inline: bool, mode: str) -> dict:
    """One variant, in this process (a fresh one: ``main`` starts a subprocess per variant)."""
    import shutil
    import statistics

    from configs import load_config
    from sync.wire import SamplingSpec

    from actor.engine import RolloutEngine

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke_cpu.yaml",
                      [f"model_id={model}", f"actor.serve_mode={mode}", "actor.enforce_eager=true",
                       f"actor.inline_engine={str(inline).lower()}"])
    t0 = time.perf_counter()
    eng = RolloutEngine(cfg, delete_retired=False)
    engine_s = time.perf_counter() - t0
    ready_s = time.time() - float(os.environ["STARTUP_BENCH_T0"])  # from the subprocess's launch
    eng.generate([CHAT], SamplingSpec(16, 1.0, 1.0, 24, 5))
    gens = []
    for i in range(3):
        t0 = time.perf_counter()
        eng.generate([CHAT], SamplingSpec(16, 1.0, 1.0, 128, 5 + i), ignore_eos=True)
        gens.append(time.perf_counter() - t0)
    served = Path(tempfile.mkdtemp(prefix="startup-bench-")) / "v1"
    shutil.copytree(adapter, served)
    t0 = time.perf_counter()
    eng.load_adapter(1, served)
    load_s = time.perf_counter() - t0
    pids = len(eng.engine_pids)
    t0 = time.perf_counter()
    eng.close()
    close_s = time.perf_counter() - t0
    gen = statistics.median(gens)
    return {"variant": "inline" if inline else "separate", "mode": mode, "engine_processes": pids,
            "ready_s": round(ready_s, 2), "engine_s": round(engine_s, 2), "gen_16x128_s": round(gen, 3),
            "tokens_per_s": round(16 * 128 / gen), "load_s": round(load_s, 3), "close_s": round(close_s, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actor.startup_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the tiny shape, built now)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant ("inline:merged"), print its row
    args = ap.parse_args(argv)
    if args.one:
        inline, mode = args.one.split(":")
        print("ROW " + json.dumps(measure(args.model, os.environ["STARTUP_BENCH_ADAPTER"], inline == "inline", mode)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from zoo import build_model

            model = str(build_model(Path(tmp) / "tiny", shape="tiny", seed=0))
        from configs import load_config

        from actor.bench import make_adapter

        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke_cpu.yaml", [f"model_id={model}"])
        adapter = str(make_adapter(cfg, Path(tmp) / "adapter", seed=1))
        rows = []
        for variant in ("separate", "inline"):
            for mode in ("merged", "adapter"):
                env = {**os.environ, "STARTUP_BENCH_T0": repr(time.time()), "STARTUP_BENCH_ADAPTER": adapter}
                p = subprocess.run([sys.executable, "-m", "actor.startup_bench", "--model", model, "--one",
                                    f"{variant}:{mode}"], capture_output=True, text=True, env=env, timeout=600)
                line = next((ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")), None)
                if line is None:
                    print(f"startup_bench: {variant}:{mode} failed:\n{p.stderr[-3000:]}", file=sys.stderr)
                    return 1
                rows.append(json.loads(line[4:]))
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
