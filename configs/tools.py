"""The ``tools`` and ``episode`` sections of the run config: tools in the rollout (``actor.episodes``).

``tools`` maps a task to the tools its prompts may call, as ``rewards.custom`` maps a task to its reward: the
built-in ``sql`` (one read-only SELECT on ``data.db_path`` through the reward's own sandbox) or a typed Python
function of your own, ``package.module:function``. Each entry is that string, or a mapping with the per-tool
knobs (``fn``, ``timeout_s``, ``max_calls``, ``max_observation_chars``, ``max_observation_rows``)::

    tools:
      sql_qa: [sql]
      faq: ["my_tools.faq:lookup", {fn: "my_tools.faq:stock", timeout_s: 2, max_calls: 2}]
    episode:
      max_turns: 3

``episode`` holds the budgets every tool-enabled episode shares. Importing and checking the functions happens where
they run (``rewards.tools.load_tools``: the actor, and the learner before any model loads); here only the shape.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from configs.section import Section

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILTIN_TOOLS = ("sql",)


class ToolSpec(Section):
    """One tool of a task: the function and its limits. A plain string in YAML is ``{fn: <string>}``."""

    fn: str
    """``sql`` (built in: one read-only SELECT on ``data.db_path``, rows or the error back) or
    ``package.module:function``: a function with type hints on every parameter and a docstring, whose name is the tag
    the model writes (``<lookup>…</lookup>``) and whose docstring's first paragraph goes into the system prompt."""
    timeout_s: float = Field(5.0, gt=0)
    """Seconds a call may take from the moment it is queued (the SQL sandbox's own deadline is
    ``rewards.sql_timeout_ms``); past it the episode ends with finish reason ``tool_error``."""
    max_calls: int = Field(4, ge=1)
    """Calls of this tool per episode; one more gets an error observation instead of a result."""
    max_observation_chars: int = Field(1500, ge=16)
    """Characters of a result shown to the model (cut, with a note saying so)."""
    max_observation_rows: int = Field(20, ge=1)
    """Lines (for ``sql``: result rows) of a result shown to the model (cut, with a note giving the total)."""

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, v):
        return {"fn": v} if isinstance(v, str) else v

    @field_validator("fn")
    @classmethod
    def _fn(cls, v: str) -> str:
        if v not in BUILTIN_TOOLS and not _SPEC.match(v):
            raise ValueError(f"{v!r} is neither a built-in tool ({', '.join(BUILTIN_TOOLS)}) nor "
                             "'package.module:function'")
        return v

    @property
    def name(self) -> str:
        """The tag the model writes: the function's name."""
        return self.fn.rsplit(":", 1)[-1]


class EpisodeConfig(Section):
    """Budgets of a tool-enabled episode (a completion of a task listed in ``tools``). The tokens of an episode,
    sampled and observed together, are at most ``max_completion_length``: the sequence the learner forwards; the
    observations' tokens are masked out of the loss."""

    max_turns: int = Field(3, ge=1)
    """Turns the model may write per episode: every turn but the last may end in a tool call, whose observation
    the next turn reads. 1 is today's single-turn task: no tool description, no stop string, no call."""
    max_turn_tokens: int | None = Field(None, ge=1)
    """Tokens one turn may sample (None: ``max_completion_length``)."""
    max_episode_s: float = Field(120.0, gt=0)
    """Wall-clock seconds of one episode, checked at each turn's end: past it the episode ends (``budget``)."""
    workers: int = Field(4, ge=1)
    """Threads of each actor's tool pool (a sandbox each): calls run beside generation."""
    eval_single_turn: bool = True
    """Evaluate the tool tasks a second time at ``max_turns`` 1 on the same adapter (``eval_single/<task>``)."""
