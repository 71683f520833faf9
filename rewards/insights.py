"""insights reward: facts from the database to 3-5 strategic PT-BR bullets.

Components (weights from ``rewards.insights.weights``, normalised to sum 1):

- ``insightful`` (0.6): the share of bullets that are insights (denominator at least ``min_bullets``, 3): each
  opens with a strategic action verb, cites at least one figure of the facts *with what it measures* and no
  invented one, and adds, beyond its verb, at least ``min_new_words`` (2) words of 3+ letters that are not in
  the prompt (a recommendation, not a fact line copied back behind a verb). A figure is cited with what it
  measures when, among the ``subject_words`` (2) words nearest to it that name any fact (atraso, nota,
  negativas, pedidos, estado, categoria, reclamação, a complaint's, state's or category's name), one names a
  fact of that value: "taxa de atraso de 29,1%" binds 29,1 to the delay rate, "Priorizar ações (29,1%)" binds it
  to nothing (``subject_words`` 0 turns the check off);
- ``grounded`` (0.2): numbers cited (ignoring integers up to 10 such as "3 ações") must appear in the
  facts (PT-BR or English notation, rounding to the cited precision allowed) and be cited with what they
  measure (as in ``insightful``; a fact's figure cited as another fact counts as invented):
  ``max(0, (grounded - invented) / cited)``; a text that cites no number earns ``no_number_credit`` (0). The
  facts come from the ``facts`` column (dict or JSON string) or, without it, from the numbers in the prompt
  (each line's words then name its figures);
- format, 0.05 each: ``bullets`` (3 to 5 bullet lines earn 1; 2 or 6 earn 0.5; 1 or 7 earn 0.2), ``action_verbs``
  (share of bullets whose first word is an action verb, infinitive or imperative), ``portuguese``
  (:func:`rewards.common.pt_score`), ``length`` (half for 150-1500 characters in total, half for the share of
  bullets of 30-300 characters).

Robustness (tests/unit/test_reward_attacks.py): one five-bullet template without figures earns 0.2, invented
figures 0.2, the facts copied back as bullets (with or without a verb in front) at most 0.4: the format and
the figures' grounding are 0.4 of the reward, and the rest is paid only per bullet that recommends something
with the facts' own numbers. The old weights (format 0.7, 0.3 for citing no number) paid 0.79 for the template.
Without the binding, ``python -m rewards.redteam`` found a template that put the prompt's figures behind verbs
and filler ("- Trocar entregas ⟦fig10⟧ prazo: ⟦fig7⟧% das avaliações ...") at 1.0, as much as the references.

How it departs from the user's earlier reward (structure, action words, length, domain words): a
text could score high while inventing every number or restating the prompt. Grounding against the facts makes
invented numbers cost reward, and the credit is per bullet instead of keyword counts.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, NamedTuple

from .common import as_dict, combine, fold, numbers_in, pt_score, walk_numbers

COMPONENTS = {"insightful": 0.6, "grounded": 0.2, "bullets": 0.05, "action_verbs": 0.05, "portuguese": 0.05,
              "length": 0.05}
SHAPING = {"no_number_credit": 0.0, "min_new_words": 2, "min_bullets": 3, "subject_words": 2}
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


def grounded_score(text: str, facts: set[float], no_number_credit: float = SHAPING["no_number_credit"],
                   subjects: Subjects | None = None, k: int = SHAPING["subject_words"]) -> float:
    """``max(0, (grounded - invented) / cited)`` over the numbers cited; ``no_number_credit`` if none is cited.
    With ``subjects`` (:func:`fact_subjects`; ``k`` > 0) a figure of the facts counts as grounded only where it
    is cited with what it measures (:func:`bound_figure`); cited as something else it counts as invented.

    >>> grounded_score("- Reduzir atrasos: 18,2% das negativas", {18.2, 225.0})
    1.0
    >>> grounded_score("- Reduzir atrasos: 18,2% das negativas e 37% dos pedidos", {18.2})
    0.0
    >>> subj = fact_subjects('{"pct_atraso": 18.2, "avaliacoes_negativas": 225}', "")
    >>> grounded_score("- Reduzir atrasos (18,2%) e as 225 negativas", {18.2, 225.0}, subjects=subj)
    1.0
    >>> grounded_score("- Reduzir as 18,2 negativas", {18.2, 225.0}, subjects=subj)
    0.0
    """
    if subjects is not None and k:
        figs = [(bound, fact) for line in text[:MAX_TEXT].splitlines()
                for v, fact, bound in _figures(line, subjects, k) if not _small(v)]  # named on its own line
        if not figs:
            return no_number_credit
        good = sum(b for b, _ in figs)
        return round(max(0.0, (good - (len(figs) - good)) / len(figs)), 4)
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
_KEY_SUBJECTS = {"pedidos": ("pedido",), "avaliacoes_negativas": ("negativ", "insatisf"),
                 "pct_negativas": ("negativ", "insatisf"), "nota_media": ("nota", "media"), "pct_atraso": ("atras",),
                 "nota_media_atrasados": ("nota", "media"), "pct_atraso_negativas": ("atras", "negativ"),
                 "principais_reclamacoes": ("reclama",), "estados_mais_negativas": ("estado",),
                 "categorias_mais_negativas": ("categoria",), "recorte": ("amostra", "recorte")}
"""The words (stems) that name each fact of the synthetic facts; other keys are named by their own words, and a
list item ``[name, figure]`` also by its name (a complaint, a state, a category)."""
MAX_TEXT = 20000
_WINDOW = 6  # words (and figures) either side of a figure where what it measures may be named
_LOOSE = {"pedido": 2}
"""A word found in every bullet names its fact only right next to the figure ("86 pedidos"), and is not one of
the nearest words that decide what a figure measures ("cai para 1,04 nos pedidos atrasados": the score)."""
_TOKEN = re.compile(r"[-+]?\d+(?:[.,]\d+)*|[a-z_]+")


class Subjects(NamedTuple):
    """The figures of the facts with the stems that name each, and every stem that names a fact."""

    entries: tuple[tuple[float, frozenset[str]], ...]
    stems: frozenset[str]
    memo: dict
    """A figure as written -> the stem sets of the facts it is a figure of (filled as texts are scored, at most
    4,096 entries)."""
    recent: dict
    """A line's tokens -> its figures, for the lines just scored (a bullet is checked as a bullet and as a line of
    the text; at most 64 entries)."""

    def facts_of(self, token: str) -> list[frozenset[str]]:
        got = self.memo.get(token)
        if got is None:
            values = [x for r in numbers_in(token) for x in r]
            got = [st for v, st in self.entries if any(_grounded(x, {v}) for x in values)]
            if len(self.memo) < 4096:
                self.memo[token] = got
        return got


def _stems(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", fold(str(text)).replace("_", " "))
    codes = {w.lower() for w in re.findall(r"\b[A-Z]{2}\b", str(text))}  # a state: SP
    return {w[:6] for w in words if len(w) >= 4} | codes


def _entries(key: str, v: Any, base: frozenset[str], out: list) -> None:
    if isinstance(v, bool) or v is None:
        return
    if isinstance(v, (int, float)):
        out.append((float(v), base))
    elif isinstance(v, str):
        out.extend((x, base) for r in numbers_in(v) for x in r)
    elif isinstance(v, (list, tuple)):
        names = frozenset(s for x in v if isinstance(x, str) for s in _stems(x))
        for x in v:
            _entries(key, x, base | names, out)
    elif isinstance(v, dict):
        for k, x in v.items():
            _entries(k, x, base | _stems(k), out)


@lru_cache(maxsize=512)
def fact_subjects(facts: str, prompt: str) -> Subjects:
    """((figure, the stems naming it), ...) and every stem that names a fact: from the facts (a JSON object: its
    keys and list items), or from the prompt's lines (a line's words name its figures).

    >>> entries, names, _, _ = fact_subjects('{"pct_atraso": 29.1, "estados_mais_negativas": [["SP", 35]]}', "")
    >>> entries[0], sorted(entries[1][1])
    ((29.1, frozenset({'atras'})), ['estado', 'sp'])
    """
    out: list = []
    fd = as_dict(facts) if facts else None
    if fd is not None:
        for k, v in fd.items():
            _entries(k, v, frozenset(_KEY_SUBJECTS.get(k) or _stems(k)), out)
    else:
        for line in (prompt or "").splitlines():
            label = line.split(":", 1)[0] if ":" in line else line
            _entries("", line, frozenset(_stems(label) or _stems(line)), out)
    return Subjects(tuple(out), frozenset(s for _, st in out for s in st), {}, {})


def _names(word: str, stems) -> bool:
    return any(word.startswith(s) if len(s) >= 4 else word == s for s in stems)


def _figures(text: str, subjects: Subjects, k: int) -> list[tuple[list[float], bool, bool]]:
    """(readings, a figure of the facts, cited with what it measures) of each number of ``text``."""
    all_stems = subjects.stems
    tokens = _TOKEN.findall(fold(text[:MAX_TEXT]))
    key = (tuple(tokens), k)
    if key in subjects.recent:
        return subjects.recent[key]
    numeric = [t[-1].isdigit() for t in tokens]
    reach = [0 if num else _reach(w, all_stems) for w, num in zip(tokens, numeric, strict=True)]
    out = []
    for i, tok in enumerate(tokens):
        if not numeric[i]:
            continue
        values = [x for r in numbers_in(tok) for x in r]
        facts = subjects.facts_of(tok)
        bound = False
        if facts:
            span = range(max(0, i - _WINDOW), min(len(tokens), i + _WINDOW + 1))
            near = sorted((abs(j - i), tokens[j]) for j in span if 0 < abs(j - i) <= reach[j] == _WINDOW)
            cut = near[min(k, len(near)) - 1][0] if near else -1  # the k nearest, and those as near as the k-th
            close = [w for d, w in near if d <= cut] + [tokens[j] for j in span if 0 < abs(j - i) <= reach[j] < _WINDOW]
            bound = any(_names(w, st) for w in close for st in facts)
        out.append((values, bool(facts), bound))
    if len(subjects.recent) >= 64:
        subjects.recent.clear()
    subjects.recent[key] = out
    return out


@lru_cache(maxsize=4096)
def _reach(word: str, stems: frozenset[str]) -> int:
    """How far from a figure ``word`` may name its fact: 0 when it names none."""
    if not _names(word, stems):
        return 0
    return min((n for st, n in _LOOSE.items() if word.startswith(st)), default=_WINDOW)


def _small(values: list[float]) -> bool:
    return bool(values) and all(float(x).is_integer() and abs(x) <= 10 for x in values)


def bound_figure(item: str, subjects: Subjects, k: int = SHAPING["subject_words"]) -> bool:
    """True when the bullet cites its figures with what they measure: for each figure of the facts it cites, one
    of the ``k`` words nearest to it (ties included, at most 6 words away) that name any fact names a fact of
    that figure; at least one figure, and every one but small counts (integers up to 10).

    >>> subj = fact_subjects('{"pct_atraso": 29.1, "nota_media": 4.05}', "")
    >>> bound_figure("Reduzir a taxa de atraso de 29,1% com alertas", subj)
    True
    >>> bound_figure("Priorizar a nota: 29,1% dos casos", subj), bound_figure("Priorizar ações (29,1%)", subj)
    (False, False)
    >>> bound_figure("Reduzir o atraso (29,1%) e a nota de 4,05, 29,1", subj)
    False
    """
    figs = [(bound, _small(v)) for v, fact, bound in _figures(item, subjects, k) if fact]
    return any(b for b, _ in figs) and all(b or small for b, small in figs)


def insight_share(items: list[str], facts: frozenset[float], prompt: str, shaping: dict | None = None,
                  subjects: Subjects | None = None) -> float:
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
        if subjects is not None and sh["subject_words"] and not bound_figure(b, subjects, int(sh["subject_words"])):
            continue  # its figures are not cited with what they measure
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
    if isinstance(facts, str) or facts is None:
        subjects = fact_subjects(facts or "", prompt or "")
    else:
        fd = as_dict(facts)
        subjects = fact_subjects(json.dumps(fd, ensure_ascii=False, sort_keys=True) if fd else "", prompt or "")
    grounded = (grounded_score(text, fact_numbers, sh["no_number_credit"], subjects, int(sh["subject_words"]))
                if fact_numbers is not None else None)
    given = f"{prompt or ''} {facts if isinstance(facts, str) else as_dict(facts) or ''}"  # what was handed over
    return {
        "insightful": insight_share(items, fact_numbers or frozenset(), given, sh, subjects),
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
