"""What each channel accepts: byte and length caps derived from the run's lengths, not a blanket ceiling.

A message can legitimately need at most:

* a rollout request (learner -> actor): ``MAX_PROMPTS_PER_REQUEST`` chat prompts of up to ``max_seq_length``
  tokens, at most ``TEXT_BYTES_PER_TOKEN`` bytes of text per token;
* a rollout group (actor -> learner): those prompts' token ids, plus ``max_completions`` completions of up
  to ``max_completion_length`` tokens, each token an id, a float64 logprob, its text and at most one
  ``version_runs`` and one ``loss_mask`` pair (a run per token is the most a completion can carry);
* a weight update (learner -> actor): the LoRA adapter's tensors (``lora_nbytes`` from the model config),
  else ``sync.max_message_mb``;
* everything else (Hello, Heartbeat, Welcome, WeightAck, Shutdown): ``CONTROL_BYTES``.

The caps go to ZeroMQ (``MAXMSGSIZE``: a peer sending a larger frame is disconnected before it is read) and
to :func:`sync.wire.decode` (total bytes, and msgpack's ``max_array_len``/``max_map_len``/``max_str_len``,
so a forged header cannot make the unpacker allocate more than the frame could hold). msgpack turns a byte
into at most one Python object (~64 bytes), so decoding one message costs at most ~64x its cap in memory,
briefly. Pure arithmetic: the inputs are the run config's numbers, duck-typed (``sync`` does not import
``configs``).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROMPTS_PER_REQUEST = 8
"""The most prompts the learner puts in one request (eval chunks; train requests carry one)."""
TEXT_BYTES_PER_TOKEN = 128
"""Generous bound on the UTF-8 text of one token (byte-level BPE tokens are a few characters)."""
CONTROL_BYTES = 64 * 2**10
_SLACK = 64 * 2**10  # field names, meta, timings
_MSGPACK_INT, _MSGPACK_FLOAT = 9, 9
# id, logprob, text, a version run, a loss-mask run (a tool episode's account is under _SLACK)
_PER_TOKEN = _MSGPACK_INT + _MSGPACK_FLOAT + TEXT_BYTES_PER_TOKEN + 4 * _MSGPACK_INT


@dataclass(frozen=True)
class ChannelLimits:
    request_bytes: int
    """A RolloutRequest, as the actor receives it."""
    group_bytes: int
    """A RolloutGroup, as the learner receives it."""
    weights_bytes: int
    """A WeightUpdate (all frames), as the actor receives it."""
    max_array_len: int
    """The longest list in any message (a sequence's token ids or logprobs)."""
    control_bytes: int = CONTROL_BYTES
    max_map_len: int = 4096
    """The largest map (request meta with a prompt's reference columns, an adapter config)."""

    @classmethod
    def for_run(cls, cfg, model_config=None) -> ChannelLimits:
        """From a run config (``max_seq_length``, ``max_completion_length``, ``num_generations``,
        ``eval.samples``, ``lora_r``, ``init_adapter``, ``sync.wire_dtype``, ``sync.max_message_mb``) and the
        model's config (its sizes give the adapter's; without it weight updates are capped at
        ``sync.max_message_mb``)."""
        weights_bytes = None
        if model_config is not None:
            r = max(int(cfg.lora_r), adapter_rank(getattr(cfg, "init_adapter", None)))
            weights_bytes = lora_nbytes(model_config, r, 2 if cfg.sync.wire_dtype == "bf16" else 4)
        seq, comp = int(cfg.max_seq_length), int(cfg.max_completion_length)
        prompts = MAX_PROMPTS_PER_REQUEST
        completions = max(int(cfg.num_generations), MAX_PROMPTS_PER_REQUEST * int(cfg.eval.samples))
        request = prompts * seq * TEXT_BYTES_PER_TOKEN + _SLACK
        group = (prompts * seq * _MSGPACK_INT
                 + completions * comp * _PER_TOKEN + _SLACK)
        ceiling = int(cfg.sync.max_message_mb) * 2**20
        weights = min(ceiling, weights_bytes + 2**20) if weights_bytes else ceiling
        return cls(request_bytes=request, group_bytes=group, weights_bytes=weights,
                   max_array_len=max(seq, 2 * comp, completions, 64))

    @classmethod
    def default(cls, max_message_mb: int = 1024) -> ChannelLimits:
        """Caps for channels built without a run config (tools, tests): 2,048-token sequences, G <= 64."""
        seq, comp, completions = 2048, 2048, 64
        return cls(request_bytes=MAX_PROMPTS_PER_REQUEST * seq * TEXT_BYTES_PER_TOKEN + _SLACK,
                   group_bytes=(MAX_PROMPTS_PER_REQUEST * seq * _MSGPACK_INT
                                + completions * comp * _PER_TOKEN + _SLACK),
                   weights_bytes=max_message_mb * 2**20, max_array_len=max(seq, 2 * comp, completions))


def adapter_rank(path) -> int:
    """LoRA rank of the PEFT adapter directory ``path`` (0 if none or unreadable)."""
    import json
    from pathlib import Path

    try:
        return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])
    except (TypeError, OSError, ValueError, KeyError):
        return 0


def lora_nbytes(hf_config, r: int, itemsize: int = 2) -> int | None:
    """Bytes of a rank-``r`` LoRA adapter on every linear layer of a Llama/Qwen-style decoder (q, k, v, o,
    gate, up, down per layer), from its config's sizes; None when the config lacks one of them.

    >>> lora_nbytes({"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
    ...              "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28}, 16)
    20185088
    """
    get = (lambda k: hf_config.get(k)) if isinstance(hf_config, dict) else (lambda k: getattr(hf_config, k, None))
    h, i, heads, layers = get("hidden_size"), get("intermediate_size"), get("num_attention_heads"), \
        get("num_hidden_layers")
    if not all(isinstance(x, int) and x > 0 for x in (h, i, heads, layers)):
        return None
    kv = get("num_key_value_heads") or heads
    hd = get("head_dim") or h // heads
    q, k = heads * hd, kv * hd
    per_layer = (h + q) + (h + k) * 2 + (q + h) + (h + i) * 2 + (i + h)
    return layers * r * per_layer * itemsize
