"""The race (``python -m launch.compare``) is fair on its prompts: TRL's GRPOTrainer, as the race builds it
(:class:`launch.trl_peer.Peer`), and our learner (:class:`learner.trainer.Trainer` with the real DeepSpeed
engine), given the race's run config, train on the same prompts in the same order.

Each side's order is read where its trainer is fed: TRL's from the prompts its ``_generate`` receives while it
trains (the peer records them per step; it runs as ``python -m launch.trl_peer``, its own process, as the race runs
it), ours from the rollout requests the learner submits (the in-process
actor's ``submit``, wrapped to record what it is asked). The config is the race's own (``configs/demo_cpu.yaml`` +
:func:`launch.compare.race_sets`, so ``data.balance_tasks`` is on as in the demo) on the tiny model and toy pairs
of four tasks, three steps of three prompts.
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
from cuda_probes import by_program, poisoning, probe_env, probes
from e2e_helpers import toy_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS, PROMPTS, G = 3, 3, 2


def race_config(tiny_model, tmp: Path, seed: int):
    from launch.compare import DEMO_CONFIG, race_sets

    sets = race_sets(sft=None, steps=STEPS, seed=seed, tasks=["extraction", "sql_qa", "insights", "push"],
                     num_generations=G, prompts_per_step=PROMPTS, max_completion_length=8, learning_rate=1e-3,
                     temperature=1.0, model=str(tiny_model))
    toy = toy_overrides(tiny_model, tmp / "run", tmp / "pairs", max_completion_length=8, num_generations=G,
                        prompts_per_step=PROMPTS)
    keep = ("data.train_pairs=", "data.eval_pairs=", "rewards.toy_token=", "run_dir=")
    return load_config(REPO / DEMO_CONFIG, sets + [o for o in toy if o.startswith(keep)])


def test_trl_peer_and_our_learner_get_the_same_prompts_in_the_same_order(tiny_model, tmp_path, single_process):
    from launch.trl_peer import prompt_key
    from learner.rollouts_local import HFLocalActor
    from learner.trainer import Trainer

    cfg = race_config(tiny_model, tmp_path, seed=7)
    assert cfg.data.balance_tasks, "the race's config is the demo's, which balances the tasks"

    conf, out = tmp_path / "race.yaml", tmp_path / "trl.json"
    conf.write_text(dump_config(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env = probe_env(tmp_path / "cuda-probes", env)  # the peer's CUDA probes, recorded (tests/cuda_probe)
    peer = subprocess.run([sys.executable, "-m", "launch.trl_peer", "--config", str(conf), "--out", str(out)],
                          cwd=REPO, env={**env, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=600)
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
