"""The watchdog's rules (``RunConfig.watch``): what the handoff's "What to Observe During V4.1" table says to stop
on, as data :class:`learner.watchdog.Watchdog` checks on every metric line."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from configs.section import Section


class WatchRule(Section):
    name: str
    """Rule name printed when it triggers."""
    metric: str
    """Metric key, e.g. ``eval/mean_reward``."""
    kind: Literal["above", "below", "plateau", "at_ceiling"]
    """``above``/``below``: compare with ``threshold``; ``plateau``: no new best for ``window`` evals;
    ``at_ceiling``: the metric reached ``threshold`` x max_completion_length."""
    threshold: float = 0.0
    """Comparison value (for ``plateau``: minimal improvement that counts)."""
    window: int = Field(1, ge=1)
    """Consecutive observations that must satisfy the rule."""
    after_step: int = Field(0, ge=0)
    """Rule active from this step on."""
    before_step: int | None = None
    """Rule active before this step only."""
    action: Literal["warn", "stop"] = "warn"
    """``stop`` writes a checkpoint, then ends the run."""


def _handoff_rules() -> list[WatchRule]:
    """The "Stop if" column of the handoff's "What to Observe During V4.1" table."""
    return [
        WatchRule(name="eval_plateau_early", metric="eval/mean_reward", kind="plateau", threshold=0.005,
                  window=5, before_step=200, action="warn"),
        WatchRule(name="extraction_parser", metric="eval/extraction", kind="below", threshold=0.20,
                  after_step=100, action="warn"),
        WatchRule(name="completion_ceiling", metric="train/completion_length", kind="at_ceiling",
                  threshold=0.98, window=5, action="warn"),
        WatchRule(name="zero_std_sustained", metric="train/frac_reward_zero_std", kind="above",
                  threshold=0.5, window=20, action="warn"),
        WatchRule(name="grad_norm_spike", metric="train/grad_norm", kind="above", threshold=2.0,
                  action="warn"),
    ]
