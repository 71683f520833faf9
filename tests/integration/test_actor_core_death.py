"""EngineCore dies while the actor waits on it: the wait fails with vLLM's EngineDeadError instead of lasting forever.

A real engine with EngineCore and its worker as processes of their own (vLLM's multiprocess sync client, the one
``vllm.LLM`` uses on CUDA too). Its processes are frozen (SIGSTOP) so a call is surely outstanding, then killed
(SIGKILL: no last word from EngineCore). Without ``actor.core_watch`` both waits below never end (measured: still
waiting after 20 s), the actor never exits, and its launcher never restarts it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest

from sync.wire import SamplingSpec

pytestmark = pytest.mark.slow
ENOUGH_S = 60.0   # a liveness bound, not a timing: the watch polls every 0.25 s


def outcome(fn, timeout_s: float = ENOUGH_S):
    """Run ``fn`` in a thread: its exception, or "returned", or "still waiting" after ``timeout_s``."""
    box: dict = {}

    def run():
        try:
            fn()
            box["out"] = "returned"
        except BaseException as e:  # noqa: BLE001 - the outcome is what is checked
            box["out"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    return "still waiting" if t.is_alive() else box["out"]


def test_enginecore_killed_mid_call_fails_the_waiting_call_and_step(actor_kit):
    from configs import load_config
    from vllm.v1.engine.exceptions import EngineDeadError

    from actor.engine import RolloutEngine
    from actor.serve import engine_gone

    cfg = load_config(actor_kit.config, [f"model_id={actor_kit.model}", "actor.cpu_threads=1"])
    eng = RolloutEngine(cfg)
    try:
        assert eng.engine_pids and eng._watch is not None, "expected EngineCore in a process of its own"
        segments = set(eng.engine_segments)
        assert segments, "the engine maps no shared-memory queue"
        procs = [psutil.Process(p) for p in eng.engine_pids]
        eng.submit("long", [actor_kit.chat], SamplingSpec(4, 1.0, 1.0, 500, 1), ignore_eos=True)
        eng.step()
        for p in procs:
            p.suspend()
        # a utility call outstanding (the load's pause, merge and add_lora go the same way), then the kill
        killer = threading.Timer(1.0, lambda: [p.kill() for p in procs])
        killer.start()
        call = outcome(eng.llm.reset_prefix_cache)
        killer.join()
        assert isinstance(call, EngineDeadError), f"the call outstanding at the kill: {call!r}"
        # the serve loop's step on the requests in flight
        step = outcome(eng.step)
        assert isinstance(step, Exception) and engine_gone(step), f"the step after the kill: {step!r}"
        assert eng._watch.failed >= 2
    finally:
        eng.close()
    assert not [pid for pid in eng.engine_pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not [s for s in segments if (Path("/dev/shm") / s).exists()], "the engine's queues outlived it"
