"""The ``rewards`` section of the run config: every weight and knob of the four task rewards, and your own rewards
(``rewards.custom``). Each task's defaults equal its module's (``rewards/<task>.py``: ``COMPONENTS`` and
``SHAPING``; ``tests/unit/test_configs.py`` checks that); ``rewards.make_reward`` receives them all through
:meth:`RewardsConfig.reward_kwargs`, so no module constant changes a run's reward without the config saying so.
"""

from __future__ import annotations


from pydantic import ConfigDict, Field, field_validator

from configs.section import Section


class ExtractionWeights(Section):
    valid_json: float = Field(0.05, ge=0)
    """A JSON object could be extracted from the completion."""
    schema_: float = Field(0.1, ge=0, alias="schema")
    """Fields present with the right types and allowed values."""
    values: float = Field(0.85, ge=0)
    """Field values agree with the reference record (per field, then the key gate)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True,
                              serialize_by_alias=True, validate_assignment=True)


class ExtractionFieldWeights(Section):
    """Weight of each field in ``values``. The three booleans follow from the complaint and the stars, and a
    constant guesses them right by the class prior (78/74/65% in the synthetic data): they weigh little."""

    sentiment: float = Field(0.25, ge=0)
    """positive / neutral / negative."""
    complaint_category: float = Field(0.25, ge=0)
    """One of the complaint themes or ``nenhuma``."""
    sentiment_score: float = Field(0.15, ge=0)
    """0-5 stars, by closeness (1 - |difference|)."""
    churn_risk: float = Field(0.05, ge=0)
    """low / medium / high."""
    delivery_issue: float = Field(0.02, ge=0)
    """Boolean."""
    product_issue: float = Field(0.02, ge=0)
    """Boolean."""
    recommends: float = Field(0.03, ge=0)
    """Boolean."""
    urgency: float = Field(0.05, ge=0)
    """low / medium / high."""
    product_category: float = Field(0.08, ge=0)
    """The category the prompt names."""
    summary: float = Field(0.1, ge=0)
    """Share of the reference summary's words (4+ letters) the summary has."""


class ExtractionReward(Section):
    """The extraction reward (``rewards.extraction``): a review to a 10-field JSON record."""

    weights: ExtractionWeights = ExtractionWeights()
    """Component weights (normalised to sum 1)."""
    field_weights: ExtractionFieldWeights = ExtractionFieldWeights()
    """Weight of each field in the ``values`` component (normalised over the reference's fields)."""
    key_gate: float = Field(0.5, ge=0, le=1)
    """``values`` is multiplied by ``1 - key_gate + key_gate * sentiment * complaint_category`` (those fields'
    credits): a record must get sentiment and complaint right together to keep its value credit. A constant
    record, right on each by the class prior but rarely on both, earns under half the reward with it."""
    extra_key_penalty: float = Field(0.05, ge=0, le=1)
    """``schema`` loses this per key outside the 10 fields (0.3 at most)."""
    ordinal_near_credit: float = Field(0.25, ge=0, le=1)
    """Credit for churn_risk or urgency one level off."""
    related_complaint_credit: float = Field(0.5, ge=0, le=1)
    """Credit for a related complaint (defeito/avaria, extravio/nao_recebido, ...)."""


class SqlQaWeights(Section):
    has_sql: float = Field(0.1, ge=0)
    """A SQL statement could be extracted (```sql block or bare SELECT)."""
    executes: float = Field(0.2, ge=0)
    """The statement runs in the read-only sandbox within the deadline and reads the database."""
    result_match: float = Field(0.6, ge=0)
    """Its result equals the reference query's result (order-insensitive unless ORDER BY)."""
    explanation: float = Field(0.1, ge=0)
    """A short PT-BR explanation follows SQL that runs and reads the database."""


class SqlQaReward(Section):
    """The sql_qa reward (``rewards.sql_qa``): a question to SQL over ``data.db_path``, executed."""

    weights: SqlQaWeights = SqlQaWeights()
    """Component weights (normalised to sum 1)."""
    partial_credit: float = Field(0.25, ge=0, le=1)
    """``result_match`` of a wrong result: up to this for asking what the reference asks (half for comparing
    against its string literals in a filter, half for the Jaccard overlap of the columns read). 0 turns it
    off: only right results then earn ``result_match``."""
    max_extra_columns: int = Field(2, ge=0)
    """A result with the reference's columns plus at most this many others earns 0.8 of a match; with more
    (``SELECT *``) the answer is not looked for among them."""
    explained_match: float = Field(0.5, ge=0, le=1)
    """``explanation`` counts only when ``result_match`` is at least this: an explanation of a query that answers
    another question is not this question's (one query shape with the question's values slotted in earned over
    half with it, ``python -m rewards.redteam --task sql_qa``). 0 pays any explanation of SQL that runs."""


class InsightsWeights(Section):
    insightful: float = Field(0.6, ge=0)
    """Share of bullets that open with an action verb, cite a figure of the facts and none invented, and add
    words of their own (not a fact line copied back)."""
    grounded: float = Field(0.2, ge=0)
    """Numbers cited appear in the given facts; invented numbers cost reward."""
    bullets: float = Field(0.05, ge=0)
    """Three to five bullet points."""
    action_verbs: float = Field(0.05, ge=0)
    """Bullets open with strategic action verbs (priorizar, reduzir, investir...)."""
    portuguese: float = Field(0.05, ge=0)
    """The text reads as PT-BR."""
    length: float = Field(0.05, ge=0)
    """Total and per-bullet length within bounds."""


class InsightsReward(Section):
    """The insights reward (``rewards.insights``): facts to 3-5 strategic PT-BR bullets."""

    weights: InsightsWeights = InsightsWeights()
    """Component weights (normalised to sum 1)."""
    no_number_credit: float = Field(0.0, ge=0, le=1)
    """``grounded`` of a text that cites no number at all (it was 0.3, which paid a template without figures)."""
    min_new_words: int = Field(2, ge=0)
    """Words (3+ letters) beyond its opening verb that a bullet must add to the prompt's to count as insightful."""
    min_bullets: int = Field(3, ge=1)
    """``insightful`` is the share of good bullets over at least this many (one good bullet of one earns 1/3)."""
    subject_words: int = Field(2, ge=0)
    """A cited figure counts (``insightful``, ``grounded``) only when one of the this-many words nearest to it that
    name a fact (atraso, nota, negativas, a state, a complaint...) names that figure's fact: "taxa de atraso de
    29,1%", not "Priorizar ações (29,1%)". 0 turns the check off (figures of the facts count anywhere)."""


class PushWeights(Section):
    situation: float = Field(0.5, ge=0)
    """Fits the order's situation (the context's ``situacao``): its cues, none of the others'."""
    length: float = Field(0.25, ge=0)
    """At most ``max_chars`` characters (over length is also a multiplier)."""
    tone: float = Field(0.25, ge=0)
    """Informal and engaging rather than formal."""


class PushReward(Section):
    """The push reward (``rewards.push``): a notification of at most ``max_chars`` characters. The gates
    multiply the whole reward by ``floor + (1 - floor) * value``."""

    weights: PushWeights = PushWeights()
    """Component weights (normalised to sum 1)."""
    max_chars: int = Field(120, ge=1)
    """The length limit (the handoff's 120)."""
    product_floor: float = Field(0.4, ge=0, le=1)
    """Gate: the reward of a notification that names neither the product nor its category."""
    portuguese_floor: float = Field(0.3, ge=0, le=1)
    """Gate: the reward of a notification with no Portuguese at all."""
    portuguese_full: float = Field(0.6, gt=0, le=1)
    """The PT-BR score (share of Portuguese function words, by density) from which the gate is open."""
    novelty_floor: float = Field(0.3, ge=0, le=1)
    """Gate: the reward of a notification made only of the prompt's words (the context copied back)."""
    novelty_full: float = Field(0.4, gt=0, le=1)
    """The share of words not in the prompt from which the gate is open."""
    salad_penalty: float = Field(1.0, ge=0, le=1)
    """``situation`` loses this for each other situation a notification also cues (1: a notification that also
    names another situation, or several, earns no situation credit)."""
    situation_floor: float = Field(0.2, ge=0, le=1)
    """Gate: the reward of a notification that does not say its order's situation (none, another, several) is
    multiplied by this. Without it a short friendly one naming the product earned 0.5 whatever it said, and one
    situation's template for every prompt earned over half (``python -m rewards.redteam --task push``)."""
    over_length_scale: float = Field(0.5, ge=0, le=1)
    """Past ``max_chars`` the reward is multiplied by ``over_length_scale * (max_chars / n) ** over_length_power``."""
    over_length_power: float = Field(2.0, ge=0)
    """See ``over_length_scale``; never 0, so a group of over-long pushes still ranks the shorter higher."""


class RewardsConfig(Section):
    """Every shaping choice of the rewards: what each component weighs and each knob (README "Rewards")."""

    extraction: ExtractionReward = ExtractionReward()
    """The extraction reward's weights and knobs."""
    sql_qa: SqlQaReward = SqlQaReward()
    """The sql_qa reward's weights and knobs."""
    insights: InsightsReward = InsightsReward()
    """The insights reward's weights and knobs."""
    push: PushReward = PushReward()
    """The push reward's weights and knobs."""
    sql_timeout_ms: int = Field(200, gt=0)
    """Deadline for one policy-written SQL statement in the sandbox."""
    sql_max_rows: int = Field(1000, gt=0)
    """Rows read from a policy query's result before it is cut off."""
    toy_token: str | None = None
    """When set, the task rewards are replaced by a toy reward: the share of this string's
    occurrences in the completion (see ``rewards.toy``). Used by the end-to-end learning proof."""
    overlong_buffer: int | None = Field(None, ge=1)
    """DAPO's soft overlong punishment (``rewards.overlong``): 0 up to ``max_completion_length - overlong_buffer``
    tokens, then linear to ``-overlong_penalty`` at ``max_completion_length``, added to the task reward by the
    learner (any task, custom ones too). Dynamic sampling judges a group's spread before it. None: off."""
    overlong_penalty: float = Field(1.0, gt=0)
    """The punishment at ``max_completion_length`` (DAPO: 1; verl's ``penalty_factor``)."""
    custom: dict[str, str] = {}
    """Your own rewards, as TRL's ``reward_funcs``: a task name mapped to ``package.module:function`` taking
    ``(completions, prompts, **columns)``. That task's pairs say ``task: <name>`` and carry the columns the
    function reads; ``eval/<name>`` and the report include it. A built-in task's name replaces our reward."""

    @field_validator("custom")
    @classmethod
    def _custom(cls, v: dict[str, str]) -> dict[str, str]:
        for task, spec in v.items():
            if not task or not task.replace("_", "").isalnum():
                raise ValueError(f"task name {task!r} must be letters, digits and underscores")
            if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
                raise ValueError(f"{task}: {spec!r} is not 'package.module:function'")
        return v

    def reward_kwargs(self) -> dict:
        """Keyword arguments for ``rewards.make_reward(db_path, **kwargs)``: every weight and knob."""
        return {
            "extraction": self.extraction.model_dump(by_alias=True),
            "sql_qa": self.sql_qa.model_dump(),
            "insights": self.insights.model_dump(),
            "push": self.push.model_dump(),
            "sql_timeout_ms": self.sql_timeout_ms,
            "sql_max_rows": self.sql_max_rows,
            "custom": dict(self.custom),
        }
