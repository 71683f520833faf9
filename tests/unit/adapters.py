"""A one-layer LoRA adapter for the weight-channel tests, and waiting for an endpoint to receive a version."""

from __future__ import annotations

import time

import torch

from sync.interfaces import ReceivedWeights

ADAPTER = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA"}


def state(seed: int) -> dict[str, torch.Tensor]:
    """The adapter's tensors (q_proj's LoRA A and B of one layer), seeded: another seed is another version."""
    g = torch.Generator().manual_seed(seed)
    return {f"base_model.model.model.layers.0.self_attn.q_proj.lora_{ab}.weight": torch.randn(shape, generator=g)
            for ab, shape in (("A", (2, 8)), ("B", (8, 2)))}


def received(ep, timeout: float = 5.0) -> ReceivedWeights:
    """The next version ``ep`` (an :class:`sync.endpoint.ActorEndpoint`) hands out, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = ep.poll(0.1)
        if isinstance(item, ReceivedWeights):
            return item
    raise AssertionError("no weights arrived")
