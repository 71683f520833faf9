"""Raw ZeroMQ throughput over TCP with and without CURVE, for 66 MB messages (the 3.7B LoRA adapter in bf16).

``python tests/slurm/curve_throughput.py [--host 127.0.0.1] [--messages 8] [--json FILE]``

A job that spans nodes sends every weight update over TCP with CURVE, encrypted once per actor; this
measures what that costs on a machine, apart from the rest of the sync (one PUSH to one PULL process,
loopback by default). Prints a table and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time

SIZE = 66 * 2**20


def _receive(addr: str, curve_dir: str | None, n: int) -> None:
    import zmq
    import zmq.auth

    s = zmq.Context().socket(zmq.PULL)
    if curve_dir:
        pub, sec = zmq.auth.load_certificate(f"{curve_dir}/client.key_secret")
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.curve_serverkey = zmq.auth.load_certificate(f"{curve_dir}/server.key")[0]
    s.connect(addr)
    for _ in range(n + 1):
        s.recv(copy=False)


def measure(host: str, curve: bool, n: int) -> float:
    """GB/s from the first byte sent to the last message received (one warm-up message first)."""
    import zmq
    import zmq.auth

    keys = tempfile.mkdtemp()
    zmq.auth.create_certificates(keys, "server")
    zmq.auth.create_certificates(keys, "client")
    s = zmq.Context().socket(zmq.PUSH)
    if curve:
        s.curve_server = True
        s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(f"{keys}/server.key_secret")
    port = s.bind_to_random_port(f"tcp://{host}")
    p = mp.get_context("spawn").Process(target=_receive, args=(f"tcp://{host}:{port}", keys if curve else None, n))
    p.start()
    buf = os.urandom(SIZE)
    s.send(buf)
    t0 = time.perf_counter()
    for _ in range(n):
        s.send(buf, copy=False)
    p.join()
    return n * SIZE / (time.perf_counter() - t0) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--messages", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = {name: measure(args.host, curve, args.messages) for name, curve in (("tcp", False), ("tcp+curve", True))}
    print(f"{'channel':<10} {'GB/s':>6} {'ms per 66 MB':>13}")
    for name, gbs in rows.items():
        print(f"{name:<10} {gbs:>6.2f} {SIZE / gbs / 1e6:>13.0f}")
    print(f"CURVE costs {rows['tcp'] / rows['tcp+curve']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"message_mb": SIZE / 2**20, "gb_per_s": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
