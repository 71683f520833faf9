"""The race (``python -m launch.compare``) is fair on its prompts and at its start: TRL's GRPOTrainer, as the race
builds it (:class:`launch.trl_peer.Peer`), and our learner (:class:`learner.trainer.Trainer` with the real DeepSpeed
engine), given the race's run config, train on the same prompts in the same order.

Each side's order is read where its trainer is fed: TRL's from the prompts its ``_generate`` receives while it
trains (the peer records them per step; it runs as ``python -m launch.trl_peer``, its own process, as the race runs
it), ours from the rollout requests the learner submits (the in-process
actor's ``submit``, wrapped to record what it is asked). The config is the race's own (``configs/demo_cpu.yaml`` +
:func:`launch.compare.race_sets`, so ``data.balance_tasks`` is on as in the demo) on the tiny model and toy pairs
of four tasks, three steps of three prompts.

And it starts from the same work: at step 1 both systems sample the same policy on the same prompt ids with the same
sampling parameters, so under the same seeds they draw the same completions, which both score and count alike
(:func:`test_both_systems_sample_the_same_first_step`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import load_config
from configs.loader import dump_config
from conftest import make_lora_adapter
from cuda_probes import by_program, poisoning, probe_env, probes
from e2e_helpers import eos_likely_model, toy_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS, PROMPTS, G = 3, 3, 2


def race_config(tiny_model, tmp: Path, seed: int, sft: Path | None = None, max_len: int = 8, g: int = G,
                extra: tuple[str, ...] = ()):
    from launch.compare import DEMO_CONFIG, race_sets

    sets = race_sets(sft=sft, steps=STEPS, seed=seed, tasks=["extraction", "sql_qa", "insights", "push"],
                     num_generations=g, prompts_per_step=PROMPTS, max_completion_length=max_len, learning_rate=1e-3,
                     temperature=1.0, model=str(tiny_model))
    toy = toy_overrides(tiny_model, tmp / "run", tmp / "pairs", max_completion_length=max_len, num_generations=g,
                        prompts_per_step=PROMPTS)
    keep = ("data.train_pairs=", "data.eval_pairs=", "rewards.toy_token=", "run_dir=")
    return load_config(REPO / DEMO_CONFIG, sets + [o for o in toy if o.startswith(keep)] + list(extra))


def lone_env(tmp: Path) -> dict:
    """This environment without what an in-process learner left (accelerate would ask for ``MASTER_ADDR``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    return {**env, "WANDB_MODE": "disabled"}


def test_trl_peer_and_our_learner_get_the_same_prompts_in_the_same_order(tiny_model, tmp_path, single_process):
    from launch.trl_peer import prompt_key
    from learner.rollouts_local import HFLocalActor
    from learner.trainer import Trainer

    cfg = race_config(tiny_model, tmp_path, seed=7)
    assert cfg.data.balance_tasks, "the race's config is the demo's, which balances the tasks"

    conf, out = tmp_path / "race.yaml", tmp_path / "trl.json"
    conf.write_text(dump_config(cfg))
    env = probe_env(tmp_path / "cuda-probes", lone_env(tmp_path))  # the peer's CUDA probes, recorded (tests/cuda_probe)
    peer = subprocess.run([sys.executable, "-m", "launch.trl_peer", "--config", str(conf), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert peer.returncode == 0, peer.stderr[-3000:]
    recorded = probes(tmp_path / "cuda-probes")
    assert by_program(recorded).get("launch.trl_peer"), "the recorder saw no probe of the peer's"
    assert not poisoning(recorded), poisoning(recorded)  # on CUDA a later fork (vLLM's EngineCore) would die
    theirs = [r["prompts"] for r in json.loads(out.read_text())["steps"]]

    actor = HFLocalActor(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, wire_dtype=cfg.sync.wire_dtype)
    asked: dict[int, list[str]] = {}
    submit = actor.submit

    def recording_submit(req):
        m = re.fullmatch(r"train-s(\d+)-p\d+", req.request_id)  # step s's prompt j (not a re-request)
        if m:
            asked.setdefault(int(m.group(1)), []).extend(prompt_key(p) for p in req.prompts)
        return submit(req)

    actor.submit = recording_submit
    res = Trainer(cfg, actor, actor).run()
    assert res.steps == STEPS and res.stopped is None
    ours = [asked[s] for s in range(STEPS)]

    assert [len(p) for p in theirs] == [PROMPTS] * STEPS, theirs
    assert ours == theirs
    # not a vacuous match: the steps differ, and the tasks take turns as data.balance_tasks draws them
    assert len({tuple(p) for p in ours}) == STEPS
    from learner.data import load_items

    task = {prompt_key(it.messages): it.task for it in load_items(cfg.data.train_pairs, cfg.data.tasks)}
    drawn = [task[k] for step in ours for k in step]
    assert all(len(set(drawn[i:i + 4])) == 4 for i in range(0, len(drawn) - 3, 4)), drawn


def test_both_systems_sample_the_same_first_step(tiny_model, tmp_path):
    """Step 1 of the race is the same work for both systems: the same prompt ids, the same sampling parameters, and,
    given the same seeds, the same completions with the same logprobs, scored to the same rewards, counted to the
    same length and clipped share, as each system logs them (``step1_worker.py``: our actor's engine and scoring, and
    one step of TRL's GRPOTrainer with vLLM colocate, its sampling seeded per sample as our actor seeds it).

    The policy at step 1 is a trained adapter (random, non-zero) on a tiny model whose end-of-turn token is made
    likely (its embedding row scaled), so completions stop at many lengths. Both engines must serve it in float32:
    TRL left to itself builds its ``vllm.LLM`` in vLLM's ``auto`` dtype, bf16 for this float32 checkpoint, and then
    samples other completions; and under the run's seed, which TRL leaves out (``launch.trl_peer.colocated_engine``).
    """
    from launch.compare import OURS_SETS

    model = eos_likely_model(tiny_model, tmp_path / "model")
    adapter = make_lora_adapter(model, tmp_path / "init", seed=5, std=0.1)
    cfg = race_config(model, tmp_path, seed=11, sft=adapter, max_len=24, g=4, extra=tuple(OURS_SETS))
    conf = tmp_path / "race.yaml"
    conf.write_text(dump_config(cfg))
    worker = [sys.executable, str(Path(__file__).with_name("step1_worker.py"))]
    for args in (["ours", str(conf), str(tmp_path / "ours.json")],
                 ["trl", str(conf), str(tmp_path / "ours.json"), str(tmp_path / "trl.json")]):
        run = subprocess.run(worker + args, cwd=REPO, env=lone_env(tmp_path), capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    ours, theirs = (json.loads((tmp_path / f"{w}.json").read_text()) for w in ("ours", "trl"))
    g = cfg.num_generations

    # TRL's engine as the peer builds it: ours' actor.dtype on the CPU, and the run's seed
    assert (theirs["dtype"], theirs["engine_seed"]) == ("torch.float32", cfg.seed)
    assert [ids for p in ours["prompts"] for ids in [p["prompt_ids"]] * g] == theirs["prompt_ids"]
    assert ours["sampling"] == theirs["sampling"]
    mine = [c for p in ours["prompts"] for c in p["completions"]]
    assert len(mine) == len(theirs["completions"]) == PROMPTS * g
    differ = [k for k, (a, b) in enumerate(zip(mine, theirs["completions"], strict=True)) if a["ids"] != b["ids"]]
    assert not differ, f"{len(differ)} of {len(mine)} step-1 samples differ under the same seeds: {differ}"
    for a, b in zip(mine, theirs["completions"], strict=True):
        assert a["finish_reason"] == b["finish_reason"]
        assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=True)) < 1e-4
    rewards = [r for p in ours["prompts"] for r in p["rewards"]]
    assert rewards == pytest.approx(theirs["rewards"], abs=1e-9)
    # what each system logs for the step, from its own code
    assert theirs["completion_length"] == pytest.approx(ours["completion_length"], abs=1e-6)
    assert theirs["clipped_ratio"] == pytest.approx(ours["clipped_ratio"], abs=1e-6)
    assert theirs["reward"] == pytest.approx(ours["reward"], abs=1e-6)
    # not a vacuous match: completions stop at several lengths, some at the limit, and the rewards differ
    assert {c["finish_reason"] for c in mine} == {"stop", "length"}
    assert len({len(c["ids"]) for c in mine}) >= 3 and len(set(rewards)) >= 2
