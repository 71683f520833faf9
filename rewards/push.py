"""push reward: customer and order context to a PT-BR push notification of at most 120 characters.

Components (weights from ``rewards.push.weights``, normalised to sum 1):

- ``situation`` (0.5): the notification fits the order's situation (the context's ``situacao``, or the
  prompt's ``Situação:`` line): one of its cues (a caminho/saiu/chega; confirmado/aprovado; cancelado;
  atraso/demora/desculpa; novidade/curtiu; oferta/promo/off; avalie/achou/conta pra gente; resolver/problema)
  earns 1, less ``salad_penalty`` (1.0) for each *other* situation cued: a notification that also names another
  situation (a salad of every situation's words, "a caminho ou cancelado?", a contradiction) earns nothing here.
  Cues inside the product, category or city names do not count. Without a known situation the component is
  dropped;
- ``length`` (0.25): 1 for 20-``max_chars`` characters (linear below 20), 0 above;
- ``tone`` (0.25): informal, engaging cues (você/vc, seu/sua, pra, "!", emoji, "bora", "aproveite",
  "confira", ...) up, formal ones (prezado, senhor(a), informamos, atenciosamente, ...) down.

Then four gates multiply the whole (each ``floor + (1 - floor) * value``; logged as components too):

- ``situation`` (floor ``situation_floor`` 0.2): the same score as a gate. A notification that does not say
  this order's situation (none, another, several) is not worth its tone and length: without the gate a
  friendly, short one that names the product earned 0.5 whatever it said, so one template that always says
  "cancelado" earned 0.5 plus half the share of cancelled orders (0.70 on the default eval pairs: the
  situations are unbalanced). With it that template earns the share of its situation plus 0.1 of the rest;

- ``mentions_product`` (floor ``product_floor`` 0.4): 1 when the product name or the category label appears
  (accents and case ignored), 0.7 for one of their words (4+ letters); the context comes from the ``context``
  column (dict or JSON string; keys ``produto``, ``categoria_label``, ``categoria``) or from the prompt's
  ``Produto: ... (categoria: ...)`` line. Without either, no gate;
- ``portuguese`` (floor ``portuguese_floor`` 0.3): :func:`rewards.common.pt_score`, full at ``portuguese_full``
  (0.6);
- ``novelty`` (floor ``novelty_floor`` 0.3): the share of the notification's words (4+ letters) that are not in
  the prompt, full at ``novelty_full`` (0.4): the prompt's lines copied back are not a notification.

Over length: past ``max_chars`` the reward is also multiplied by ``over_length_scale * (max_chars / n) **
over_length_power`` (0.5 and 2: half at 121 characters, an eighth at 240). It never reaches 0, so among
completions that are all too long the shorter still scores higher (a group keeps a gradient towards the limit).
A leading label (``Notificação:``, ``Push:``) and surrounding quotes are not counted.

Robustness (tests/unit/test_reward_attacks.py): one generic offer for every prompt earns about 0.1 (it was 0.75),
the product name alone, the prompt copied, English, a salad of every situation's words, one situation's
notification for every prompt and text padded past the limit all stay under half of what the reference
notifications earn; ``python -m rewards.redteam --task push`` searches for a better template and finds none
over 0.5 (README "Rewards").

How it departs from the user's earlier reward (length, Portuguese, creativity, minus formality):
"creativity" is replaced by checkable, context-grounded properties (the product, the situation, words of its
own), and the length limit became a hard multiplier instead of one component among four, so a long,
Portuguese, friendly text can no longer outscore a valid notification.
"""

from __future__ import annotations

import re
from typing import Any

from .common import as_dict, combine, fold, pt_score

COMPONENTS = {"situation": 0.5, "length": 0.25, "tone": 0.25}
GATES = ("situation", "mentions_product", "portuguese", "novelty")
SHAPING = {"max_chars": 120, "product_floor": 0.4, "portuguese_floor": 0.3, "portuguese_full": 0.6,
           "novelty_floor": 0.3, "novelty_full": 0.4, "salad_penalty": 1.0, "situation_floor": 0.2,
           "over_length_scale": 0.5, "over_length_power": 2.0}
"""Defaults of the knobs (``rewards.push`` in the run config passes every one of them explicitly)."""
MAX_CHARS = SHAPING["max_chars"]
SITUATION_CUES = {
    "entrega_a_caminho": r"a caminho|chegando|chega|saiu|estrada|despachad\w*|enviad\w*|rota",
    "pedido_confirmado": r"confirmad\w*|aprovad\w*|prepar\w*|pagamento",
    "pedido_cancelado": r"cancel\w*",
    "desculpas_atraso": r"atras\w*|demora\w*|desculp\w*|foi mal|perdao",
    "recompra": r"novidades?|mimo|mais um|de novo|volt[ae]\w*",
    "oferta_categoria": r"ofertas?|promo\w*|descontos?|off|relampago|liquida\w*",
    "avaliacao": r"avali\w*|achou|conta pra gente|opiniao|estrelas?|⭐",
    "recuperacao": r"resolv\w*|problema|agradou|chama a gente|fala com a gente|suporte",
}
"""The cues of each situation of the synthetic pairs (``commerce.pairs.PUSH_SITUATIONS``), accents folded."""
_CUES = {k: re.compile(rf"(?<![a-z0-9])(?:{v})(?![a-z0-9])") for k, v in SITUATION_CUES.items()}

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
_PROMPT_CITY = re.compile(r"Cliente:\s*([^/\n]+?)\s*/")
_PROMPT_SITUATION = re.compile(r"Situa[cç][aã]o:\s*(.+)")


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


def _situation_key(context: Any, prompt: str) -> str | None:
    ctx = as_dict(context)
    key = ctx.get("situacao") if ctx else None
    if isinstance(key, str) and key in _CUES:
        return key
    m = _PROMPT_SITUATION.search(prompt or "")
    if m:
        from commerce.pairs import PUSH_SITUATIONS

        line = m.group(1).strip()
        return next((k for k, v in PUSH_SITUATIONS.items() if v == line), None)
    return None


def _names(context: Any, prompt: str) -> tuple[str, ...]:
    """The product, category and city of the order (context or prompt): words that are not the notification's."""
    terms = _terms(context, prompt)
    ctx = as_dict(context) or {}
    city = ctx.get("cidade") or next(iter(_PROMPT_CITY.findall(prompt or "")), None)
    return tuple(terms[0] if terms else ()) + ((str(city),) if city else ())


def situation_score(text: str, key: str | None, salad_penalty: float = SHAPING["salad_penalty"],
                    names: tuple[str, ...] = ()) -> float | None:
    """1 when the text cues its situation, less ``salad_penalty`` per other situation cued; None without one.
    ``names`` (the product, category and city) are taken out first: "kit de volta às aulas" cues nothing.

    >>> situation_score("Desculpa a demora com a colônia 😔", "desculpas_atraso")
    1.0
    >>> situation_score("Confirmado, a caminho, desculpa o atraso, avalie!", "desculpas_atraso")
    0.0
    >>> situation_score("Sua colônia: a caminho ou cancelado?", "entrega_a_caminho", salad_penalty=0.25)
    0.75
    """
    if key is None:
        return None
    t = fold(text)
    for name in sorted({fold(x) for x in names if x}, key=len, reverse=True):
        t = t.replace(name, " ")
    if not _CUES[key].search(t):
        return 0.0
    others = sum(1 for k, rx in _CUES.items() if k != key and rx.search(t))
    return max(0.0, 1.0 - salad_penalty * others)


def novelty_score(text: str, prompt: str) -> float:
    """The share of the text's words (4+ letters, accents folded) that the prompt does not have.

    >>> novelty_score("Cliente Rio de Janeiro, produto colônia", "Cliente: Rio de Janeiro/RJ Produto: colônia")
    0.0
    """
    words = _WORD4.findall(fold(text))
    if not words:
        return 0.0
    known = set(_WORD4.findall(fold(prompt or "")))
    return round(sum(w not in known for w in words) / len(words), 4)


def _gate(value: float | None, floor: float, full: float = 1.0) -> float:
    return 1.0 if value is None else floor + (1.0 - floor) * min(1.0, value / full)


def push_parts(text: str, context: Any = None, prompt: str = "", shaping: dict | None = None
               ) -> tuple[dict[str, float | None], float]:
    """(component scores, the gates' and the over-length multiplier) of one completion."""
    sh = shaping or SHAPING
    t = clean_push(text[:20000])
    n, cap = len(t), sh["max_chars"]
    length = 0.0 if n == 0 or n > cap else min(1.0, n / 20)
    mult = 1.0 if n <= cap else sh["over_length_scale"] * (cap / n) ** sh["over_length_power"]
    ctx_prompt = prompt or ""
    if not ctx_prompt:
        ctx = as_dict(context) or {}
        ctx_prompt = " ".join(str(v) for v in ctx.values())
    parts = {"situation": situation_score(t, _situation_key(context, prompt), sh["salad_penalty"],
                                          _names(context, prompt)),
             "length": length, "tone": tone_score(t) if t else 0.0,
             "mentions_product": mentions_score(t, context, prompt), "portuguese": pt_score(t),
             "novelty": novelty_score(t, ctx_prompt)}
    mult *= _gate(parts["situation"], sh["situation_floor"])
    mult *= _gate(parts["mentions_product"], sh["product_floor"])
    mult *= _gate(parts["portuguese"], sh["portuguese_floor"], sh["portuguese_full"])
    mult *= _gate(parts["novelty"], sh["novelty_floor"], sh["novelty_full"])
    return parts, mult


def push_reward(text: str, context: Any = None, prompt: str = "", weights: dict[str, float] | None = None,
                shaping: dict | None = None) -> float:
    """The push reward of one completion, in [0, 1].

    >>> ctx = {"produto": "jogo de lençol", "categoria_label": "cama, mesa e banho", "situacao": "entrega_a_caminho"}
    >>> push_reward("Oba! Seu jogo de lençol já está a caminho 🚚 Acompanhe pelo app!", ctx)
    1.0
    >>> push_reward("Aproveite as ofertas de hoje no app!", ctx) < 0.3
    True
    >>> push_reward("Oba! Seu jogo de lençol já está a caminho! " * 4, ctx) < 0.3
    True
    >>> 0 < push_reward("Oba! Seu jogo de lençol já está a caminho! " * 12, ctx) < push_reward(
    ...     "Oba! Seu jogo de lençol já está a caminho! " * 6, ctx) < 0.1
    True
    """
    parts, mult = push_parts(text, context, prompt, shaping)
    return round(mult * combine(weights or COMPONENTS, parts), 6)
