"""extraction reward: a review to a 10-field JSON record.

Components (weights from ``rewards.extraction.weights``, normalised to sum 1):

- ``valid_json`` (0.05): :func:`rewards.extract_json` finds an object (fences, prose, PT-BR decimals,
  trailing commas, single quotes and Python literals are all fine);
- ``schema`` (0.1): share of the 10 fields present with the right type and an allowed value; a
  PT label (``"negativo"``, ``"alto"``), a number or boolean written as a string earns half; each
  extra key costs ``extra_key_penalty`` (0.05, at most 0.3);
- ``values`` (0.85): agreement with the reference record, field by field (``field_weights``): the right
  ``complaint_category`` earns even with the wrong sentiment; ordinal fields one step off earn
  ``ordinal_near_credit`` (0.25), related complaints (defeito/avaria, extravio/nao_recebido) earn
  ``related_complaint_credit`` (0.5); ``sentiment_score`` by closeness (1 - |diff|, 0 from one star off); the
  summary by its share of the reference summary's words. Then the **key gate**: the agreement is multiplied by
  ``1 - key_gate + key_gate * sentiment * complaint_category`` (those two fields' credits), so a record has to
  get the review's sentiment and its complaint right *together* to keep its value credit. Without a reference
  the component is dropped and the others renormalised.

Why the gate and the weights: the review classes are unbalanced (in the synthetic data 44% negative, 46% without
complaint, 78% without a delivery issue), so one constant record, each field at its most common value, agreed
with 52% of the reference fields and earned 0.56 under the old weights (0.2/0.3/0.5, 0.5 for any summary). A
constant cannot be right on sentiment and complaint together often (negative reviews have complaints, positive
ones have none), the format earns 0.15 at most, the fields that a constant gets right by the class prior
(the three booleans) weigh little, and the summary earns only the words it shares. The best constant record now
earns under 0.45 (tests/unit/test_reward_attacks.py).

How it departs from the user's earlier reward: that one was "schema validity plus field
correctness" on top of a ``json.loads`` that failed on ``"sentiment_score": 4,5`` -- correct PT-BR
scored near zero (the handoff's reward misspecification). Here parsing is tolerant, and value
credit is graded per field against the reference (the handoff's Scenario C extraction fix: exact
match bonus, partial credit for complaint_category) instead of rewarding field presence.
"""

from __future__ import annotations

import re
from typing import Any

from .common import as_dict, combine, fold
from .jsonx import extract_json

COMPONENTS = {"valid_json": 0.05, "schema": 0.1, "values": 0.85}

SENTIMENTS = ("negative", "neutral", "positive")
LEVELS = ("low", "medium", "high")
COMPLAINTS = ("atraso_entrega", "produto_errado", "defeito", "avaria", "item_faltante", "extravio",
              "nao_recebido", "atendimento", "nenhuma")
BOOL_FIELDS = ("delivery_issue", "product_issue", "recommends")
FIELDS = ("sentiment", "sentiment_score", "churn_risk", "complaint_category", "delivery_issue", "product_issue",
          "recommends", "urgency", "product_category", "summary")
VALUE_WEIGHTS = {"sentiment": 0.25, "complaint_category": 0.25, "sentiment_score": 0.15, "churn_risk": 0.05,
                 "delivery_issue": 0.02, "product_issue": 0.02, "recommends": 0.03, "urgency": 0.05,
                 "product_category": 0.08, "summary": 0.1}
SHAPING = {"key_gate": 0.5, "extra_key_penalty": 0.05, "ordinal_near_credit": 0.25, "related_complaint_credit": 0.5,
           "field_weights": VALUE_WEIGHTS}
"""Defaults of the knobs (``rewards.extraction`` in the run config passes every one of them explicitly)."""

_SYN = {
    "positivo": "positive", "positiva": "positive", "negativo": "negative", "negativa": "negative",
    "neutro": "neutral", "neutra": "neutral", "misto": "neutral", "mista": "neutral",
    "baixo": "low", "baixa": "low", "medio": "medium", "media": "medium", "moderado": "medium",
    "moderada": "medium", "alto": "high", "alta": "high",
    "atraso": "atraso_entrega", "atraso_na_entrega": "atraso_entrega", "entrega_atrasada": "atraso_entrega",
    "produto_diferente": "produto_errado", "produto_defeituoso": "defeito", "danificado": "avaria",
    "produto_avariado": "avaria", "faltante": "item_faltante", "item_faltando": "item_faltante",
    "pedido_nao_recebido": "nao_recebido", "nao_entregue": "nao_recebido", "nenhum": "nenhuma",
    "none": "nenhuma", "null": "nenhuma", "sem_reclamacao": "nenhuma", "": "nenhuma",
}
_RELATED = {frozenset(("defeito", "avaria")), frozenset(("extravio", "nao_recebido")),
            frozenset(("produto_errado", "item_faltante")), frozenset(("atraso_entrega", "nao_recebido"))}
_TRUE = {"true", "sim", "yes", "verdadeiro", "s", "1"}
_FALSE = {"false", "nao", "no", "falso", "n", "0"}
_WORDS = re.compile(r"[a-z]{4,}")


def _label(v: Any) -> str | None:
    if v is None:
        return "nenhuma"
    if not isinstance(v, str):
        return None
    k = re.sub(r"[\s-]+", "_", fold(v.strip()))
    return _SYN.get(k, k)


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if v == v else None
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(-?\d+(?:[.,]\d+)?)\s*(?:/\s*5)?\s*", v)
        return float(m.group(1).replace(",", ".")) if m else None
    return None


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        f = fold(v.strip())
        return True if f in _TRUE else (False if f in _FALSE else None)
    return None


def _field_schema(name: str, v: Any) -> float:
    if name == "sentiment_score":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return 1.0 if 0 <= v <= 5 else 0.5
        return 0.5 if _number(v) is not None else 0.0
    if name in BOOL_FIELDS:
        return 1.0 if isinstance(v, bool) else (0.5 if _bool(v) is not None else 0.0)
    if name in ("product_category", "summary"):
        return 1.0 if isinstance(v, str) and 0 < len(v.strip()) <= 300 else 0.0
    allowed = SENTIMENTS if name == "sentiment" else COMPLAINTS if name == "complaint_category" else LEVELS
    if isinstance(v, str) and v in allowed:
        return 1.0
    return 0.5 if _label(v) in allowed else 0.0


def schema_score(record: dict, extra_key_penalty: float = SHAPING["extra_key_penalty"]) -> float:
    """Share of the 10 fields with the right type and an allowed value, minus ``extra_key_penalty`` per extra key.

    >>> schema_score({"sentiment": "negative", "sentiment_score": 1.5, "churn_risk": "high",
    ...               "complaint_category": "defeito", "delivery_issue": False, "product_issue": True,
    ...               "recommends": False, "urgency": "alta", "product_category": "telefonia",
    ...               "summary": "Veio com defeito."})
    0.95
    """
    got = sum(_field_schema(f, record[f]) for f in FIELDS if f in record) / len(FIELDS)
    extra = min(0.3, extra_key_penalty * sum(1 for k in record if k not in FIELDS))
    return round(max(0.0, got - extra), 4)


def _ordinal(a: str | None, b: str | None, order: tuple[str, ...], near: float) -> float:
    if a is None or b is None or a not in order or b not in order:
        return 0.0
    d = abs(order.index(a) - order.index(b))
    return 1.0 if d == 0 else (near if d == 1 else 0.0)


def _field_value(name: str, got: Any, ref: Any, shaping: dict | None = None) -> float:
    sh = shaping or SHAPING
    if name == "sentiment":
        return _ordinal(_label(got), _label(ref), SENTIMENTS, 0.0)
    if name in ("churn_risk", "urgency"):
        return _ordinal(_label(got), _label(ref), LEVELS, sh["ordinal_near_credit"])
    if name == "complaint_category":
        a, b = _label(got), _label(ref)
        if a is None or b is None:
            return 0.0
        return 1.0 if a == b else (sh["related_complaint_credit"] if frozenset((a, b)) in _RELATED else 0.0)
    if name == "sentiment_score":
        a, b = _number(got), _number(ref)
        return 0.0 if a is None or b is None else max(0.0, 1.0 - abs(a - b))
    if name in BOOL_FIELDS:
        a, b = _bool(got), _bool(ref)
        return 1.0 if a is not None and a == b else 0.0
    if name == "product_category":
        if not isinstance(got, str) or not isinstance(ref, str):
            return 0.0
        a, b = _label(got), _label(ref)
        return 1.0 if a == b else (0.5 if a and b and (a in b or b in a) else 0.0)
    if name == "summary":
        if not isinstance(got, str) or not got.strip():
            return 0.0
        ref_words = set(_WORDS.findall(fold(ref))) if isinstance(ref, str) else set()
        if not ref_words:
            return 1.0
        return len(ref_words & set(_WORDS.findall(fold(got[:300])))) / len(ref_words)
    return 0.0


def values_score(record: dict, reference: dict, shaping: dict | None = None) -> float:
    """Weighted per-field agreement with the reference record, with partial credit, times the key gate.

    >>> ref = {"sentiment": "negative", "sentiment_score": 1.0, "complaint_category": "atraso_entrega"}
    >>> values_score(dict(ref), ref)
    1.0
    >>> round(values_score({"sentiment": "positive", "sentiment_score": 1.5,
    ...                     "complaint_category": "atraso_entrega"}, ref), 3)  # (0.25 + 0.075) / 0.65, gated by half
    0.25
    """
    sh = shaping or SHAPING
    weights = sh["field_weights"]
    fields = [f for f in FIELDS if f in reference and weights.get(f, 0) > 0]
    if not fields:
        return 0.0
    credit = {f: _field_value(f, record.get(f), reference[f], sh) if f in record else 0.0 for f in fields}
    total = sum(weights[f] for f in fields)
    v = sum(weights[f] * credit[f] for f in fields) / total
    keys = [credit[f] for f in ("sentiment", "complaint_category") if f in credit]
    if keys and sh["key_gate"]:
        key = 1.0
        for k in keys:
            key *= k
        v *= 1.0 - sh["key_gate"] + sh["key_gate"] * key
    return round(v, 4)


def extraction_parts(text: str, reference: Any = None, shaping: dict | None = None) -> dict[str, float | None]:
    """Component scores of one completion; ``values`` is None without a reference."""
    sh = shaping or SHAPING
    record = extract_json(text)
    ref = as_dict(reference)
    if record is None:
        return {"valid_json": 0.0, "schema": 0.0, "values": 0.0 if ref else None}
    return {"valid_json": 1.0, "schema": schema_score(record, sh["extra_key_penalty"]),
            "values": values_score(record, ref, sh) if ref else None}


def extraction_reward(text: str, reference: Any = None, weights: dict[str, float] | None = None) -> float:
    """The extraction reward of one completion, in [0, 1].

    >>> ref = {"sentiment": "positive", "sentiment_score": 4.5, "churn_risk": "low",
    ...        "complaint_category": "atraso_entrega", "delivery_issue": True, "product_issue": False,
    ...        "recommends": True, "urgency": "low", "product_category": "cama_mesa_banho",
    ...        "summary": "Cliente satisfeito, apesar de atraso na entrega."}
    >>> out = '```json\\n' + str(ref).replace("4.5", "4,5").replace("'", '"') \\
    ...     .replace("True", "true").replace("False", "false") + '\\n```'
    >>> extraction_reward(out, ref)
    1.0
    >>> extraction_reward("não sei", ref)
    0.0
    """
    return round(combine(weights or COMPONENTS, extraction_parts(text, reference)), 6)
