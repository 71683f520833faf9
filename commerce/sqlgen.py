"""sql_qa pairs: PT-BR questions from many templates, parameters drawn from the database.

Each template is (name, question variants, SQL, explanation, check). Parameters come from the db
(states, categories, payment types, years, complaint categories that actually occur), every
reference query is executed at build time and kept only when its result is meaningful (non-empty,
no NULL, non-zero counts). Every pair has its own ``reference_sql`` (no two pairs share one), so
eval and train never ask the same question in different words.
"""

from __future__ import annotations

import itertools
import random
import sqlite3

from . import vocab

T = "orders_enriched"

# name: (questions, sql, explanation, params, check)
# params: tuple of parameter kinds; check: "count" (first value > 0) or "any" (non-empty, no NULL)
TEMPLATES: dict[str, tuple[tuple[str, ...], str, str, tuple[str, ...], str]] = {
    "count_state": (("Quantos pedidos foram feitos por clientes de {uf}?",
                     "Qual o número de pedidos de clientes do estado {uf}?"),
                    "SELECT COUNT(*) AS pedidos FROM {T} WHERE customer_state = '{uf}'",
                    "Conta os pedidos cujo cliente é do estado {uf}.", ("uf",), "count"),
    "count_cat": (("Quantos pedidos da categoria {cat} existem?", "Qual o total de pedidos de {cat}?"),
                  "SELECT COUNT(*) AS pedidos FROM {T} WHERE product_category_name = '{cat}'",
                  "Conta os pedidos da categoria {cat}.", ("cat",), "count"),
    "avg_score_cat": (("Qual a nota média das avaliações da categoria {cat}?",
                       "Em média, que nota os clientes dão para {cat}?"),
                      "SELECT ROUND(AVG(review_score), 2) AS nota_media FROM {T} WHERE product_category_name = '{cat}'",
                      "Calcula a média de review_score dos pedidos de {cat}.", ("cat",), "any"),
    "avg_price_cat": (("Qual o preço médio dos pedidos de {cat}?", "Quanto custa, em média, um pedido de {cat}?"),
                      "SELECT ROUND(AVG(price), 2) AS preco_medio FROM {T} WHERE product_category_name = '{cat}'",
                      "Média da coluna price para a categoria {cat}.", ("cat",), "any"),
    "late_rate_state": (("Qual a porcentagem de pedidos entregues com atraso em {uf}?",
                         "Qual a taxa de atraso nas entregas para {uf}?"),
                        "SELECT ROUND(100.0 * AVG(is_late), 2) AS pct_atraso FROM {T} "
                        "WHERE customer_state = '{uf}' AND order_status = 'delivered'",
                        "Média de is_late entre os pedidos entregues em {uf}, em porcentagem.", ("uf",), "any"),
    "top_cats": (("Quais são as {k} categorias com mais pedidos?", "Liste as {k} categorias mais vendidas."),
                 "SELECT product_category_name, COUNT(*) AS pedidos FROM {T} GROUP BY product_category_name "
                 "ORDER BY pedidos DESC, product_category_name LIMIT {k}",
                 "Agrupa por categoria, conta os pedidos e ordena do maior para o menor.", ("k",), "any"),
    "top_states_late": (("Quais os {k} estados com mais pedidos atrasados?",
                         "Em quais {k} estados há mais entregas atrasadas?"),
                        "SELECT customer_state, COUNT(*) AS atrasados FROM {T} WHERE is_late = 1 "
                        "GROUP BY customer_state ORDER BY atrasados DESC, customer_state LIMIT {k}",
                        "Filtra os atrasados, agrupa por estado e ordena pela contagem.", ("k",), "any"),
    "avg_freight_state": (("Qual o frete médio para clientes de {uf}?", "Quanto se paga de frete, em média, em {uf}?"),
                          "SELECT ROUND(AVG(freight_value), 2) AS frete_medio FROM {T} WHERE customer_state = '{uf}'",
                          "Média de freight_value dos pedidos de {uf}.", ("uf",), "any"),
    "payments_state": (("Quantos pedidos de {uf} foram pagos com cada forma de pagamento?",
                        "Como se distribuem as formas de pagamento em {uf}?"),
                       "SELECT payment_type, COUNT(*) AS pedidos FROM {T} WHERE customer_state = '{uf}' "
                       "GROUP BY payment_type ORDER BY pedidos DESC, payment_type",
                       "Agrupa os pedidos de {uf} por payment_type e conta.", ("uf",), "any"),
    "avg_installments": (("Qual a média de parcelas nos pagamentos com cartão de crédito em {uf}?",),
                         "SELECT ROUND(AVG(payment_installments), 2) AS parcelas_media FROM {T} "
                         "WHERE payment_type = 'credit_card' AND customer_state = '{uf}'",
                         "Média de payment_installments dos pedidos com cartão em {uf}.", ("uf",), "any"),
    "neg_count_cat": (("Quantas avaliações negativas tem a categoria {cat}?",
                       "Quantos pedidos de {cat} receberam avaliação negativa?"),
                      "SELECT COUNT(*) AS negativas FROM {T} WHERE sentiment = 'negative' "
                      "AND product_category_name = '{cat}'",
                      "Conta os pedidos de {cat} com sentimento negativo.", ("cat",), "count"),
    "score_by_late": (("Compare a nota média dos pedidos atrasados e no prazo em {uf}.",
                       "Em {uf}, qual a nota média de pedidos com e sem atraso?"),
                      "SELECT is_late, ROUND(AVG(review_score), 2) AS nota_media FROM {T} "
                      "WHERE order_status = 'delivered' AND customer_state = '{uf}' GROUP BY is_late ORDER BY is_late",
                      "Agrupa os entregues de {uf} por is_late e calcula a nota média.", ("uf",), "any"),
    "top_complaints_cat": (("Quais as {k} reclamações mais frequentes nas avaliações negativas de {cat}?",),
                           "SELECT complaint_category, COUNT(*) AS total FROM {T} WHERE sentiment = 'negative' "
                           "AND product_category_name = '{cat}' GROUP BY complaint_category "
                           "ORDER BY total DESC, complaint_category LIMIT {k}",
                           "Conta as categorias de reclamação entre as negativas de {cat}.", ("k", "cat"), "any"),
    "revenue_cat_year": (("Qual o faturamento total (soma dos preços) da categoria {cat} em {ano}?",),
                         "SELECT ROUND(SUM(price), 2) AS faturamento FROM {T} WHERE product_category_name = '{cat}' "
                         "AND substr(order_purchase_timestamp, 1, 4) = '{ano}'",
                         "Soma price dos pedidos de {cat} comprados em {ano}.", ("cat", "ano"), "any"),
    "delivery_days_state": (("Em média, quantos dias leva a entrega para {uf}?",
                             "Qual o tempo médio de entrega, em dias, para {uf}?"),
                            "SELECT ROUND(AVG(delivery_days), 1) AS dias_medios FROM {T} "
                            "WHERE order_status = 'delivered' AND customer_state = '{uf}'",
                            "Média de delivery_days dos pedidos entregues em {uf}.", ("uf",), "any"),
    "orders_per_month": (("Quantos pedidos foram feitos por mês em {ano}?",),
                         "SELECT purchase_month, COUNT(*) AS pedidos FROM {T} WHERE purchase_month LIKE '{ano}-%' "
                         "GROUP BY purchase_month ORDER BY purchase_month",
                         "Agrupa os pedidos de {ano} por purchase_month.", ("ano",), "any"),
    "one_star_state": (("Quantas avaliações de 1 estrela vieram de clientes de {uf}?",),
                       "SELECT COUNT(*) AS uma_estrela FROM {T} WHERE review_score = 1 AND customer_state = '{uf}'",
                       "Conta as avaliações com nota 1 em {uf}.", ("uf",), "count"),
    "pay_share_state": (("Qual o percentual de pedidos pagos com {pag} em {uf}?",),
                        "SELECT ROUND(100.0 * AVG(payment_type = '{pay}'), 2) AS pct FROM {T} "
                        "WHERE customer_state = '{uf}'",
                        "Proporção de pedidos de {uf} com payment_type '{pay}', em porcentagem.", ("pay", "uf"),
                        "count"),
    "top_cities_state": (("Quais as {k} cidades de {uf} com mais pedidos?",),
                         "SELECT customer_city, COUNT(*) AS pedidos FROM {T} WHERE customer_state = '{uf}' "
                         "GROUP BY customer_city ORDER BY pedidos DESC, customer_city LIMIT {k}",
                         "Agrupa os pedidos de {uf} por cidade e pega as {k} maiores.", ("k", "uf"), "any"),
    "score_by_payment": (("Qual a nota média por forma de pagamento em {uf}?",),
                         "SELECT payment_type, ROUND(AVG(review_score), 2) AS nota_media FROM {T} "
                         "WHERE customer_state = '{uf}' GROUP BY payment_type ORDER BY payment_type",
                         "Agrupa os pedidos de {uf} por payment_type e calcula a nota média.", ("uf",), "any"),
    "max_price_cat": (("Qual o maior valor de pedido na categoria {cat}?",),
                      "SELECT MAX(price) AS maior_preco FROM {T} WHERE product_category_name = '{cat}'",
                      "Máximo de price na categoria {cat}.", ("cat",), "any"),
    "late_count_cat": (("Quantos pedidos de {cat} foram entregues com atraso?",),
                       "SELECT COUNT(*) AS atrasados FROM {T} WHERE is_late = 1 AND product_category_name = '{cat}'",
                       "Conta os pedidos atrasados da categoria {cat}.", ("cat",), "count"),
    "avg_delay_state": (("Quando atrasam, quantos dias de atraso em média têm os pedidos de {uf}?",),
                        "SELECT ROUND(AVG(delay_days), 1) AS atraso_medio FROM {T} WHERE is_late = 1 "
                        "AND customer_state = '{uf}'",
                        "Média de delay_days dos pedidos atrasados de {uf}.", ("uf",), "any"),
    "neg_late_cat": (("Quantos pedidos atrasados de {cat} receberam nota 1 ou 2?",),
                     "SELECT COUNT(*) AS negativos_atrasados FROM {T} WHERE is_late = 1 AND review_score <= 2 "
                     "AND product_category_name = '{cat}'",
                     "Conta os atrasados de {cat} com nota até 2.", ("cat",), "count"),
    "unique_customers_state": (("Quantos clientes únicos há em {uf}?",),
                               "SELECT COUNT(DISTINCT customer_unique_id) AS clientes FROM {T} "
                               "WHERE customer_state = '{uf}'",
                               "Conta os customer_unique_id distintos de {uf}.", ("uf",), "count"),
    "cats_below": (("Quais categorias têm nota média abaixo de {nota_pt}?",),
                   "SELECT product_category_name, ROUND(AVG(review_score), 2) AS nota_media FROM {T} "
                   "GROUP BY product_category_name HAVING AVG(review_score) < {nota} ORDER BY nota_media, "
                   "product_category_name",
                   "Agrupa por categoria e mantém as de média abaixo de {nota_pt}.", ("nota",), "any"),
    "count_state_cat": (("Quantos pedidos de {cat} foram feitos em {uf}?",),
                        "SELECT COUNT(*) AS pedidos FROM {T} WHERE product_category_name = '{cat}' "
                        "AND customer_state = '{uf}'",
                        "Conta os pedidos de {cat} de clientes de {uf}.", ("cat", "uf"), "count"),
    "score_state_cat": (("Qual a nota média de {cat} em {uf}?",),
                        "SELECT ROUND(AVG(review_score), 2) AS nota_media FROM {T} "
                        "WHERE product_category_name = '{cat}' "
                        "AND customer_state = '{uf}'",
                        "Média de review_score de {cat} em {uf}.", ("cat", "uf"), "any"),
    "status_count": (("Quantos pedidos estão com status {status}?",),
                     "SELECT COUNT(*) AS pedidos FROM {T} WHERE order_status = '{status}'",
                     "Conta os pedidos com order_status '{status}'.", ("status",), "count"),
    "no_text_cat": (("Qual o percentual de avaliações sem comentário na categoria {cat}?",),
                    "SELECT ROUND(100.0 * AVG(review_comment_message IS NULL), 2) AS pct_sem_texto FROM {T} "
                    "WHERE product_category_name = '{cat}'",
                    "Proporção de review_comment_message nulo em {cat}, em porcentagem.", ("cat",), "any"),
    "complaint_state": (("Quantas reclamações de {queixa} existem em {uf}?",),
                        "SELECT COUNT(*) AS total FROM {T} WHERE complaint_category = '{complaint}' "
                        "AND customer_state = '{uf}'",
                        "Conta os pedidos de {uf} com complaint_category '{complaint}'.", ("complaint", "uf"), "count"),
    "neg_rate_top": (("Quais as {k} categorias com maior percentual de avaliações negativas (mínimo de 50 pedidos)?",),
                     "SELECT product_category_name, ROUND(100.0 * AVG(sentiment = 'negative'), 2) AS pct_negativas "
                     "FROM {T} GROUP BY product_category_name HAVING COUNT(*) >= 50 "
                     "ORDER BY pct_negativas DESC, product_category_name LIMIT {k}",
                     "Calcula a taxa de negativas por categoria e ordena da maior para a menor.", ("k",), "any"),
    "avg_value_payment": (("Qual o valor médio pago com {pag}?",),
                          "SELECT ROUND(AVG(payment_value), 2) AS valor_medio FROM {T} WHERE payment_type = '{pay}'",
                          "Média de payment_value dos pedidos pagos com '{pay}'.", ("pay",), "any"),
}

CLAUSES = (" FROM ", " WHERE ", " GROUP BY ", " HAVING ", " ORDER BY ", " LIMIT ")


def pretty(sql: str) -> str:
    """Break a one-line query before its main clauses."""
    for c in CLAUSES:
        sql = sql.replace(c, "\n" + c.strip() + " ")
    return sql


def _params(con: sqlite3.Connection) -> dict[str, list]:
    q = lambda s: [r[0] for r in con.execute(s)]  # noqa: E731
    return {
        "uf": q(f"SELECT customer_state FROM {T} GROUP BY 1 HAVING COUNT(*) >= 20 ORDER BY 1"),
        "cat": q(f"SELECT product_category_name FROM {T} GROUP BY 1 HAVING COUNT(*) >= 20 ORDER BY 1"),
        "pay": q(f"SELECT payment_type FROM {T} GROUP BY 1 ORDER BY 1"),
        "ano": q(f"SELECT DISTINCT substr(order_purchase_timestamp, 1, 4) FROM {T} ORDER BY 1"),
        "status": q(f"SELECT order_status FROM {T} GROUP BY 1 ORDER BY 1"),
        "complaint": q(f"SELECT complaint_category FROM {T} WHERE complaint_category != 'nenhuma' "
                       "GROUP BY 1 ORDER BY 1"),
        "k": [3, 5, 10],
        "nota": [3.8, 3.9, 4.0, 4.1],
    }


def _fill(params: dict[str, object]) -> dict[str, object]:
    out = dict(params, T=T)
    if "pay" in params:
        out["pag"] = vocab.PAYMENT_PT.get(params["pay"], params["pay"])
    if "complaint" in params:
        out["queixa"] = vocab.COMPLAINT_PT.get(params["complaint"], params["complaint"])
    if "nota" in params:
        out["nota_pt"] = str(params["nota"]).replace(".", ",")
    return out


def _meaningful(rows: list[tuple], check: str) -> bool:
    if not rows or any(v is None for v in rows[0]):
        return False
    if check == "count":
        v = rows[0][0]
        return isinstance(v, (int, float)) and v > 0
    return True


def sql_pairs(con: sqlite3.Connection, rng: random.Random, n: int) -> list[dict]:
    """Up to ``n`` sql_qa items (question, reference_sql, explanation), round-robin over templates."""
    params = _params(con)
    queues = []
    for name, (questions, sql, expl, kinds, check) in TEMPLATES.items():
        combos = [dict(zip(kinds, vals, strict=True)) for vals in itertools.product(*(params[k] for k in kinds))]
        rng.shuffle(combos)
        queues.append((name, questions, sql, expl, check, combos))
    rng.shuffle(queues)
    out: list[dict] = []
    seen: set[str] = set()
    while len(out) < n and any(q[5] for q in queues):
        for name, questions, sql, expl, check, combos in queues:
            if len(out) >= n:
                break
            while combos:
                fill = _fill(combos.pop())
                ref = sql.format(**fill)
                if ref in seen:
                    continue
                rows = con.execute(ref).fetchmany(50)
                if not _meaningful(rows, check):
                    continue
                seen.add(ref)
                out.append({"template": name, "question": rng.choice(questions).format(**fill),
                            "reference_sql": ref, "explanation": expl.format(**fill)})
                break
    return out
