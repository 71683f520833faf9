"""Every CUDA probe a real actor benchmark run makes, recorded (``tests/cuda_probe``): none may poison a later fork.

On CUDA vLLM forks its EngineCore, and a ``torch.cuda.is_available()`` made before without
``PYTORCH_NVML_BASED_CUDA_CHECK=1`` kills it at every start. ``actor.bench`` probes for its HF contender before it
starts vLLM, and so does PEFT when it is imported (``peft/utils/other.py``): the variable must be set before either,
which importing ``actor`` does. The actor, the learner and the launcher of a real run are checked in
``test_e2e_learning.py``, the TRL peer in ``test_race_prompts.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cuda_probes import by_program, poisoning, probe_env, probes

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_actor_bench_probes_cuda_only_fork_safely(tiny_model, tmp_path):
    env = probe_env(tmp_path / "probes")
    r = subprocess.run([sys.executable, "-m", "actor.bench", "--config", "configs/smoke_cpu.yaml", "--set",
                        f"model_id={tiny_model}", "--only", "hf", "--repeats", "1", "--prompts", "1", "--samples", "2",
                        "--tokens", "4", "--json", str(tmp_path / "bench.json")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recorded = by_program(probes(tmp_path / "probes")).get("actor.bench", [])
    # the bench's own probe, before it would start vLLM
    assert any("/actor/bench.py:" in rec["caller"] for rec in recorded), recorded
    assert recorded and not poisoning(recorded), poisoning(recorded)
