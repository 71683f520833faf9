"""Pairs as TRL users keep them (``commerce.sources``): parquet, JSON and CSV files the tests write, datasets saved with
``datasets``' own ``save_to_disk``, and a Hub dataset id with a split, read through ``datasets`` by the same reader the
learner and ``python -m commerce check`` share; nothing is downloaded unless ``TUCANO2_ALLOW_DOWNLOAD=1``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from commerce.rows import BadRowsWarning, PairsError, load_pairs, read_pairs
from fake_hub import FakeHub


@pytest.fixture(scope="module")
def ours(commerce_data) -> list[dict]:
    """Our own eval pairs (every task; reference columns as JSON strings, as `commerce build` writes them)."""
    lines = (commerce_data / "pairs" / "eval.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines[:60]]


def as_read(pf) -> list[tuple]:
    return [(r.messages, r.answer, r.task, r.labelled, r.columns) for r in pf.rows]


@pytest.fixture(scope="module")
def sources(ours, tmp_path_factory):
    """The same rows as JSONL, parquet, a JSON array, a saved Dataset and a saved DatasetDict's split."""
    import datasets

    d = tmp_path_factory.mktemp("sources")
    (d / "p.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ours))
    ds = datasets.Dataset.from_list(ours)
    ds.to_parquet(str(d / "p.parquet"))
    (d / "p.json").write_text(json.dumps(ours, ensure_ascii=False))
    ds.save_to_disk(str(d / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ours[:10]), "test": ds}).save_to_disk(str(d / "dict"))
    return d


@pytest.mark.parametrize("name", ["p.parquet", "p.json", "saved", "dict:test"])
def test_every_source_gives_the_rows_the_jsonl_gives(sources, name):
    want = read_pairs(sources / "p.jsonl")
    got = read_pairs(f"{sources}/{name}")
    assert not got.bad and got.total == want.total == 60
    assert as_read(got) == as_read(want)
    assert got.counts() == want.counts() and len(got.counts()) == 4


def test_trl_row_formats_in_parquet_and_csv(tmp_path):
    """messages, prompt + completion, plain prompt (TRL's formats) and a task left to the classifier."""
    import datasets

    rows = [
        {"messages": [{"role": "user", "content": "Escreva uma notificação push para o pedido do cliente."},
                      {"role": "assistant", "content": "Seu pedido chegou!"}], "prompt": None, "completion": None},
        {"messages": None, "prompt": "Gere a consulta SQL: quantos pedidos foram entregues em SP?",
         "completion": "SELECT COUNT(*) FROM orders_enriched WHERE customer_state = 'SP';"},
        {"messages": None, "prompt": "Escreva uma notificação push curta sobre o frete grátis.", "completion": None},
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "trl.parquet"))
    pf = read_pairs(tmp_path / "trl.parquet")
    assert not pf.bad and [r.answer for r in pf.rows] == ["Seu pedido chegou!", rows[1]["completion"], None]
    assert pf.rows[0].messages == rows[0]["messages"][:1] and pf.rows[2].messages[0]["role"] == "user"
    assert all(not r.labelled for r in pf.rows) and pf.rows[1].task == "sql_qa"
    with open(tmp_path / "trl.csv", "w", newline="") as f:  # a CSV: every cell a string, empty cells null
        w = csv.DictWriter(f, fieldnames=["prompt", "completion", "task"])
        w.writeheader()
        w.writerow({"prompt": rows[1]["prompt"], "completion": rows[1]["completion"], "task": ""})
        w.writerow({"prompt": rows[2]["prompt"], "completion": "", "task": "push"})
    pf = read_pairs(tmp_path / "trl.csv")
    assert not pf.bad and [(r.task, r.labelled) for r in pf.rows] == [("sql_qa", False), ("push", True)]


def test_a_bad_row_of_a_dataset_is_named_by_its_row(tmp_path):
    import datasets

    good = {"prompt": "Escreva uma notificação push para o pedido.", "task": "push"}
    rows = [good] * 200 + [{"prompt": "Escreva um resumo.", "task": "poetry"}] + [good] * 99
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "one.parquet"))
    with pytest.warns(BadRowsWarning, match="skipping 1 malformed row of 300"):  # as in a JSONL file
        pf = load_pairs(tmp_path / "one.parquet")
    assert [str(b) for b in pf.bad] == [f"{tmp_path / 'one.parquet'}:201: task: unknown task 'poetry' (one of "
                                        "extraction, sql_qa, insights, push, or empty to classify)"]
    datasets.Dataset.from_list(rows[:10] + rows[200:201] * 5).to_parquet(str(tmp_path / "many.parquet"))
    with pytest.raises(PairsError, match=r"many\.parquet: 5 of 15 rows are malformed"):
        load_pairs(tmp_path / "many.parquet")


@pytest.mark.parametrize("spec, want", [
    ("{d}/dict", "a DatasetDict saved with save_to_disk; name its split: {d}/dict:train (splits: train, test)"),
    ("{d}/dict:validation", "no split 'validation' (splits: train, test)"),
    ("{d}/saved:train", "holds one Dataset (saved with save_to_disk), not splits; drop :train"),
    ("{d}", "a directory, but not a dataset saved with save_to_disk"),
    ("me/pairs", "me/pairs: no such pairs file (a Hub dataset needs its split: me/pairs:train)"),
])
def test_a_source_that_cannot_be_read_is_one_line(sources, spec, want):
    with pytest.raises(PairsError) as e:
        read_pairs(spec.format(d=sources))
    assert want.format(d=sources) in str(e.value) and "\n" not in str(e.value)


def test_a_hub_dataset_is_not_downloaded_unless_allowed(tmp_path):
    """Offline by default: a Hub id not in the datasets cache is refused in one line and no request is made (the FAKE
    Hub, which HF_ENDPOINT points ``huggingface_hub`` and ``datasets`` at, sees none); with TUCANO2_ALLOW_DOWNLOAD=1
    the same read goes to the Hub."""
    import os
    import subprocess
    import sys

    code = ("from commerce.rows import PairsError, read_pairs\n"
            "try:\n    read_pairs('me/commerce-pairs:train')\nexcept PairsError as e:\n    print(e)\n")
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if k != "TUCANO2_ALLOW_DOWNLOAD"}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,  # noqa: E731
                                       timeout=120, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
        assert run(env) == ("me/commerce-pairs:train: Hub dataset me/commerce-pairs is not in the datasets cache and "
                            "downloads are off (set TUCANO2_ALLOW_DOWNLOAD=1 to fetch it once; later runs read the "
                            "cache)")
        assert hub.requests == []
        out = run({**env, "TUCANO2_ALLOW_DOWNLOAD": "1"})
        assert out.startswith("me/commerce-pairs:train: cannot load Hub dataset me/commerce-pairs split train"), out
        assert any("me/commerce-pairs" in s.path for s in hub.requests)   # asked (the fake holds no datasets)


def test_commerce_check_and_the_learner_read_them(sources, commerce_data, tmp_path, capsys):
    from commerce.__main__ import main as commerce_main
    from configs import load_config
    from learner.__main__ import preflight
    from learner.data import load_items

    rc = commerce_main(["check", "--db", str(commerce_data / "commerce.db"), "--pairs", str(sources / "p.parquet"),
                        f"{sources}/dict:test"])
    out = capsys.readouterr().out
    assert rc == 0 and str(sources / "p.parquet") in out and f"{sources}/dict:test" in out
    assert commerce_main(["check", "--pairs", f"{sources}/dict"]) == 2
    assert "name its split" in capsys.readouterr().err
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "smoke_cpu.yaml",
                      [f"model_id={tmp_path}", f"data.db_path={commerce_data / 'commerce.db'}",
                       f"data.train_pairs={sources / 'p.parquet'}", f"data.eval_pairs={sources}/dict:test"])
    (tmp_path / "config.json").write_text("{}")
    assert preflight(cfg) is None
    items = load_items(cfg.data.train_pairs, cfg.data.tasks)
    assert [it.messages for it in items] == [it.messages for it in load_items(sources / "p.jsonl", cfg.data.tasks)]
    bad = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_pairs": Path(f"{sources}/dict")})})
    assert preflight(bad).startswith("eval pairs: ") and "name its split" in preflight(bad)


def test_sources_doctests():
    import doctest

    import commerce.sources

    assert doctest.testmod(commerce.sources).failed == 0
