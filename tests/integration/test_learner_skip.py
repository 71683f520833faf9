"""Zero-advantage completions are not forwarded, and the gradient is exactly the full computation's: with
and without prompt sharing, on one rank and across two (real DeepSpeed processes on gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from e2e_helpers import free_port

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("grad_worker.py")


def run_ranks(model, out, shares: str, world: int) -> None:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(model), str(out), shares],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * world, "\n".join(x[-2000:] for x in logs)


def max_rel_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    scale = max(float(t.abs().max()) for t in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


@pytest.fixture(scope="module")
def grads(tiny_model, tmp_path_factory):
    """Both prompt-sharing settings' gradients, from one worker process per rank (three processes, not six)."""
    out = tmp_path_factory.mktemp("grads")
    for world in (1, 2):
        run_ranks(tiny_model, out, "false,true", world)
    return out


@pytest.mark.parametrize("share", [False, True], ids=["row-per-completion", "share-prompt"])
def test_skipping_zero_advantages_leaves_the_gradient_unchanged(grads, share):
    tmp_path = grads
    tag = str(share).lower()
    full1 = load_file(tmp_path / f"{tag}-False-w1.safetensors")
    skip1 = load_file(tmp_path / f"{tag}-True-w1.safetensors")
    full2 = load_file(tmp_path / f"{tag}-False-w2.safetensors")
    skip2 = load_file(tmp_path / f"{tag}-True-w2.safetensors")
    assert max(float(t.abs().max()) for t in full1.values()) > 1e-6  # a real gradient (dr_grpo: / 16 x 8)
    # float32 rounding only: a skipped row's batch is shaped differently, so BLAS sums in another order (seen at
    # 1.06e-6 of the largest gradient); a completion dropped or double-counted moves it by ~1/16, 4 orders more
    tol = 1e-5
    assert max_rel_diff(full1, skip1) < tol
    assert max_rel_diff(full2, skip2) < tol
    assert max_rel_diff(full1, skip2) < tol  # two ranks, skipping = one rank, everything
    info = json.loads((tmp_path / f"{tag}-w1.json").read_text())
    # 2 zero-variance groups of 4 + the two completions equal to their group mean; the rest is forwarded
    assert info["True"]["skipped"] == 10 and info["False"]["skipped"] == 0
    assert info["True"]["tokens"] < info["False"]["tokens"]
