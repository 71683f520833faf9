"""A user's own reward, defined outside the project (the fifth task of test_learner_cli): TRL's signature.

``keyword_reward`` pays 1 for a completion that says its row's ``keyword`` (a column only this task's pairs
carry), 0 otherwise; it appends what it was handed to the file named by ``CUSTOM_REWARD_LOG``, so the test can
check the columns arrived aligned with the completions. ``needs_a_label`` takes a required argument TRL never
passes: the learner must refuse it before loading a model.
"""

from __future__ import annotations

import json
import os


def keyword_reward(completions, prompts=None, keyword=None, **kwargs):
    out = [1.0 if kw and kw in c else 0.0 for c, kw in zip(completions, keyword, strict=True)]
    log = os.environ.get("CUSTOM_REWARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"n": len(completions), "keyword": keyword, "task": kwargs.get("task"),
                                "prompts": len(prompts or []), "rewards": out}) + "\n")
    return out


def needs_a_label(completions, label, **kwargs):
    return [0.0] * len(completions)
