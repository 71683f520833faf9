"""The user's own rewards: a task name mapped to ``package.module:function`` in the run config.

``rewards.custom: {my_task: "my_pkg.rewards:score_reply"}`` makes ``my_task`` a task of the run: its pairs carry
``task: my_task`` and whatever columns the function reads, and the function scores those items with TRL's
reward signature, called exactly as TRL's GRPOTrainer calls ``reward_funcs``: every argument by keyword,
``completions`` (strings), ``prompts`` (each a list of chat messages, or a string) and every other column of
the items as a list aligned with the completions (``task``, ``answer``, the user's own columns). It returns one
float per completion; ``None`` (TRL: "not applicable") and non-finite values count 0, and a function that
raises or returns the wrong number of values scores its items 0 with one logged line per cause: a reward never
stops a run.

:func:`load_custom` checks the import and the signature when the reward is built (the learner does that before
any model loads), and refuses with one line naming the field: ``rewards.custom.my_task: ...``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

from .common import log_failure


class CustomReward:
    """A loaded ``module:function`` reward for one task (see the module docstring)."""

    def __init__(self, task: str, spec: str, fn):
        self.task, self.spec, self.fn = task, spec, fn

    def score(self, completions: list, prompts: Any, columns: dict, idx: list[int]) -> list[float]:
        """Rewards of ``completions[i]`` for ``i`` in ``idx``, with their prompts and columns."""
        from .common import completion_text

        kw = {k: [v[i] if isinstance(v, (list, tuple)) and i < len(v) else None for i in idx]
              for k, v in columns.items()}
        ps = [prompts[i] if isinstance(prompts, (list, tuple)) and i < len(prompts) else None for i in idx]
        texts = [completion_text(completions[i]) for i in idx]
        try:
            got = list(self.fn(completions=texts, prompts=ps, **kw))
            if len(got) != len(idx):
                raise ValueError(f"returned {len(got)} values for {len(idx)} completions")
        except Exception as e:  # noqa: BLE001 - a user's reward never stops the run
            log_failure(self.task, RuntimeError(f"{self.spec}: {type(e).__name__}: {e}"))
            return [0.0] * len(idx)
        out = []
        for v in got:
            try:
                x = float(v) if v is not None else 0.0
            except (TypeError, ValueError):
                x = 0.0
            out.append(x if math.isfinite(x) else 0.0)
        return out


def load_custom(task: str, spec: Any) -> CustomReward:
    """Import ``spec`` (``package.module:function``) and check it takes TRL's reward arguments.

    >>> load_custom("echo", "rewards.toy:toy_reward")
    Traceback (most recent call last):
    ...
    ValueError: rewards.custom.echo: rewards.toy:toy_reward must take TRL's reward arguments (completions, \
prompts, **kwargs); its signature is (token: 'str', k: 'int' = 4)
    >>> load_custom("echo", "nope.module:f")
    Traceback (most recent call last):
    ...
    ValueError: rewards.custom.echo: cannot import nope.module (ModuleNotFoundError: No module named 'nope')
    """
    where = f"rewards.custom.{task}"
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"{where}: {spec!r} is not 'package.module:function'")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's import is the same one-line refusal
        raise ValueError(f"{where}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{where}: {mod_name} has no function {fn_name}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cannot read the signature of {spec}") from None
    params = sig.parameters
    takes = params.get("completions")
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    ok = (takes is not None and takes.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               inspect.Parameter.KEYWORD_ONLY) and var_kw)
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and n not in ("completions", "prompts")]
    if not ok or required:
        raise ValueError(f"{where}: {spec} must take TRL's reward arguments (completions, prompts, **kwargs); "
                         f"its signature is {sig}")
    return CustomReward(task, spec, fn)
