"""Prompt/reference pairs for the four tasks, in TRL's conversational format.

Every line of ``pairs/{train,eval}.jsonl`` is one JSON object with the same keys:

- ``id`` (``"<task>-<n>"``), ``task`` (extraction | sql_qa | insights | push);
- ``prompt``: ``[{"role": "system", ...}, {"role": "user", ...}]`` in PT-BR;
- ``answer``: a reference assistant completion (SFT warm-up, demo);
- ``reference`` (extraction: the 10-field record), ``reference_sql`` (sql_qa), ``facts`` (insights),
  ``context`` (push). ``reference``, ``facts`` and ``context`` are JSON *strings* (null for other
  tasks), so every line has the same column types and ``datasets.load_dataset("json")`` loads the
  file; the rewards accept them as strings or dicts.

The extraction record (all 10 fields are required):
``sentiment`` positive|neutral|negative; ``sentiment_score`` 0..5 in steps of 0.5 (stars, minus 0.5
when a positive review carries a complaint, 2.5 for a neutral one with a complaint);
``churn_risk`` low|medium|high; ``complaint_category`` one of the 8 themes or ``nenhuma``;
``delivery_issue`` bool (atraso_entrega, extravio, nao_recebido); ``product_issue`` bool
(produto_errado, defeito, avaria, item_faltante); ``recommends`` bool (4-5 stars); ``urgency``
low|medium|high; ``product_category`` (Olist category name, given in the prompt); ``summary`` (a
short PT-BR sentence).

Each task is split 85/15 into train/eval on its own (stratified), after de-duplicating prompts, so
no prompt is in both files. A task whose 15% is under :data:`EVAL_MIN` prompts (insights and push: 26 of 174) gets
more eval prompts drawn on top (:func:`top_up_eval`), so its train pairs keep the handoff's count.
"""

from __future__ import annotations

import json
import random
import sqlite3

from . import vocab
from .db import product_noun
from .insights import insights_items, render_facts
from .schema import ENRICHED_DOC, TASKS
from .sqlgen import pretty, sql_pairs
from .text import article

DEFAULT_COUNTS = {"extraction": 694, "sql_qa": 694, "insights": 174, "push": 174}
EVAL_SHARE = 0.15
EVAL_MIN = 100
"""Eval prompts per task at least. With 26 push prompts the eval's noise (2 s.e. of a change) was 0.035-0.046, as
large as the change a run makes; with 100 it is about half."""

SYSTEM = {
    "extraction": "Você é um assistente que analisa avaliações de clientes de um e-commerce brasileiro. "
                  "Responda apenas com um objeto JSON válido.",
    "sql_qa": "Você é um analista de dados que escreve consultas SQLite para um e-commerce brasileiro. "
              "Responda com a consulta em um bloco ```sql e uma linha de explicação.",
    "insights": "Você é um consultor de estratégia de e-commerce. Escreva insights objetivos e acionáveis "
                "em português.",
    "push": "Você é redator de CRM de um e-commerce brasileiro. Escreva notificações push curtas, "
            "informais e envolventes.",
}

EXTRACTION_FIELDS = ("sentiment", "sentiment_score", "churn_risk", "complaint_category", "delivery_issue",
                     "product_issue", "recommends", "urgency", "product_category", "summary")
EXTRACTION_INSTRUCTIONS = (
    "Extraia as informações da avaliação abaixo e responda apenas com um objeto JSON com os campos: "
    "sentiment (\"positive\", \"neutral\" ou \"negative\"), sentiment_score (0 a 5), "
    "churn_risk (\"low\", \"medium\" ou \"high\"), complaint_category (" + ", ".join(vocab.COMPLAINTS)
    + " ou nenhuma), delivery_issue (true/false), product_issue (true/false), recommends (true/false), "
    "urgency (\"low\", \"medium\" ou \"high\"), product_category e summary (resumo curto em português).")

ENRICHED_COLS = ("order_id", "order_status", "customer_city", "customer_state", "product_id",
                 "product_category_name", "is_late", "review_score", "review_comment_title",
                 "review_comment_message", "sentiment", "complaint_category")

DELIVERY = {"atraso_entrega", "extravio", "nao_recebido"}
PRODUCT = {"produto_errado", "defeito", "avaria", "item_faltante"}


def extraction_record(score: int, sentiment: str, complaint: str, category: str, noun: str) -> dict:
    """The reference record of a review, derived from its stars, sentiment and complaint."""
    has = complaint != vocab.NO_COMPLAINT
    value = float(score)
    if has and sentiment == "positive":
        value -= 0.5
    elif has and sentiment == "neutral":
        value = 2.5
    if sentiment == "positive":
        churn = "low"
    elif sentiment == "neutral":
        churn = "medium"
    else:
        churn = "high" if score == 1 or complaint in {"nao_recebido", "extravio", "atendimento"} else "medium"
    if complaint in {"nao_recebido", "extravio"} or (score == 1 and complaint in {"defeito", "avaria",
                                                                                  "produto_errado"}):
        urgency = "high"
    elif sentiment == "negative" or (sentiment == "neutral" and has):
        urgency = "medium"
    else:
        urgency = "low"
    who = {"positive": "Cliente satisfeito", "neutral": "Avaliação neutra", "negative": "Cliente insatisfeito"}
    summary = f"{who[sentiment]} com {article(noun)}"
    if has:
        summary += (", apesar de " if sentiment == "positive" else ": ") + vocab.COMPLAINT_PT[complaint]
    return {"sentiment": sentiment, "sentiment_score": value, "churn_risk": churn, "complaint_category": complaint,
            "delivery_issue": complaint in DELIVERY, "product_issue": complaint in PRODUCT,
            "recommends": score >= 4, "urgency": urgency, "product_category": category, "summary": summary + "."}


def _msgs(task: str, user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM[task]}, {"role": "user", "content": user}]


def _load(con: sqlite3.Connection) -> list[dict]:
    cur = con.execute(f"SELECT {', '.join(ENRICHED_COLS)} FROM orders_enriched ORDER BY order_id")
    return [dict(zip(ENRICHED_COLS, r, strict=True)) for r in cur]


def extraction_items(rows: list[dict], rng: random.Random, n: int) -> list[dict]:
    pools = {s: [r for r in rows if r["review_comment_message"] and r["sentiment"] == s]
             for s in ("negative", "neutral", "positive")}
    quota = {"negative": round(n * 0.45), "neutral": round(n * 0.2)}
    quota["positive"] = n - quota["negative"] - quota["neutral"]
    chosen = []
    for s, pool in pools.items():
        chosen += rng.sample(pool, min(len(pool), quota[s] * 2))[: quota[s] * 2]
    rng.shuffle(chosen)
    items, seen, taken = [], set(), dict.fromkeys(quota, 0)
    for r in chosen:
        s = r["sentiment"]
        if taken[s] >= quota[s]:
            continue
        status = vocab.STATUS_PT.get(r["order_status"], r["order_status"])
        review = (f"Título: {r['review_comment_title']}\n" if r["review_comment_title"] else "") + \
            f"Avaliação: {r['review_comment_message']}"
        user = (f"{EXTRACTION_INSTRUCTIONS}\n\nPedido: categoria {r['product_category_name']}, cliente de "
                f"{r['customer_state']}, status {status}.\n{review}")
        if user in seen:
            continue
        seen.add(user)
        taken[s] += 1
        noun = product_noun(r["product_id"], r["product_category_name"])
        rec = extraction_record(r["review_score"], s, r["complaint_category"], r["product_category_name"], noun)
        answer = "```json\n" + json.dumps(rec, ensure_ascii=False, indent=2) + "\n```"
        items.append({"prompt": _msgs("extraction", user), "answer": answer, "reference": rec})
    return items


def sql_items(con: sqlite3.Connection, rng: random.Random, n: int) -> list[dict]:
    items = []
    for q in sql_pairs(con, rng, n):
        user = f"{ENRICHED_DOC}\n\nEscreva uma consulta SQL (SQLite) que responda: {q['question']}"
        answer = f"```sql\n{pretty(q['reference_sql'])};\n```\n{q['explanation']}"
        items.append({"prompt": _msgs("sql_qa", user), "answer": answer, "reference_sql": q["reference_sql"]})
    return items


def insights_pairs(con: sqlite3.Connection, rng: random.Random, n: int) -> list[dict]:
    items = []
    for it in insights_items(con, rng, n, n_slices=DEFAULT_COUNTS["insights"]):
        user = ("Com base nos fatos abaixo, escreva de 3 a 5 insights estratégicos em português, em tópicos "
                "(um por linha, começando com '- ' e um verbo de ação). Cite apenas números que estão nos fatos."
                f"\n\n{render_facts(it['facts'])}")
        items.append({"prompt": _msgs("insights", user), "answer": it["answer"], "facts": it["facts"]})
    return items


PUSH_SITUATIONS = {
    "entrega_a_caminho": "pedido enviado, a caminho do cliente",
    "pedido_confirmado": "pagamento aprovado, pedido em preparação",
    "pedido_cancelado": "pedido cancelado",
    "desculpas_atraso": "pedido entregue com atraso",
    "recompra": "cliente satisfeito com a compra anterior",
    "oferta_categoria": "cliente que comprou nessa categoria, campanha de ofertas",
    "avaliacao": "pedido entregue, pedir avaliação",
    "recuperacao": "cliente insatisfeito com o pedido",
}
PUSH_TEMPLATES = {
    "entrega_a_caminho": ("Oba! {O_produto} já está a caminho de {cidade} 🚚 Acompanhe pelo app!",
                          "Seu pedido de {produto} saiu pra entrega! Fica de olho que já já chega 😉",
                          "Tá chegando! {O_produto} já está na estrada 🚚"),
    "pedido_confirmado": ("Pedido confirmado! {O_produto} já está sendo preparado pra você 🎉",
                          "Pagamento aprovado ✅ Agora é só esperar {o_produto} chegar!"),
    "pedido_cancelado": ("Poxa, seu pedido de {produto} foi cancelado 😕 Bora ver outras opções de {label}?",
                         "Seu pedido foi cancelado, mas tem muita coisa boa em {label} te esperando! 💜"),
    "desculpas_atraso": ("Foi mal pelo atraso com {o_produto}! 🙏 Tem um cupom de 10% te esperando no app.",
                         "Desculpa a demora com {o_produto} 😔 Pra compensar, frete grátis na próxima!"),
    "recompra": ("Curtiu {o_produto}? Tem novidade em {label} com frete grátis pra {cidade}! 🛒",
                 "Que tal mais um mimo? Novidades em {label} esperando por você! 😍"),
    "oferta_categoria": ("Promo relâmpago em {label}! Até 30% off só hoje. Corre que acaba! ⚡",
                         "Você ama {label}? Separamos ofertas incríveis pra você! Vem ver 👀"),
    "avaliacao": ("E aí, curtiu {o_produto}? Conta pra gente em 1 minutinho! ⭐",
                  "Chegou! O que achou d{o_produto}? Sua avaliação ajuda muito 💬"),
    "recuperacao": ("Vimos que {o_produto} não te agradou 😕 Chama a gente no app que a gente resolve!",
                    "Queremos resolver o problema com {o_produto}! Fala com a gente pelo app 💬"),
}


def _city(name: str) -> str:
    """'juiz de fora' -> 'Juiz de Fora'."""
    small = {"de", "do", "da", "dos", "das", "e"}
    return " ".join(w if w in small else w[:1].upper() + w[1:] for w in (name or "").split())


def _situation(r: dict, rng: random.Random) -> str:
    st = r["order_status"]
    if st in ("shipped", "invoiced"):
        return "entrega_a_caminho"
    if st in ("processing", "approved"):
        return "pedido_confirmado"
    if st in ("canceled", "unavailable"):
        return "pedido_cancelado"
    if r["is_late"] == 1:
        return "desculpas_atraso" if rng.random() < 0.7 else "recuperacao"
    if r["review_score"] >= 4:
        return rng.choice(("recompra", "oferta_categoria", "avaliacao"))
    return "avaliacao" if r["review_score"] == 3 else "recuperacao"


def push_items(rows: list[dict], rng: random.Random, n: int) -> list[dict]:
    undelivered = [r for r in rows if r["order_status"] != "delivered"]
    late = [r for r in rows if r["is_late"] == 1]
    pool = rng.sample(undelivered, min(len(undelivered), n // 4)) + rng.sample(late, min(len(late), n // 4))
    pool += rng.sample(rows, min(len(rows), 3 * n))
    items, seen = [], set()
    for r in pool:
        if len(items) >= n:
            break
        sit = _situation(r, rng)
        cat = r["product_category_name"]
        noun = product_noun(r["product_id"], cat)
        label = vocab.CATEGORIES.get(cat, (0, 0, cat.replace("_", " ")))[2]
        ctx = {"cidade": _city(r["customer_city"]), "uf": r["customer_state"], "categoria": cat,
               "categoria_label": label, "produto": noun, "situacao": sit}
        user = ("Escreva uma notificação push em português para o cliente abaixo. Regras: no máximo 120 "
                "caracteres, tom informal e envolvente, cite o produto ou a categoria.\n\n"
                f"Cliente: {ctx['cidade']}/{ctx['uf']}\nProduto: {noun} (categoria: {label})\n"
                f"Situação: {PUSH_SITUATIONS[sit]}")
        if user in seen:
            continue
        o = article(noun)
        fills = {"produto": noun, "o_produto": o, "O_produto": o[0].upper() + o[1:], "cidade": ctx["cidade"],
                 "label": label}
        options = [t.format(**fills) for t in PUSH_TEMPLATES[sit]]
        options = [t for t in options if len(t) <= 120] or [f"Novidades em {label} pra você! Confira no app 😉"]
        seen.add(user)
        items.append({"prompt": _msgs("push", user), "answer": rng.choice(options), "context": ctx})
    return items


def make_items(con: sqlite3.Connection, seed: int, counts: dict[str, int],
               tasks: tuple[str, ...] = TASKS) -> dict[str, list[dict]]:
    """All items per task of ``tasks`` (not yet split), drawn from the database behind ``con``. Each task draws
    from its own seeded stream, so leaving a task out changes no other task's items."""
    rows = _load(con) if {"extraction", "push"} & set(tasks) else None
    make = {
        "extraction": lambda: extraction_items(rows, random.Random(f"{seed}-extraction"), counts["extraction"]),
        "sql_qa": lambda: sql_items(con, random.Random(f"{seed}-sql_qa"), counts["sql_qa"]),
        "insights": lambda: insights_pairs(con, random.Random(f"{seed}-insights"), counts["insights"]),
        "push": lambda: push_items(rows, random.Random(f"{seed}-push"), counts["push"]),
    }
    return {t: make[t]() for t in TASKS if t in tasks}


def _row(task: str, n: int, item: dict) -> dict:
    dump = lambda v: None if v is None else json.dumps(v, ensure_ascii=False)  # noqa: E731
    return {"id": f"{task}-{n:05d}", "task": task, "prompt": item["prompt"], "answer": item["answer"],
            "reference": dump(item.get("reference")), "reference_sql": item.get("reference_sql"),
            "facts": dump(item.get("facts")), "context": dump(item.get("context"))}


def split(items: dict[str, list[dict]], seed: int) -> tuple[list[dict], list[dict]]:
    """Per task: shuffle, hold out round(15%) for eval; return (train, eval) rows, tasks interleaved."""
    train, evals = [], []
    for task in TASKS:
        rows = [_row(task, i, it) for i, it in enumerate(items.get(task, []))]
        random.Random(f"{seed}-split-{task}").shuffle(rows)
        k = round(len(rows) * EVAL_SHARE)
        evals += rows[:k]
        train += rows[k:]
    random.Random(f"{seed}-mix").shuffle(train)
    random.Random(f"{seed}-mix-eval").shuffle(evals)
    return train, evals


def top_up_eval(con: sqlite3.Connection, seed: int, counts: dict[str, int], taken: list[dict]) -> list[dict]:
    """Eval-only rows for each task whose ``round(15%)`` is under :data:`EVAL_MIN`: drawn from the database with
    another seed, none with a prompt of ``taken`` (the split's rows), numbered after the task's ``counts``."""
    want = {t: max(0, EVAL_MIN - round(n * EVAL_SHARE)) if n else 0 for t, n in counts.items()}
    if not any(want.values()):
        return []
    seen = {r["prompt"][-1]["content"] for r in taken}
    # ask for the task's own count on top: insights draws its slices first, and most are the split's already
    short = tuple(t for t in TASKS if want.get(t))
    items = make_items(con, f"{seed}-eval", {t: counts[t] + 2 * want[t] for t in short}, short)
    rows = []
    for task in TASKS:
        fresh = [it for it in items.get(task, []) if it["prompt"][-1]["content"] not in seen][:want.get(task, 0)]
        rows += [_row(task, counts[task] + i, it) for i, it in enumerate(fresh)]
    return rows


def dumps_rows(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
