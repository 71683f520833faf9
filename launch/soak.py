"""``python -m launch.soak [--config C] [--steps 600] [--interval 5] [--json FILE] [--set k=v ...]``: does a long run
pile anything up?

Runs the whole system on this CPU box (``python -m launch cpu``: a vLLM actor process, a DeepSpeed learner process, the
ZeroMQ channels) for ``--steps`` steps, the handoff's V4.1 length by default, and samples it **from outside** (this
process reads ``/proc`` through psutil; nothing runs inside the run) every ``--interval`` seconds:

- per role (the launcher, the actor, its EngineCore and worker, the learner, anything else they started), the resident
  memory and the open file descriptors summed over its processes, and how many processes there are;
- ``/dev/shm``: the entries that belong to the run (the sync's file-transfer directories and OpenMP's files named after
  one of its pids, the shared-memory segments its processes map) and their bytes; the whole of ``/dev/shm`` is recorded
  too, for reference (other users' files come and go there);
- the run's ipc directory (a private one, ``sync.ipc_dir``): files and bytes;
- the run directory: its checkpoints, ``metrics.jsonl`` and ``logs/`` apart (the last two grow by a line per step by
  design, and their rate is reported).

The verdict compares the steady state: samples from step ``--warmup`` on (first tenth by default; the engine's caches
and the allocator settle first) up to the last step, while the run has its usual processes (not its shut-down), split
into a first and a last quarter. A series is flat when its least-squares slope projected over the whole steady stretch
grows less than its tolerance (a series that falls piles nothing up) (memory: 5% of its mean or 20 MiB, whichever is
larger; counts of files, descriptors, processes and shared-memory entries: their last quarter's peak within 2 of the
first quarter's; the run directory less metrics and logs: its last quarter's peak within one checkpoint's size of the
first quarter's). Prints a table, writes JSON, exits 0 when every series is flat and 1 otherwise. BENCHMARKS.md, "A long
run piles nothing up", has a 600-step run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SHM = Path("/dev/shm")
MIB = 2**20
SOAK_SETTINGS = {
    "eval.every": 50,                 # the periodic work of a long run, each many times over 600 steps:
    "learner.checkpoint_every": 50,   # evals, checkpoints (rotating: keep 2), probes, best-adapter saves,
    "learner.probe_every": 10,        # and a publication per step
    "learner.keep_checkpoints": 2,
    "logging.wandb_mode": "disabled",
}


def role(p) -> str:
    """launcher, actor, engine-core (vLLM's EngineCore), engine-worker, learner or other (by command line)."""
    try:
        cmd = " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone
        return "other"
    if cmd.startswith("VLLM::Worker"):
        return "engine-worker"
    if cmd.startswith("VLLM::") or "EngineCore" in cmd:
        return "engine-core"
    if " -m actor" in cmd:
        return "actor"
    if " -m learner" in cmd:
        return "learner"
    if " -m launch" in cmd:
        return "launcher"
    return "other"


def tree(root_pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def dir_size(d: Path, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """(files, bytes) under ``d``, less the top-level entries named in ``skip``."""
    files = size = 0
    if not d.exists():
        return 0, 0
    for root, dirs, names in os.walk(d):
        if Path(root) == d:
            dirs[:] = [x for x in dirs if x not in skip]
            names = [x for x in names if x not in skip]
        for n in names:
            try:
                size += (Path(root) / n).stat().st_size
                files += 1
            except OSError:
                pass
    return files, size


def shm_of(pids: set[int], mapped: set[str], shm: Path = SHM) -> tuple[int, int, int, int]:
    """(the run's entries, their bytes, all entries, all bytes) of ``shm``: an entry is the run's when its name carries
    one of ``pids`` (``tucano2-sync-p<pid>-...``, ``__KMP_REGISTERED_LIB_<pid>_...``) or a run process maps it."""
    ours = ours_b = every = every_b = 0
    marks = {f"p{p}-" for p in pids} | {f"_{p}_" for p in pids}
    for e in shm.iterdir() if shm.is_dir() else ():
        try:
            n, b = dir_size(e) if e.is_dir() else (1, e.stat().st_size)
        except OSError:
            continue
        every, every_b = every + 1, every_b + b
        if e.name in mapped or any(m in e.name for m in marks):
            ours, ours_b = ours + 1, ours_b + b
    return ours, ours_b, every, every_b


def mapped_shm(procs, shm: Path = SHM) -> set[str]:
    root = str(shm.resolve()) + "/"
    out: set[str] = set()
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/maps").read_text().splitlines():
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith(root):
                    out.add(parts[5][len(root):].split("/")[0].removesuffix(" (deleted)"))
        except OSError:
            continue
    return out


def last_step(run_dir: Path) -> int:
    """The step of the last line of ``metrics.jsonl`` (0 before the first)."""
    f = run_dir / "metrics.jsonl"
    try:
        with f.open("rb") as fh:
            fh.seek(max(0, f.stat().st_size - 65536))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def sample(root_pid: int, run_dir: Path, ipc_dir: Path, shm: Path = SHM) -> dict:
    """One sample of the run from outside: per role its processes, RSS (MiB) and open descriptors; ``/dev/shm``, the
    ipc directory and the run directory."""
    import psutil

    procs = tree(root_pid)
    s: dict = {"t": time.time(), "step": last_step(run_dir)}
    for p in procs:
        r = role(p)
        try:
            rss, fds = p.memory_info().rss / MIB, p.num_fds()
        except psutil.Error:
            continue
        s[f"rss_mib/{r}"] = s.get(f"rss_mib/{r}", 0.0) + rss
        s[f"fds/{r}"] = s.get(f"fds/{r}", 0) + fds
        s[f"procs/{r}"] = s.get(f"procs/{r}", 0) + 1
    s["rss_mib/all"] = sum(v for k, v in s.items() if k.startswith("rss_mib/"))
    s["fds/all"] = sum(v for k, v in s.items() if k.startswith("fds/") and k != "fds/all")
    s["procs/all"] = len(procs)
    ours, ours_b, every, every_b = shm_of({p.pid for p in procs}, mapped_shm(procs, shm), shm)
    s.update({"shm/run_entries": ours, "shm/run_mib": ours_b / MIB, "shm/all_entries": every,
              "shm/all_mib": every_b / MIB})
    s["ipc/files"], b = dir_size(ipc_dir)
    s["ipc/kib"] = b / 1024
    s["run/files"], b = dir_size(run_dir, skip=("metrics.jsonl", "logs"))
    s["run/mib"] = b / MIB
    s["run/checkpoints_mib"] = dir_size(run_dir / "checkpoints")[1] / MIB
    metrics = run_dir / "metrics.jsonl"
    s["run/metrics_logs_kib"] = (dir_size(run_dir / "logs")[1] + (metrics.stat().st_size if metrics.is_file() else 0)
                                 ) / 1024
    return s


@dataclass
class Verdict:
    series: str
    first: float       # mean of the steady state's first quarter
    last: float        # mean of its last quarter
    peak_first: float
    peak_last: float
    slope: float       # per 100 steps
    drift: float       # the slope projected over the steady stretch
    tolerance: float
    flat: bool
    note: str = ""


def _fit(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def steady_state(samples: list[dict], warmup: int, last: int | None = None) -> list[dict]:
    """The samples from step ``warmup`` up to (not including) step ``last`` taken while the run had its usual
    number of processes: not the start-up, nor the shutdown (processes exiting), nor a restart."""
    inside = [s for s in samples if s["step"] >= warmup and (last is None or s["step"] < last)]
    counts = [s.get("procs/all", 0) for s in inside]
    usual = max(set(counts), key=counts.count) if counts else 0
    return [s for s in inside if s.get("procs/all", 0) == usual]


def analyse(samples: list[dict], warmup: int, checkpoint_mib: float = 0.0, last: int | None = None) -> list[Verdict]:
    """A :class:`Verdict` per series over :func:`steady_state` (see the module docstring). Only growth counts: a
    series that falls piles nothing up."""
    steady = steady_state(samples, warmup, last)
    if len(steady) < 8:
        raise ValueError(f"{len(steady)} samples after step {warmup}: too few to judge (a longer run or a shorter "
                         "--interval)")
    q = max(2, len(steady) // 4)
    span = max(1, steady[-1]["step"] - steady[0]["step"])
    keys = sorted({k for s in steady for k in s if k not in ("t", "step") and not k.startswith("run/metrics")})
    out = []
    for k in keys:
        xs = [float(s["step"]) for s in steady]
        ys = [float(s.get(k, 0.0)) for s in steady]
        head, tail = ys[:q], ys[-q:]
        slope = _fit(xs, ys)
        drift = slope * span
        mean = sum(ys) / len(ys)
        if k.startswith(("rss_mib/", "shm/run_mib", "shm/all_mib")):
            tol = max(0.05 * mean, 20.0)
            flat = drift <= tol
        elif k.startswith("run/") and k.endswith("mib"):  # checkpoints rotate: bounded by one more of them
            tol = max(checkpoint_mib, 1.0)
            flat = max(tail) <= max(head) + tol
        else:  # counts: descriptors, processes, shared-memory entries, ipc files, run files
            tol, flat = 2.0, max(tail) <= max(head) + 2
        if k.startswith(("shm/all", "procs/other", "fds/other", "rss_mib/other")):
            flat, note = True, "for reference (not the run's own)"
        else:
            note = ""
        out.append(Verdict(k, sum(head) / q, sum(tail) / q, max(head), max(tail), slope * 100, drift, tol, flat, note))
    return out


def growth(samples: list[dict], warmup: int, last: int | None = None) -> float:
    """metrics.jsonl + logs/ growth in KiB per step over the steady state (by design: a line or two per step)."""
    steady = steady_state(samples, warmup, last)
    if len(steady) < 2 or steady[-1]["step"] == steady[0]["step"]:
        return 0.0
    return (steady[-1]["run/metrics_logs_kib"] - steady[0]["run/metrics_logs_kib"]) / (
        steady[-1]["step"] - steady[0]["step"])


def render(verdicts: list[Verdict]) -> str:
    head = f"{'series':<24} {'first q':>10} {'last q':>10} {'peak 1st':>10} {'peak last':>10} {'/100 steps':>11} " \
           f"{'drift':>9} {'tolerance':>9}  verdict"
    lines = [head, "-" * len(head)]
    for v in verdicts:
        lines.append(f"{v.series:<24} {v.first:>10.2f} {v.last:>10.2f} {v.peak_first:>10.2f} {v.peak_last:>10.2f} "
                     f"{v.slope:>+11.3f} {v.drift:>+9.2f} {v.tolerance:>9.2f}  "
                     f"{'flat' if v.flat else 'GROWS'}{' (' + v.note + ')' if v.note else ''}")
    return "\n".join(lines)


class Sampler(threading.Thread):
    def __init__(self, root_pid: int, run_dir: Path, ipc_dir: Path, interval: float):
        super().__init__(daemon=True)
        self.args = (root_pid, run_dir, ipc_dir)
        self.interval = interval
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.samples.append(sample(*self.args))


def main(argv=None) -> int:
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m launch.soak", description=__doc__.split("\n\n")[0])
    add_config_args(p, required=False)
    p.add_argument("--steps", type=int, default=600, help="steps to run (default 600: V4.1's length)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="first step of the steady state (default: a tenth)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/soak"), help="default runs/soak (replaced)")
    p.add_argument("--json", type=Path, default=None, help="write the samples and verdicts (default RUN_DIR.json)")
    p.add_argument("--actor-cores", default=None, help="pin the actor (taskset list), as launch cpu")
    p.add_argument("--learner-cores", default=None, help="pin the learner")
    args = p.parse_args(argv)
    config = args.config or "configs/smoke_cpu.yaml"
    if args.steps < 40:
        print("soak: --steps must be at least 40 (the steady state needs samples)", file=sys.stderr)
        return 2
    warmup = args.warmup if args.warmup is not None else args.steps // 10
    import shutil

    shutil.rmtree(args.run_dir, ignore_errors=True)
    ipc = Path(tempfile.mkdtemp(prefix="tucano2-soak-"))
    os.chmod(ipc, 0o700)
    sets = {**SOAK_SETTINGS, "max_steps": args.steps, "sync.ipc_dir": str(ipc)}
    cmd = [sys.executable, "-m", "launch", "cpu", "--config", config, "--run-dir", str(args.run_dir)]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    for o in args.overrides:
        cmd += ["--set", o]
    for flag, v in (("--actor-cores", args.actor_cores), ("--learner-cores", args.learner_cores)):
        if v:
            cmd += [flag, v]
    args.run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(f"{args.run_dir}.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "TUCANO2_NO_PROGRESS": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    sampler = Sampler(proc.pid, args.run_dir, ipc, args.interval)
    sampler.start()
    print(f"soak: {args.steps} steps of {config} in {args.run_dir} (log {args.run_dir}.log), sampled every "
          f"{args.interval:g} s", flush=True)
    try:
        while proc.poll() is None:
            time.sleep(5)
            s = sampler.samples[-1] if sampler.samples else None
            if s is not None and s["step"] and int(s["step"]) % 50 < 5:
                print(f"soak: step {s['step']}, RSS {s['rss_mib/all']:.0f} MiB in {s['procs/all']} processes, "
                      f"{s['fds/all']} fds, /dev/shm (run) {s['shm/run_entries']} entries", flush=True)
    except KeyboardInterrupt:
        os.killpg(proc.pid, 2)
        proc.wait()
    sampler.stop.set()
    sampler.join()
    log.close()
    rc = proc.returncode
    samples = sampler.samples
    ckpt = max((s.get("run/checkpoints_mib", 0.0) for s in samples), default=0.0) / 2  # one of the two kept
    try:
        verdicts = analyse(samples, warmup, ckpt, last=args.steps)
    except ValueError as e:
        print(f"soak: {e} (the run exited {rc}; see {args.run_dir}.log)", file=sys.stderr)
        return 1
    rate = growth(samples, warmup, last=args.steps)
    print(render(verdicts))
    left = dir_size(ipc)
    print(f"soak: the run exited {rc} after {time.time() - t0:.0f} s; {len(samples)} samples, steps "
          f"{warmup}-{samples[-1]['step']} judged; metrics.jsonl + logs/ grow {rate:.2f} KiB a step (a line per step, "
          f"by design); the ipc directory holds {left[0]} files after the run")
    out = args.json or Path(f"{args.run_dir}.json")
    out.write_text(json.dumps({"command": cmd, "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                               "steps": args.steps, "warmup": warmup, "exit": rc,
                               "seconds": round(time.time() - t0, 1), "metrics_logs_kib_per_step": rate,
                               "verdicts": [v.__dict__ for v in verdicts], "samples": samples}, indent=1))
    shutil.rmtree(ipc, ignore_errors=True)
    ok = rc == 0 and all(v.flat for v in verdicts)
    print(f"soak: {'flat: nothing piles up' if ok else 'NOT flat (or the run failed)'}; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
