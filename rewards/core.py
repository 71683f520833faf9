"""``make_reward``: the four task rewards behind one TRL-style reward function.

``fn = make_reward(db_path, **RewardsConfig().reward_kwargs())`` returns
``fn(completions, prompts=None, **columns) -> list[float]`` (TRL's reward signature; completions as
strings or as ``[{"role": "assistant", "content": ...}]``; columns are lists aligned with the
completions, unknown ones such as ``completion_ids`` or ``trainer_state`` are ignored). Each item's
task is its ``task`` column when valid, else :func:`rewards.classify_task` of its prompt (or, with no
prompt, of the completion). Every reward is in [0, 1]; a failure inside a scorer is logged once per
cause and scores 0; nothing raises on any completion.

The function also carries:

- ``fn.score(completions, prompts=None, **columns) -> list[ScoredItem]`` (task, reward, components)
  in one pass; ``fn.last_scored`` holds the items of the latest call of ``fn`` or ``fn.score``;
- ``fn.components(...) -> list[dict[str, float]]``: per item ``{"<task>/<component>": score}``,
  ready to log as ``train/reward/<task>/<component>``;
- ``fn.tasks(...) -> list[str]``; ``fn.weights``: the normalised weights per task; ``fn.shaping``: every
  knob per task; ``fn.close()``.

Shaping: each task's keyword argument is ``{"weights": {component: weight}, <knob>: value, ...}`` (the run
config's ``rewards.<task>`` section, which passes every knob); a knob left out takes the module's default
(``<module>.SHAPING``), an unknown one is refused (ValueError naming it). Custom tasks: ``custom={"task":
"package.module:function"}`` scores that task's items with the user's TRL-signature function
(:mod:`rewards.custom`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import extraction, insights, push, sql_qa
from .classify import TASKS, classify_task
from .common import combine, completion_text, log_failure, normalise_weights, prompt_text
from .custom import load_custom
from .toy import toy_reward

MAX_COMPLETION_CHARS = 50000  # longer completions are cut before scoring (512 tokens is ~2,500)

MODULES = {"extraction": extraction, "sql_qa": sql_qa, "insights": insights, "push": push}
DEFAULT_WEIGHTS = {t: m.COMPONENTS for t, m in MODULES.items()}
DEFAULT_SHAPING = {t: m.SHAPING for t, m in MODULES.items()}
_KNOWN = {"extraction", "sql_qa", "insights", "push", "sql_timeout_ms", "sql_max_rows", "toy_token", "custom"}


class ScoredItem(NamedTuple):
    task: str
    reward: float
    components: dict[str, float]


def _col(columns: dict, name: str, i: int) -> Any:
    col = columns.get(name)
    if isinstance(col, (list, tuple)) and i < len(col):
        return col[i]
    return None


def task_shaping(task: str, given) -> tuple[dict[str, float], dict]:
    """(normalised weights, knobs) of ``task`` from ``{"weights": ..., knob: value}``; unknown names raise.

    >>> w, sh = task_shaping("push", {"weights": {"tone": 0.5}, "salad_penalty": 0.5})
    >>> w["tone"], sh["salad_penalty"], sh["max_chars"]
    (0.4, 0.5, 120)
    """
    defaults = DEFAULT_SHAPING[task]
    given = dict(given or {})
    if not isinstance(given, dict):
        raise ValueError(f"rewards: {task} must be a mapping")
    weights_given = dict(given.pop("weights", None) or {})
    if "schema_" in weights_given:  # the config's field name (its alias is "schema")
        weights_given["schema"] = weights_given.pop("schema_")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"rewards: unknown {task} knob(s) {', '.join(unknown)}; known: weights, "
                         f"{', '.join(defaults)}")
    shaping = dict(defaults)
    for k, v in given.items():
        d = defaults[k]
        if isinstance(d, dict):
            w = dict(d)
            bad = sorted(set(v or {}) - set(d))
            if bad:
                raise ValueError(f"rewards: unknown {task}.{k} name(s) {', '.join(bad)}; known: {', '.join(d)}")
            w.update(v or {})
            v = w
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
            raise ValueError(f"rewards: {task}.{k} must be a number >= 0, got {v!r}")
        shaping[k] = v
    return normalise_weights(task, MODULES[task].COMPONENTS, weights_given), shaping


def make_reward(db_path=None, **kwargs):
    """Build the combined reward; kwargs are ``RewardsConfig.reward_kwargs()`` (plus ``toy_token``).

    ``extraction``/``sql_qa``/``insights``/``push`` are ``{"weights": {component: weight}, knob: value}``
    (missing names keep their defaults; unknown names raise ValueError naming them); ``sql_timeout_ms`` (200)
    and ``sql_max_rows`` (1000) configure the sandbox; ``custom`` maps task names to ``"module:function"``
    rewards; ``toy_token`` returns :func:`rewards.toy_reward` instead. ``db_path`` None disables execution
    (sql_qa then scores has_sql and explanation only).

    >>> fn = make_reward(None)
    >>> fn(['```json\\n{"sentiment": "negative", "sentiment_score": 1,5}\\n```'], task=["extraction"])
    [0.466667]
    >>> fn(["Oi! Sua toalha de banho chegou 🎉 Conta pra gente o que achou!"],
    ...    context=['{"produto": "toalha de banho", "situacao": "avaliacao"}'], task=["push"])
    [1.0]
    >>> fn.components(["- Priorizar entregas no prazo"], task=["insights"])[0]["insights/bullets"]
    0.2
    >>> make_reward(None, push={"weights": {"lenght": 1.0}})
    Traceback (most recent call last):
    ...
    ValueError: rewards: unknown push reward component(s) lenght; known: situation, length, tone
    """
    unknown = sorted(set(kwargs) - _KNOWN)
    if unknown:
        raise ValueError(f"rewards: unknown make_reward argument(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(_KNOWN))}")
    if kwargs.get("toy_token"):
        return toy_reward(kwargs["toy_token"])
    weights, shaping = {}, {}
    for task in MODULES:
        weights[task], shaping[task] = task_shaping(task, kwargs.get(task))
    custom = {t: load_custom(t, spec) for t, spec in (kwargs.get("custom") or {}).items()}
    timeout = kwargs.get("sql_timeout_ms", 200)
    max_rows = kwargs.get("sql_max_rows", 1000)
    for name, v in (("sql_timeout_ms", timeout), ("sql_max_rows", max_rows)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"rewards: {name} must be a positive integer, got {v!r}")
    sql = sql_qa.SqlQaScorer(db_path, timeout_ms=timeout, max_rows=max_rows, **shaping["sql_qa"])

    def task_of(i: int, completion: Any, prompts: Any, columns: dict) -> str:
        t = _col(columns, "task", i)
        if isinstance(t, str) and (t in TASKS or t in custom):
            return t
        p = prompts[i] if isinstance(prompts, (list, tuple)) and i < len(prompts) else None
        return classify_task(prompt_text(p) if p is not None else completion_text(completion))

    def score_one(i: int, c: Any, prompts: Any, columns: dict) -> ScoredItem:
        task = "extraction"
        try:
            task = task_of(i, c, prompts, columns)
            text = completion_text(c)[:MAX_COMPLETION_CHARS]
            p = prompts[i] if isinstance(prompts, (list, tuple)) and i < len(prompts) else None
            mult = 1.0
            if task == "extraction":
                parts = extraction.extraction_parts(text, _col(columns, "reference", i), shaping[task])
            elif task == "sql_qa":
                parts = sql.parts(text, _col(columns, "reference_sql", i))
            elif task == "insights":
                parts = insights.insights_parts(text, _col(columns, "facts", i), prompt_text(p) if p else "",
                                                shaping[task])
            else:
                parts, mult = push.push_parts(text, _col(columns, "context", i), prompt_text(p) if p else "",
                                              shaping[task])
            reward = round(min(1.0, max(0.0, mult * combine(weights[task], parts))), 6)
            comps = {k: round(float(v), 6) for k, v in parts.items() if v is not None}
            return ScoredItem(task, reward, comps)
        except Exception as e:  # noqa: BLE001 - rewards never raise
            log_failure(task, e)
            return ScoredItem(task, 0.0, {k: 0.0 for k in weights.get(task, {})})

    def score(completions, prompts=None, **columns) -> list[ScoredItem]:
        try:
            items = list(completions) if completions is not None else []
        except TypeError:
            items = [completions]
        tasks_ = [task_of(i, c, prompts, columns) for i, c in enumerate(items)] if custom else []
        out = [None if custom and tasks_[i] in custom else score_one(i, c, prompts, columns)
               for i, c in enumerate(items)]
        for t in {t for t in tasks_ if t in custom}:
            idx = [i for i, x in enumerate(tasks_) if x == t]
            for i, r in zip(idx, custom[t].score(items, prompts, columns, idx), strict=True):
                out[i] = ScoredItem(t, r, {})
        reward_fn.last_scored = out
        return out

    def reward_fn(completions, prompts=None, **columns) -> list[float]:
        return [s.reward for s in score(completions, prompts, **columns)]

    def components(completions, prompts=None, **columns) -> list[dict[str, float]]:
        return [{f"{s.task}/{k}": v for k, v in s.components.items()}
                for s in score(completions, prompts, **columns)]

    def tasks(completions, prompts=None, **columns) -> list[str]:
        return [task_of(i, c, prompts, columns) for i, c in enumerate(completions or [])]

    reward_fn.score = score
    reward_fn.components = components
    reward_fn.tasks = tasks
    reward_fn.weights = weights
    reward_fn.shaping = shaping
    reward_fn.custom = custom
    reward_fn.last_scored = []
    reward_fn.close = sql.close
    reward_fn.sql = sql
    reward_fn.__name__ = "tucano2_reward"
    return reward_fn


def per_task_breakdown(rewards, tasks) -> dict[str, float]:
    """Mean reward per task as ``eval/<task>`` plus ``eval/mean_reward`` over all items.

    Only tasks present appear; the handoff's four tasks come first, in their usual order.

    >>> per_task_breakdown([1.0, 0.5, 0.0], ["extraction", "push", "extraction"])
    {'eval/extraction': 0.5, 'eval/push': 0.5, 'eval/mean_reward': 0.5}
    """
    groups: dict[str, list[float]] = {}
    values = [float(r) for r in rewards]
    for r, t in zip(values, tasks, strict=False):
        groups.setdefault(str(t), []).append(r)
    order = [t for t in TASKS if t in groups] + sorted(t for t in groups if t not in TASKS)
    out = {f"eval/{t}": sum(groups[t]) / len(groups[t]) for t in order}
    if values:
        out["eval/mean_reward"] = sum(values) / len(values)
    return out
