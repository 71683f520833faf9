"""Prompt-agnostic templates and the search for the best one (what ``python -m rewards.redteam`` runs).

A GRPO policy is a search, and the cheapest thing a small model learns is one template with slots copied from its
prompt. A *template* here is a tuple of parts joined in order; a part is text that may hold slots (``⟦product⟧``),
and each prompt fills the slots with its own values (:func:`prompt_values`):

- ``product``, ``category``, ``city``, ``state``: the order's, the review's, the slice's (the commerce prompts'
  ``Produto: ... (categoria: ...)``, ``Cliente: cidade/UF``, ``categoria X``, ``clientes de UF``, ``Categorias /
  Estados com mais negativas: ...``);
- ``fig1`` ... ``fig12``: the figures of the prompt's own lines (the facts, the question's numbers), in order;
- ``lit1`` ... ``lit6``: the question's literals (quoted strings, ``snake_case`` values, UF codes, months), in
  order; ``'⟦lit1⟧'`` is its quoted form.

"The prompt's own lines" are those fewer than half of the sampled prompts share (the instructions and a schema
are the same everywhere; a column name is then a fixed part, not a slot). The order's *situation*, the review's
text and the fact labels are not slots: copying them is what answering those prompts takes.

The parts (:func:`harvest_parts`) are fixed phrases (:data:`FIXED`), the cue words the reward's own components look
for (:func:`cue_words`: push's situation and tone cues, insights' action verbs, the extraction record's fields and
values, SQL keywords and the schema's column names) and the reference answers of *other* prompts: whole, by line,
by sentence, each as written and with that prompt's values turned back into slots (another order's notification
with ``⟦product⟧`` where its product was).

The search (:func:`search`) is a steady-state genetic algorithm: a population of templates, tournament selection,
one-point crossover, and mutations (insert, delete, replace or swap a part; put a cue word or a slot in place of a
word inside a part; move a slot to another index or kind); the fitness is the mean reward over the sampled eval
prompts, ties going to the shorter text. Pure stdlib, seeded, deterministic for a seed and a reward.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


MAX_FIGURES, MAX_LITERALS = 12, 6
MAX_PARTS = 14
_SLOT = re.compile(r"⟦([a-z]+[0-9]*)⟧")
_NUMBER = re.compile(r"(?<![\w])\d+(?:[.,]\d+)*")
_LITERAL = re.compile(r"'([^'\n]{1,60})'|\b([a-z]+(?:_[a-z]+)+)\b|\b([A-Z]{2})\b|\b(\d{4}-\d{2})\b")
_IDENT = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")
_PRODUCT = re.compile(r"Produto:\s*(.+?)\s*\(categoria:\s*(.+?)\)")
_CLIENT = re.compile(r"Cliente:\s*([^/\n]+?)\s*/\s*([A-Z]{2})\b")
_CATEGORY = (re.compile(r"\bcategoria\s+([a-z]+(?:_[a-z]+)*)\b"),
             re.compile(r"Categorias com mais negativas:\s*([a-z_]+)"))
_STATE = (re.compile(r"\bclientes? (?:de|do estado) ([A-Z]{2})\b"),
          re.compile(r"Estados com mais negativas:\s*([A-Z]{2})"))
_WORD_IN_PART = re.compile(r"⟦[a-z]+[0-9]*⟧|[A-Za-zÀ-ÿ_]+|\d+(?:[.,]\d+)*")
_PIECES = re.compile(r"[^\n.!?;]+[.!?;]*")

FIXED = ("\n", "\n- ", "- ", ".", ",", ":", "!", "?", "(", ")", "%", "😉", "🎉", "🚚", "😕", "💜", "⭐",
         "Oi", "Olá", "Seu", "Sua", "seu pedido", "pedido", "pedidos", "o produto", "de", "do", "da", "em", "no",
         "na", "com", "pra você", "para", "que", "e", "ou", "a", "o", "os", "as", "já", "agora", "hoje", "app",
         "no app", "confira", "aproveite", "cliente", "clientes", "resposta", "Conta os pedidos.",
         "```sql\n", "\n```", "```json\n", "{", "}", ";", "SELECT", "FROM", "WHERE", "AND", "GROUP BY",
         "ORDER BY", "DESC", "LIMIT", "=", "COUNT(*)", "AVG(", "SUM(", "ROUND(", "AS", "*", "orders_enriched")
"""Fixed phrases: punctuation, Portuguese filler, a notification's openers, markdown and SQL tokens."""


def slot(name: str) -> str:
    return f"⟦{name}⟧"


def varying_lines(prompts: Sequence[str]) -> list[list[str]]:
    """Per prompt, its lines that fewer than half of the prompts share (all of them for fewer than 4 prompts).

    >>> varying_lines(["Regras\\nProduto: x", "Regras\\nProduto: y", "Regras\\nProduto: z", "Regras\\nProduto: w"])
    [['Produto: x'], ['Produto: y'], ['Produto: z'], ['Produto: w']]
    """
    counts = Counter(ln for p in prompts for ln in set(p.splitlines()))
    cut = len(prompts) / 2
    return [[ln for ln in p.splitlines() if ln.strip() and (len(prompts) < 4 or counts[ln] < cut)] for p in prompts]


def _first(rxs, text: str) -> str | None:
    for rx in rxs:
        m = rx.search(text)
        if m:
            return m.group(1).strip()
    return None


def prompt_values(text: str, own_lines: Sequence[str]) -> dict[str, str]:
    """The slot values of one prompt (``text``: its user turns; ``own_lines``: its lines no others share).

    >>> v = prompt_values("Cliente: Curitiba/PR\\nProduto: tênis (categoria: esporte e lazer)\\nSituação: x",
    ...                   ["Cliente: Curitiba/PR", "Produto: tênis (categoria: esporte e lazer)"])
    >>> v["product"], v["category"], v["city"], v["state"], v["lit1"]
    ('tênis', 'esporte e lazer', 'Curitiba', 'PR', 'PR')
    >>> prompt_values("Escreva: Qual o total de cama_mesa_banho em 2018?", ["Qual o total de cama_mesa_banho em 2018?"])
    {'category': 'cama_mesa_banho', 'fig1': '2018', 'lit1': 'cama_mesa_banho'}
    """
    out: dict[str, str] = {}
    m = _PRODUCT.search(text)
    if m:
        out["product"], out["category"] = m.group(1).strip(), m.group(2).strip()
    m = _CLIENT.search(text)
    if m:
        out["city"], out["state"] = m.group(1).strip(), m.group(2)
    own = "\n".join(own_lines)
    if "category" not in out:
        cat = _first(_CATEGORY, text) or next(iter(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", own)), None)
        if cat:
            out["category"] = cat
    if "state" not in out:
        st = _first(_STATE, text)
        if st:
            out["state"] = st
    figs = list(dict.fromkeys(m.group() for m in _NUMBER.finditer(own)))[:MAX_FIGURES]
    out.update({f"fig{i}": v for i, v in enumerate(figs, 1)})
    lits = list(dict.fromkeys(next(g for g in m.groups() if g) for m in _LITERAL.finditer(own)))[:MAX_LITERALS]
    out.update({f"lit{i}": v for i, v in enumerate(lits, 1)})
    return out


def render(template: Sequence[str], values: dict[str, str], keep: bool = False) -> str:
    """The completion of one prompt: the parts joined (a space between words), the slots filled ('' if absent,
    the slot itself with ``keep``).

    >>> render(("Oi", "!", "Seu ⟦product⟧", "chegou", "😉"), {"product": "tênis"})
    'Oi! Seu tênis chegou 😉'
    """
    out = ""
    for p in template:
        if out and not out[-1].isspace() and out[-1] not in "(" and p and not p[0].isspace() \
                and p[0] not in ".,;:!?)%":
            out += " "
        out += p
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group() if keep else ""), out)


def slotify(text: str, values: dict[str, str]) -> str:
    """``text`` (another prompt's answer) with that prompt's values turned into slots, longest value first.

    >>> slotify("Seu pedido de tênis foi cancelado 😕 Veja esporte e lazer: 29,1% off",
    ...         {"product": "tênis", "category": "esporte e lazer", "fig1": "29,1"})
    'Seu pedido de ⟦product⟧ foi cancelado 😕 Veja ⟦category⟧: ⟦fig1⟧% off'
    """
    for name, v in sorted(values.items(), key=lambda kv: -len(kv[1])):
        if len(v) < 2 and not v.isdigit():
            continue
        if name.startswith("fig"):
            text = re.sub(rf"(?<![\w.,]){re.escape(v)}(?![\w]|[.,]\d)", slot(name), text)
        else:
            text = re.sub(rf"(?i)(?<![\w⟦]){re.escape(v)}(?![\w⟧])", slot(name), text)
    return text


def _expand(pattern: str) -> list[str]:
    """Literal words of a simple alternation regex (``a caminho|despachad\\w*|ofertas?|volt[ae]\\w*``)."""
    body = re.sub(r"^\\b\(\?:|\)\\b$", "", pattern)
    out = []
    for alt in body.split("|"):
        alt = alt.replace("(?<![a-z0-9])", "").replace("(?![a-z0-9])", "")
        m = re.fullmatch(r"([a-z ]+)\[([a-z]+)\]([a-z ]*)(\\w\*)?", alt)
        stems = [m.group(1) + c + m.group(3) for c in m.group(2)] if m else [alt]
        for s in stems:
            if s.endswith("\\w*"):
                out += [s[:-3] + e for e in ("", "o", "a", "e", "ado", "ar")]
            elif s.endswith("s?"):
                out += [s[:-2], s[:-1]]
            elif re.fullmatch(r"[a-z ⭐]+", s):
                out.append(s)
    return out


def cue_words(task: str, prompts: Sequence[str] = ()) -> list[str]:
    """The words the ``task`` reward's components look for; the column names of a schema in the prompts.

    >>> "cancelado" in cue_words("push") and "Priorizar" in cue_words("insights")
    True
    """
    from . import extraction, insights, push

    cols = sorted({c for p in prompts[:8] for c in _IDENT.findall(p)})
    if task == "push":
        words = [w for pat in push.SITUATION_CUES.values() for w in _expand(pat)]
        words += _expand(push._INFORMAL.pattern) + ["!", "😉", "🎉"]
        return list(dict.fromkeys(words))
    if task == "insights":
        names = ["taxa de atraso", "atrasados", "nota média", "avaliações negativas", "clientes insatisfeitos",
                 "pedidos", "a principal reclamação", "estado com mais negativas", "categoria", "amostra"]
        return sorted({v.capitalize() for v in insights.VERBS if v.endswith("ar") or v.endswith("er")}) + names
    if task == "extraction":
        vals = {"sentiment": extraction.SENTIMENTS, "churn_risk": extraction.LEVELS, "urgency": extraction.LEVELS,
                "complaint_category": extraction.COMPLAINTS}
        words = [f'"{k}": "{v}",' for k, vs in vals.items() for v in vs]
        words += [f'"{k}": {b},' for k in extraction.BOOL_FIELDS for b in ("true", "false")]
        words += [f'"sentiment_score": {s},' for s in range(6)] + ['"product_category": "⟦category⟧",',
                                                                   '"summary": "⟦category⟧"']
        return words
    if task == "sql_qa":
        return cols + ["COUNT(DISTINCT", "MAX(", "MIN(", "IN", "LIKE", "IS NULL", "= 1", "0", "1", "2", "5", "10"]
    return cols


def harvest_parts(answers: Sequence[tuple[str, dict[str, str]]], limit: int = 400,
                  rng: random.Random | None = None) -> list[str]:
    """Parts from other prompts' answers: whole, by line and by sentence, as written and slotified."""
    out: dict[str, None] = {}
    for answer, values in answers:
        pieces = [answer] + [ln for ln in answer.splitlines() if ln.strip()]
        pieces += [m.group().strip() for m in _PIECES.finditer(answer) if len(m.group().strip()) > 2]
        for p in pieces:
            out[p] = None
            out[slotify(p, values)] = None
    parts = list(out)
    if len(parts) > limit:
        parts = sorted((rng or random.Random(0)).sample(parts, limit), key=parts.index)
    return parts


@dataclass
class Pools:
    """What a template is made of: fixed phrases, cue words, other prompts' answer parts, and slots."""

    fixed: list[str]
    cues: list[str]
    donors: list[str]
    slots: list[str]
    whole: list[str] = field(default_factory=list)
    """Other prompts' whole answers (slotified): starting points of the population."""

    def part(self, rng: random.Random) -> str:
        r = rng.random()
        pool = (self.donors if r < 0.35 else self.cues if r < 0.65 else self.slots if r < 0.8 else self.fixed)
        return rng.choice(pool or self.fixed)

    def word(self, rng: random.Random) -> str:
        r = rng.random()
        pool = self.slots if r < 0.4 else self.cues if r < 0.8 else self.fixed
        return rng.choice(pool or self.fixed)


def make_pools(task: str, prompts: Sequence[str], values: Sequence[dict[str, str]],
               donors: Sequence[tuple[str, dict[str, str]]], rng: random.Random) -> Pools:
    seen = Counter(k for v in values for k in v)
    names = [k for k in seen if seen[k] >= max(1, len(values) // 10)]
    slots = [slot(k) for k in names] + [f"'{slot(k)}'" for k in names if k.startswith("lit")]
    whole = list(dict.fromkeys(slotify(a, v) for a, v in donors))
    return Pools(list(FIXED), cue_words(task, prompts), harvest_parts(donors, rng=rng), slots, whole)


def mutate(t: tuple[str, ...], pools: Pools, rng: random.Random) -> tuple[str, ...]:
    """One random edit of a template (see the module docstring)."""
    parts = list(t)
    op = rng.randrange(7) if parts else 0
    if op == 0 or (op == 1 and len(parts) < 2):  # insert
        parts.insert(rng.randrange(len(parts) + 1), pools.part(rng))
    elif op == 1:  # delete
        del parts[rng.randrange(len(parts))]
    elif op == 2:  # replace
        parts[rng.randrange(len(parts))] = pools.part(rng)
    elif op == 3 and len(parts) > 1:  # swap
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
    elif op in (4, 5):  # a word inside a part -> a cue word or a slot
        i = rng.randrange(len(parts))
        words = list(_WORD_IN_PART.finditer(parts[i]))
        if words:
            m = rng.choice(words)
            parts[i] = parts[i][:m.start()] + pools.word(rng) + parts[i][m.end():]
        else:
            parts[i] = pools.word(rng)
    else:  # move a slot to another index or kind
        i = rng.randrange(len(parts))
        found = list(_SLOT.finditer(parts[i]))
        if found and pools.slots:
            m = rng.choice(found)
            new = rng.choice(pools.slots).strip("'")
            parts[i] = parts[i][:m.start()] + new + parts[i][m.end():]
        else:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(pools.slots or pools.fixed))
    return tuple(parts[:MAX_PARTS])


def crossover(a: tuple[str, ...], b: tuple[str, ...], rng: random.Random) -> tuple[str, ...]:
    i, j = rng.randint(0, len(a)), rng.randint(0, len(b))
    return (a[:i] + b[j:])[:MAX_PARTS] or a


@dataclass
class Found:
    """The best template of a search, its mean reward and its components' means over the sampled prompts."""

    template: tuple[str, ...]
    score: float
    components: dict[str, float]
    evaluations: int
    history: list[tuple[int, float]] = field(default_factory=list)
    """(evaluations so far, best score) at each improvement."""


Scorer = Callable[[list[str]], tuple[list[float], list[dict[str, float]]]]


def search(scorer: Scorer, values: Sequence[dict[str, str]], pools: Pools, budget: int, rng: random.Random,
           population: int = 40, progress: Callable[[int, float], None] | None = None) -> Found:
    """The best template found in ``budget`` evaluations (each: one template over every sampled prompt)."""
    cache: dict[tuple[str, ...], tuple[float, int, dict[str, float]]] = {}
    evals = 0
    history: list[tuple[int, float]] = []
    best: tuple[float, int] = (-1.0, 0)

    def fitness(t: tuple[str, ...]) -> tuple[float, int]:
        nonlocal evals, best
        hit = cache.get(t)
        if hit is None:
            texts = [render(t, v) for v in values]
            scores, comps = scorer(texts)
            mean = sum(scores) / len(scores)
            keys = sorted({k for c in comps for k in c})
            cm = {k: round(sum(c.get(k, 0.0) for c in comps) / len(comps), 4) for k in keys}
            hit = cache[t] = (round(mean, 6), -sum(map(len, texts)) // max(1, len(texts)), cm)
            evals += 1
            if hit[:2] > best:
                best = hit[:2]
                history.append((evals, hit[0]))
            if progress:
                progress(evals, best[0])
        return hit[:2]

    starts = [(w,) for w in rng.sample(pools.whole, min(len(pools.whole), population // 2))]
    while len(starts) < population:
        starts.append(tuple(pools.part(rng) for _ in range(rng.randint(1, 6))))
    pop = list(dict.fromkeys(starts))[:max(2, min(population, budget))]
    scored = [(fitness(t), t) for t in pop]
    attempts = 0
    while evals < budget and attempts < 20 * budget:
        attempts += 1
        a = max(rng.sample(scored, min(3, len(scored))))[1]
        b = max(rng.sample(scored, min(3, len(scored))))[1]
        child = crossover(a, b, rng) if rng.random() < 0.3 else a
        for _ in range(1 + (rng.random() < 0.5) + (rng.random() < 0.25)):
            child = mutate(child, pools, rng)
        if not child or child in cache:
            continue
        f = fitness(child)
        worst = min(range(len(scored)), key=lambda i: scored[i][0])
        if f > scored[worst][0]:
            scored[worst] = (f, child)
    top = max(scored)[1]
    return Found(top, cache[top][0], cache[top][2], evals, history)
