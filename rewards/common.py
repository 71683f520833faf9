"""Helpers shared by the rewards: completion text, PT-BR detection, numbers in prose, weights, logging.

Everything here is pure Python and total: every function accepts garbage (None, ints, nested
lists, huge strings) without raising.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from commerce.classify import completion_text, fold  # noqa: F401 - re-exported: the rewards' own names

from .jsonx import extract_json

log = logging.getLogger("rewards")
_LOGGED: set[tuple[str, str]] = set()

MAX_CHARS = 20000  # scorers look at most at this many characters of a completion

PT_WORDS = frozenset("""
a o os as de da do das dos e é em no na nos nas num numa um uma uns umas para pra pro por com que não nao
se seu sua seus suas você voce vc vcs mais muito muita muitos muitas já ja foi está esta estão estao são sao
ao aos à às mas como também tambem pelo pela pelos pelas isso esse essa este esta aqui agora sem quando onde ou
nosso nossa te eu meu minha ele ela eles elas tem têm ter ser vai vamos pode bem só so até ate ainda entre
sobre depois antes cada todos todas tudo nada seja são sua pedido pedidos entrega cliente clientes produto
""".split())
EN_WORDS = frozenset("""
the and of to in is are you your for with this that it on be as at by from or an not we our have has was were
will can all more new now get just out up about what which when there their they them been would should could
""".split())
ES_WORDS = frozenset("el los las y muy pero usted ustedes gracias hola del al su sus con envío envio pedimos "
                     "nuestro nuestra también tambien".split()) - PT_WORDS
_WORD = re.compile(r"[a-zà-öø-ÿ]+")
_NUMBER = re.compile(r"(?<![\w])[-+]?\d+(?:[.,]\d+)*")


def prompt_text(p: Any) -> str:
    """The user text of a prompt (a string or a list of chat messages)."""
    if isinstance(p, (list, tuple)) and any(isinstance(m, Mapping) for m in p):
        users = [m for m in p if isinstance(m, Mapping) and m.get("role") == "user"]
        return "\n".join(completion_text(m.get("content")) for m in users)
    return completion_text(p)


def as_dict(v: Any) -> dict | None:
    """A reference column value as a dict: dicts pass, JSON strings are parsed, anything else is None."""
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, str) and v.strip():
        try:
            out = json.loads(v)
        except ValueError:
            out = extract_json(v)
        return out if isinstance(out, dict) else None
    return None


def pt_score(text: str) -> float:
    """How much a text reads as PT-BR, in [0, 1]: share of Portuguese function words among function
    words of PT/EN/ES, times their density (full at 12% of the words).

    >>> pt_score("Seu pedido já está a caminho, aproveite!") == 1.0
    True
    >>> pt_score("Your order is on the way, enjoy it!")
    0.0
    """
    words = _WORD.findall(text[:MAX_CHARS].lower())
    if not words:
        return 0.0
    pt = len([w for w in words if w in PT_WORDS])
    foreign = len([w for w in words if w in EN_WORDS or w in ES_WORDS])
    if pt == 0:
        return 0.0
    share = pt / (pt + foreign)
    density = min(1.0, pt / len(words) / 0.12)
    return round(share * density, 4)


def _interpretations(tok: str) -> set[float]:
    sign = -1.0 if tok.startswith("-") else 1.0
    t = tok.lstrip("+-")
    out: set[float] = set()
    try:
        if "." in t and "," in t:
            dec = max(t.rfind("."), t.rfind(","))
            out.add(float(re.sub(r"[.,]", "", t[:dec]) + "." + t[dec + 1:]))
        elif t.count(",") == 1 or t.count(".") == 1:
            head, tail = re.split(r"[.,]", t)
            out.add(float(head + "." + tail))
            if len(tail) == 3:
                out.add(float(head + tail))
        elif "," in t or "." in t:
            out.add(float(re.sub(r"[.,]", "", t)))
        else:
            out.add(float(t))
    except ValueError:
        return set()
    return {sign * x for x in out}


def numbers_in(text: str) -> list[set[float]]:
    """Numbers cited in PT-BR or English prose, each as the set of its plausible readings.

    >>> [sorted(r) for r in numbers_in("18,2% de 1.234 pedidos; nota 4.5")]
    [[18.2], [1.234, 1234.0], [4.5]]
    """
    return [r for r in (_interpretations(m.group()) for m in _NUMBER.finditer(text[:MAX_CHARS])) if r]


def walk_numbers(obj: Any, out: set[float] | None = None, depth: int = 0) -> set[float]:
    """Every number in a JSON-like value (and numbers written inside its strings)."""
    out = set() if out is None else out
    if depth > 50:
        return out
    if isinstance(obj, bool):
        return out
    if isinstance(obj, (int, float)):
        out.add(float(obj))
    elif isinstance(obj, str):
        for r in numbers_in(obj):
            out |= r
    elif isinstance(obj, Mapping):
        for v in obj.values():
            walk_numbers(v, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            walk_numbers(v, out, depth + 1)
    return out


def normalise_weights(task: str, defaults: Mapping[str, float], given: Mapping[str, float] | None) -> dict[str, float]:
    """Merge ``given`` over ``defaults`` and scale to sum 1; unknown names or bad values raise ValueError.

    >>> normalise_weights("push", {"a": 1.0, "b": 3.0}, {"a": 1.0})
    {'a': 0.25, 'b': 0.75}
    """
    weights = dict(defaults)
    if given:
        if not isinstance(given, Mapping):
            raise ValueError(f"rewards: weights for {task} must be a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"rewards: unknown {task} reward component(s) {', '.join(unknown)}; "
                             f"known: {', '.join(defaults)}")
        for k, v in given.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or v != v:
                raise ValueError(f"rewards: weight {task}.{k} must be a number >= 0, got {v!r}")
            weights[k] = float(v)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"rewards: the {task} weights sum to 0")
    return {k: v / total for k, v in weights.items()}


def combine(weights: Mapping[str, float], parts: Mapping[str, float | None]) -> float:
    """Weighted sum of the applicable components (None = not applicable; the rest is renormalised)."""
    num = den = 0.0
    for k, w in weights.items():
        v = parts.get(k)
        if v is None:
            continue
        num += w * min(1.0, max(0.0, float(v)))
        den += w
    return num / den if den > 0 else 0.0


def log_failure(task: str, exc: BaseException) -> None:
    """Log an internal scoring failure once per (task, cause)."""
    key = (task, f"{type(exc).__name__}: {str(exc)[:120]}")
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning("rewards: %s scoring failed (%s); the completion scores 0", task, key[1])
