"""Both systems' first race step on the same prompts, each in its own process (``test_race_prompts.py``).

``python step1_worker.py ours CONFIG OUT.json``: our side of step 1 as the learner and the actor run it: the
learner's sampler draws the step's prompts, :func:`learner.rollouts.rollout_request` builds each request (seed
:func:`learner.rollouts.rollout_seed`), our :class:`actor.engine.RolloutEngine` serves the init adapter as v0
(its tensors packed in ``sync.wire_dtype`` and written as the actor's endpoint writes them, then
``load_adapter``, the actor's load) and samples it (``submit`` / ``step``, as ``actor.serve`` does), and
:func:`learner.rollouts.score_groups` scores the groups as the learner does. Writes, per prompt, the prompt ids,
the seed, every completion (ids, logprobs, finish reason) and its reward; the sampling parameters the engine got;
and the step's length, clipped share and reward as ``learner.collect.batch_metrics`` computes them.

``python step1_worker.py trl CONFIG OURS.json OUT.json [--vllm-auto]``: TRL's side, one step of
:class:`launch.trl_peer.Peer` (GRPOTrainer, vLLM colocate) on the same config. Its engine's ``generate`` is wrapped:
the first call records the prompt ids and the ``SamplingParams`` TRL built, and gives sample k of prompt j the seed
our actor gave it (a clone of TRL's own parameters with only ``seed`` set), so the two engines draw the same random
numbers. The rest is TRL's own: it scores those completions (its reward call is recorded), logs its length, clipped
share, reward and its engine's logprob gap to its trainer, and trains. ``--vllm-auto``: the peer as it was before
#34, its engine as TRL builds it (vLLM's ``auto`` dtype, seed 0 whatever the run's).

``python step1_worker.py compare OURS.json TRL.json``: what the two share (prompt ids, sampling parameters, samples,
logprobs, rewards) and each one's logged length, clipped share and reward, as JSON.
"""

from __future__ import annotations

import json
import sys

SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "max_tokens", "min_tokens", "stop", "stop_token_ids", "ignore_eos",
                   "include_stop_str_in_output", "skip_special_tokens", "bad_words", "allowed_token_ids",
                   "logit_bias", "truncate_prompt_tokens", "structured_outputs")
"""What decides which tokens are drawn and where a completion stops (``n``, ``seed``, ``logprobs`` and
``detokenize`` do not, or are set per sample below)."""


def sampling_fields(sp) -> dict:
    out = {}
    for name in SAMPLING_FIELDS:
        v = getattr(sp, name, None)
        if name == "top_k" and v in (0, -1, None):  # vLLM: 0 and -1 both mean "all tokens"
            v = "all"
        out[name] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return out


def step_items(cfg):
    from learner.data import load_items
    from learner.sampler import make_sampler, prompts_per_update

    items = load_items(cfg.data.train_pairs, cfg.data.tasks)
    return [items[i] for i in make_sampler(cfg, items).take(prompts_per_update(cfg))]


def ours(conf: str, out: str) -> None:
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file

    from actor.engine import RolloutEngine
    from configs import load_config
    from learner.data import make_reward_fn
    from learner.rollouts import rollout_request, rollout_seed, score_groups
    from sync.tensors import pack, write_adapter_dir
    from sync.wire import RolloutGroup

    cfg = load_config(conf)
    engine = RolloutEngine(cfg)
    # v0, the init adapter as the learner publishes it: its tensors packed in the wire's dtype and written as the
    # actor's endpoint writes what it receives (the engine owns, and renames, the directory it loads)
    init = Path(cfg.init_adapter)
    blobs, _ = pack(load_file(str(init / "adapter_model.safetensors")), cfg.sync.wire_dtype)
    v0 = write_adapter_dir(Path(tempfile.mkdtemp(prefix="step1-v0-")) / "v0", blobs,
                           json.loads((init / "adapter_config.json").read_text()))
    engine.load_adapter(0, v0)
    reqs = {}
    for j, item in enumerate(step_items(cfg)):
        req = rollout_request(cfg, "train", [item], cfg.num_generations, cfg.temperature,
                              cfg.max_completion_length, rollout_seed(cfg.seed, 0, j), f"train-s0-p{j}", 0, 0)
        engine.submit(req.request_id, req.prompts, req.sampling, tasks=req.meta.get("tasks"),
                      max_turns=req.meta.get("max_turns"))
        reqs[req.request_id] = (req, item)
    groups = {}
    while engine.in_flight:
        for key, results, stats in engine.step():
            groups[key] = RolloutGroup(key, "step1", int(stats["version"]), results, stats, None, {})
    entries = [(groups[k], [item]) for k, (_, item) in reqs.items()]
    parts, counts = score_groups(entries, make_reward_fn(cfg), current_version=0, max_staleness=1,
                                 vocab_size=len(engine.tokenizer), scale_rewards=cfg.scale_rewards,
                                 max_completion_length=cfg.max_completion_length)
    assert not counts and len(parts) == len(reqs), counts
    prompts = []
    for (key, (req, _)), part in zip(reqs.items(), parts, strict=True):
        res = groups[key].results[0]
        prompts.append({"prompt_ids": list(res.prompt_token_ids), "seed": req.sampling.seed,
                        "completions": [{"ids": list(c.token_ids), "logprobs": list(c.logprobs),
                                         "finish_reason": c.finish_reason} for c in res.completions],
                        "rewards": part.task_rewards[0], "lengths": part.completion_lengths,
                        "truncated": [s.truncated for s in part.samples]})
    lens = [x for p in prompts for x in p["lengths"]]
    rewards = [x for p in prompts for x in p["rewards"]]
    cut = [x for p in prompts for x in p["truncated"]]
    sp = engine.sampling_params(reqs[next(iter(reqs))][0].sampling)
    json.dump({"sampling": sampling_fields(sp), "prompts": prompts, "version": engine.version,
               "completion_length": sum(lens) / len(lens), "clipped_ratio": sum(cut) / len(cut),
               "reward": sum(rewards) / len(rewards)}, open(out, "w"))
    engine.close()


def trl(conf: str, ours_file: str, out: str, *flags: str) -> None:
    import tempfile

    import launch.trl_peer
    from configs import load_config
    from launch.trl_peer import Peer

    if "--vllm-auto" in flags:  # the peer before #34: TRL's engine as TRL builds it (vLLM's auto dtype, seed 0)
        launch.trl_peer.colocated_engine = lambda dtype, seed: None

    cfg = load_config(conf, ["max_steps=1"])
    mine = json.load(open(ours_file))
    g = cfg.num_generations
    seeds = [p["seed"] + k for p in mine["prompts"] for k in range(g)]  # vLLM seeds child k of an n-request seed+k
    peer = Peer(cfg, vllm=True, out_dir=tempfile.mkdtemp(prefix="step1-trl-"))
    trainer = peer.trainer
    llm = trainer.vllm_generation.llm
    rec: dict = {"dtype": str(llm.llm_engine.model_config.dtype), "engine_seed": llm.llm_engine.model_config.seed}
    generate = llm.generate

    def seeded_generate(prompts, sampling_params=None, **kw):
        if "prompt_ids" in rec:
            return generate(prompts, sampling_params=sampling_params, **kw)
        rec["prompt_ids"] = [p["prompt_token_ids"] for p in prompts]
        rec["sampling"] = sampling_fields(sampling_params)
        assert len(prompts) == len(seeds), (len(prompts), len(seeds))
        per = []
        for s in seeds:
            sp = sampling_params.clone()
            sp.seed = s
            per.append(sp)
        outs = generate(prompts, sampling_params=per, **kw)
        rec["completions"] = [{"ids": list(o.outputs[0].token_ids), "finish_reason": o.outputs[0].finish_reason,
                               "logprobs": [next(iter(d.values())).logprob for d in o.outputs[0].logprobs]
                               if o.outputs[0].logprobs is not None else None} for o in outs]
        return outs

    llm.generate = seeded_generate
    reward_fn = trainer.reward_funcs[0]
    calls: list = []

    def recording_reward(*args, **kwargs):
        r = reward_fn(*args, **kwargs)
        calls.append([float(x) for x in r])
        return r

    recording_reward.__name__ = reward_fn.__name__
    trainer.reward_funcs[0] = recording_reward
    peer.train()
    row = peer.rows[0]
    logged = next(x for x in trainer.state.log_history if "sampling/sampling_logp_difference/mean" in x)
    json.dump({**rec, "rewards": [x for c in calls for x in c],
               "logp_gap_to_trainer": logged["sampling/sampling_logp_difference/mean"],
               **{k: row.get(k) for k in ("completion_length", "clipped_ratio", "reward")}}, open(out, "w"))


def compare(ours_file: str, trl_file: str) -> dict:
    """What the two step-1 files share, as printed by ``python step1_worker.py compare OURS.json TRL.json``."""
    ours, theirs = json.load(open(ours_file)), json.load(open(trl_file))
    g = len(theirs["completions"]) // len(ours["prompts"])
    mine = [c for p in ours["prompts"] for c in p["completions"]]
    same = [a for a, b in zip(mine, theirs["completions"], strict=True) if a["ids"] == b["ids"]]
    gaps = [abs(x - y) for a, b in zip(mine, theirs["completions"], strict=True) if a["ids"] == b["ids"]
            for x, y in zip(a["logprobs"], b["logprobs"], strict=True)]
    rewards = [r for p in ours["prompts"] for r in p["rewards"]]
    out = {"trl_engine_dtype": theirs["dtype"], "trl_engine_seed": theirs.get("engine_seed"),
           "prompt_ids_equal": [ids for p in ours["prompts"] for ids in [p["prompt_ids"]] * g] == theirs["prompt_ids"],
           "sampling_params_equal": ours["sampling"] == theirs["sampling"],
           "samples_identical": f"{len(same)} of {len(mine)}",
           "max_abs_logprob_diff_on_identical": max(gaps) if gaps else None,
           "rewards_identical": f"{sum(abs(a - b) < 1e-9 for a, b in zip(rewards, theirs['rewards'], strict=True))} "
                                f"of {len(rewards)}",
           "trl_logp_gap_to_its_trainer": theirs.get("logp_gap_to_trainer")}
    for k in ("completion_length", "clipped_ratio", "reward"):
        out[k] = {"ours": ours[k], "trl": theirs[k]}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    {"ours": ours, "trl": trl, "compare": compare}[sys.argv[1]](*sys.argv[2:])
