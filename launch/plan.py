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
    commands: list[tuple[str, str]] | None = None         # (comment, line) for commands.sh; default: each component

    def describe(self) -> str:
        c = self.config
        lines = [f"plan ({self.mode}): {len(self.actors)} actor(s), learner with {c.learner.ranks} rank(s); "
                 f"model {c.model_id}; run dir {self.run_dir}",
                 f"sync: {_channels(c.sync)}, rollout port {c.sync.rollout_port}, weight port "
                 f"{c.sync.weight_port}, max_staleness {c.sync.max_staleness}"]
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
    for label, path in (("train pairs", cfg.data.train_pairs), ("eval pairs", cfg.data.eval_pairs),
                        ("database", cfg.data.db_path)):
        if cfg.rewards.toy_token is None or label != "database":
            if not Path(path).exists():
                raise LaunchError(f"{label} not found: {path} (build with `python -m commerce build`)")
    if keys:
        check_keys(cfg)
    if check_ports:
        for port in (cfg.sync.rollout_port, cfg.sync.weight_port):
            check_port_free(cfg.sync, port)


def resolve(config: str, overrides: list[str], run_dir: str | None) -> RunConfig:
    try:
        cfg = load_config(config, overrides + ([f"run_dir={run_dir}"] if run_dir else []))
    except ConfigError as e:
        raise LaunchError(f"invalid config: {e}") from None
    return cfg


def _with(cfg: RunConfig, **updates) -> RunConfig:
    """A copy of cfg with dotted-path updates, re-validated."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key, value in updates.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return RunConfig.model_validate(data)


def node_plan(config: str, overrides: list[str], *, actor_gpus: str | None, learner_gpus: str | None,
              tp: int | None, run_dir: str | None, hostfile: str | None = None, check: bool = True) -> Plan:
    """Split a node's GPUs: actors get groups of ``tp`` GPUs (one replica each), the learner the rest."""
    cfg = resolve(config, overrides, run_dir)
    gpus = visible_gpus()
    note = ""
    if not gpus and not check:
        gpus, note = list(range(8)), "; dry run, no GPU visible: planned for an 8-GPU node"
    a_ids, l_ids = parse_ids(actor_gpus), parse_ids(learner_gpus)
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
    if set(a_ids) & set(l_ids):
        raise LaunchError(f"GPUs {sorted(set(a_ids) & set(l_ids))} are given to both actors and learner")
    if not a_ids or len(a_ids) % tp:
        raise LaunchError(f"{len(a_ids)} actor GPU(s) do not split into groups of tensor parallel size {tp}")
    if not l_ids and hostfile is None:
        raise LaunchError("no GPUs left for the learner; pass --learner-gpus or fewer --actor-gpus")
    groups = [a_ids[i:i + tp] for i in range(0, len(a_ids), tp)]
    ranks = hostfile_slots(hostfile) if hostfile else len(l_ids)
    cfg = _with(cfg, actor__replicas=len(groups), actor__tensor_parallel_size=tp, learner__ranks=ranks)
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
    ds += ["--master_port", str(cfg.sync.weight_port + 1), "--module", "learner", "--config", conf]
    learner = Component(name="learner", argv=ds, devices=f"GPU {','.join(map(str, l_ids))}" if l_ids else "hostfile",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port, cfg.sync.weight_port + 1])
    return Plan("node" + note, rd, cfg, actors, learner)


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
    return Plan("cpu", rd, cfg, actors, learner)
