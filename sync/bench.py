"""Weight-channel benchmark: ``python -m sync.bench [--json FILE] [--repeats N] [--shapes 0.5b,3.7b]``.

For the LoRA r=16 adapter on every linear layer (q, k, v, o, gate, up, down) of the 0.5B and 3.7B
Tucano2 shapes (dimensions from ``zoo.qwen3_config``; the base model is never allocated), it
measures the latency from ``publish()`` (fp32 tensors in learner memory: bf16 conversion, packing,
checksum, send) to the learner holding the acks of every subscriber, where each subscriber has
received the update, verified its checksum and written it to /dev/shm as a PEFT adapter directory
before acking. Subscribers are separate processes, each with its own endpoint and sockets; with
``--transports``: the ipc sockets of one node and TCP with CURVE (what crosses nodes), side by side, and on each
the ``--transfers`` ways a version travels that it supports (``sync.carry``: ``inline`` in the message; on ipc
``file``, written once and linked by every actor; on TCP ``sealed``, encrypted once and fetched by every actor).
Also reported: where the learner's part went (pack, checksum, the file's write or the seal) and the payload, the
merged-weights size (bf16) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_shapes(shape: str, r: int = 16) -> dict[str, tuple[int, int]]:
    """PEFT state-dict names -> shapes of the LoRA A/B matrices for a zoo shape."""
    from zoo.build import SHAPES, qwen3_config

    c = qwen3_config(shape, vocab_size=SHAPES[shape]["vocab_size"] or 2048)
    hd = c.head_dim
    dims = {  # (in_features, out_features)
        "self_attn.q_proj": (c.hidden_size, c.num_attention_heads * hd),
        "self_attn.k_proj": (c.hidden_size, c.num_key_value_heads * hd),
        "self_attn.v_proj": (c.hidden_size, c.num_key_value_heads * hd),
        "self_attn.o_proj": (c.num_attention_heads * hd, c.hidden_size),
        "mlp.gate_proj": (c.hidden_size, c.intermediate_size),
        "mlp.up_proj": (c.hidden_size, c.intermediate_size),
        "mlp.down_proj": (c.intermediate_size, c.hidden_size),
    }
    out = {}
    for layer in range(c.num_hidden_layers):
        for mod, (fin, fout) in dims.items():
            base = f"base_model.model.model.layers.{layer}.{mod}"
            out[f"{base}.lora_A.weight"] = (r, fin)
            out[f"{base}.lora_B.weight"] = (fout, r)
    return out


def _subscriber(cfg_json: str, actor_id: str, wport: int, ready, stop) -> None:
    from configs.schema import SyncConfig
    from sync.endpoint import ActorEndpoint
    from sync.interfaces import ReceivedWeights
    from sync.wire import WeightAck

    cfg = SyncConfig.model_validate_json(cfg_json)
    ep = ActorEndpoint(
        cfg,
        actor_id,
        weight_port=wport,
        rollout_port=wport + 1 if wport < 65535 else 1024,
        keep_versions=1,
        gate_on_weights=False,
    )
    ready.set()
    try:
        while not stop.is_set():
            item = ep.poll(0.2)
            if isinstance(item, ReceivedWeights):
                ep.send_ack(WeightAck(actor_id, item.version, True, 0.0, item.checksum, learner=item.learner))
    finally:
        ep.close()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench_shape(shape: str, subscribers: int, repeats: int, r: int = 16, transport: str = "ipc",
                transfer: str = "inline") -> dict:
    import torch

    from configs.schema import SyncConfig
    from sync import tensors as T
    from sync.weights import ZmqWeightPublisher

    torch.manual_seed(0)
    sd = {n: torch.randn(s) * 0.01 for n, s in lora_shapes(shape, r).items()}
    keys = None
    if transport == "tcp":  # TCP always runs CURVE: keys for this bench only
        import tempfile

        from sync.keys import make_keys

        keys = make_keys(Path(tempfile.mkdtemp(prefix="sync-bench-keys-")) / "k")
    cfg = SyncConfig(heartbeat_s=0.5, max_message_mb=1024, transport=transport, keys_dir=keys)
    pub = ZmqWeightPublisher(cfg, port=0, transfer=transfer)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(subscribers)]
    stop = ctx.Event()
    procs = [
        ctx.Process(
            target=_subscriber, args=(cfg.model_dump_json(), f"bench{i}", pub.port, ready[i], stop), daemon=True
        )
        for i in range(subscribers)
    ]
    try:
        for p in procs:
            p.start()
        for e in ready:
            e.wait(60)
        deadline = time.monotonic() + 30
        while len(pub.actors()) < subscribers and time.monotonic() < deadline:
            time.sleep(0.05)
        lat, pack = [], []
        for v in range(1, repeats + 2):  # v1 warms up (first-touch page faults, connections)
            t0 = time.perf_counter()
            pub.publish(v, sd, {"r": r, "lora_alpha": 2 * r, "target_modules": list(TARGETS)})
            pub.wait_acks(v, 60, min_actors=subscribers)
            t1 = time.perf_counter()
            if v > 1:
                lat.append((t1 - t0) * 1e3)
        parts = {k: statistics.median(pub.timings[v].get(k, 0.0) for v in range(2, repeats + 2))
                 for k in ("pack_ms", "checksum_ms", "write_ms", "seal_ms")}
        out = bytearray(T.packed_nbytes(sd, cfg.wire_dtype))
        for _ in range(min(repeats, 5) + 1):
            t0 = time.perf_counter()
            blobs, buf = T.pack(sd, cfg.wire_dtype, out=out)  # into a reused buffer, as publish() does
            T.checksum(blobs, buf)
            pack.append((time.perf_counter() - t0) * 1e3)
        pack = pack[1:]
        payload = buf.nbytes
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        pub.close()
    return {
        "payload_mb": payload / 1e6,
        "tensors": len(sd),
        "p50": statistics.median(lat),
        "p95": _pct(lat, 0.95),
        "pack_ms_p50": statistics.median(pack),
        "repeats": repeats,
        **{f"publish_{k}_p50": v for k, v in parts.items()},
    }


_TRANSFERS_OF = {"ipc": ("inline", "file"), "tcp": ("inline", "sealed")}


def merged_mb(shape: str) -> float:
    from zoo.build import count_parameters

    return count_parameters(shape) * 2 / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sync.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--shapes", default="0.5b,3.7b")
    ap.add_argument("--subscribers", default="1,4", help="subscriber counts to measure")
    ap.add_argument("--transports", default="ipc,tcp",
                    help="ipc (one node: Unix sockets in a private directory) and/or tcp (across nodes: CURVE)")
    ap.add_argument("--transfers", default="inline,file,sealed",
                    help="inline (tensors in each actor's message), file (ipc: written once, linked), sealed (tcp: "
                         "encrypted once, fetched by each actor); each transport runs those it supports")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.subscribers.split(",")]
    results = {}
    combos = [(s, t, x) for s in args.shapes.split(",") for t in args.transports.split(",")
              for x in args.transfers.split(",") if x in _TRANSFERS_OF[t]]
    for shape, transport, transfer in combos:
        res: dict = {"shape": shape, "transport": transport if transport == "ipc" else "tcp+curve",
                     "transfer": transfer}
        for n in counts:
            m = bench_shape(shape, n, args.repeats, transport=transport, transfer=transfer)
            res.setdefault("payload_mb", round(m["payload_mb"], 2))
            res.setdefault("tensors", m["tensors"])
            res.setdefault("pack_checksum_ms_p50", round(m["pack_ms_p50"], 1))
            if n == counts[0]:
                res["write_ms_p50"] = round(m["publish_write_ms_p50"] + m["publish_seal_ms_p50"], 1)
            key = "transport_ms" if n == 1 else f"transport_ms_{n}sub"
            res[f"{key}_p50"] = round(m["p50"], 1)
            res[f"{key}_p95"] = round(m["p95"], 1)
        res["merged_bf16_mb"] = round(merged_mb(shape), 1)
        res["merged_over_adapter"] = round(res["merged_bf16_mb"] / res["payload_mb"], 1)
        res["repeats"] = args.repeats
        results[f"{shape} {res['transport']} {transfer}"] = res
    cols = (
        ["payload_mb", "pack_checksum_ms_p50", "write_ms_p50"]
        + [f"{'transport_ms' if n == 1 else f'transport_ms_{n}sub'}_{q}" for n in counts for q in ("p50", "p95")]
        + ["merged_bf16_mb", "merged_over_adapter"]
    )
    print(f"publish -> received -> checksum-verified -> written to /dev/shm -> acked (ms), {args.repeats} repeats")
    print(f"{'shape transport transfer':<24} " + " ".join(f"{c:>22}" for c in cols))
    for key, res in results.items():
        print(f"{key:<24} " + " ".join(f"{res[c]:>22}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
