"""Worker of ``test_learner_skip.py`` (not a test): one learner rank on the tiny model computes the LoRA
gradients of a fixed step, once forwarding every completion and once skipping the zero-advantage ones, and
rank 0 writes both (after DeepSpeed's all-reduce) to ``OUT/<share>-<skip>-w<world>.safetensors``, for each
``learner.share_prompt`` value given (one engine: the step reads the setting at each call, and no step is taken).

``python grad_worker.py MODEL OUT SHARE_PROMPT[,SHARE_PROMPT]`` under RANK/WORLD_SIZE/MASTER_* (gloo, ZeRO stage 0
so the reduced gradients sit in ``param.grad``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def samples(vocab: int):
    import torch

    from learner.loss import group_advantages
    from learner.rollouts import Sample

    gen = torch.Generator().manual_seed(11)
    # rewards per group: two zero-variance groups, one whose middle completion equals the mean, one ordinary
    groups = [[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.5], [0.1, 0.7, 0.3, 0.9]]
    out = []
    for g, rewards in enumerate(groups):
        adv = group_advantages(torch.tensor([rewards]), "none").tolist()
        prompt = torch.randint(3, vocab, (5 + g,), generator=gen).tolist()
        for k, (r, a) in enumerate(zip(rewards, adv, strict=True)):
            n = 3 + (g + k) % 4
            comp = torch.randint(3, vocab, (n,), generator=gen).tolist()
            out.append(Sample(prompt, comp, (-torch.rand(n, generator=gen) * 3).tolist(), a, r, 0, k % 2 == 1))
    return out


def main(model: str, out: str, shares: str) -> int:
    sys.path.insert(0, str(REPO))
    import torch
    from safetensors.torch import save_file

    from configs import load_config
    from learner.engine import PolicyEngine
    from learner.step import forward_backward

    over = [f"model_id={model}", "learner.zero_stage=0", "learner.micro_batch_size=3", "temperature=0.8",
            "max_completion_length=8", "logging.wandb_mode=disabled"]
    shares = shares.split(",")
    pol = PolicyEngine(load_config(REPO / "configs" / "smoke_cpu.yaml", [*over, f"learner.share_prompt={shares[0]}"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pol.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    data = samples(pol.vocab_size)
    for share in shares:
        cfg = load_config(REPO / "configs" / "smoke_cpu.yaml", [*over, f"learner.share_prompt={share}"])
        info = {}
        for skip in (False, True):
            fb = forward_backward(pol, cfg, data, None, skip_zero_advantage=skip)
            grads = {n: p.grad.detach().clone().contiguous() for n, p in pol.module.named_parameters()
                     if p.requires_grad}
            pol.engine.zero_grad()
            info[str(skip)] = {"skipped": fb.skipped, "tokens": fb.learner_tokens}
            if pol.rank == 0:
                save_file(grads, str(Path(out) / f"{share}-{skip}-w{pol.world}.safetensors"))
        if pol.rank == 0:
            (Path(out) / f"{share}-w{pol.world}.json").write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
