"""insights pairs: facts computed from ``orders_enriched`` and 3 to 5 strategic PT-BR bullets.

A pair's facts describe one slice of the orders (everything, a category, a state, a payment
type, a month, a category in a state) with the focus on negative reviews: counts, rates, the
top complaint categories among negatives, where negatives concentrate. Past the default number of
slices (``--insights N`` with a large N, the handoff's Scenario C), pairs come from random samples
of negative-sentiment orders (``orders_enriched WHERE sentiment = 'negative'``). The reference
answer only cites numbers from the facts, which is what the insights reward checks.
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter

from . import vocab
from .text import fmt_num

COLS = ("customer_state", "product_category_name", "payment_type", "purchase_month", "order_status", "is_late",
        "review_score", "sentiment", "complaint_category")


def load_rows(con: sqlite3.Connection) -> list[tuple]:
    return con.execute(f"SELECT {', '.join(COLS)} FROM orders_enriched ORDER BY order_id").fetchall()


def _pct(a: int, b: int) -> float | None:
    return round(100.0 * a / b, 1) if b else None


def compute_facts(rows: list[tuple], scope: str, kind: str) -> dict | None:
    """Facts of one slice; None when it has too few negative reviews to say anything."""
    neg = [r for r in rows if r[7] == "negative"]
    if len(neg) < 5:
        return None
    facts: dict = {"recorte": scope, "pedidos": len(rows)}
    if kind != "negative_sample":
        facts["avaliacoes_negativas"] = len(neg)
        facts["pct_negativas"] = _pct(len(neg), len(rows))
    facts["nota_media"] = round(sum(r[6] for r in rows) / len(rows), 2)
    delivered = [r for r in rows if r[5] is not None]
    late = [r for r in delivered if r[5] == 1]
    if delivered:
        facts["pct_atraso"] = _pct(len(late), len(delivered))
    if late:
        facts["nota_media_atrasados"] = round(sum(r[6] for r in late) / len(late), 2)
    if kind != "negative_sample":
        neg_delivered = [r for r in neg if r[5] is not None]
        if neg_delivered:
            facts["pct_atraso_negativas"] = _pct(sum(r[5] for r in neg_delivered), len(neg_delivered))
    complaints = Counter(r[8] for r in neg if r[8] != vocab.NO_COMPLAINT)
    facts["principais_reclamacoes"] = [[vocab.COMPLAINT_PT.get(c, c), _pct(n, len(neg))]
                                       for c, n in sorted(complaints.items(), key=lambda x: (-x[1], x[0]))[:3]]
    if kind not in ("state", "category_state"):
        states = Counter(r[0] for r in neg)
        facts["estados_mais_negativas"] = [[s, n] for s, n in sorted(states.items(), key=lambda x: (-x[1], x[0]))[:3]]
    if kind not in ("category", "category_state"):
        cats = Counter(r[1] for r in neg)
        facts["categorias_mais_negativas"] = [[c, n] for c, n in sorted(cats.items(), key=lambda x: (-x[1], x[0]))[:3]]
    return facts


def render_facts(f: dict) -> str:
    """The facts as the PT-BR bullet list shown in the prompt."""
    lines = [f"Recorte: {f['recorte']}", f"- Pedidos: {fmt_num(f['pedidos'])}"]
    if "avaliacoes_negativas" in f:
        lines.append(f"- Avaliações negativas: {fmt_num(f['avaliacoes_negativas'])} "
                     f"({fmt_num(f['pct_negativas'])}% dos pedidos)")
    score = f"- Nota média: {fmt_num(f['nota_media'], 2)}"
    if "nota_media_atrasados" in f:
        score += f"; nos pedidos atrasados: {fmt_num(f['nota_media_atrasados'], 2)}"
    lines.append(score)
    if "pct_atraso" in f:
        late = f"- Taxa de atraso: {fmt_num(f['pct_atraso'])}% dos entregues"
        if "pct_atraso_negativas" in f:
            late += f"; {fmt_num(f['pct_atraso_negativas'])}% entre os de avaliação negativa"
        lines.append(late)
    if f["principais_reclamacoes"]:
        lines.append("- Principais reclamações nas negativas: "
                     + ", ".join(f"{c} ({fmt_num(p)}%)" for c, p in f["principais_reclamacoes"]))
    if f.get("estados_mais_negativas"):
        lines.append("- Estados com mais negativas: "
                     + ", ".join(f"{s} ({fmt_num(n)})" for s, n in f["estados_mais_negativas"]))
    if f.get("categorias_mais_negativas"):
        lines.append("- Categorias com mais negativas: "
                     + ", ".join(f"{c} ({fmt_num(n)})" for c, n in f["categorias_mais_negativas"]))
    return "\n".join(lines)


def _bullets(rng: random.Random, f: dict) -> list[str]:
    n = fmt_num
    out = []
    if "pct_atraso_negativas" in f and "pct_atraso" in f:
        verb = rng.choice(("Priorizar a pontualidade das entregas", "Melhorar o controle dos prazos de entrega",
                           "Garantir entregas no prazo"))
        out.append(f"{verb}: {n(f['pct_atraso_negativas'])}% das avaliações negativas vêm de pedidos atrasados, "
                   f"contra {n(f['pct_atraso'])}% de atraso geral.")
    elif "pct_atraso" in f:
        out.append(f"Acompanhar a taxa de atraso de {n(f['pct_atraso'])}% com alertas semanais por transportadora.")
    rec = f["principais_reclamacoes"]
    if rec:
        verb = rng.choice(("Reduzir", "Atacar", "Diminuir"))
        out.append(f"{verb} os casos de {rec[0][0]}, a principal reclamação ({n(rec[0][1])}% das negativas), "
                   "com ações junto a vendedores e transportadoras.")
    if len(rec) > 1:
        verb = rng.choice(("Revisar", "Auditar", "Padronizar"))
        out.append(f"{verb} o processo ligado a {rec[1][0]} ({n(rec[1][1])}% das negativas) "
                   "e medir a evolução mês a mês.")
    if "nota_media_atrasados" in f:
        out.append(f"Monitorar a nota média ({n(f['nota_media'], 2)}), que cai para "
                   f"{n(f['nota_media_atrasados'], 2)} nos pedidos atrasados.")
    if f.get("estados_mais_negativas"):
        s, k = f["estados_mais_negativas"][0]
        verb = rng.choice(("Investir em logística regional em", "Reforçar a operação em"))
        out.append(f"{verb} {s}, estado com mais avaliações negativas ({n(k)}).")
    if f.get("categorias_mais_negativas"):
        c, k = f["categorias_mais_negativas"][0]
        verb = rng.choice(("Renegociar com os fornecedores de", "Revisar a curadoria de"))
        out.append(f"{verb} {c}, a categoria com mais avaliações negativas ({n(k)}).")
    if "avaliacoes_negativas" in f:
        out.append(f"Criar um contato proativo com os {n(f['avaliacoes_negativas'])} clientes insatisfeitos "
                   f"({n(f['pct_negativas'])}% dos pedidos), com cupom e solução rápida.")
    return out


def answer_for(rng: random.Random, f: dict) -> str:
    """3 to 5 bullets, each opening with an action verb, citing only the facts' numbers."""
    bullets = _bullets(rng, f)
    first, rest = bullets[:2], bullets[2:]
    rng.shuffle(rest)
    k = rng.randint(3, min(5, len(bullets))) if len(bullets) >= 3 else len(bullets)
    return "\n".join(f"- {b}" for b in (first + rest)[:k])


def _slices(rows: list[tuple]) -> list[tuple[str, str, list[tuple]]]:
    by: dict[tuple[str, str], list[tuple]] = {}
    for r in rows:
        by.setdefault(("category", r[1]), []).append(r)
        by.setdefault(("state", r[0]), []).append(r)
        by.setdefault(("payment", r[2]), []).append(r)
        by.setdefault(("month", r[3]), []).append(r)
        by.setdefault(("category_state", f"{r[1]}|{r[0]}"), []).append(r)
    label = {"category": "pedidos da categoria {}", "state": "pedidos de clientes de {}",
             "payment": "pedidos pagos com {}", "month": "pedidos feitos em {}",
             "category_state": "pedidos de {} em {}"}
    out = [("todos os pedidos", "all", rows)]
    for (kind, key), rs in sorted(by.items()):
        if len(rs) < 60:
            continue
        if kind == "payment":
            key = vocab.PAYMENT_PT.get(key, key)
        out.append((label[kind].format(*key.split("|")), kind, rs))
    return out


def insights_items(con: sqlite3.Connection, rng: random.Random, n: int, n_slices: int) -> list[dict]:
    """``n`` insights items: up to ``n_slices`` slice-based ones, the rest from negative-order samples."""
    rows = load_rows(con)
    slices = _slices(rows)
    rng.shuffle(slices)
    items = []
    for scope, kind, rs in slices:
        if len(items) >= min(n, n_slices):
            break
        facts = compute_facts(rs, scope, kind)
        if facts is not None:
            items.append({"facts": facts, "answer": answer_for(rng, facts)})
    negatives = [r for r in rows if r[7] == "negative"]
    i = 0
    while len(items) < n and len(negatives) >= 5:
        i += 1
        k = min(len(negatives), rng.randint(30, 120))
        sample = rng.sample(negatives, k)
        facts = compute_facts(sample, f"amostra {i} de {k} pedidos com avaliação negativa", "negative_sample")
        if facts is not None:
            items.append({"facts": facts, "answer": answer_for(rng, facts)})
    return items
