"""Prompt sampler: epochs without replacement, deterministic for a seed, resumable, coverage reported.

Each epoch is a fresh permutation of the training set drawn from ``numpy.random.default_rng((seed,
epoch))``, so epoch ``e`` is the same permutation whatever happened before it (a resumed run needs
only ``(epoch, position)``). Every prompt is seen once before any is repeated: the handoff's "600
steps x 2 prompts = 80% of one epoch" holds exactly, where TRL's ``RepeatSampler`` over a shuffled
dataloader would also hold it but is tied to the Trainer's dataloader state.
"""

from __future__ import annotations

import numpy as np


class EpochSampler:
    """Draws indices into a dataset of ``size`` items, ``take(k)`` at a time."""

    def __init__(self, size: int, seed: int = 0):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size = size
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation(0)
        self._seen = np.zeros(size, dtype=bool)
        self.drawn = 0

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.size)

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices (crossing into the next epoch's permutation when this one ends)."""
        out: list[int] = []
        while len(out) < k:
            if self.position >= self.size:
                self.epoch += 1
                self.position = 0
                self._perm = self._permutation(self.epoch)
            n = min(k - len(out), self.size - self.position)
            out.extend(int(i) for i in self._perm[self.position : self.position + n])
            self.position += n
        self._seen[out] = True
        self.drawn += k
        return out

    @property
    def coverage(self) -> float:
        """Share of unique training prompts drawn so far."""
        return float(self._seen.sum()) / self.size

    def state_dict(self) -> dict:
        return {
            "size": self.size,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "drawn": self.drawn,
            "seen": np.flatnonzero(self._seen).tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if "tasks" in state:
            raise ValueError("sampler state is of a run with data.balance_tasks, this run draws in proportion")
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['size']} prompts with seed {state['seed']}, "
                f"this run has {self.size} with seed {self.seed}"
            )
        self.epoch, self.position, self.drawn = state["epoch"], state["position"], state["drawn"]
        self._perm = self._permutation(self.epoch)
        self._seen[:] = False
        self._seen[state["seen"]] = True


class TaskBalancedSampler:
    """``data.balance_tasks``: the tasks in turn (``take(4)`` with four tasks draws one prompt of each), each task
    from its own :class:`EpochSampler` over its prompts, so a task with a tenth of the pairs still gets its
    share of the updates. The turn carries over between calls; resumable like :class:`EpochSampler`."""

    def __init__(self, tasks: list[str], seed: int = 0):
        if not tasks:
            raise ValueError("the training set is empty")
        self.size, self.seed = len(tasks), int(seed)
        self.order = list(dict.fromkeys(tasks))  # first appearance
        self.members = {t: [i for i, x in enumerate(tasks) if x == t] for t in self.order}
        self.samplers = {t: EpochSampler(len(m), self.seed * 1000 + k)
                         for k, (t, m) in enumerate(self.members.items())}
        self.drawn = 0

    def take(self, k: int) -> list[int]:
        out = []
        for j in range(self.drawn, self.drawn + k):
            t = self.order[j % len(self.order)]
            out.append(self.members[t][self.samplers[t].take(1)[0]])
        self.drawn += k
        return out

    @property
    def coverage(self) -> float:
        return sum(int(s._seen.sum()) for s in self.samplers.values()) / self.size

    def state_dict(self) -> dict:
        seen = sorted(self.members[t][i] for t, s in self.samplers.items() for i in np.flatnonzero(s._seen))
        return {"size": self.size, "seed": self.seed, "drawn": self.drawn, "seen": seen,
                "tasks": {t: s.state_dict() for t, s in self.samplers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size or state["seed"] != self.seed or set(state.get("tasks", ())) != set(self.order):
            raise ValueError(f"sampler state is for {state['size']} prompts with seed {state['seed']} (balanced: "
                             f"{'tasks' in state}), this run has {self.size} with seed {self.seed}, balanced")
        for t, s in self.samplers.items():
            s.load_state_dict(state["tasks"][t])
        self.drawn = state["drawn"]


def make_sampler(cfg, items) -> EpochSampler | TaskBalancedSampler:
    """The run's training-prompt sampler over ``items`` (:func:`learner.data.load_items` of its train pairs):
    :class:`TaskBalancedSampler` with ``data.balance_tasks``, else :class:`EpochSampler`, seeded by ``cfg.seed``.
    The learner draws through it, and so does TRL's peer in ``python -m launch.compare``: one function, so both
    systems of the race train on the same prompts in the same order."""
    if cfg.data.balance_tasks:
        return TaskBalancedSampler([it.task for it in items], cfg.seed)
    return EpochSampler(len(items), cfg.seed)


def prompts_per_update(cfg) -> int:
    """Prompts one optimizer step draws: ``prompts_per_step`` x ``grad_accum``."""
    return cfg.prompts_per_step * cfg.grad_accum
