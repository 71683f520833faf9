"""The handoff's "Stop if" rules (configs.schema defaults) on synthetic metric histories."""

from __future__ import annotations

from configs.schema import WatchRule, _handoff_rules
from learner.watchdog import Watchdog


def feed(dog, key, values, start=1, every=1):
    fired = []
    for i, v in enumerate(values):
        step = start + i * every
        fired += [(step, t) for t in dog.observe(step, {key: v})]
    return fired


def rules_by_name():
    return {r.name: r for r in _handoff_rules()}


def test_eval_plateau_before_200_fires_and_not_after():
    r = rules_by_name()["eval_plateau_early"]
    dog = Watchdog([r], 512)
    fired = feed(
        dog, "eval/mean_reward", [0.30, 0.40, 0.45, 0.451, 0.452, 0.45, 0.449, 0.45], start=10, every=10
    )
    assert [s for s, _ in fired] == [80]  # 5 evals without a gain > 0.005 after the best at step 30
    assert "no improvement" in fired[0][1].message and fired[0][1].rule == "eval_plateau_early"
    late = Watchdog([r], 512)
    assert feed(late, "eval/mean_reward", [0.3, 0.4] + [0.4] * 6, start=200, every=10) == []


def test_improving_eval_does_not_plateau():
    dog = Watchdog([rules_by_name()["eval_plateau_early"]], 512)
    assert feed(dog, "eval/mean_reward", [0.1 + 0.01 * i for i in range(15)], start=10, every=10) == []


def test_extraction_below_020_only_after_step_100():
    dog = Watchdog([rules_by_name()["extraction_parser"]], 512)
    fired = feed(dog, "eval/extraction", [0.17] * 15, start=10, every=10)
    assert [s for s, _ in fired] == [100]
    dog2 = Watchdog([rules_by_name()["extraction_parser"]], 512)
    assert feed(dog2, "eval/extraction", [0.35] * 15, start=10, every=10) == []


def test_completion_length_at_ceiling():
    dog = Watchdog([rules_by_name()["completion_ceiling"]], 512)
    fired = feed(dog, "train/completion_length", [300, 505, 510, 512, 512, 511, 400, 506, 506, 506, 506, 506])
    assert [s for s, _ in fired] == [6, 12]  # 5 in a row >= 0.98 * 512 (501.76); re-armed by the dip


def test_zero_std_sustained_over_window():
    dog = Watchdog([rules_by_name()["zero_std_sustained"]], 512)
    assert feed(dog, "train/frac_reward_zero_std", [0.6] * 19 + [0.4] + [0.6] * 5) == []
    fired = feed(dog, "train/frac_reward_zero_std", [0.6] * 20, start=26)
    assert [s for s, _ in fired] == [40]  # 20 in a row: steps 21..40


def test_grad_norm_spike_fires_once_per_spike():
    dog = Watchdog([rules_by_name()["grad_norm_spike"]], 512)
    fired = feed(dog, "train/grad_norm", [0.1, 2.5, 3.0, 0.2, 2.1])
    assert [s for s, _ in fired] == [2, 5]
    assert fired[0][1].action == "warn" and fired[0][1].values == [2.5]
    assert fired[0][1].as_metrics() == {
        "watchdog/grad_norm_spike": 1.0,
        "watchdog/grad_norm_spike/value": 2.5,
    }


def test_stop_action_state_round_trip_and_nan_is_a_violation():
    rule = WatchRule(name="r", metric="m", kind="above", threshold=1.0, window=3, action="stop")
    a = Watchdog([rule], 512)
    feed(a, "m", [2.0, 2.0])
    b = Watchdog([rule], 512)
    b.load_state_dict(a.state_dict())
    fired = feed(b, "m", [float("nan")], start=3)  # NaN > 1.0 is False in Python: it must still count
    assert len(fired) == 1 and fired[0][1].action == "stop" and fired[0][0] == 3


def test_nan_or_inf_fires_every_threshold_rule_and_is_never_a_best():
    spike = Watchdog([rules_by_name()["grad_norm_spike"]], 512)
    assert [s for s, _ in feed(spike, "train/grad_norm", [0.3, float("nan"), 0.4, float("inf")])] == [2, 4]
    low = Watchdog([WatchRule(name="low", metric="m", kind="below", threshold=0.2)], 512)
    assert [s for s, _ in feed(low, "m", [0.5, float("nan")])] == [2]
    ceiling = Watchdog([WatchRule(name="c", metric="m", kind="at_ceiling", threshold=0.98)], 100)
    assert [s for s, _ in feed(ceiling, "m", [10.0, float("nan")])] == [2]
    flat = Watchdog([WatchRule(name="p", metric="m", kind="plateau", threshold=0.0, window=2)], 100)
    assert [s for s, _ in feed(flat, "m", [0.5, float("nan"), float("nan")])] == [3]  # NaN: no new best
