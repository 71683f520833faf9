"""push reward: customer and order context to a PT-BR push notification of at most 120 characters.

Components (weights from ``RewardsConfig.push``, normalised to sum 1):

- ``length`` (0.35): 1 for 20-120 characters (linear below 20), 0 above 120;
- ``portuguese`` (0.2): :func:`rewards.common.pt_score`;
- ``mentions_product`` (0.25): 1 when the product name or the category label appears (accents and
  case ignored), 0.7 for one of their words (4+ letters); the context comes from the ``context``
  column (dict or JSON string; keys ``produto``, ``categoria_label``, ``categoria``) or from the
  prompt's ``Produto: ... (categoria: ...)`` line. Without either, the component is dropped;
- ``tone`` (0.2): informal, engaging cues (você/vc, seu/sua, pra, "!", emoji, "bora", "aproveite",
  "confira", ...) up, formal ones (prezado, senhor(a), informamos, atenciosamente, ...) down.

Over length is penalised heavily: past 120 characters, on top of ``length`` = 0, the whole reward
is multiplied by ``0.5 * (120 / n) ** 2`` (half at 121 characters, an eighth at 240, 3% at 480).
The multiplier never reaches 0, so among completions that are all too long the shorter still scores
higher: a group of over-long pushes keeps a gradient towards the limit (a multiplier that hit 0 at 240
characters gave such a group the same 0 everywhere, and nothing to learn from). A valid notification
still outscores any over-long one (at most half of the reward). A leading label (``Notificação:``,
``Push:``) and surrounding quotes are not counted.

How it departs from the user's earlier reward (length, Portuguese, creativity, minus formality):
"creativity" is replaced by ``mentions_product`` (a checkable, context-grounded property), and the
length limit became a hard multiplier instead of one component among four, so a long,
Portuguese, friendly text can no longer outscore a valid notification.
"""

from __future__ import annotations

import re
from typing import Any

from .common import as_dict, combine, fold, pt_score

COMPONENTS = {"length": 0.35, "portuguese": 0.2, "mentions_product": 0.25, "tone": 0.2}
MAX_CHARS = 120

_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:notifica[cç][aã]o(?:\s+push)?|push|mensagem|texto)\s*(?:\*\*)?\s*[:\-–]\s*",
                    re.I)
_INFORMAL = re.compile(r"\b(?:voce|vc|seu|sua|teu|tua|pra|pro|ta|oi|ola|ei|e ai|bora|corre|aproveit\w*|confir\w*|"
                       r"vem|vamos|garant\w*|curtiu|oba|uau|olha|partiu|demais|incrivel|especial|so hoje|"
                       r"a gente|te|fala|chama|"
                       r"foi mal|poxa|opa|ja ja|rapidinho|conta|tem)\b")
_FORMAL = re.compile(r"\b(?:prezad[oa]s?|senhor(?:a|es)?|sr|sra|informamos|comunicamos|cordialmente|"
                     r"atenciosamente|vossa|solicitamos|venho por meio|caro cliente|estimad[oa]|"
                     r"gostariamos de informar|agradecemos a preferencia)\b")
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\u2b50\u2705]")
_PROMPT_PRODUCT = re.compile(r"Produto:\s*(.+?)\s*\(categoria:\s*(.+?)\)")
_WORD4 = re.compile(r"[a-z]{4,}")
_GENERIC = {"para", "jogo", "acessorios", "produto", "produtos", "stuff", "cool", "geral", "interesse"}


def clean_push(text: str) -> str:
    """The notification text: stripped, without a leading label or surrounding quotes.

    >>> clean_push('Notificação: "Seu pedido chegou! 🎉"')
    'Seu pedido chegou! 🎉'
    """
    t = _LABEL.sub("", text.strip(), count=1).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'“”":
        t = t[1:-1].strip()
    if len(t) >= 2 and t[0] == "“" and t[-1] == "”":
        t = t[1:-1].strip()
    return t


def _terms(context: Any, prompt: str) -> tuple[list[str], list[str]] | None:
    ctx = as_dict(context)
    full: list[str] = []
    if ctx:
        full = [str(ctx[k]) for k in ("produto", "categoria_label", "categoria") if ctx.get(k)]
    elif prompt:
        m = _PROMPT_PRODUCT.search(prompt)
        if m:
            full = [m.group(1), m.group(2)]
    if not full:
        return None
    full = [fold(x).replace("_", " ") for x in full]
    words = sorted({w for x in full for w in _WORD4.findall(x)} - _GENERIC)
    return full, words


def mentions_score(text: str, context: Any = None, prompt: str = "") -> float | None:
    """1 for the product or category, 0.7 for one of their words, 0 otherwise; None without context.

    >>> mentions_score("Sua toalha de banho chegou!",
    ...                {"produto": "toalha de banho", "categoria_label": "cama, mesa e banho"})
    1.0
    >>> mentions_score("Seu pedido chegou!", {"produto": "toalha de banho"})
    0.0
    """
    terms = _terms(context, prompt)
    if terms is None:
        return None
    full, words = terms
    t = fold(text).replace("_", " ")
    if any(x and x in t for x in full):
        return 1.0
    found = set(_WORD4.findall(t))
    return 0.7 if any(w in found for w in words) else 0.0


def tone_score(text: str) -> float:
    """Informal and engaging (up) versus formal (down), in [0, 1].

    >>> tone_score("Oi! Seu pedido tá chegando, aproveita 😉")
    1.0
    >>> tone_score("Prezado senhor, informamos que seu pedido foi enviado. Atenciosamente.")
    0.0
    """
    t = fold(text)
    informal = len(_INFORMAL.findall(t)) + (1 if "!" in text else 0) + (1 if "?" in text else 0)
    formal = len(_FORMAL.findall(t))
    emoji = 1 if _EMOJI.search(text) else 0
    return round(max(0.0, min(1.0, 0.3 + 0.2 * min(3, informal) + 0.1 * emoji - 0.4 * formal)), 4)


def push_parts(text: str, context: Any = None, prompt: str = "") -> tuple[dict[str, float | None], float]:
    """(component scores, over-length multiplier) of one completion."""
    t = clean_push(text[:20000])
    n = len(t)
    length = 0.0 if n == 0 or n > MAX_CHARS else min(1.0, n / 20)
    mult = 1.0 if n <= MAX_CHARS else 0.5 * (MAX_CHARS / n) ** 2
    parts = {"length": length, "portuguese": pt_score(t), "mentions_product": mentions_score(t, context, prompt),
             "tone": tone_score(t) if t else 0.0}
    return parts, mult


def push_reward(text: str, context: Any = None, prompt: str = "", weights: dict[str, float] | None = None) -> float:
    """The push reward of one completion, in [0, 1].

    >>> ctx = {"produto": "jogo de lençol", "categoria_label": "cama, mesa e banho"}
    >>> push_reward("Oba! Seu jogo de lençol já está a caminho 🚚 Acompanhe pelo app!", ctx)
    1.0
    >>> push_reward("Oba! Seu jogo de lençol já está a caminho! " * 4, ctx) < 0.3
    True
    >>> 0 < push_reward("Oba! Seu jogo de lençol já está a caminho! " * 12, ctx) < push_reward(
    ...     "Oba! Seu jogo de lençol já está a caminho! " * 6, ctx) < 0.1
    True
    """
    parts, mult = push_parts(text, context, prompt)
    return round(mult * combine(weights or COMPONENTS, parts), 6)
