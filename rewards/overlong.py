"""DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), in tokens.

``R_len(y) = 0`` for ``|y| <= L_max - L_buffer``; ``(L_max - L_buffer - |y|) / L_buffer`` inside the buffer;
``-1`` beyond ``L_max``; scaled by ``penalty`` (verl's ``penalty_factor``; DAPO and TRL's
``trl.rewards.get_soft_overlong_punishment`` use 1). The learner adds it to the task reward
(``rewards.overlong_buffer`` / ``rewards.overlong_penalty`` in the run config); dynamic sampling judges a group's
spread on the task reward before it, as NeMo-RL does. The length is the completion's token count, which is what
the engine stops at; the punishment therefore depends on nothing the policy could write into the text to game it,
only on how long it is.
"""

from __future__ import annotations


def overlong_punishment(length: int, max_len: int, buffer: int, penalty: float = 1.0) -> float:
    """The punishment of one completion of ``length`` tokens (0 or negative).

    >>> [overlong_punishment(n, 100, 20) for n in (0, 80, 90, 100, 101)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    >>> overlong_punishment(95, 100, 20, penalty=0.5)
    -0.375
    >>> overlong_punishment(10, 100, 0)
    0.0
    """
    if buffer <= 0:
        return 0.0 if length <= max_len else -float(penalty)
    if length <= max_len - buffer:
        return 0.0
    if length <= max_len:
        return float(penalty) * (max_len - buffer - length) / buffer
    return -float(penalty)


def soft_overlong_punishment(max_len: int, buffer: int, penalty: float = 1.0):
    """A reward function with TRL's signature, ``fn(completions, completion_ids, **kwargs) -> list[float]``, as
    ``trl.rewards.get_soft_overlong_punishment`` (times ``penalty``).

    >>> fn = soft_overlong_punishment(100, 20)
    >>> fn(["a", "b"], completion_ids=[[1] * 90, [1] * 10])
    [-0.5, 0.0]
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError("rewards: overlong max_len must be a positive integer")
    if not isinstance(buffer, int) or not 0 <= buffer <= max_len:
        raise ValueError(f"rewards: overlong_buffer must be in [0, {max_len}], got {buffer!r}")

    def fn(completions=None, completion_ids=None, **kwargs) -> list[float]:
        return [overlong_punishment(len(ids), max_len, buffer, penalty) for ids in (completion_ids or [])]

    fn.__name__ = "soft_overlong_punishment_reward"
    return fn
