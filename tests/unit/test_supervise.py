"""The supervisor on scaffold processes (small Python scripts standing in for actor and learner, each
with a grandchild, since vLLM and DeepSpeed spawn children): readiness gating, failure propagation,
Ctrl-C, and no process left behind. The real actor and learner run under it in the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    name, pids, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "countterm":  # each SIGTERM noted; it takes 2 s (learner) or 4 s (actors, closing an engine) to stop
        import signal
        termed = []

        def on_term(signum, frame):
            with open(os.path.join(os.path.dirname(pids), "terms"), "a") as f:
                f.write(name + "\\n")
            termed.append(time.monotonic())

        signal.signal(signal.SIGTERM, on_term)
    kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n{kid.pid}\\n")
    print(f"{name} up", flush=True)
    up = os.path.join(os.path.dirname(pids), "learner-up")
    if name == "learner":
        open(up, "w").close()
    if name.startswith("actor"):
        if mode == "failearly":
            time.sleep(0.5)
            sys.exit(3)
        if mode == "together":  # READY only once the learner runs: a launcher that waits for READY hangs here
            for _ in range(200):
                if os.path.exists(up):
                    break
                time.sleep(0.1)
            else:
                sys.exit(4)
        time.sleep(0.5)
        print("actor READY", flush=True)
    if mode == "fail" and name.startswith("actor"):
        time.sleep(2)
        sys.exit(3)
    if mode == "finish" and name == "learner":
        time.sleep(1)
        sys.exit(0)
    for _ in range(3000):
        if mode == "countterm" and termed and time.monotonic() - termed[0] > (4 if name != "learner" else 2):
            sys.exit(0)
        time.sleep(0.1)
""")

DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from configs import load_config
    from launch.plan import Component, Plan
    from launch.supervise import run
    child, pids, mode, run_dir, cfg_path, first = sys.argv[1:7]
    cfg = load_config(cfg_path)
    comp = lambda n: Component(name=n, argv=[sys.executable, child, n, pids, mode])
    plan = Plan("cpu", Path(run_dir), cfg, [comp("actor-0"), comp("actor-1")], comp("learner"),
                actors_first=first == "1")
    sys.exit(run(plan, ready_timeout_s=60, grace_s=5))
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def start(tmp_path, mode, actors_first=False):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "driver.py").write_text(DRIVER)
    pids = tmp_path / "pids"
    cfg = Path(__file__).resolve().parents[2] / "configs" / "smoke_cpu.yaml"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "child.py"), str(pids),
                             mode, str(tmp_path / "run"), str(cfg), "1" if actors_first else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, pids


def wait_for_pids(pids: Path, n: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pids.exists() and len(pids.read_text().split()) >= n:
            return [int(x) for x in pids.read_text().split()]
        time.sleep(0.1)
    raise AssertionError(f"only {pids.read_text() if pids.exists() else 'no'} pids")


def test_ctrl_c_stops_everything(tmp_path):
    """Actors first (a GPU they share with the learner): the learner starts once both are READY."""
    proc, pids = start(tmp_path, "hang", actors_first=True)
    all_pids = wait_for_pids(pids, 6)  # 2 actors + learner, each with a grandchild
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert "[actor-0] actor-0 up" in out and "[learner] learner up" in out
    assert out.index("starting the learner") > out.index("[actor-1] actor READY")
    assert out.index("[learner] learner up") > out.index("[actor-1] actor READY")
    time.sleep(0.5)
    assert not [p for p in all_pids if alive(p)]
    assert (tmp_path / "run" / "logs" / "learner.log").read_text().startswith("learner up")


def test_a_stop_sends_each_component_one_sigterm(tmp_path):
    """The launcher asks every component to stop, then waits for each: a component still stopping when its turn
    comes gets no second SIGTERM (vLLM's EngineCore, which shares the actor's process group, aborts its graceful
    shutdown on a second one)."""
    proc, pids = start(tmp_path, "countterm")
    wait_for_pids(pids, 6)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    terms = (tmp_path / "terms").read_text().split()
    assert sorted(terms) == ["actor-0", "actor-1", "learner"], terms


def test_component_failure_fails_the_run(tmp_path):
    proc, pids = start(tmp_path, "fail")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "exited with code 3" in out
    time.sleep(0.5)
    assert not [p for p in wait_for_pids(pids, 2) if alive(p)]


@pytest.mark.parametrize("mode", ["finish"])
def test_learner_exit_ends_the_run(tmp_path, mode):
    proc, pids = start(tmp_path, mode)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "learner exited with code 0" in out
    time.sleep(0.5)
    assert not [p for p in wait_for_pids(pids, 6) if alive(p)]


def test_actors_and_learner_start_together(tmp_path):
    """Without a shared GPU the learner does not wait for READY: these actors print it only once the learner
    runs, so a launcher that waited would never start it (the actors give up after 20 s, exit 4)."""
    proc, pids = start(tmp_path, "together")
    seen = []
    for line in proc.stdout:  # ends when the run does (actors that never see the learner exit after 20 s)
        seen.append(line)
        if sum("ready after" in x for x in seen) == 2:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "started 2 actor(s) and the learner together" in out
    assert "launch: actor-0 ready after" in out and "launch: actor-1 ready after" in out
    assert out.index("[learner] learner up") < out.index("[actor-0] actor READY")


def test_an_actor_that_dies_before_it_is_ready_fails_the_run(tmp_path):
    proc, pids = start(tmp_path, "failearly")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "exited with code 3 before it was ready" in out
    time.sleep(0.5)
    assert not [p for p in wait_for_pids(pids, 2) if alive(p)]


VLLM_LINES = [
    "(EngineCore pid=5863) INFO 12-07 11:38:02 [block_pool.py:861] Successfully reset prefix cache",
    "(EngineCore pid=5863) INFO 12-07 11:38:02 [scheduler.py:2756] setting pause state to PAUSED_ALL",
    "(MainProcess pid=5632) DEBUG 12-07 11:38:16 [core_client.py:770] [shutdown] MPClient: start",
    "2026-12-07 11:37:14,149 vm-a0 vllm.triton_utils.importing INFO Triton is installed but 0 active driver(s)",
]
SHOWN = [
    "(EngineCore pid=5863) WARNING 12-07 11:37:31 [ompmultiprocessing.py:63] VLLM_CPU_NUM_OF_RESERVED_CPU is low",
    "(EngineCore pid=5863) ERROR 12-07 11:53:05 [core.py:1512] EngineCore encountered a fatal error.",
    "2026-12-07 11:38:02,575 vm-a0 actor INFO actor vm-a0: serving v1 (loaded in 0.035s)",
    "actor vm-a0: READY (engine up, merged mode, float32)",
    "grpo:  50%|#####     | 4/8 [00:54<00:32,  8.23s/step, reward=0.000]",
]


def test_vllm_info_goes_to_the_log_file_only(tmp_path, capsys):
    """The console of a run: vLLM's INFO and DEBUG records stay in RUN_DIR/logs/NAME.log; its warnings and errors,
    our own lines (INFO included) and the progress bar reach the console too."""
    from launch.plan import Component
    from launch.supervise import Proc

    lines = VLLM_LINES + SHOWN
    script = "import sys\nfor line in sys.argv[1:]:\n    print(line, flush=True)\n"
    p = Proc(Component(name="actor-0", argv=[sys.executable, "-c", script, *lines]), tmp_path, tag="n2")
    assert p.popen.wait(timeout=30) == 0
    p.pump.join(timeout=10)
    p.log.close()
    console = capsys.readouterr().out.splitlines()
    assert console == [f"[actor-0] (n2) {line}" for line in SHOWN]
    assert (tmp_path / "actor-0.log").read_text().splitlines() == [f"(n2) {line}" for line in lines]
    assert p.ready.is_set()


def test_supervise_doctests():
    import doctest

    import launch.supervise

    assert doctest.testmod(launch.supervise).failed == 0
