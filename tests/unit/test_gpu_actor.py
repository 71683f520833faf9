"""The GPU actor's CUDA-only branches, caught on CPU: what vLLM 0.32 does on CUDA (read in its installed CUDA code,
``actor.vllm_pins``) and what we set because of it. The real-engine halves are in
``tests/integration/test_actor_precision.py`` (slot pressure) and ``test_e2e_learning.py`` (every CUDA probe of a run).
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke_cpu.yaml"


def _cfg(**actor):
    from configs import RunConfig

    return RunConfig(model_id="m", max_steps=1, learning_rate=1e-5, actor=actor)


# --------------------------------------------------------------------------- item 1: the process environment


def test_configs_device_doctests():
    import configs.device

    assert doctest.testmod(configs.device).failed == 0


@pytest.mark.parametrize("package", ["actor", "launch"])
def test_importing_actor_or_launch_makes_every_later_cuda_probe_fork_safe(package):
    """``python -m actor ...``, its benches, the launcher and the TRL peer import one of these packages first: from
    then on ``torch.cuda.is_available()`` asks NVML, usage statistics stay home and the sampler needs no nvcc; a
    user's own choice of the last two is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_NVML_BASED_CUDA_CHECK", "VLLM_NO_USAGE_STATS",
                                                            "VLLM_USE_FLASHINFER_SAMPLER")}
    code = (f"import os, sys; import {package}; print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), "
            "os.environ.get('VLLM_NO_USAGE_STATS'), os.environ.get('VLLM_USE_FLASHINFER_SAMPLER'), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "0", "False"]  # set before anything imported torch
    env.update(VLLM_NO_USAGE_STATS="0", PYTORCH_NVML_BASED_CUDA_CHECK="0")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["1", "0"]  # the probe variable is forced (as vLLM does), the user's 0 kept


# --------------------------------------------------------------------------- item 2: inline engines on a GPU


def test_an_inline_engine_on_a_gpu_runs_without_async_scheduling():
    """On CUDA vLLM turns async scheduling on (a batch queue of 2), and an in-process EngineCore's pause does not wait
    for the queued batch: it would be labelled with the version an in-flight load set after it. A separate engine's
    pause waits for it (``actor.vllm_pins``): there vLLM's default stays."""
    from vllm.engine.arg_utils import EngineArgs

    from actor.engine_args import engine_kwargs

    inline = engine_kwargs(_cfg(inline_engine=True), gpu=True, dtype="bfloat16", mode="merged", seed=1)
    assert inline["async_scheduling"] is False
    assert EngineArgs(**inline).async_scheduling is False  # the name vLLM's engine arguments take
    separate = engine_kwargs(_cfg(), gpu=True, dtype="bfloat16", mode="merged", seed=1)
    assert "async_scheduling" not in separate and EngineArgs(**separate).async_scheduling is None
    cpu = engine_kwargs(_cfg(inline_engine=True), gpu=False, dtype="float32", mode="merged", seed=1)
    assert "async_scheduling" not in cpu  # the CPU platform forces it off itself


# --------------------------------------------------------------------------- item 3: the plan and the engine agree

GPUS = {  # name as torch reports it, memory in GiB
    "L4": ("NVIDIA L4", 22.5),
    "A100 40GB": ("NVIDIA A100-SXM4-40GB", 39.4),
    "A100 80GB": ("NVIDIA A100-SXM4-80GB", 79.2),
    "H100": ("NVIDIA H100 80GB HBM3", 79.6),
    "H200": ("NVIDIA H200", 139.8),
}


@pytest.mark.parametrize("gpu", sorted(GPUS))
@pytest.mark.parametrize("config", ["v4_1.yaml", "v4_2_a_3b.yaml"])
def test_the_engine_runs_the_batched_tokens_the_memory_plan_budgets(gpu, config, monkeypatch):
    """vLLM 0.32 picks ``max_num_batched_tokens`` by GPU (``EngineArgs.get_batch_defaults``: 16,384 on 70 GiB or more
    except the A100). The engine arguments built for a GPU, run through vLLM's own defaulting with that GPU's name and
    memory, must end at the figure ``launch.memory`` budgeted vLLM's profiling peak from."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.usage.usage_lib import UsageContext

    from actor.engine_args import engine_kwargs
    from configs import load_config
    from launch.memory import KNOWN_SHAPES, plan_memory

    name, gib = GPUS[gpu]
    monkeypatch.setattr(current_platform, "get_device_total_memory", lambda *a, **k: int(gib * 2**30), raising=False)
    monkeypatch.setattr(current_platform, "get_device_name", lambda *a, **k: name, raising=False)
    cfg = load_config(REPO / "configs" / config)
    kw = engine_kwargs(cfg, gpu=True, dtype="bfloat16", mode="adapter", seed=0)
    args = EngineArgs(**{k: v for k, v in kw.items() if k not in ("model", "tokenizer")})
    args.enable_chunked_prefill = True  # vLLM's default on a GPU for a generating model
    model_config = SimpleNamespace(max_model_len=cfg.max_seq_length, is_multimodal_model=False)
    args._set_default_max_num_seqs_and_batched_tokens_args(UsageContext.LLM_CLASS, model_config,
                                                           SimpleNamespace(use_batched_dp_moe=False))
    plan = plan_memory(cfg, gib, shared=False, shape=KNOWN_SHAPES[str(cfg.model_id)])
    assert args.max_num_batched_tokens == plan.batched_tokens, (gpu, args.max_num_batched_tokens, plan.batched_tokens)
    assert args.max_num_seqs == cfg.actor.max_num_seqs  # set by us, not by the GPU's defaults


# --------------------------------------------------------------------------- item 5: merged mode's W0 on a shared GPU


class _FakeCudaTensor:
    """A stand-in for a checkpoint tensor on a CUDA machine (named as a fake: we do not ship the driver): records
    where :meth:`actor.merge.LoraMergeExtension._place` puts it."""

    def __init__(self, n: int):
        self.n, self.where = n, "read"

    def numel(self):
        return self.n

    def element_size(self):
        return 2

    def to(self, device):
        self.where = f"device {device.type}"
        return self

    def pin_memory(self):
        self.where = "pinned host"
        return self


@pytest.mark.parametrize("shared", [False, True])
def test_merged_w0_stays_in_host_memory_on_a_gpu_shared_with_the_learner(shared, monkeypatch):
    """A shared GPU's free memory at the actor's first load includes the learner's share, which the learner has not
    allocated yet: W0 goes to pinned host memory there however much looks free; on a GPU of its own it goes to the
    device when there is room."""
    import torch

    from actor.merge import LoraMergeExtension

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: asked.append(d) or (70 * 2**30, 80 * 2**30))
    tensors = {"w": _FakeCudaTensor(2**20)}
    placed = LoraMergeExtension._place(tensors, SimpleNamespace(type="cuda"), host=shared)
    assert placed["w"].where == ("pinned host" if shared else "device cuda")
    assert bool(asked) is not shared  # the free memory is not even consulted on a shared GPU


def test_the_actor_passes_its_shared_gpu_to_every_merge():
    """The worker learns ``actor.shared_gpu`` from the merge call itself (workers do not see the run config)."""
    import inspect

    from actor.engine import RolloutEngine
    from actor.merge import LoraMergeExtension

    assert "shared_gpu" in inspect.signature(LoraMergeExtension.merge_lora_dir).parameters
    assert "self.cfg.actor.shared_gpu" in inspect.getsource(RolloutEngine._load_merged)


# --------------------------------------------------------------------------- item 6: no silent fallback


def test_an_actor_the_plan_put_on_a_gpu_refuses_the_cpu_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "actor", "--config", str(SMOKE), "--set", "actor.device=cuda",
                        "--set", f"sync.ipc_dir={tmp_path / 'ipc'}"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("actor: actor.device is cuda (the plan put this actor on a GPU), but torch ")
    assert "sees no GPU: it is a CPU build" in lines[0]


def test_a_learner_the_plan_put_on_a_gpu_refuses_the_cpu_in_one_line(tmp_path):
    """Before this, a learner on a node whose driver is too old trained on the CPU in float32, and nothing said so."""
    r = subprocess.run([sys.executable, "-m", "learner", "--config", str(SMOKE), "--set", "learner.device=cuda",
                        "--set", f"run_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("learner: learner.device is cuda (the plan put this learner on a GPU), but torch ")


@pytest.mark.parametrize("info,cvd,want", [
    (("535.104.05", "12.2", None), None, "NVIDIA driver 535.104.05 supports CUDA up to 12.2, this torch (and vLLM "
                                         "0.32) needs CUDA 13.0: update the driver (CUDA 13.0 needs 580 or newer)"),
    ((None, None, "no NVIDIA driver (nvidia-smi is not on PATH)"), None, "no NVIDIA driver (nvidia-smi is not on "
                                                                         "PATH)"),
    (("580.159.04", "13.0", None), "", "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    (("580.159.04", "13.0", None), None, "should agree"),
])
def test_the_no_gpu_line_names_the_driver_and_cuda_versions(info, cvd, want):
    from configs.device import no_gpu_line

    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    line = no_gpu_line("2.13.0+cu130", "13.0", env=env, info=info)
    assert want in line and "\n" not in line and line.startswith("torch 2.13.0+cu130 sees no GPU: ")


def test_driver_info_reads_nvidia_smi(monkeypatch):
    from configs import device

    monkeypatch.setattr(device.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = ("| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |\n")
    run = lambda *a, **k: SimpleNamespace(returncode=0, stdout=out, stderr="")  # noqa: E731 - a fake driver
    assert device.driver_info(run) == ("535.104.05", "12.2", None)
    failed = lambda *a, **k: SimpleNamespace(returncode=9, stdout="", stderr="NVIDIA-SMI has failed because it "  # noqa
                                             "couldn't communicate with the NVIDIA driver.\n")
    assert device.driver_info(failed)[2].startswith("nvidia-smi failed: NVIDIA-SMI has failed")


def _fake_venv(root: Path, extra: str) -> Path:
    """A venv dir whose python is this one's, stamped as set up with ``extra`` (launch/setup.sh's stamp)."""
    import hashlib

    real = Path(sys.prefix)
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(Path(sys.executable))
    (venv / "pyvenv.cfg").write_text((real / "pyvenv.cfg").read_text())
    (venv / "lib").symlink_to(real / "lib")
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".tucano2-setup").write_text(f"{extra} {digest}\n")
    return venv


def test_setup_on_the_cuda_extra_stops_in_one_line_without_a_gpu_or_a_compiler(tmp_path):
    """``make setup`` with the cuda extra where torch sees no GPU and the C compiler is missing: exit 1 and one line
    with both; an nvidia-smi on PATH (a fake of the driver, which we do not ship) gives its versions."""
    venv = _fake_venv(tmp_path, "cuda")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |'\n")
    smi.chmod(0o755)
    env = {**os.environ, "VENV": str(venv), "TUCANO2_EXTRA": "cuda", "CC": str(tmp_path / "no-cc"),
           "PATH": f"{fake}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(REPO / "launch" / "setup.sh")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("setup: the cuda extra cannot run here: torch "), r.stderr
    assert "sees no GPU" in lines[0] and "NVIDIA driver 535.104.05, CUDA up to 12.2" in lines[0]
    assert f"no C compiler (CC={tmp_path / 'no-cc'} not found)" in lines[0]
    ok = subprocess.run(["bash", str(REPO / "launch" / "setup.sh")], cwd=REPO, capture_output=True, text=True,
                        env={**env, "TUCANO2_EXTRA": "cpu", "VENV": str(_fake_venv(tmp_path / "cpu", "cpu"))},
                        timeout=300)
    assert ok.returncode == 0 and "up to date (cpu extra)" in ok.stdout, ok.stderr  # the cpu extra checks no GPU


def test_cuda_check_finds_the_compiler_and_headers_as_triton_does(tmp_path):
    from launch.cuda_check import c_compiler, problems, python_include

    which = {"gcc": "/usr/bin/gcc", "clang": None}.get
    assert c_compiler({}, which) == "/usr/bin/gcc" and c_compiler({"CC": "gcc"}, which) == "gcc"
    assert c_compiler({}, lambda n: None) is None and c_compiler({"CC": "cc9"}, which) is None
    headers = tmp_path / "include"
    headers.mkdir()
    found = problems(gpu_line=None, env={}, which=lambda n: None, include=headers)
    assert len(found) == 2 and found[0].startswith("no C compiler") and found[1].startswith("no Python headers")
    (headers / "Python.h").write_text("")
    assert problems(gpu_line=None, env={}, which=which, include=headers) == []
    assert (python_include() / "Python.h").exists()  # this machine has them (CI's too)


def test_the_cuda_extra_pins_the_torch_vllm_needs():
    """Without the pin pip downloads a newer torch (539 MB) before backtracking to vLLM 0.32's."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "torch==2.13.0" in extras["cuda"] and "torch==2.13.0" in extras["cpu"]


# --------------------------------------------------------------------------- item 8: off the nvcc paths


@pytest.mark.parametrize("dtype,want", [("bfloat16", "FLASH_ATTN"), ("float16", "FLASH_ATTN"),
                                        ("float32", "TRITON_ATTN")])
def test_a_gpu_engine_pins_its_attention_backend(dtype, want):
    """Pinned, a FlashAttention that fails to load is an error (vLLM's CUDA platform raises on a selected backend,
    ``actor.vllm_pins``), not a fall back to FlashInfer's nvcc-compiled kernels; float32 has no FlashAttention."""
    from vllm.engine.arg_utils import EngineArgs

    from actor.engine_args import engine_kwargs

    kw = engine_kwargs(_cfg(), gpu=True, dtype=dtype, mode="adapter", seed=1)
    assert kw["attention_backend"] == want
    assert EngineArgs(**kw).attention_backend is not None
    assert "attention_backend" not in engine_kwargs(_cfg(attention_backend="vllm"), gpu=True, dtype=dtype,
                                                    mode="adapter", seed=1)
    assert engine_kwargs(_cfg(attention_backend="FLASHINFER"), gpu=True, dtype=dtype, mode="adapter",
                         seed=1)["attention_backend"] == "FLASHINFER"
    assert "attention_backend" not in engine_kwargs(_cfg(), gpu=False, dtype="float32", mode="merged", seed=1)


# --------------------------------------------------------------------------- item 7: the vLLM internals we rely on


def test_every_vllm_internal_the_actor_relies_on_is_still_there():
    from actor.vllm_pins import PINS, failing

    assert len(PINS) >= 30 and not failing(), failing()
    for pin in PINS:
        assert pin.used_in and "vllm/" in pin.cuda_path, pin.name


def test_a_changed_internal_fails_its_pin(monkeypatch):
    """The pins read vLLM's own source: with the source gone (as after a rename) they fail, by name."""
    import actor.vllm_pins as pins

    monkeypatch.setattr(pins, "src", lambda rel, qualname=None: "")
    bad = pins.failing()
    assert "a selected attention backend that does not load raises (no fall back)" in bad
    assert any(b.startswith("max_num_batched_tokens defaults by GPU") for b in bad)


def test_readme_lists_what_was_checked_against_vllm_cuda_code():
    text = (REPO / "README.md").read_text()
    section = text.split("### What the GPU path was checked against", 1)[1].split("\n## ", 1)[0]
    for needle in ("actor/vllm_pins.py", "PYTORCH_NVML_BASED_CUDA_CHECK", "async scheduling", "max_num_batched_tokens",
                   "VLLM_NO_USAGE_STATS", "VLLM_USE_FLASHINFER_SAMPLER", "no CPU test can show"):
        assert needle in section, needle


def test_pins_are_json_describable():
    """The list is data a user can read: ``python -c 'from actor.vllm_pins import PINS'`` (and dump)."""
    from actor.vllm_pins import PINS

    rows = [{"name": p.name, "used_in": p.used_in, "cuda_path": p.cuda_path} for p in PINS]
    assert json.loads(json.dumps(rows)) == rows and len({r["name"] for r in rows}) == len(rows)


# --------------------------------------------------------------------------- item 9: the device check's CPU parts


def test_the_device_check_validates_every_command_it_would_run(tmp_path):
    r = subprocess.run(["bash", str(REPO / "launch" / "device_check.sh"), "--dry-run", "--out", str(tmp_path)],
                       cwd=REPO, env={**os.environ, "PY": sys.executable, "WORK": str(tmp_path / "w")},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "learner.device=cuda" in r.stdout and "--resume" in r.stdout and "--shape 3.7b" in r.stdout
    bad = subprocess.run(["bash", str(REPO / "launch" / "device_check.sh"), "--steps", "3"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "device_check: unknown option --steps"


def _device_run(tmp_path, steps, loss=0.1):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    rows = [{"step": s, "train/loss": loss, "train/version": float(s)} for s in steps]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_the_device_report_compares_the_learners_peak_with_the_plan(tmp_path):
    """``launch.device_report`` on a run as the device check leaves it: the plan's learner estimate for V4.1 at the
    0.5B shape against the peak nvidia-smi saw, and the run's steps across its resume."""
    from configs import load_config
    from launch.device_report import report, smi_peaks, training_check
    from launch.memory import KNOWN_SHAPES, learner_part

    cfg = load_config(REPO / "configs" / "v4_1.yaml", ["max_steps=4", "learner.precision=bf16"])
    estimate = learner_part(cfg, KNOWN_SHAPES[str(cfg.model_id)]).total
    smi = tmp_path / "smi.csv"
    smi.write_text(f"2026/12/07 12:00:00.000, 4242, {int(0.5 * estimate * 1024)}\n"
                   f"2026/12/07 12:00:00.200, 4242, {int(0.8 * estimate * 1024)}\n2026/12/07 12:00:00.4")
    assert abs(smi_peaks(smi)[4242] - 0.8 * estimate) < 0.01  # a line cut by the poller's kill is skipped
    run = _device_run(tmp_path, [1, 2, 3, 4])
    out, problems = report(cfg, run, smi, {"peak_mem_gb": 1.0}, first_steps=3)
    assert problems == [] and out["measured_peak_gib"] < out["estimate_gib"]
    smi.write_text(f"2026/12/07 12:00:00.000, 4242, {int((estimate + out['local_actor_gib'] + 0.5) * 1024)}\n")
    _, problems = report(cfg, run, smi, None, first_steps=3)
    assert len(problems) == 1 and "exceeds the plan's" in problems[0]
    assert training_check([{"step": 1, "train/loss": 0.1}, {"step": 2, "train/loss": float("nan")}], 2, 3) == [
        "trained steps [1, 2], expected 1..3", "a non-finite loss"]
