"""Synthetic ``commerce.db`` modelled on the public Olist Brazilian e-commerce dataset.

One ``random.Random(seed)`` drives everything, rows are inserted in a fixed order, and the file is
written in rollback-journal mode (never WAL), so a seed gives the same content and a read-only
reader never creates ``-wal``/``-shm`` files next to it.

Review scores are drawn per group so that the marginal matches Olist (11.5 / 3.2 / 8.2 / 19.3 /
57.8 % for 1..5 stars) while late deliveries score ~2.6 stars against ~4.3 on time: the late and
not-delivered distributions are fixed (:mod:`commerce.vocab`) and the on-time one is solved from
the mixture (:func:`score_distributions`). About 8% of delivered orders are late (more in the North
and Northeast, fewer in SP), with the state factors normalised so that the overall rate holds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import random
import sqlite3
import sys
from pathlib import Path

from . import schema, vocab
from .text import compose_review, sentiment_of

START = dt.datetime(2017, 1, 1)
SPAN_DAYS = 607  # to 2018-08-31


def _pick(rng: random.Random, weights: dict) -> str:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] if not isinstance(weights[k], tuple) else weights[k][0]
                                      for k in keys])[0]


def score_distributions() -> dict[str, tuple[float, ...]]:
    """Per-group star distributions (late, ontime, undelivered) whose mixture is the Olist marginal."""
    delivered = vocab.STATUSES["delivered"]
    w_late, w_on, w_und = delivered * vocab.LATE_SHARE, delivered * (1 - vocab.LATE_SHARE), 1 - delivered
    groups = zip(vocab.SCORE_TARGET, vocab.LATE_SCORES, vocab.UNDELIVERED_SCORES, strict=True)
    ontime = tuple((t - w_late * late - w_und * und) / w_on for t, late, und in groups)
    assert all(p > 0 for p in ontime), ontime
    return {"late": vocab.LATE_SCORES, "ontime": ontime, "undelivered": vocab.UNDELIVERED_SCORES}


def product_noun(product_id: str, category: str) -> str:
    """The product's everyday name, a pure function of its id and category (works on any db)."""
    nouns = vocab.CATEGORIES.get(category, (0, 0, "", ()))[3]
    if not nouns:
        return (category or "produto").replace("_", " ")
    h = int(hashlib.sha1(product_id.encode()).hexdigest()[:8], 16)
    return nouns[h % len(nouns)]


def _hexid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _ts(t: dt.datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _progress(done: int, total: int, enabled: bool) -> None:
    if enabled and (done == total or done % max(1, total // 20) == 0):
        sys.stderr.write(f"\rcommerce: orders {done:,}/{total:,} ({100 * done // total}%)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def generate(con: sqlite3.Connection, seed: int = 42, n_orders: int = 20000, progress: bool | None = None) -> None:
    """Create the tables in ``con`` and fill them with ``n_orders`` orders drawn from ``seed``."""
    if n_orders < 100:
        raise ValueError(f"--orders must be at least 100 (got {n_orders})")
    progress = n_orders >= 50000 if progress is None else progress
    rng = random.Random(seed)
    for stmt in schema.ddl():
        con.execute(stmt)
    dists = score_distributions()
    states = vocab.STATES
    late_norm = vocab.LATE_SHARE / sum(s[0] * s[1] for s in states.values()) * sum(s[0] for s in states.values())

    sellers = []
    for _ in range(max(20, n_orders // 30)):
        st = _pick(rng, vocab.SELLER_STATES)
        city = rng.choice(states[st][3])
        sellers.append((_hexid(rng), f"{rng.randint(1000, 99999):05d}", city, st))
    products, by_cat = [], {}
    for _ in range(max(60, n_orders // 3)):
        cat = _pick(rng, vocab.CATEGORIES)
        pid = _hexid(rng)
        price = round(vocab.CATEGORIES[cat][1] * math.exp(rng.gauss(0, 0.55)), 2)
        seller = rng.choice(sellers)[0]
        products.append((pid, cat, rng.randint(20, 60), rng.randint(100, 3000), rng.randint(1, 6),
                         rng.randint(100, 15000)))
        by_cat.setdefault(cat, []).append((pid, price, seller))

    customers, orders, items, payments, reviews, enriched = [], [], [], [], [], []
    uniques: list[tuple[str, str, str]] = []
    seller_state = {s[0]: s[3] for s in sellers}
    for n in range(n_orders):
        if uniques and rng.random() < 0.03:
            uid, st, city = rng.choice(uniques)
        else:
            st = _pick(rng, states)
            uid, city = _hexid(rng), rng.choice(states[st][3])
            uniques.append((uid, st, city))
        cid, oid = _hexid(rng), _hexid(rng)
        customers.append((cid, uid, f"{rng.randint(1000, 99999):05d}", city, st))
        status = _pick(rng, vocab.STATUSES)
        purchase = START + dt.timedelta(days=rng.triangular(0, SPAN_DAYS, SPAN_DAYS * 0.8),
                                        seconds=rng.randint(0, 86399))
        purchase = purchase.replace(microsecond=0)
        approved = purchase + dt.timedelta(minutes=rng.randint(10, 2880)) if status != "canceled" else None
        typical = states[st][2]
        estimated = (purchase + dt.timedelta(days=typical + rng.randint(8, 16))).replace(
            hour=0, minute=0, second=0)
        carrier = delivered = None
        if status in ("delivered", "shipped"):
            carrier = approved + dt.timedelta(days=rng.uniform(0.5, 4))
            carrier = carrier.replace(microsecond=0)
        if status == "delivered":
            if rng.random() < late_norm * states[st][1]:
                delivered = estimated + dt.timedelta(days=1 + min(60, int(rng.expovariate(1 / 7))),
                                                     hours=rng.uniform(1, 20))
            else:
                days = max(1.0, rng.gauss(typical, typical * 0.35))
                delivered = min(purchase + dt.timedelta(days=days),
                                estimated - dt.timedelta(days=1) + dt.timedelta(hours=rng.uniform(0, 20)))
                delivered = max(delivered, carrier + dt.timedelta(hours=6))
            delivered = delivered.replace(microsecond=0)
        orders.append((oid, cid, status, _ts(purchase), _ts(approved), _ts(carrier), _ts(delivered),
                       _ts(estimated)))

        cat = _pick(rng, vocab.CATEGORIES)
        if cat not in by_cat:
            cat = next(iter(by_cat))
        pid, base_price, sid = rng.choice(by_cat[cat])
        n_items = rng.choices((1, 2, 3, 4), weights=(0.9, 0.075, 0.02, 0.005))[0]
        price_sum = freight_sum = 0.0
        for k in range(1, n_items + 1):
            if k > 1 and rng.random() < 0.3:
                pid_k, price_k, sid_k = rng.choice(by_cat[cat])
            else:
                pid_k, price_k, sid_k = pid, base_price, sid
            freight = round((6 + typical * 0.9) * rng.uniform(0.6, 1.5), 2)
            items.append((oid, k, pid_k, sid_k, _ts(purchase + dt.timedelta(days=rng.randint(3, 7))), price_k,
                          freight))
            price_sum += price_k
            freight_sum += freight
        price_sum, freight_sum = round(price_sum, 2), round(freight_sum, 2)
        total = round(price_sum + freight_sum, 2)
        ptype = _pick(rng, vocab.PAYMENTS)
        inst = rng.choices(range(1, 11), weights=(50, 12, 9, 7, 5, 4, 3, 4, 2, 4))[0] if ptype == "credit_card" else 1
        if ptype == "credit_card" and rng.random() < 0.03 and total > 20:
            voucher = round(rng.uniform(5, total / 2), 2)
            payments.append((oid, 1, ptype, inst, round(total - voucher, 2)))
            payments.append((oid, 2, "voucher", 1, voucher))
        else:
            payments.append((oid, 1, ptype, inst, total))

        group = "undelivered" if delivered is None else ("late" if delivered > estimated else "ontime")
        score = rng.choices((1, 2, 3, 4, 5), weights=dists[group])[0]
        sentiment = sentiment_of(score)
        mild = False
        if sentiment == "positive":
            complaint = vocab.NO_COMPLAINT
            if (group == "late" and rng.random() < 0.4) or (group == "ontime" and rng.random() < 0.03):
                complaint = "atraso_entrega" if group == "late" else rng.choice(("avaria", "atendimento"))
                mild = True
        elif group == "late":
            complaint = "atraso_entrega" if rng.random() < 0.8 else _pick(rng, vocab.ONTIME_COMPLAINTS)
        elif group == "undelivered":
            complaint = _pick(rng, vocab.UNDELIVERED_COMPLAINTS)
        elif sentiment == "neutral" and rng.random() < 0.5:
            complaint = vocab.NO_COMPLAINT
        else:
            complaint = _pick(rng, vocab.ONTIME_COMPLAINTS)
        delay = None if delivered is None else math.floor((delivered - estimated).total_seconds() / 86400)
        ddays = None if delivered is None else math.floor((delivered - purchase).total_seconds() / 86400)
        title = message = None
        if rng.random() < vocab.P_MESSAGE[score - 1]:
            noun = product_noun(pid, cat)
            dias = delay if delay and delay > 0 else rng.randint(2, 12)
            t, m = compose_review(rng, sentiment, complaint, noun, dias, mild)
            title, message = t or None, m or None
        created = (delivered or estimated) + dt.timedelta(days=rng.randint(0, 3))
        created = created.replace(hour=0, minute=0, second=0)
        answered = created + dt.timedelta(days=rng.randint(0, 4), seconds=rng.randint(0, 86399))
        reviews.append((_hexid(rng), oid, score, title, message, _ts(created), _ts(answered)))
        enriched.append((oid, status, cid, uid, city, st, sid, seller_state[sid], pid, cat, n_items, price_sum,
                         freight_sum, ptype, inst, total, _ts(purchase), _ts(delivered), _ts(estimated),
                         purchase.strftime("%Y-%m"), ddays, delay,
                         None if delivered is None else int(delay > 0), score, title, message, sentiment,
                         complaint))
        _progress(n + 1, n_orders, progress)

    def put(table: str, rows: list) -> None:
        marks = ", ".join("?" * len(schema.TABLES[table]))
        con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)

    put("customers", customers)
    put("sellers", sellers)
    put("products", products)
    put("orders", orders)
    put("order_items", items)
    put("order_payments", payments)
    put("order_reviews", reviews)
    put("orders_enriched", enriched)
    for stmt in schema.INDEXES:
        con.execute(stmt)
    con.commit()


def write_db(path: str | Path, seed: int = 42, n_orders: int = 20000, progress: bool | None = None) -> Path:
    """Write a fresh database to ``path`` (atomically, rollback-journal mode) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA page_size=4096")
        generate(con, seed=seed, n_orders=n_orders, progress=progress)
    finally:
        con.close()
    os.replace(tmp, path)
    return path


def memory_db(seed: int = 42, n_orders: int = 5000) -> sqlite3.Connection:
    """An in-memory database (for the corpus and tests that need no file)."""
    con = sqlite3.connect(":memory:")
    generate(con, seed=seed, n_orders=n_orders, progress=False)
    return con
