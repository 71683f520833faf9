"""Watch one system of ``python -m launch.compare`` while it runs: when its first step began (its set-up), and how
its processes used the CPUs while it trained.

- Progress: a callable returns the rows (one per finished training step, each with its ``step_s``) the system
  has written so far: our learner's ``metrics.jsonl``, TRL's peer's ``--progress`` file. The first row's arrival
  time less its ``step_s`` is when training began, so ``setup_s`` (launch to the first step) is measured from
  outside, the same way for every system, whatever each does first (imports, model, engines, first publish).
- CPUs: every ``interval_s`` the command's process tree is sampled (psutil): each process's CPU seconds, its
  threads, and the CPUs each thread may run on (``sched_getaffinity`` of every thread id: vLLM's CPU worker
  binds its OpenMP threads one by one, which the process's own mask would not show). Between the first and the
  last sample taken while training ran, each process's CPU seconds over the elapsed time is the number of
  cores it kept busy (``cores_used``). A system that trains on two cores shows about 2 in total.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def cpu_list(cpus) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``.

    >>> cpu_list({0, 1, 2, 5})
    '0-2,5'
    """
    ids, parts, i = sorted(cpus), [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def label(p) -> str:
    """What a process of a race is: ``learner``, ``actor``, ``VLLM::Worker``, ``trl_peer``, ``launcher``."""
    try:
        cmd = p.cmdline()
        name = p.name()
    except Exception:  # noqa: BLE001 - gone
        return "?"
    if name.startswith("VLLM::"):
        return name
    for mod in ("learner", "actor", "launch.trl_peer", "launch"):
        if "-m" in cmd and mod in cmd[cmd.index("-m") + 1:cmd.index("-m") + 2]:
            return {"launch.trl_peer": "trl_peer", "launch": "launcher"}.get(mod, mod)
    return name


class Watch:
    """Samples ``pid``'s process tree and the system's progress on a thread until :meth:`stop`."""

    def __init__(self, pid: int, rows: Callable[[], list[dict]], interval_s: float = 1.0, poll_s: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.rows = rows
        self.interval_s, self.poll_s = interval_s, poll_s
        self.t_launch = time.time()
        self.t_first_row: float | None = None
        self.t_last_row: float | None = None
        self.n_rows = 0
        self.samples: list[tuple[float, int, dict]] = []   # (time, rows so far, {pid: record})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="racewatch", daemon=True)
        self._thread.start()

    def _procs(self) -> dict[int, dict]:
        import psutil

        out = {}
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return out
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    tids = [th.id for th in p.threads()]
                masks: dict[str, int] = {}
                for tid in tids:
                    try:
                        key = cpu_list(os.sched_getaffinity(tid))
                    except OSError:
                        continue
                    masks[key] = masks.get(key, 0) + 1
                out[p.pid] = {"label": label(p), "cpu_s": t.user + t.system, "threads": len(tids),
                              "thread_cpus": dict(sorted(masks.items()))}
            except psutil.Error:
                continue
        return out

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.time()
            try:
                rows = self.rows()
            except (OSError, ValueError):
                rows = []
            if len(rows) > self.n_rows:
                if self.t_first_row is None:
                    self.t_first_row = now - float(rows[0].get("step_s") or 0.0)
                self.n_rows, self.t_last_row = len(rows), now
            if now >= next_sample:
                self.samples.append((now, self.n_rows, self._procs()))
                next_sample = now + self.interval_s
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # ---------------------------------------------------------------------------------------- results
    def setup_s(self) -> float | None:
        """Launch to the first training step's start (None if no step finished)."""
        return None if self.t_first_row is None else self.t_first_row - self.t_launch

    def cpu(self) -> dict:
        """Each process's CPU use while training ran (between the first and the last row): label, threads
        (most seen), the CPUs its threads may run on, and the cores it kept busy; plus the total."""
        during = [s for s in self.samples if s[1] >= 1 and (self.t_last_row is None or s[0] <= self.t_last_row)]
        if len(during) < 2:
            return {"processes": [], "cores_used": None, "window_s": 0.0}
        (t0, _, first), (t1, _, last) = during[0], during[-1]
        procs = []
        for pid, rec in last.items():
            if pid not in first:
                continue
            seen = [s[2][pid] for s in during if pid in s[2]]
            masks: dict[str, int] = {}
            for r in seen:
                for k, n in r["thread_cpus"].items():
                    masks[k] = max(masks.get(k, 0), n)
            busy = (rec["cpu_s"] - first[pid]["cpu_s"]) / (t1 - t0)
            if busy < 0.02 and rec["label"] in ("launcher", "?"):
                continue  # the launcher only pumps output
            procs.append({"pid": pid, "label": rec["label"], "threads": max(r["threads"] for r in seen),
                          "thread_cpus": dict(sorted(masks.items())), "cores_used": round(busy, 2)})
        procs.sort(key=lambda r: -r["cores_used"])
        return {"processes": procs, "cores_used": round(sum(p["cores_used"] for p in procs), 2),
                "window_s": round(t1 - t0, 1)}
