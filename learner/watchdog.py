"""The handoff's "Stop if" column as rules over the metric history (``cfg.watchdog``).

A rule watches one metric key. Each time a metric line carries that key (train keys every step, eval
keys every eval), the value is appended to the rule's window, and the rule is checked if the step is
inside ``[after_step, before_step)``:

* ``above`` / ``below``: the last ``window`` observations are all above / below ``threshold``;
* ``at_ceiling``: the last ``window`` observations are all >= ``threshold x max_completion_length``;
* ``plateau``: ``window`` observations in a row brought no new best (improvement > ``threshold``) —
  so it needs at least ``window + 1`` observations.

A NaN or infinite observation violates every ``above``/``below``/``at_ceiling`` rule (``NaN > 2.0`` is
false in Python, which would let a NaN gradient norm pass the spike rule) and is never a new best.

A rule fires once when its condition becomes true and re-arms when it is false again (a sustained
spike is one event, not one per step). Each firing is a :class:`Trigger` naming the rule, the
values and the step; the trainer logs it as a ``watchdog/<rule>`` metric line and, for
``action: stop``, writes a checkpoint and ends the run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Trigger:
    rule: str
    metric: str
    kind: str
    action: str
    step: int
    values: list[float]
    threshold: float
    message: str

    def as_metrics(self) -> dict:
        return {f"watchdog/{self.rule}": 1.0, f"watchdog/{self.rule}/value": self.values[-1]}


@dataclass
class _RuleState:
    values: deque
    best: float = -math.inf
    since_best: int = 0
    seen: int = 0
    fired: bool = False
    history: list = field(default_factory=list)


class Watchdog:
    """Checks rules (``configs.schema.WatchRule`` or anything with the same fields) on metric lines."""

    def __init__(self, rules, max_completion_length: int):
        self.rules = list(rules)
        self.max_completion_length = max_completion_length
        self._state = {r.name: _RuleState(values=deque(maxlen=r.window)) for r in self.rules}

    def observe(self, step: int, metrics: dict) -> list[Trigger]:
        """Feed one metric line; return the rules that fired on it."""
        fired = []
        for rule in self.rules:
            if rule.metric not in metrics:
                continue
            raw = metrics[rule.metric]
            value = float(raw) if isinstance(raw, (int, float)) else math.nan
            st = self._state[rule.name]
            st.values.append(value)
            st.seen += 1
            improved = math.isfinite(value) and value > st.best + (rule.threshold if st.best > -math.inf else 0.0)
            if improved:
                st.best, st.since_best = value, 0
            else:
                st.since_best += 1
            active = step >= rule.after_step and (rule.before_step is None or step < rule.before_step)
            cond = active and self._condition(rule, st)
            if cond and not st.fired:
                st.fired = True
                fired.append(self._trigger(rule, st, step))
            elif not cond:
                st.fired = False
        return fired

    def _condition(self, rule, st: _RuleState) -> bool:
        full = len(st.values) == rule.window
        if rule.kind == "above":
            return full and all(not math.isfinite(v) or v > rule.threshold for v in st.values)
        if rule.kind == "below":
            return full and all(not math.isfinite(v) or v < rule.threshold for v in st.values)
        if rule.kind == "at_ceiling":
            ceiling = rule.threshold * self.max_completion_length
            return full and all(not math.isfinite(v) or v >= ceiling for v in st.values)
        if rule.kind == "plateau":
            return st.seen > rule.window and st.since_best >= rule.window
        raise ValueError(f"watchdog rule {rule.name}: unknown kind {rule.kind!r}")

    def _trigger(self, rule, st: _RuleState, step: int) -> Trigger:
        vals = [round(v, 6) for v in st.values]
        if rule.kind == "plateau":
            what = (
                f"no improvement > {rule.threshold} over best {st.best:.4f} for {st.since_best} observations"
            )
        elif rule.kind == "at_ceiling":
            what = f">= {rule.threshold} x {self.max_completion_length} for {rule.window} observations"
        else:
            what = f"{rule.kind} {rule.threshold} for {rule.window} observation(s)"
        msg = f"watchdog {rule.name} ({rule.action}) at step {step}: {rule.metric} {what}; last values {vals}"
        return Trigger(
            rule=rule.name,
            metric=rule.metric,
            kind=rule.kind,
            action=rule.action,
            step=step,
            values=list(st.values),
            threshold=rule.threshold,
            message=msg,
        )

    def state_dict(self) -> dict:
        return {
            name: {
                "values": list(st.values),
                "best": st.best,
                "since_best": st.since_best,
                "seen": st.seen,
                "fired": st.fired,
            }
            for name, st in self._state.items()
        }

    def load_state_dict(self, state: dict) -> None:
        for rule in self.rules:
            s = state.get(rule.name)
            if s is None:
                continue
            st = self._state[rule.name]
            st.values = deque(s["values"], maxlen=rule.window)
            st.best, st.since_best, st.seen, st.fired = s["best"], s["since_best"], s["seen"], s["fired"]
