"""Fixtures for tests that run actor processes and compare them with transformers+PEFT.

``actor_kit`` (session) bundles the helpers: random non-zero LoRA adapters made with PEFT on a model,
reference logprobs from transformers+PEFT, free ports, and ``python -m actor`` subprocesses
(``ActorProc``) whose engine processes are tracked so a test can check none is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from e2e_helpers import free_port, free_port_block

REPO = Path(__file__).resolve().parents[2]
CHAT = [{"role": "user", "content": "Resuma a avaliação: o produto chegou atrasado e com defeito."}]


def make_lora_adapter(model_dir, out_dir, seed: int, target_modules="all-linear", r: int = 16,
                      alpha: int = 32, std: float = 0.05, bf16_values: bool = True) -> Path:
    """A PEFT adapter on ``model_dir`` with random non-zero A and B (PEFT starts B at zero).

    ``bf16_values``: round the values to bfloat16 (kept in float32) so the adapter crosses the wire
    (bf16 by default) unchanged and the reference stays exact.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                v = torch.randn(p.shape, generator=gen) * std
                p.copy_(v.to(torch.bfloat16).float() if bf16_values else v)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir)
    return out_dir


def adapter_tensors(adapter_dir) -> tuple[dict, dict]:
    """(PEFT state dict, adapter_config) of a saved adapter: what a learner would publish."""
    import json

    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    return (load_file(str(adapter_dir / "adapter_model.safetensors")),
            json.loads((adapter_dir / "adapter_config.json").read_text()))


class Reference:
    """transformers (+PEFT) float32 logprobs of given tokens, the learner's view of the policy."""

    def __init__(self, model_dir):
        self.model_dir = str(model_dir)
        self._base = None

    def _model(self, adapter_dir):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        return model.eval()

    def logprobs(self, adapter_dir, prompt_ids: list[int], completions: list[list[int]],
                 temperature: float = 1.0) -> list[list[float]]:
        import torch

        model = self._model(adapter_dir)
        out = []
        with torch.no_grad():
            for comp in completions:
                ids = torch.tensor([list(prompt_ids) + list(comp)])
                logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
                lp = torch.log_softmax(logits, dim=-1)
                out.append(lp.gather(1, torch.tensor(comp)[:, None])[:, 0].tolist())
        return out


    def logprobs_switched(self, before, after, prompt_ids: list[int], completion: list[int], boundary: int,
                          temperature: float = 1.0) -> list[float]:
        """Logprobs of ``completion`` as an engine computes them that swapped ``before`` for ``after`` between
        two steps, ``boundary`` tokens into it (0 < boundary < len): tokens ``[0, boundary)`` sampled by
        ``before``, the rest by ``after``, on the KV cache as the engine holds it. The step that sampled token
        ``boundary - 1`` ran under ``before`` and fed the token before it; the next step, under ``after``, feeds
        token ``boundary - 1``: the KV of the prompt and of tokens ``[0, boundary - 1)`` is ``before``'s, the KV
        from token ``boundary - 1`` on is ``after``'s."""
        import torch

        assert 0 < boundary < len(completion)
        a, b = self._model(before), self._model(after)
        ids, p = list(prompt_ids) + list(completion), len(prompt_ids)
        cut = p + boundary - 1
        with torch.no_grad():
            first = a(torch.tensor([ids[:cut]]), use_cache=True)
            rest = b(torch.tensor([ids[cut:-1]]), past_key_values=first.past_key_values, use_cache=True)
            logits = torch.cat([first.logits[0, p - 1:], rest.logits[0]]).float() / temperature
        lp = torch.log_softmax(logits, dim=-1)
        return lp.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


class ActorProc:
    """A ``python -m actor`` subprocess with its log in a file; remembers its descendants."""

    def __init__(self, config: Path, overrides: list[str], log_path: Path, replica: int = 0,
                 actor_id: str | None = None, extra_args: list[str] | None = None):
        self.log_path = log_path
        cmd = [sys.executable, "-m", "actor", "--config", str(config), "--replica", str(replica)]
        for o in overrides:
            cmd += ["--set", o]
        if actor_id:
            cmd += ["--actor-id", actor_id]
        cmd += extra_args or []
        self.actor_id = actor_id
        self._log = open(log_path, "w")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)
        self.descendants: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def snapshot_children(self) -> set[int]:
        """Record the process's descendants now (vLLM EngineCore and its workers)."""
        import psutil

        try:
            kids = {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            kids = set()
        self.descendants |= kids
        return kids

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive_descendants(self) -> list[int]:
        import psutil

        alive = []
        for pid in self.descendants:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def signal(self, sig) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_all(self) -> None:
        """Test teardown: make sure nothing of this actor survives (its whole session)."""
        self.snapshot_children()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        import psutil

        for pid in self.alive_descendants():
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()


def wait_for(cond, timeout: float, what: str, interval: float = 0.05, proc: ActorProc | None = None):
    """Poll ``cond`` until truthy; fail naming ``what`` (with the actor's log tail when given)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"actor exited ({proc.proc.returncode}) while waiting for {what}:\n{proc.log()[-3000:]}")
        if time.monotonic() > deadline:
            tail = f"\n{proc.log()[-3000:]}" if proc is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def actor_kit(tiny_model):
    """Helpers shared by the actor tests (see the module docstring)."""
    return SimpleNamespace(
        model=tiny_model,
        chat=CHAT,
        config=REPO / "configs" / "smoke_cpu.yaml",
        make_adapter=make_lora_adapter,
        adapter_tensors=adapter_tensors,
        reference=Reference(tiny_model),
        free_port=free_port,
        ActorProc=ActorProc,
        wait_for=wait_for,
    )


# ------------------------------------------------------------------------------------------------
# A real Slurm cluster for tests/integration/test_slurm*.py: tests/slurm/cluster.sh brings up munged,
# slurmctld and two slurmd daemons (fake nodes n1, n2 on this machine) in a private directory, on free
# ports, for the session, and takes them down afterwards.

SLURM_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"


def _slurm_unavailable() -> str | None:
    import shutil

    have = all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))
    if os.geteuid() != 0:
        return "the Slurm test cluster runs slurmctld, slurmd and munged as root; not root here"
    if not have and shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get is missing (tests/slurm/cluster.sh install needs Debian's apt)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Env (``SLURM_CONF`` set) for a two-node Slurm cluster on this machine. Skipped only where root or
    apt is missing, never in CI (``TUCANO2_CI=1``: the same reasons fail instead)."""
    why = _slurm_unavailable()
    if why:
        if os.environ.get("TUCANO2_CI") == "1":
            pytest.fail(f"Slurm tests cannot run in CI: {why}")
        pytest.skip(why)
    import shutil
    import tempfile

    # Not under pytest's basetemp: munged's socket lives here, and a concurrent pytest session of the same
    # user may prune old basetemp directories while this one runs.
    d = Path(tempfile.mkdtemp(prefix="tucano2-slurm-"))
    env = {**os.environ, "TUCANO2_SLURM_DIR": str(d), "TUCANO2_SLURM_PORT": str(free_port_block(3)),
           "TUCANO2_SLURM_NODES": "2", "SLURM_CONF": str(d / "slurm.conf")}

    def script(cmd: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SLURM_SCRIPT), cmd], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    for cmd, timeout in (("install", 900), ("up", 120)):
        r = script(cmd, timeout)
        if r.returncode != 0:
            script("down", 60)
            pytest.fail(f"tests/slurm/cluster.sh {cmd} failed:\n{r.stdout}\n{r.stderr}")
    try:
        yield SimpleNamespace(env=env, dir=d, conf=d / "slurm.conf", nodes=["n1", "n2"])
    finally:
        script("down", 60)
        shutil.rmtree(d, ignore_errors=True)
