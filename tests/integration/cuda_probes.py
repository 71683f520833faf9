"""Read what ``tests/cuda_probe/sitecustomize.py`` recorded: every CUDA probe of every process of a run.

``probe_env(dir)`` is the environment that turns the recorder on in a process and its children; ``probes(dir)``
the records; ``poisoning(records)`` those that would poison a later fork on CUDA: ``torch.cuda.is_available()``
called while ``PYTORCH_NVML_BASED_CUDA_CHECK`` is not 1 and CUDA is not initialised (torch then asks the CUDA
runtime, which runs ``cuInit``; vLLM still forks, since CUDA is not *initialised*, and the forked EngineCore dies).
``device_count()`` asks NVML first whatever the variable says, and a probe that initialises CUDA makes vLLM spawn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RECORDER = Path(__file__).resolve().parents[1] / "cuda_probe"
REPO = Path(__file__).resolve().parents[2]


def probe_env(probe_dir: Path, env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the recorder on, writing into ``probe_dir``; the probe variable unset,
    as a user's shell has it."""
    Path(probe_dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    env["PYTHONPATH"] = os.pathsep.join([str(RECORDER), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                       else []))
    env["TUCANO2_CUDA_PROBES"] = str(probe_dir)
    return env


def probes(probe_dir: Path) -> list[dict]:
    out = []
    for f in sorted(Path(probe_dir).glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def poisoning(records: list[dict]) -> list[dict]:
    return [r for r in records if r["fn"] == "is_available" and r["nvml"] != "1" and not r["initialized"]]


def by_program(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by the program that made them (``actor``, ``learner``, ``launch``, ``actor.bench`` ...: the
    module path of ``python -m``, else the script's name)."""
    out: dict[str, list[dict]] = {}
    for r in records:
        prog = Path(r["argv"][0]) if r["argv"] else Path("?")
        try:
            rel = prog.resolve().relative_to(REPO).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__main__")
        except ValueError:
            name = prog.name
        out.setdefault(name, []).append(r)
    return out
