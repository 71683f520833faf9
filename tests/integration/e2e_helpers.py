"""Helpers for the learner and end-to-end tests: small, real inputs (a toy pair file and a config that trains
on it) and a launcher driver (:class:`Launch`) for the whole system as processes.

Not a mock: these are ordinary pair files (the ``commerce`` format: ``prompt``, ``task``, ``answer``)
with short prompts, and a run config with the toy-token reward, so a learner run on the tiny model
takes seconds on a CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cuda_probes import probe_env
from learner.metrics import read_metrics

TASKS = ("extraction", "sql_qa", "insights", "push")
WORDS = ["pedido", "entrega", "produto", "frete", "loja", "caixa", "prazo", "troca", "cliente", "nota"]


INFLIGHT_LOAD = re.compile(r"loaded in [0-9.]+s with [0-9]+ requests in flight")
"""The actor's log line of a version loaded while requests ran (``actor.serve``, ``actor.load_mode: inflight``)."""


def write_toy_pairs(out_dir: Path, n_train: int = 24, n_eval: int = 8) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def rows(n: int, offset: int) -> list[dict]:
        out = []
        for i in range(n):
            task = TASKS[i % len(TASKS)]
            w = WORDS[(i + offset) % len(WORDS)]
            out.append(
                {
                    "id": f"{task}-{i + offset:05d}",
                    "task": task,
                    "prompt": [
                        {"role": "system", "content": f"Tarefa {task}."},
                        {"role": "user", "content": f"Fale sobre {w} numero {i + offset}."},
                    ],
                    "answer": f"O {w} {i + offset} chegou bem.",
                }
            )
        return out

    train, ev = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n_train, 0)))
    ev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n_eval, 1000)))
    return train, ev


def toy_overrides(model_dir: Path, run_dir: Path, pairs_dir: Path, **extra) -> list[str]:
    """``--set`` items pointing ``configs/smoke_cpu.yaml`` at the tiny model and the toy pairs."""
    train, ev = write_toy_pairs(pairs_dir)
    items = {
        "model_id": str(model_dir),
        "run_dir": str(run_dir),
        "data.train_pairs": str(train),
        "data.eval_pairs": str(ev),
        "rewards.toy_token": "m",
        "max_completion_length": 16,
        "num_generations": 4,
        "prompts_per_step": 2,
        "eval.at_start": False,
        "eval.every": 0,
        "eval.subset_size": 4,
        "learner.probe_every": 0,
        "logging.wandb_mode": "disabled",
        "sync.max_staleness": 0,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


# ------------------------------------------------------------------------------------------------
# End-to-end runs through the launcher (tests/integration/test_e2e_*.py): a real actor process and a
# real learner process under ``launch/cpu.sh``, on free loopback ports.


def sharpen_model(src: Path, dst: Path, factor: float = 8.0) -> Path:
    """A copy of the model directory ``src`` whose final RMSNorm weight is multiplied by ``factor``.

    A random-weight model's next-token distribution is almost uniform over the vocabulary (its logits
    have a standard deviation of ~0.2), and LoRA, which leaves the tied embeddings and the norms
    frozen, can move a logit by at most a few tenths of a nat there: such a policy cannot learn any
    reward. Scaling the last norm is sampling the same model at temperature ``1 / factor``: peaked
    distributions like a trained LM's, which GRPO moves within a few steps. Nothing else changes.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    sd = load_file(str(weights))
    sd["model.norm.weight"] = sd["model.norm.weight"] * factor
    save_file(sd, str(weights), metadata={"format": "pt"})
    return dst


def eos_likely_model(src: Path, dst: Path, factor: float = 24.0) -> Path:
    """A copy of the model directory ``src`` whose end-of-turn token's embedding row is multiplied by ``factor``.

    A random-weight model almost never samples its end-of-turn token (one in the vocabulary's 2,048), so every
    completion runs to the length limit. With the row scaled (the embeddings are tied, so its logit scales too) the
    token wins at some positions and not others: completions stop at many lengths (at 24, 16 samples of the tiny
    model stopped at 2 to 21 tokens, or ran to the limit).
    """
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    eos = json.loads((dst / "config.json").read_text())["eos_token_id"]
    weights = dst / "model.safetensors"
    sd = load_file(str(weights))
    sd["model.embed_tokens.weight"][eos] *= factor
    save_file(sd, str(weights), metadata={"format": "pt"})
    return dst


def free_port_block(n: int = 1) -> int:
    """The first of ``n`` consecutive ports that are free now, picked below the kernel's ephemeral range.

    Not port 0's pick: that comes from the ephemeral range, and between this pick and the run's own bind the
    run's processes (vLLM, srun, torch) open outgoing connections whose source ports come from that same
    range; one took the learner's port once in CI ("Address already in use")."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low, 20000 + n + 100)
    for _ in range(200):
        base = random.randrange(20000, top - n)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {n} free ports below {top}")


def free_port() -> int:
    return free_port_block(1)


def e2e_overrides(model_dir: Path, pairs_dir: Path, n_train: int = 24, n_eval: int = 8, **extra) -> list[str]:
    """``--set`` items for ``launch/cpu.sh configs/smoke_cpu.yaml``: the model, toy pairs, the toy reward,
    free ports, no wandb, an eager vLLM engine; ``extra`` (dotted keys) on top. The run dir is the
    launcher's ``--run-dir``."""
    train, ev = write_toy_pairs(pairs_dir, n_train=n_train, n_eval=n_eval)
    rollout = free_port()
    weight = free_port()
    while weight == rollout:
        weight = free_port()
    items = {
        "model_id": str(model_dir),
        "data.train_pairs": str(train),
        "data.eval_pairs": str(ev),
        "rewards.toy_token": "m",
        "logging.wandb_mode": "disabled",
        "sync.rollout_port": rollout,
        "sync.weight_port": weight,
        "learner.probe_every": 0,
        "eval.at_start": False,
        "eval.every": 0,
        "actor.enforce_eager": True,  # no torch.compile: the engine starts in seconds, not half a minute
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


INLINE = {"actor.inline_engine": True}
"""For runs whose test needs no process isolation (nothing killed, no process counted or left behind, no listener
listed): the actor runs its vLLM engine in its own process, ~15 s less per actor start than EngineCore and a worker
(BENCHMARKS.md, "CI time"). The runs that kill, interrupt or count processes keep the separate engine."""


class Launch:
    """``launch/cpu.sh CONFIG --run-dir RUN_DIR --set ...`` as a subprocess in its own session (so
    ``interrupt()`` is a terminal's Ctrl-C: SIGINT to the launcher's process group, which its components,
    each in a session of their own, do not share). Output goes to ``log_path``. ``processes()`` is the
    launcher's process tree now; ``kill_all()`` (teardown) leaves nothing of it alive."""

    def __init__(self, run_dir: Path, overrides: list[str], log_path: Path, *extra: str,
                 config: str = "configs/smoke_cpu.yaml", env: dict | None = None):
        import os
        import subprocess
        import sys

        repo = Path(__file__).resolve().parents[2]
        self.run_dir = Path(run_dir)
        self.log_path = Path(log_path)
        argv = ["bash", str(repo / "launch" / "cpu.sh"), config, "--run-dir", str(run_dir), *extra]
        for o in overrides:
            argv += ["--set", o]
        # Not the torch.distributed variables an in-process learner test may have set in this process:
        # the launched learner would join that (finished) group's store instead of starting its own.
        dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
        env = {k: v for k, v in (os.environ if env is None else env).items() if k not in dist_vars}
        env.update(PY=sys.executable, TUCANO2_NO_PROGRESS="1", WANDB_MODE="disabled")
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in wait()/kill_all()
        self.proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.seen: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> list:
        """The launcher and every descendant alive now (psutil.Process objects); remembered."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen |= {p.pid for p in procs}
        return procs

    def alive(self, pids=None) -> list[int]:
        """Which of ``pids`` (default: every process seen) still run (zombies do not count)."""
        import psutil

        out = []
        for pid in sorted(self.seen if pids is None else pids):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def component_pids(self, name: str) -> list[int]:
        """Pids of the component ``name`` (e.g. ``actor-0``, ``learner``): its process and descendants."""
        import psutil

        out = []
        for p in self.processes()[1:]:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if (name.startswith("actor") and " -m actor " in cmd) or (name == "learner" and " -m learner " in cmd):
                out.append(p.pid)
        return out

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> list[dict]:
        return read_metrics(self.run_dir)

    def wait_until(self, cond, timeout: float, what: str, interval: float = 0.2):
        """Poll ``cond()`` until truthy; raise AssertionError naming ``what`` with the log's tail if the
        launcher exits or ``timeout`` passes first."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited ({self.proc.returncode}) waiting for {what}:\n"
                                     f"{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(interval)

    def interrupt(self) -> None:
        import os
        import signal

        os.killpg(self.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        import subprocess

        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"launcher still running after {timeout:.0f}s:\n{self.log()[-4000:]}") from None
        self._log.flush()
        return rc

    def kill_all(self) -> None:
        import psutil

        self.processes()
        for pid in self.alive():
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - teardown
            pass
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def train_steps(rows: list[dict]) -> list[int]:
    """The steps of the training metric lines (one per optimizer step), in file order."""
    return [r["step"] for r in rows if "perf/step_s" in r]


def every_load_checked(rows: list[dict], run_dir: Path, last: int | None = None, actor: str = "actor-0") -> None:
    """The learner checked the served cosine of every version the actor loaded (its log's ``serving vN``
    lines: a version the actor skipped under latest-wins was never served), and the last version (default: the
    learner's last ``train/version``) was acked."""
    import re

    if last is None:
        last = int(max(r.get("train/version", 0) for r in rows))
    loaded = re.findall(r"serving v(\d+) \(loaded", (Path(run_dir) / "logs" / f"{actor}.log").read_text())
    checked = sum(r.get("sync/served_checked", 0) for r in rows)
    assert loaded and checked == len(loaded), (checked, loaded)
    assert max(r.get("sync/acked_version", -1) for r in rows) == last == int(loaded[-1])


LEARNING = {
    "max_steps": 15,
    "learning_rate": 2e-3,
    "num_generations": 8,
    "prompts_per_step": 2,
    "max_completion_length": 24,
    "eval.at_start": True,
    "eval.every": 5,
    "eval.subset_size": 16,
    "eval.temperature": 1.0,
    "learner.checkpoint_every": 100,
    "sync.max_staleness": 0,  # on-policy: at this learning rate a step-old batch is mostly clipped
    **INLINE,
}
"""The end-to-end learning proof's settings (``tests/integration/test_e2e_learning.py``): the sharpened
tiny model learns the toy reward ``m`` within about ten steps."""


def learning_run(tiny_model: Path, base: Path, publish: bool, timeout: float = 420) -> Path:
    """The learning proof's run (``sync.publish_weights`` = ``publish``) in ``base``, made once per
    ``base``: a finished run there is reused (the adapter test checks the sync-on run's adapter)."""
    base = Path(base)
    run = base / ("sync_on" if publish else "sync_off")
    if (run / "adapter" / "adapter_model.safetensors").exists() and train_steps(read_metrics(run))[-1:] == [
        LEARNING["max_steps"]
    ]:
        return run
    model = base / "tiny-sharp"
    if not (model / "config.json").exists():
        sharpen_model(tiny_model, model)
    over = e2e_overrides(model, base / "pairs", n_eval=16, **LEARNING, **{"sync.publish_weights": publish})
    # every process of the run records its CUDA probes (tests/cuda_probe): test_e2e_learning checks none poisons a fork
    env = probe_env(base / f"{run.name}-cuda-probes")
    with Launch(run, over, base / f"{run.name}.log", env=env) as la:
        rc = la.wait(timeout=timeout)
        if rc != 0:
            raise AssertionError(f"learning run exited {rc}:\n{la.log()[-4000:]}")
    return run
