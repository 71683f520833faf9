"""The launch plan: which process runs where, with which devices, ports and exact command.

A plan is computed (and checked) before anything starts, written into the run directory
(``config.yaml``, ``plan.json``, ``commands.sh``) and printed by ``--dry-run``. Errors that can be seen
before start — missing model directory, no or too few GPUs, a port already taken, missing CURVE keys for
a non-loopback address — are :class:`LaunchError` with one line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from configs import ConfigError, RunConfig, dump_config, load_config


class LaunchError(RuntimeError):
    """Something that stops a launch before any process starts; one line."""


@dataclass
class Component:
    name: str                 # "actor-0", "learner"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    devices: str = ""         # "GPU 0,1" / "CPU cores 1"
    ports: list[int] = field(default_factory=list)

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env + ' ' if env else ''}{shlex.join(self.argv)}"


@dataclass
class Plan:
    mode: str                 # "node" or "cpu"
    run_dir: Path
    config: RunConfig
    actors: list[Component]
    learner: Component
    extra: dict = field(default_factory=dict)             # more plan.json keys (the Slurm job's layout)
    notes: list[str] = field(default_factory=list)        # printed under the header (the memory plan)
    commands: list[tuple[str, str]] | None = None         # (comment, line) for commands.sh; default: each component
    actors_first: bool = False                            # start the learner once every actor is READY (shared GPU)

    def describe(self) -> str:
        c = self.config
        lines = [f"plan ({self.mode}): {len(self.actors)} actor(s), learner with {c.learner.ranks} rank(s); "
                 f"model {c.model_id}; run dir {self.run_dir}",
                 f"sync: {_channels(c.sync)}, rollout port {c.sync.rollout_port}, weight port "
                 f"{c.sync.weight_port}, max_staleness {c.sync.max_staleness}; {weights_travel(c.sync)}",
                 "start: " + ("the actors, then the learner once every actor is READY (they share GPUs: vLLM's "
                              "start-up check needs the memory free)" if self.actors_first else
                              "actors and learner together; the learner waits up to "
                              f"{c.sync.actor_start_timeout_s:.0f} s for the actors to connect"), *self.notes]
        for comp in [*self.actors, self.learner]:
            lines.append(f"  {comp.name:<9} {comp.devices:<18} {comp.shell()}")
        return "\n".join(lines)

    def write(self) -> None:
        """Resolved config, plan and each component's exact start command into the run directory."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.config))
        comps = [asdict(c) for c in [*self.actors, self.learner]]
        (self.run_dir / "plan.json").write_text(json.dumps({"mode": self.mode, "components": comps, **self.extra},
                                                           indent=2))
        script = ["#!/usr/bin/env bash", "# Exact start commands of this run, one per component."]
        lines = self.commands or [(f"{c.name} ({c.devices})", c.shell()) for c in [*self.actors, self.learner]]
        script += [f"# {what}\n{line} &" for what, line in lines]
        (self.run_dir / "commands.sh").write_text("\n".join(script) + "\nwait\n")


def parse_ids(text: str | None) -> list[int]:
    if text is None or text == "":
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise LaunchError(f"device list {text!r}: expected comma-separated integers like 0,1,2") from None


def visible_gpus() -> list[int]:
    """GPU indices nvidia-smi sees (honouring CUDA_VISIBLE_DEVICES when it lists plain indices)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() != "":
        try:
            return parse_ids(cvd)
        except LaunchError:
            pass
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [i for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU"))]


def gpu_memory(ids: list[int]) -> dict[int, tuple[float, float]]:
    """Total and free GiB of each GPU (nvidia-smi index), or {} when nvidia-smi does not answer."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        query = ["nvidia-smi", "--query-gpu=index,memory.total,memory.free", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False).stdout
        rows = {int(i): (int(t) / 1024, int(f) / 1024) for i, t, f in (ln.split(",") for ln in out.splitlines() if ln)}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {i: rows[i] for i in ids if i in rows}


def memory_plan(cfg: RunConfig, ids: list[int], gpu_mem: float | None, *, shared: bool,
                check: bool) -> tuple[RunConfig, list[str]]:
    """Fit the run to its GPUs' memory (:mod:`launch.memory`): on a shared GPU, vLLM's fraction and KV cache.
    Memory comes from ``gpu_mem`` (GiB) or nvidia-smi; with neither, a dedicated layout is not checked and a
    shared one is refused. A real launch also checks that the plan fits in what other processes left free."""
    from launch.memory import fit

    seen = gpu_memory(ids) if check or gpu_mem is None else {}
    if gpu_mem is None and not seen:
        if shared:
            raise LaunchError("GPUs shared by actors and learner need a memory plan: pass --gpu-mem GiB "
                              "(nvidia-smi gave no memory figures)")
        return cfg, []
    total = gpu_mem if gpu_mem is not None else min(t for t, _ in seen.values())
    try:
        cfg, mem = fit(cfg, total, shared=shared)
    except ValueError as e:
        raise LaunchError(str(e)) from None
    need = mem.need if shared else mem.learner.total
    for i, (t, free) in sorted(seen.items()):
        if check and free + 0.25 < min(need, t):
            raise LaunchError(f"GPU {i} has {free:.1f} GiB free of {t:.1f} (other processes hold the rest; see "
                              f"nvidia-smi); this plan needs {need:.1f} GiB on it")
    if shared:
        mem.notes.append(f"generation and training take turns on a shared GPU (two processes' kernels time-slice): "
                         f"a step is about generation + training; max_staleness {cfg.sync.max_staleness} overlaps "
                         "each side's host work with the other's kernels (BENCHMARKS.md, One GPU)")
    return cfg, mem.describe()


def hostfile_slots(path: str) -> int:
    """Total ``slots=N`` of a DeepSpeed hostfile (``host slots=N`` per line): the learner's rank count."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LaunchError(f"hostfile {path}: {e.strerror}") from None
    total = 0
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        try:
            total += int(parts["slots"])
        except (KeyError, ValueError):
            raise LaunchError(f"hostfile {path}:{n}: expected 'HOST slots=N', got {line!r}") from None
    if total == 0:
        raise LaunchError(f"hostfile {path} lists no slots")
    return total


def check_model(model_id: str) -> None:
    """A local path must exist; a hub id (org/name) is left to the processes' cache."""
    p = Path(model_id)
    looks_local = model_id.startswith((".", "/", "~")) or model_id.count("/") != 1 or p.exists()
    if looks_local and not (p.expanduser() / "config.json").exists():
        raise LaunchError(f"model directory not found (no config.json): {model_id}"
                          + ("; build it with `python -m zoo build --out " + model_id + "`"
                             if "models/" in model_id else ""))


def _channels(sync) -> str:
    if sync.kind == "ipc":
        return "ipc sockets in a private 0700 directory (this user's processes only)"
    return f"tcp on {sync.host} with CURVE (keys {sync.keys_dir})"


def weights_travel(sync) -> str:
    """How each weight version reaches the actors (``sync.weight_transfer``), for the plan's sync line."""
    from sync.carry import resolve_transfer

    t = resolve_transfer(sync)
    if t == "sealed":
        port = (f"the learner's port {sync.fetch_port}" if sync.fetch_port
                else "a free port of the learner's (set sync.fetch_port behind a firewall)")
        return f"weights sealed once, fetched from {port}"
    return {"file": "weights written once to /dev/shm, linked by each actor",
            "inline": "weights inline to each actor"}[t]


def check_port_free(sync, port: int) -> None:
    from sync import SyncError
    from sync._net import check_free

    try:
        check_free(sync, port)
    except SyncError as e:
        raise LaunchError(f"{e} (--set sync.rollout_port=... / sync.weight_port=...)") from None


def check_keys(cfg: RunConfig) -> None:
    if cfg.sync.kind != "tcp":
        return
    d = Path(cfg.sync.keys_dir)
    if not d.is_dir() or not any(d.glob("*.key_secret")):
        raise LaunchError(f"sync.keys_dir {d} holds no CURVE keys; make them with `python -m sync.keys {d}`")


def preflight(cfg: RunConfig, check_ports: bool = True, keys: bool = True) -> None:
    """Model, data, CURVE keys (``keys``: they exist already) and free ports (``check_ports``: on this host)."""
    check_model(cfg.model_id)
    from commerce.sources import problem as source_problem  # pairs: a file, a saved dataset or a Hub id

    for label, path in (("train pairs", cfg.data.train_pairs), ("eval pairs", cfg.data.eval_pairs),
                        ("database", cfg.data.db_path)):
        if cfg.rewards.toy_token is None or label != "database":
            if label == "database":
                why = None if Path(path).exists() else (True, "")
            else:
                why = source_problem(path)
            if why and why[0]:
                raise LaunchError(f"{label} not found: {path} (build with `python -m commerce build`)")
            if why:
                raise LaunchError(f"{label}: {why[1]}")
    if keys:
        check_keys(cfg)
    if check_ports:
        fetch = [cfg.sync.fetch_port] if cfg.sync.fetch_port and cfg.sync.kind == "tcp" else []
        for port in (cfg.sync.rollout_port, cfg.sync.weight_port, *fetch):
            check_port_free(cfg.sync, port)


def resolve(config: str, overrides: list[str], run_dir: str | None) -> RunConfig:
    try:
        cfg = load_config(config, overrides + ([f"run_dir={run_dir}"] if run_dir else []))
    except ConfigError as e:
        raise LaunchError(f"invalid config: {e}") from None
    return cfg


def _with(cfg: RunConfig, **updates) -> RunConfig:
    """A copy of cfg with updates (``actor__replicas=2`` for ``actor.replicas``), re-validated."""
    from launch.memory import with_updates

    return with_updates(cfg, {k.replace("__", "."): v for k, v in updates.items()})


def node_plan(config: str, overrides: list[str], *, actor_gpus: str | None, learner_gpus: str | None,
              tp: int | None, run_dir: str | None, hostfile: str | None = None, check: bool = True,
              gpus: str | None = None, gpu_mem: float | None = None) -> Plan:
    """Split a node's GPUs: actors get groups of ``tp`` GPUs (one replica each), the learner the rest; or
    share ``gpus`` (the same list for both): each GPU then holds a learner rank and its share of an actor, and
    the memory plan sets vLLM's fraction. ``gpu_mem``: GiB per GPU when nvidia-smi cannot tell (a dry run)."""
    cfg = resolve(config, overrides, run_dir)
    shared_ids = parse_ids(gpus)
    if shared_ids and (actor_gpus or learner_gpus or hostfile):
        raise LaunchError("--gpus gives the same GPUs to actors and learner; "
                          "drop --actor-gpus/--learner-gpus/--hostfile")
    gpus = visible_gpus()  # from here on: the GPUs this node has
    note = ""
    if not gpus and not check:
        gpus, note = list(range(8)), "; dry run, no GPU visible: planned for an 8-GPU node"
    a_ids, l_ids = (shared_ids, shared_ids) if shared_ids else (parse_ids(actor_gpus), parse_ids(learner_gpus))
    shared = bool(a_ids) and set(a_ids) == set(l_ids)
    if shared and note:
        note = f"; dry run, no GPU visible: planned for GPUs {','.join(map(str, a_ids))}"
    tp = tp or cfg.actor.tensor_parallel_size
    if not a_ids and not l_ids:
        if not gpus:
            raise LaunchError("no GPUs visible (nvidia-smi); on a CPU machine use launch/cpu.sh CONFIG")
        half = max(tp, len(gpus) // 2 // tp * tp)
        a_ids, l_ids = gpus[:half], gpus[half:]
    elif not l_ids:
        l_ids = [g for g in gpus if g not in a_ids]
    elif not a_ids:
        a_ids = [g for g in gpus if g not in l_ids]
    if check:
        missing = sorted(set(a_ids + l_ids) - set(gpus))
        if missing:
            raise LaunchError(f"asked for GPUs {missing} but only {len(gpus)} are visible: {gpus}")
    if set(a_ids) & set(l_ids) and not shared:
        raise LaunchError(f"GPUs {sorted(set(a_ids) & set(l_ids))} are given to both actors and learner; to share "
                          "GPUs give both the same list (--gpus 0)")
    if not a_ids or len(a_ids) % tp:
        raise LaunchError(f"{len(a_ids)} actor GPU(s) do not split into groups of tensor parallel size {tp}")
    if not l_ids and hostfile is None:
        raise LaunchError("no GPUs left for the learner; pass --learner-gpus or fewer --actor-gpus")
    groups = [a_ids[i:i + tp] for i in range(0, len(a_ids), tp)]
    ranks = hostfile_slots(hostfile) if hostfile else len(l_ids)
    # Every component of this plan runs on a GPU: one that finds none refuses to start (configs.device) instead of
    # running on the CPU; on a shared GPU the actor keeps merged mode's base weights off the learner's memory.
    cfg = _with(cfg, actor__replicas=len(groups), actor__tensor_parallel_size=tp, learner__ranks=ranks,
                actor__device="cuda", learner__device="cuda", actor__shared_gpu=shared)
    if check:
        check_model(cfg.model_id)  # before the memory plan reads its shape
    cfg, notes = memory_plan(cfg, sorted(set(a_ids + l_ids)), gpu_mem, shared=shared, check=check)
    if check:
        preflight(cfg)
    rd = Path(cfg.run_dir)
    conf = str(rd / "config.yaml")
    actors = [Component(name=f"actor-{k}", argv=[sys.executable, "-m", "actor", "--config", conf, "--replica", str(k)],
                        env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, g))}, devices=f"GPU {','.join(map(str, g))}",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port]) for k, g in enumerate(groups)]
    ds = [str(Path(sys.executable).with_name("deepspeed"))]
    if hostfile:
        ds += ["--hostfile", hostfile]
    else:
        ds += ["--include", f"localhost:{','.join(map(str, l_ids))}"]
    ds += ["--master_port", str(cfg.sync.master_port), "--module", "learner", "--config", conf]
    # a shared GPU: the learner starts after the actors are READY (launch.supervise, Plan.actors_first), so vLLM's
    # start-up check sees the GPU free; expandable segments keep the learner's varying batch shapes from fragmenting
    # the rest. Elsewhere actors and learner start together.
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"} if shared else {}
    learner = Component(name="learner", argv=ds, env=env,
                        devices=f"GPU {','.join(map(str, l_ids))}" + (" (shared)" if shared else "") if l_ids
                        else "hostfile",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port, cfg.sync.master_port])
    return Plan("node" + (" (actors and learner share the GPUs)" if shared else "") + note, rd, cfg, actors, learner,
                notes=notes, actors_first=shared)


def cpu_plan(config: str, overrides: list[str], *, run_dir: str | None, actor_cores: str | None = None,
             learner_cores: str | None = None, check: bool = True) -> Plan:
    """One actor and a single-process learner (gloo) on this machine; optionally pinned to cores."""
    cfg = resolve(config, overrides, run_dir)
    cfg = _with(cfg, learner__ranks=1, actor__tensor_parallel_size=1)
    if check:
        preflight(cfg)
    rd = Path(cfg.run_dir)
    conf = str(rd / "config.yaml")

    def pinned(cores: str | None) -> list[str]:
        if not cores:
            return []
        parse_ids(cores)
        if shutil.which("taskset") is None:
            raise LaunchError("taskset not found (util-linux); drop --actor-cores/--learner-cores")
        return ["taskset", "-c", cores]

    py = [sys.executable, "-m"]
    actors = [Component(name=f"actor-{k}",
                        argv=pinned(actor_cores) + py + ["actor", "--config", conf, "--replica", str(k)],
                        devices=f"CPU cores {actor_cores}" if actor_cores else "CPU",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port]) for k in range(cfg.actor.replicas)]
    learner = Component(name="learner", argv=pinned(learner_cores) + py + ["learner", "--config", conf],
                        devices=f"CPU cores {learner_cores}" if learner_cores else "CPU",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port])
    same = actor_cores and learner_cores and set(parse_ids(actor_cores)) == set(parse_ids(learner_cores))
    notes = [f"actor and learner share CPU cores {actor_cores}: they take turns, as on one shared GPU"] if same else []
    return Plan("cpu", rd, cfg, actors, learner, notes=notes)
