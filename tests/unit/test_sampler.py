"""The prompt sampler: whole epochs without replacement, deterministic, resumable, coverage."""

from __future__ import annotations

import pytest

from learner.sampler import EpochSampler


def test_covers_the_set_before_repeating():
    s = EpochSampler(10, seed=3)
    first = s.take(4) + s.take(4) + s.take(2)
    assert sorted(first) == list(range(10))
    assert s.coverage == 1.0
    second = s.take(10)
    assert sorted(second) == list(range(10))
    assert second != first  # a new permutation each epoch


def test_handoff_600_steps_x_2_prompts_is_80_percent():
    s = EpochSampler(1480, seed=42)
    for _ in range(600):
        s.take(2)
    assert s.coverage == pytest.approx(1200 / 1480)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = EpochSampler(50, 1), EpochSampler(50, 1), EpochSampler(50, 2)
    assert [a.take(7) for _ in range(10)] == [b.take(7) for _ in range(10)]
    assert EpochSampler(50, 1).take(50) != c.take(50)


def test_resume_from_state_dict_continues_identically():
    a = EpochSampler(13, seed=5)
    a.take(9)
    a.take(9)  # crosses into epoch 1
    state = a.state_dict()
    b = EpochSampler(13, seed=5)
    b.load_state_dict(state)
    assert b.coverage == a.coverage
    assert [b.take(5) for _ in range(6)] == [a.take(5) for _ in range(6)]


def test_state_for_another_dataset_is_refused():
    with pytest.raises(ValueError):
        EpochSampler(10, 1).load_state_dict(EpochSampler(11, 1).state_dict())
    with pytest.raises(ValueError):
        EpochSampler(0)


def test_balanced_sampler_draws_the_tasks_in_turn_and_resumes():
    from learner.sampler import TaskBalancedSampler

    tasks = ["extraction"] * 40 + ["sql_qa"] * 40 + ["insights"] * 10 + ["push"] * 10
    s = TaskBalancedSampler(tasks, seed=3)
    first = s.take(6)
    assert [tasks[i] for i in first] == ["extraction", "sql_qa", "insights", "push", "extraction", "sql_qa"]
    drawn = first + s.take(34)  # 40 draws: 10 of each, so every insights and push prompt once
    assert {tasks[i] for i in drawn} == set(tasks) and len(set(drawn)) == 40
    assert sorted(i for i in drawn if tasks[i] == "push") == list(range(90, 100))
    assert s.coverage == 0.4
    state = s.state_dict()
    rest = s.take(13)
    t = TaskBalancedSampler(tasks, seed=3)
    t.load_state_dict(state)
    assert t.take(13) == rest and TaskBalancedSampler(tasks, seed=3).take(40) == drawn
    with pytest.raises(ValueError, match="balance_tasks"):
        EpochSampler(len(tasks), 3).load_state_dict(state)
    with pytest.raises(ValueError, match="balanced"):
        TaskBalancedSampler(tasks, seed=3).load_state_dict(EpochSampler(len(tasks), 3).state_dict())
