"""Run a :class:`launch.plan.Plan`: actors and learner started together (the learner loads its model and DeepSpeed
while the engines start, then waits for the actors to connect: ``learner.__main__.wait_for_actors``), or, on GPUs
that actors and learner share (``Plan.actors_first``), the actors first and the learner once every actor is ready,
so vLLM's start-up memory check sees the GPU free; and stop everything together.

Invariants:
- Each component runs in its own process group, so stopping it stops its children (vLLM's EngineCore,
  DeepSpeed's per-rank processes) too: no orphan is left on Ctrl-C, SIGTERM or a component's failure.
- Each output line is prefixed with the component's name and also appended to ``RUN_DIR/logs/NAME.log``. vLLM's own
  INFO and DEBUG records (``Successfully reset prefix cache`` at every load, ``setting pause state ...``, the engine's
  start-up and shutdown chatter: :func:`engine_chatter`) go to the log file only; its warnings and errors, and every
  line of ours, reach the console too, so the learner's progress bar stays readable.
- An actor is ready when it prints a line containing ``READY`` (``actor.__main__`` does so once its engine is up
  and its channels are open). With ``actors_first`` the learner starts after all are ready, or the launch fails
  after ``ready_timeout_s``; otherwise the learner bounds that wait itself (``sync.actor_start_timeout_s``, which
  the launchers' ``--ready-timeout`` sets). An actor that exits before it was ready fails the launch either way,
  unless ``restart_actors``.
- The learner's exit ends the run: its code is the launcher's code, actors are asked to stop (SIGTERM:
  they finish or hand back what is in flight). Any actor dying first fails the run with a non-zero code,
  unless ``restart_actors`` is set, in which case it is restarted (the learner re-sends its requests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from launch.plan import Component, LaunchError, Plan

READY_MARK = "READY"
LABEL = re.compile(r"^\s*(\d+): ")  # srun --label: the task number in front of each line
_VLLM_RECORD = re.compile(r"\([^()\s]+ pid=\d+\) (?:INFO|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d \[")
"""vLLM's own format (``vllm.logger._FORMAT``, after ``VLLM_LOGGING_PREFIX``):
``(EngineCore pid=12) INFO 12-07 11:38:02 [block_pool.py:861] Successfully reset prefix cache``."""
_VLLM_VIA_ROOT = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ \S+ vllm(?:\.\S+)? (?:INFO|DEBUG) ")
"""A vllm.* record the actor's own handler formatted (``actor.__main__``'s ``%(asctime)s ID %(name)s
%(levelname)s``): vLLM logs a few lines at import, before it installs its handler."""


def engine_chatter(line: str) -> bool:
    """Whether ``line`` is an INFO or DEBUG record of vLLM's (kept in the log file, off the console).

    >>> engine_chatter("(EngineCore pid=5863) INFO 12-07 11:38:02 [block_pool.py:861] Successfully reset prefix cache")
    True
    >>> engine_chatter("(EngineCore_DP0 pid=7) WARNING 12-07 11:37:31 [ompmultiprocessing.py:63] VLLM_CPU_NUM...")
    False
    >>> engine_chatter("2026-12-07 11:37:14,149 vm-a0 vllm.triton_utils.importing INFO Triton is installed but ...")
    True
    >>> engine_chatter("2026-12-07 11:38:02,575 vm-a0 actor INFO actor vm-a0: serving v1 (loaded in 0.035s, ...)")
    False
    """
    head = line[:200]
    m = _VLLM_RECORD.search(head)
    return (m is not None and m.start() <= 40) or _VLLM_VIA_ROOT.match(head) is not None


class Proc:
    """One component's process (its own session), its output pumped to our stdout and its log file.

    ``tag`` names where it runs (a Slurm node) and follows the ``[name]`` prefix: ``[actor-0] (n2) ...``;
    the log file's lines carry it too. ``rank_tags``: the process is an ``srun --label`` step whose lines
    start with ``K: `` (task K); such a line is tagged ``rank_tags[K]`` instead, without the label.
    """

    def __init__(self, comp: Component, log_dir: Path, on_ready: threading.Event | None = None,
                 tag: str | None = None, rank_tags: list[str] | None = None):
        self.comp = comp
        self.tag = tag
        self.rank_tags = rank_tags
        self.ready = on_ready or threading.Event()
        env = {**os.environ, **comp.env, "PYTHONUNBUFFERED": "1"}
        self.log = open(log_dir / f"{comp.name}.log", "a", buffering=1)  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(comp.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        self.termed = False  # sent its SIGTERM

    def _tagged(self, line: str) -> str:
        tag = self.tag
        if self.rank_tags:
            m = LABEL.match(line)
            if m and int(m.group(1)) < len(self.rank_tags):
                tag, line = self.rank_tags[int(m.group(1))], line[m.end():]
        return f"({tag}) {line}" if tag else line

    def _pump(self) -> None:
        prefix = f"[{self.comp.name}] "
        for line in self.popen.stdout:  # type: ignore[union-attr]
            line = self._tagged(line)
            self.log.write(line)
            if not engine_chatter(line.removeprefix(f"({self.tag}) ") if self.tag else line):  # vLLM's INFO: log only
                sys.stdout.write(prefix + line)
                sys.stdout.flush()
            if READY_MARK in line:
                self.ready.set()

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM to the process group, once: a second one makes vLLM's EngineCore abort its graceful shutdown."""
        if not self.termed:
            self.termed = True
            self.signal(signal.SIGTERM)

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace_s: float) -> int:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        self.signal(signal.SIGKILL)  # children that outlived their parent
        self.pump.join(timeout=2)
        self.log.close()
        return self.popen.returncode


def run(plan: Plan, ready_timeout_s: float | None = None, grace_s: float = 30.0, restart_actors: bool = False) -> int:
    """Start the plan and block until the learner ends; returns the exit code for the launcher.
    ``ready_timeout_s``: default the config's ``sync.actor_start_timeout_s``."""
    if ready_timeout_s is None:
        ready_timeout_s = plan.config.sync.actor_start_timeout_s
    log_dir = plan.run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stopping.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    actors: list[Proc] = []
    learner: Proc | None = None
    code = 1
    try:
        t0 = time.monotonic()
        actors = [Proc(c, log_dir) for c in plan.actors]
        announced: set[str] = set()
        if plan.actors_first:
            deadline = t0 + ready_timeout_s
            while not all(a.ready.is_set() for a in actors):
                dead = [a for a in actors if a.poll() is not None]
                if dead:
                    raise LaunchError(f"{dead[0].comp.name} exited with code {dead[0].poll()} before it was ready "
                                      f"(log: {log_dir / (dead[0].comp.name + '.log')})")
                if stopping.is_set():
                    raise KeyboardInterrupt
                if time.monotonic() > deadline:
                    raise LaunchError(f"actors not ready after {ready_timeout_s:.0f}s")
                time.sleep(0.2)
            print(f"launch: {len(actors)} actor(s) ready after {time.monotonic() - t0:.1f} s; starting the learner "
                  "(they share its GPUs)", flush=True)
            announced = {a.comp.name for a in actors}
        learner = Proc(plan.learner, log_dir)
        if not plan.actors_first:
            print(f"launch: started {len(actors)} actor(s) and the learner together", flush=True)
        while True:
            if stopping.is_set():
                raise KeyboardInterrupt
            rc = learner.poll()
            if rc is not None:
                code = rc
                print(f"launch: learner exited with code {rc}", flush=True)
                break
            for i, a in enumerate(actors):
                if a.ready.is_set() and a.comp.name not in announced:
                    announced.add(a.comp.name)
                    print(f"launch: {a.comp.name} ready after {time.monotonic() - t0:.1f} s", flush=True)
                arc = a.poll()
                if arc is None:
                    continue
                when = "during training" if a.ready.is_set() else "before it was ready"
                if restart_actors:
                    print(f"launch: {a.comp.name} exited with code {arc}; restarting it ({when})", flush=True)
                    a.stop(grace_s)
                    actors[i] = Proc(a.comp, log_dir)
                else:
                    raise LaunchError(f"{a.comp.name} exited with code {arc} {when} "
                                      f"(log: {log_dir / (a.comp.name + '.log')})")
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("launch: interrupted; stopping every component", flush=True)
        code = 130
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr, flush=True)
        code = 1
    finally:
        procs = ([learner] if learner else []) + actors
        for p in procs:  # ask everyone first, then wait: shutdowns overlap
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.stop(grace_s)
        for s, h in old.items():
            signal.signal(s, h)
    return code
