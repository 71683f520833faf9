"""What a ``RolloutRequest.prompts`` entry means in tokens: one function for the actor and the learner.

A prompt is chat messages (``[{"role": ..., "content": ...}, ...]``), rendered with the model's chat template
and the generation prompt, or token ids, used as they are. The actor encodes what it generates from; the
learner's in-process stand-in actor (``learner.rollouts_local``) must encode exactly the same way.
"""

from __future__ import annotations


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt: chat messages get the chat template with the generation prompt; token ids
    pass through."""
    if prompt and isinstance(prompt[0], dict):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return [int(t) for t in prompt]
