"""insights reward: facts from the database to 3-5 strategic PT-BR bullets.

Components (weights from ``rewards.insights.weights``, normalised to sum 1):

- ``insightful`` (0.6): the share of bullets that are insights (denominator at least ``min_bullets``, 3): each
  opens with a strategic action verb, cites at least one figure of the facts and no invented one, and adds,
  beyond its verb, at least ``min_new_words`` (2) words of 3+ letters that are not in the prompt (a
  recommendation, not a fact line copied back behind a verb);
- ``grounded`` (0.2): numbers cited (ignoring integers up to 10 such as "3 ações") must appear in the
  facts (PT-BR or English notation, rounding to the cited precision allowed):
  ``max(0, (grounded - invented) / cited)``; a text that cites no number earns ``no_number_credit`` (0). The
  facts come from the ``facts`` column (dict or JSON string) or, without it, from the numbers in the prompt;
- format, 0.05 each: ``bullets`` (3 to 5 bullet lines earn 1; 2 or 6 earn 0.5; 1 or 7 earn 0.2), ``action_verbs``
  (share of bullets whose first word is an action verb, infinitive or imperative), ``portuguese``
  (:func:`rewards.common.pt_score`), ``length`` (half for 150-1500 characters in total, half for the share of
  bullets of 30-300 characters).

Robustness (tests/unit/test_reward_attacks.py): one five-bullet template without figures earns 0.2, invented
figures 0.2, the facts copied back as bullets (with or without a verb in front) at most 0.4: the format and
the figures' grounding are 0.4 of the reward, and the rest is paid only per bullet that recommends something
with the facts' own numbers. The old weights (format 0.7, 0.3 for citing no number) paid 0.79 for the template.

How it departs from the user's earlier reward (structure, action words, length, domain words): a
text could score high while inventing every number or restating the prompt. Grounding against the facts makes
invented numbers cost reward, and the credit is per bullet instead of keyword counts.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from .common import as_dict, combine, fold, numbers_in, pt_score, walk_numbers

COMPONENTS = {"insightful": 0.6, "grounded": 0.2, "bullets": 0.05, "action_verbs": 0.05, "portuguese": 0.05,
              "length": 0.05}
SHAPING = {"no_number_credit": 0.0, "min_new_words": 2, "min_bullets": 3}
"""Defaults of the knobs (``rewards.insights`` in the run config passes every one of them explicitly)."""

_INFINITIVES = """
priorizar reduzir investir melhorar renegociar monitorar ampliar revisar implementar criar oferecer otimizar
treinar acompanhar automatizar negociar expandir focar garantir lancar padronizar rever substituir auditar
comunicar contatar incentivar reforcar ajustar aumentar diminuir estabelecer definir analisar mapear estruturar
desenvolver capacitar avaliar fortalecer agilizar antecipar divulgar segmentar personalizar compensar
reembolsar atacar cobrar integrar adotar alinhar direcionar intensificar concentrar eliminar mitigar prevenir
resolver simplificar testar medir rastrear notificar premiar fidelizar reavaliar redistribuir contratar trocar
corrigir centralizar disponibilizar explorar promover realocar ativar acelerar combater diversificar engajar
investigar manter reter recuperar reestruturar repensar programar planejar oferecer qualificar
""".split()
_IRREGULAR = {"invista", "reveja", "faca", "mantenha", "ofereca", "estabeleca", "fortaleca", "meca", "previna",
              "corrija", "mitigue", "divulgue", "ataque", "reforce", "lance", "comece", "siga", "inclua", "reduza",
              "construa", "distribua", "substitua", "persiga", "promova", "retenha", "obtenha", "proponha"}


def _imperative(v: str) -> set[str]:
    stem = v[:-2]
    return {stem + "e"} if v.endswith("ar") else {stem + "a"}


VERBS = frozenset(_INFINITIVES) | _IRREGULAR | frozenset(x for v in _INFINITIVES for x in _imperative(v))

_BULLET = re.compile(r"^\s*(?:[-*•‣▪–—]|\d{1,2}[.)])\s+(.*\S)")
_FIRST_WORD = re.compile(r"[a-zà-öø-ÿ]+")


def bullet_lines(text: str) -> list[str]:
    """The bullet items of a text (marker removed).

    >>> bullet_lines("Insights:\\n- Priorizar entregas\\n2) Reduzir custos\\ntexto solto")
    ['Priorizar entregas', 'Reduzir custos']
    """
    out = []
    for line in text[:20000].splitlines():
        m = _BULLET.match(line)
        if m:
            out.append(m.group(1))
    return out


def _bullets_score(n: int) -> float:
    return 1.0 if 3 <= n <= 5 else 0.5 if n in (2, 6) else 0.2 if n in (1, 7) else 0.0


def starts_with_verb(item: str) -> bool:
    """True when the bullet's first word is an action verb (markdown bold and labels are skipped).

    >>> starts_with_verb("**Priorize** a logística no Norte")
    True
    >>> starts_with_verb("A logística no Norte")
    False
    """
    t = fold(item)
    t = re.sub(r"^[^a-z]*(insight|acao|recomendacao)\s*\d*\s*[:\-–]\s*", "", t)
    m = _FIRST_WORD.search(t)
    return bool(m) and m.group() in VERBS


def _length_score(text: str, items: list[str]) -> float:
    n = len(text.strip())
    total = min(1.0, n / 150) if n <= 1500 else max(0.0, 1.0 - (n - 1500) / 1500)
    per = sum(30 <= len(b) <= 300 for b in items) / len(items) if items else 0.0
    return 0.5 * total + 0.5 * per


def _grounded(value: float, facts: set[float]) -> bool:
    for f in facts:
        if abs(value - f) <= max(0.051, 0.005 * abs(f)):
            return True
        if float(value).is_integer() and abs(value - f) < 0.5:
            return True
    return False


def _cited(text: str) -> list[set[float]]:
    """Numbers cited, each as its set of readings, less small integers (\"3 ações\")."""
    return [r for r in numbers_in(text) if not all(float(x).is_integer() and abs(x) <= 10 for x in r)]


def grounded_score(text: str, facts: set[float], no_number_credit: float = SHAPING["no_number_credit"]) -> float:
    """``max(0, (grounded - invented) / cited)`` over the numbers cited; ``no_number_credit`` if none is cited.

    >>> grounded_score("- Reduzir atrasos: 18,2% das negativas", {18.2, 225.0})
    1.0
    >>> grounded_score("- Reduzir atrasos: 18,2% das negativas e 37% dos pedidos", {18.2})
    0.0
    """
    cited = _cited(text)
    if not cited:
        return no_number_credit
    good = sum(any(_grounded(x, facts) for x in r) for r in cited)
    return round(max(0.0, (good - (len(cited) - good)) / len(cited)), 4)


@lru_cache(maxsize=512)
def _fact_numbers(facts: str, prompt: str) -> frozenset[float] | None:
    fd = as_dict(facts) if facts else None
    if fd is not None:
        return frozenset(walk_numbers(fd))
    if prompt:
        return frozenset(x for r in numbers_in(prompt) for x in r)
    return None


_NEW_WORD = re.compile(r"[a-z]{3,}")


def insight_share(items: list[str], facts: frozenset[float], prompt: str, shaping: dict | None = None) -> float:
    """The share of bullets that recommend something with the facts' figures (see the module docstring).

    >>> facts = frozenset({18.2, 7.9, 4.0})
    >>> prompt = "Fatos: negativas 18,2% dos pedidos; atraso 7,9%; estados: SP (4)"
    >>> insight_share(["Reduzir o atraso com transportadoras melhores: 7,9% hoje", "Negativas: 18,2% dos pedidos",
    ...                "Reforçar a operação logística em SP (4 negativas)", "Priorizar negativas: 18,2% dos pedidos"],
    ...               facts, prompt)
    0.5
    """
    sh = shaping or SHAPING
    known = set(_NEW_WORD.findall(fold(prompt)))
    good, seen = 0, set()
    for b in items:
        key = fold(b).strip()
        if key in seen or not starts_with_verb(b):
            continue
        seen.add(key)
        readings = numbers_in(b)
        if not any(any(_grounded(x, facts) for x in r) for r in readings):
            continue  # cites none of the facts' figures (small counts such as "(4)" included)
        if not all(any(_grounded(x, facts) for x in r) for r in _cited(b)):
            continue  # an invented figure
        words = _NEW_WORD.findall(key)
        if len(set(words[1:]) - known) >= sh["min_new_words"]:  # beyond the opening verb
            good += 1
    return round(good / max(sh["min_bullets"], len(items)), 4) if items else 0.0


def insights_parts(text: str, facts: Any = None, prompt: str = "", shaping: dict | None = None
                   ) -> dict[str, float | None]:
    """Component scores of one completion."""
    sh = shaping or SHAPING
    items = bullet_lines(text)
    if isinstance(facts, str) or facts is None:
        fact_numbers = _fact_numbers(facts or "", prompt or "")
    else:
        fd = as_dict(facts)
        fact_numbers = frozenset(walk_numbers(fd)) if fd is not None else _fact_numbers("", prompt or "")
    grounded = (grounded_score(text, fact_numbers, sh["no_number_credit"]) if fact_numbers is not None else None)
    given = f"{prompt or ''} {facts if isinstance(facts, str) else as_dict(facts) or ''}"  # what was handed over
    return {
        "insightful": insight_share(items, fact_numbers or frozenset(), given, sh),
        "grounded": grounded,
        "bullets": _bullets_score(len(items)),
        "action_verbs": sum(starts_with_verb(b) for b in items) / len(items) if items else 0.0,
        "portuguese": pt_score(text),
        "length": _length_score(text, items),
    }


def insights_reward(text: str, facts: Any = None, prompt: str = "", weights: dict[str, float] | None = None,
                    shaping: dict | None = None) -> float:
    """The insights reward of one completion, in [0, 1].

    >>> facts = {"pedidos": 1234, "pct_negativas": 18.2, "pct_atraso": 7.9, "nota_media": 4.05}
    >>> good = ("- Priorizar a entrega no prazo: o atraso atinge 7,9% dos pedidos entregues.\\n"
    ...         "- Reduzir as avaliações negativas, hoje 18,2% dos 1.234 pedidos do recorte.\\n"
    ...         "- Monitorar a nota média de 4,05 e agir rápido quando ela cair no mês.")
    >>> insights_reward(good, facts) > 0.9
    True
    >>> insights_reward("ok", facts) < 0.2
    True
    """
    return round(combine(weights or COMPONENTS, insights_parts(text, facts, prompt, shaping)), 6)
