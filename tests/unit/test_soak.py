"""``python -m launch.soak``: what it samples from outside a run (on a scaffold process tree) and how it judges a series
flat or growing. The 600-step run itself is a benchmark (BENCHMARKS.md, "A long run piles nothing up")."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from launch.soak import analyse, sample

CHILD = """
import sys, time
from pathlib import Path
files = [open(__file__ if False else sys.executable, "rb") for _ in range(30)]
blob = bytearray(64 * 2**20)
for i in range(0, len(blob), 4096):
    blob[i] = 1
print("up", flush=True)
time.sleep(60)
"""


def test_sample_reads_a_process_tree_shm_ipc_and_run_dir_from_outside(tmp_path):
    run, ipc, shm = tmp_path / "run", tmp_path / "ipc", tmp_path / "shm"
    for d in (run / "checkpoints" / "step-000050", run / "logs", ipc, shm):
        d.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 7}) + "\n" + json.dumps({"step": 8, "x": 1}) + "\n")
    (run / "logs" / "actor-0.log").write_text("x" * 4096)
    (run / "checkpoints" / "step-000050" / "a.bin").write_bytes(b"\0" * 2**20)
    (ipc / "p1.sock").write_text("")
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        (shm / f"tucano2-sync-p{p.pid}-a0").mkdir()
        (shm / f"tucano2-sync-p{p.pid}-a0" / "v1").write_bytes(b"\0" * 2**20)
        (shm / "somebody-else").write_bytes(b"\0" * 10)
        s = sample(p.pid, run, ipc, shm)
    finally:
        p.kill()
        p.wait()
    assert s["step"] == 8 and s["procs/all"] == 1 and s["procs/other"] == 1
    assert s["fds/other"] >= 30 and s["rss_mib/other"] >= 64
    assert (s["shm/run_entries"], s["shm/all_entries"]) == (1, 2) and s["shm/run_mib"] == pytest.approx(1.0)
    assert s["ipc/files"] == 1
    assert s["run/files"] == 1 and s["run/mib"] == pytest.approx(1.0)   # metrics.jsonl and logs/ apart
    assert s["run/metrics_logs_kib"] > 4


def series(n: int, **grow) -> list[dict]:
    """Samples of a steady run every 5 steps: RSS ~900 MiB with noise, 120 fds, 3 shm entries; ``grow`` adds a trend
    per step to a series."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        step = 5 * i
        s = {"t": time.time(), "step": step, "rss_mib/learner": 900 + rng.uniform(-15, 15),
             "fds/learner": 120 + rng.choice((0, 1)), "shm/run_entries": 3, "run/mib": 10 + 5 * (i % 2),
             "run/metrics_logs_kib": step * 1.5, "shm/all_entries": 40 + i}
        for k, per_step in grow.items():
            s[k.replace("__", "/")] = s[k.replace("__", "/")] + per_step * step
        out.append(s)
    return out


def test_a_steady_run_is_flat_and_a_leak_is_not():
    ok = {v.series: v for v in analyse(series(120), warmup=60, checkpoint_mib=5)}
    assert all(v.flat for v in ok.values()), [v for v in ok.values() if not v.flat]
    assert "run/metrics_logs_kib" not in ok                     # grows by design: reported apart
    assert ok["shm/all_entries"].note                           # other users' files: reference only
    leak = {v.series: v for v in analyse(series(120, rss_mib__learner=0.1), warmup=60)}   # +0.1 MiB a step
    assert not leak["rss_mib/learner"].flat and leak["rss_mib/learner"].drift > 20
    fds = {v.series: v for v in analyse(series(120, fds__learner=0.02), warmup=60)}       # a descriptor every 50 steps
    assert not fds["fds/learner"].flat
    shm = {v.series: v for v in analyse(series(120, shm__run_entries=0.01), warmup=60)}
    assert not shm["shm/run_entries"].flat
    with pytest.raises(ValueError, match="too few to judge"):
        analyse(series(10), warmup=40)


def test_help_and_a_run_too_short_to_judge():
    r = subprocess.run([sys.executable, "-m", "launch.soak", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--steps" in r.stdout
    r = subprocess.run([sys.executable, "-m", "launch.soak", "--steps", "10"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "soak: --steps must be at least 40 (the steady state needs samples)"
