"""rewards: each component with PT-BR examples, make_reward's API, never-raise, doctests, import hygiene."""

from __future__ import annotations

import re

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commerce import build
from rewards import classify_task, make_reward, per_task_breakdown, toy_reward
from rewards.extraction import extraction_parts, schema_score, values_score
from rewards.insights import grounded_score, insights_parts, starts_with_verb
from rewards.push import push_parts, tone_score
from rewards.sql_qa import extract_sql, match_results

REPO = Path(__file__).resolve().parents[2]
MODULES = ["rewards.jsonx", "rewards.common", "rewards.classify", "rewards.extraction", "rewards.sandbox",
           "rewards.sql_qa", "rewards.insights", "rewards.push", "rewards.toy", "rewards.core", "rewards.audit",
           "rewards.attack", "rewards.redteam"]

REF = {"sentiment": "negative", "sentiment_score": 1.5, "churn_risk": "high", "complaint_category": "atraso_entrega",
       "delivery_issue": True, "product_issue": False, "recommends": False, "urgency": "medium",
       "product_category": "cama_mesa_banho", "summary": "Cliente insatisfeito com o edredom: atraso na entrega."}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("rw") / "data", seed=1, orders=3000)


@pytest.fixture(scope="module")
def fn(data):
    f = make_reward(data["db"])
    yield f
    f.close()


@pytest.fixture(scope="module")
def pairs(data) -> list[dict]:
    return [json.loads(x) for x in Path(data["eval"]).read_text(encoding="utf-8").splitlines()]


def cols(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in ("task", "reference", "reference_sql", "facts", "context")}


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


def test_import_rewards_pulls_no_heavy_packages():
    code = ("import sys, rewards, rewards.audit, rewards.bench; "
            "bad = [m for m in ('torch', 'transformers', 'vllm', 'deepspeed', 'numpy', 'trl') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- extraction -----------------------------------------------------------------------------------

def test_extraction_perfect_with_pt_decimal():
    text = "```json\n" + json.dumps(REF, ensure_ascii=False).replace("1.5", "1,5") + "\n```"
    assert extraction_parts(text, REF) == {"valid_json": 1.0, "schema": 1.0, "values": 1.0}


def test_extraction_partial_credit():
    wrong_sentiment = dict(REF, sentiment="positive", sentiment_score=4.0)
    p = extraction_parts(json.dumps(wrong_sentiment), REF)
    assert p["valid_json"] == 1.0 and p["schema"] == 1.0
    assert 0.2 < p["values"] < 0.5  # the right complaint still earns, halved by the key gate (sentiment wrong)
    near = values_score(dict(REF, sentiment_score=2.0), REF)
    far = values_score(dict(REF, sentiment_score=4.5), REF)
    assert 1.0 > near > far
    assert values_score(dict(REF, complaint_category="nao_recebido"), REF) > values_score(
        dict(REF, complaint_category="defeito"), REF)


def test_extraction_schema_types_and_extras():
    assert schema_score(REF) == 1.0
    assert schema_score(dict(REF, sentiment="negativo", recommends="não")) == 0.9  # half credit each
    assert schema_score(dict(REF, extra1=1, extra2=2)) == 0.9
    assert schema_score({}) == 0.0
    assert extraction_parts("não consegui", REF) == {"valid_json": 0.0, "schema": 0.0, "values": 0.0}
    assert extraction_parts('{"sentiment": "negative"}')["values"] is None  # no reference


# ---- sql_qa ---------------------------------------------------------------------------------------

def test_extract_sql_variants():
    assert extract_sql("```SQLite\nSELECT 1;\n```") == "SELECT 1"
    assert extract_sql("```\nWITH a AS (SELECT 1) SELECT * FROM a\n```") == "WITH a AS (SELECT 1) SELECT * FROM a"
    assert extract_sql("```sql\nSELECT COUNT(*) FROM orders_enriched") == "SELECT COUNT(*) FROM orders_enriched"
    assert extract_sql("A consulta é SELECT 2; ela retorna 2") == "SELECT 2"


def test_match_results_tolerance_and_order():
    assert match_results([(12.3456,)], [(12.3,)]) == 1.0
    assert match_results([(12.9,)], [(12.3,)]) == 0.0
    assert match_results([("SP", 3), ("RJ", 2)], [("RJ", 2), ("SP", 3)]) == 1.0
    assert match_results([("SP", 3), ("RJ", 2)], [("RJ", 2), ("SP", 3)], ordered=True) == 0.8
    assert match_results([("SP", 3), ("RJ", 2), ("MG", 1)], [("SP", 3), ("RJ", 2)], ordered=True) == pytest.approx(
        0.5 * 2 / 3, abs=1e-3)


def test_sql_components(fn, pairs):
    row = next(r for r in pairs if r["task"] == "sql_qa" and "COUNT(*)" in r["reference_sql"])
    good = fn.components([row["answer"]], **cols([row]))[0]
    assert good == {"sql_qa/has_sql": 1.0, "sql_qa/executes": 1.0, "sql_qa/result_match": 1.0,
                    "sql_qa/explanation": 1.0}
    wrong = "```sql\nSELECT COUNT(*) FROM orders_enriched WHERE 1 = 0;\n```\nConta nada."
    s = fn.score([wrong], **cols([row]))[0]
    assert s.components["executes"] == 1.0 and s.components["result_match"] == 0.0
    assert 0.25 < s.reward < 0.45
    # the wrong aggregate over the asked filters: no match, but credit for naming what was asked
    lits = re.findall(r"'[^']*'", row["reference_sql"])
    assert lits
    where = row["reference_sql"].split(" WHERE ", 1)[1].split(" GROUP BY")[0].split(" ORDER BY")[0]
    asked = f"```sql\nSELECT SUM(price) * 3 + 1 FROM orders_enriched WHERE {where};\n```\nSoma os preços."
    a = fn.score([asked], **cols([row]))[0]
    assert a.components["executes"] == 1.0 and 0.1 < a.components["result_match"] <= 0.25
    assert a.components["explanation"] == 0.0  # it explains another question's answer (#37)
    elsewhere = ("```sql\nSELECT SUM(price) * 3 + 1 FROM orders_enriched WHERE "
                 + " AND ".join(f"coalesce(product_category_name, customer_state) <> {x}" for x in lits)
                 + ";\n```\nSoma os preços.")
    e = fn.score([elsewhere], **cols([row]))[0]  # the asked values against other columns: not the asked filter
    assert e.components["result_match"] < a.components["result_match"] - 0.05
    assert s.reward < a.reward < 0.6 < good_reward(fn, row)
    nothing = "```sql\nSELECT " + ", ".join(lits) + ";\n```\nConta os pedidos."
    n = fn.score([nothing], **cols([row]))[0]  # runs, reads no data: answers nothing
    assert n.components == {"has_sql": 1.0, "executes": 0.0, "result_match": 0.0, "explanation": 0.0}
    broken = "```sql\nSELEC COUNT(*) FROM tabela_que_nao_existe\n```"
    assert fn([broken], **cols([row]))[0] == 0.0
    runs = "```sql\nSELECT COUNT(*) FROM nao_existe\n```\nConta os pedidos."
    assert fn([runs], **cols([row]))[0] == pytest.approx(0.1)  # has_sql only


def good_reward(fn, row):
    return fn([row["answer"]], **cols([row]))[0]


def test_sql_partial_credit_only_when_the_result_is_wrong(fn, pairs):
    """A right result is scored on the result alone; a wrong one earns partial credit for the asked filters (a
    literal compared, not selected or commented) and the columns the reference reads."""
    from rewards.sql_qa import compared_literals, relevance

    row = next(r for r in pairs if r["task"] == "sql_qa" and r["reference_sql"].count("'") == 4)
    assert fn.score([row["answer"]], **cols([row]))[0].components["result_match"] == 1.0
    first = re.findall(r"'[^']*'", row["reference_sql"])[0]
    column = re.search(rf"(\w+) = {re.escape(first)}", row["reference_sql"]).group(1)
    half = f"```sql\nSELECT COUNT(*) FROM orders_enriched WHERE {column} = {first};\n```\nConta."
    s = fn.score([half], **cols([row]))[0]
    assert s.components["executes"] == 1.0 and 0 < s.components["result_match"] < 0.25 * 0.5 + 0.25 * 0.5
    city = f"```sql\nSELECT COUNT(*) FROM orders_enriched WHERE customer_city = {first};\n```\nConta."
    assert fn.score([city], **cols([row]))[0].components["result_match"] < s.components["result_match"]
    assert compared_literals(f"SELECT {first} FROM t -- {first}") == set()
    assert relevance("SELECT 1", frozenset(), "SELECT COUNT(*) FROM t", frozenset()) == 0.0
    off = make_reward(fn.sql.sandbox.path, sql_qa={"partial_credit": 0.0})
    assert off.score([half], **cols([row]))[0].components["result_match"] == 0.0
    off.close()


def test_sql_reference_results_cached(fn, pairs):
    rows = [r for r in pairs if r["task"] == "sql_qa"][:5]
    fn([r["answer"] for r in rows], **cols(rows))
    assert all(r["reference_sql"] in fn.sql._ref_cache for r in rows)


# ---- insights -------------------------------------------------------------------------------------

FACTS = {"recorte": "pedidos de clientes de RJ", "pedidos": 1234, "avaliacoes_negativas": 225, "pct_negativas": 18.2,
         "nota_media": 3.95, "pct_atraso": 12.4, "principais_reclamacoes": [["atraso na entrega", 41.3]]}
GOOD = ("- Priorizar a pontualidade: 41,3% das negativas citam atraso na entrega.\n"
        "- Reduzir o atraso, hoje em 12,4% dos pedidos entregues no RJ.\n"
        "- Criar contato proativo com os 225 clientes insatisfeitos (18,2% dos 1.234 pedidos).\n"
        "- Monitorar a nota média de 3,95 toda semana junto às transportadoras.")


def test_insights_components():
    p = insights_parts(GOOD, FACTS)
    assert p["bullets"] == 1.0 and p["action_verbs"] == 1.0 and p["grounded"] == 1.0
    assert p["portuguese"] > 0.9 and p["length"] > 0.9
    invented = GOOD.replace("12,4%", "57,9%").replace("3,95", "4,61")
    assert insights_parts(invented, FACTS)["grounded"] < 0.5
    assert grounded_score("- Priorizar 3 ações rápidas", set()) == 0.0  # small integers are not citations
    assert grounded_score("- Priorizar 3 ações rápidas", set(), no_number_credit=0.3) == 0.3
    assert p["insightful"] == 1.0  # every bullet: a verb, a figure of the facts, words of its own
    assert insights_parts("- Reduzir 41,3% atraso na entrega", FACTS)["insightful"] == 0.0  # only a fact restated
    assert insights_parts("Texto corrido sem tópicos.", FACTS)["bullets"] == 0.0
    assert starts_with_verb("Invista em logística") and starts_with_verb("1. **Reduzir** custos")
    assert not starts_with_verb("O atraso cresceu")


def test_insights_grounding_from_prompt_without_facts_column():
    prompt = [{"role": "user", "content": "Fatos:\n- Pedidos: 1.234\n- Taxa de atraso: 12,4%"}]
    fn = make_reward(None)
    s = fn.score(["- Reduzir o atraso de 12,4% nos 1.234 pedidos com ações por transportadora."],
                 [prompt], task=["insights"])[0]
    assert s.components["grounded"] == 1.0


# ---- push -----------------------------------------------------------------------------------------

CTX = {"produto": "jogo de lençol", "categoria_label": "cama, mesa e banho", "categoria": "cama_mesa_banho",
       "situacao": "entrega_a_caminho"}


def test_push_components():
    parts, mult = push_parts("Oba! Seu jogo de lençol já está a caminho 🚚 Acompanhe pelo app!", CTX)
    assert mult == 1.0 and parts == {"situation": 1.0, "length": 1.0, "portuguese": 1.0, "mentions_product": 1.0,
                                     "tone": 1.0, "novelty": 0.5}  # jogo, lençol, caminho are the context's
    parts, _ = push_parts("Novidades em cama, mesa e banho pra você! Confira 😉", CTX)
    assert parts["mentions_product"] == 1.0
    parts, _ = push_parts("Seu lençol chegou! Conta pra gente o que achou?", CTX)
    assert parts["mentions_product"] == 0.7
    parts, mult = push_parts("Your order is on the way!", CTX)
    assert parts["portuguese"] == 0.0 and parts["mentions_product"] == 0.0 and parts["situation"] == 0.0
    assert mult == pytest.approx(0.3 * 0.4 * 0.2)  # the Portuguese, product and situation gates at their floors
    parts, _ = push_parts("Seu jogo de lençol foi cancelado, desculpa o atraso!", CTX)
    assert parts["situation"] == 0.0  # another situation's words
    parts, mult = push_parts("Seu jogo de lençol: a caminho ou cancelado?", CTX)
    assert parts["situation"] == 0.0 and mult <= 0.2  # its own cue and another: no credit, the gate at its floor
    parts, _ = push_parts("Seu kit volta às aulas já está a caminho!", {**CTX, "produto": "kit volta às aulas"})
    assert parts["situation"] == 1.0  # "volta" (a recompra cue) is the product's name, not the notification's
    assert tone_score("Prezado cliente, informamos que o pedido foi enviado. Atenciosamente.") == 0.0


def test_push_over_length_heavily_penalised():
    fn = make_reward(None)
    ok = "Oba! Seu jogo de lençol já está a caminho 🚚 Acompanhe pelo app!"
    long = ok + " Aproveite e confira tudo de cama, mesa e banho com frete grátis pra sua cidade, só hoje!"
    assert len(long) > 120
    r_ok, r_long = fn([ok, long], context=[CTX, CTX], task=["push", "push"])
    assert r_ok == 1.0 and r_long < 0.4
    r3, r6 = fn([long * 3, long * 6], context=[CTX, CTX], task=["push", "push"])
    assert 0.0 < r6 < r3 < 0.05 < r_long  # never 0: shorter is better even far past the limit


def test_push_over_length_group_keeps_a_gradient():
    """A group of pushes that are all too long (the old multiplier gave every one 0 past 240 characters)
    still ranks them by length, so its advantages are not all zero."""
    base = "Oba! Seu jogo de lençol já está a caminho 🚚 Acompanhe pelo app! "
    group = [base * k for k in (4, 5, 6, 8)]
    assert all(len(g) > 240 for g in group)
    rewards = make_reward(None)(group, context=[CTX] * 4, task=["push"] * 4)
    assert rewards == sorted(rewards, reverse=True) and len(set(rewards)) == 4 and min(rewards) > 0


# ---- make_reward API ------------------------------------------------------------------------------

def test_reference_answers_score_high(fn, pairs):
    rewards = fn([r["answer"] for r in pairs], [r["prompt"] for r in pairs], **cols(pairs))
    b = per_task_breakdown(rewards, [r["task"] for r in pairs])
    assert set(b) == {"eval/extraction", "eval/sql_qa", "eval/insights", "eval/push", "eval/mean_reward"}
    assert all(v > 0.9 for v in b.values()), b


def test_conversational_completions_and_extra_columns(fn, pairs):
    row = next(r for r in pairs if r["task"] == "extraction")
    conv = [[{"role": "assistant", "content": row["answer"]}]]
    extra = {"completion_ids": [[1, 2, 3]], "trainer_state": [None], "unknown": ["x"]}
    assert fn(conv, [row["prompt"]], **cols([row]), **extra) == [1.0]


def test_task_column_preferred_then_classifier(pairs):
    fn = make_reward(None)
    ext = next(r for r in pairs if r["task"] == "extraction")
    push = next(r for r in pairs if r["task"] == "push")
    assert fn.tasks(["x", "y"], [ext["prompt"], push["prompt"]]) == ["extraction", "push"]
    assert fn.tasks(["x"], [ext["prompt"]], task=["push"]) == ["push"]
    for r in pairs:
        assert classify_task(r["prompt"]) == r["task"]


def test_weights_from_config_normalised_and_validated():
    from configs.schema import RewardsConfig

    kwargs = RewardsConfig().reward_kwargs()
    fn = make_reward(None, **kwargs)
    for task, w in fn.weights.items():
        assert abs(sum(w.values()) - 1) < 1e-9, task
    assert fn.weights["extraction"] == {"valid_json": 0.05, "schema": 0.1, "values": 0.85}
    fn2 = make_reward(None, extraction={"weights": {"valid_json": 1, "schema": 2, "values": 7}})
    assert fn2.weights["extraction"]["values"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unknown extraction reward component.*valid"):
        make_reward(None, extraction={"weights": {"valid": 1.0}})
    with pytest.raises(ValueError, match="unknown extraction knob.*gate"):
        make_reward(None, extraction={"gate": 1.0})
    with pytest.raises(ValueError, match="unknown extraction.field_weights name.*sentimento"):
        make_reward(None, extraction={"field_weights": {"sentimento": 1.0}})
    with pytest.raises(ValueError, match="sql_timeout"):
        make_reward(None, sql_timeout=5)
    with pytest.raises(ValueError, match=">= 0"):
        make_reward(None, push={"weights": {"length": -1}})
    with pytest.raises(ValueError, match="push.salad_penalty must be a number"):
        make_reward(None, push={"salad_penalty": "x"})


def test_toy_reward_route():
    fn = make_reward(None, toy_token="🦜")
    assert fn(["🦜🦜", "nada", None]) == [0.5, 0.0, 0.0]
    assert toy_reward("x", k=1)(["x"]) == [1.0]


def test_per_task_breakdown():
    assert per_task_breakdown([], []) == {}
    out = per_task_breakdown([0.2, 0.4, 1.0, 0.0], ["push", "sql_qa", "sql_qa", "insights"])
    assert list(out) == ["eval/sql_qa", "eval/insights", "eval/push", "eval/mean_reward"]
    assert out["eval/sql_qa"] == pytest.approx(0.7) and out["eval/mean_reward"] == pytest.approx(0.4)


# ---- never raise ----------------------------------------------------------------------------------

GARBAGE = [None, "", " ", 42, 3.5, ["a", 1], {"role": "assistant"}, [{"role": "assistant", "content": None}],
           "\x00" * 100, "{" * 50_000, "```sql\n" + "SELECT " * 5000, "🦜" * 10_000, "x" * 1_000_000,
           "Your order has shipped, thank you!", '{"sentiment": "bad", "sentiment_score": "muito"}',
           "```sql\nDROP TABLE orders;\n```", "- " * 10_000]


@pytest.mark.parametrize("task", ["extraction", "sql_qa", "insights", "push"])
def test_garbage_never_raises(fn, pairs, task):
    row = next(r for r in pairs if r["task"] == task)
    c = {k: [v] * len(GARBAGE) for k, v in cols([row]).items()}
    out = fn(GARBAGE, [row["prompt"]] * len(GARBAGE), **c)
    assert len(out) == len(GARBAGE) and all(0.0 <= r <= 1.0 for r in out)
    # bad columns too: dicts where strings are expected, wrong lengths, junk references
    out = fn(GARBAGE, None, task=[task], reference=[{"x": 1}], reference_sql=[123], facts=["{{"], context=[[1]])
    assert all(0.0 <= r <= 1.0 for r in out)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=4),
       task=st.sampled_from(["extraction", "sql_qa", "insights", "push", "unknown", None]))
def test_property_never_raises(fn, texts, task):
    out = fn(texts, texts, task=[task] * len(texts), reference=texts, reference_sql=texts, facts=texts,
             context=texts)
    assert len(out) == len(texts) and all(0.0 <= r <= 1.0 for r in out)
