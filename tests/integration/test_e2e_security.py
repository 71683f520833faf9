"""The channels on a shared node, end to end (``launch/cpu.sh``: a real actor and a real learner process).

* Another local user (``setpriv --reuid 65534``) speaking the protocol at the run's sockets for the whole run:
  it cannot connect, receives nothing, and the run finishes normally. Over TCP (across nodes) the same user,
  knowing the server's public key but holding no authorised client key, gets nothing either.
* A process that can reach the sockets (this user's: a broken peer) floods every listening socket until the
  run ends with msgpack bombs, oversized frames, random frames, fabricated groups and non-ZMTP bytes: the run
  carries on, the learner's peak memory stays bounded and the refusals are logged in a few rate-limited lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from configs.schema import SyncConfig
from e2e_helpers import INLINE, Launch, e2e_overrides, train_steps
from sync._net import ipc_path

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

PEER = r'''
"""A peer that speaks the protocol at the given sockets and reports what came back (JSON to OUT)."""
import errno, json, os, random, socket, sys, time
import msgpack, zmq

mode, out, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
targets = sys.argv[4].split(",")
if len(sys.argv) > 5:  # started early, it waits (connected to nothing) for the test's go file
    go_by = time.time() + duration
    while not os.path.exists(sys.argv[5]) and time.time() < go_by:
        time.sleep(0.005)
rng = random.Random(0)
rep = {"uid": os.getuid(), "connect": {}, "received": 0, "sent": 0}


def msg(tag, body):
    return [msgpack.packb(["t2", 2, tag, body], use_bin_type=True)]


hello = msg("hello", {"actor_id": "evil", "incarnation": "evil", "version": 0})
fetch = msg("fetch", {"version": 0, "ticket": "%032x" % rng.getrandbits(128), "learner": ""})  # a guessed ticket
hb = msg("hb", {"actor_id": "evil", "version": 0, "queue_depth": 0, "in_flight": 0, "tokens_per_s": 1.0,
                "incarnation": "evil", "learner": ""})
comp = {"token_ids": [5] * 8, "logprobs": [-0.1] * 8, "text": "mmmmmmmm", "finish_reason": "stop"}
fake = [msg("grp", {"request_id": f"train-s{s}-p{j}", "actor_id": "evil", "version": 0, "learner": "",
                    "results": [{"prompt_token_ids": [1, 2], "completions": [comp] * 4}]})
        for s in range(30) for j in range(2)]
garbage = [[b"\xdd\xff\xff\xff\xff"], [b"\xdf\xff\xff\xff\xff"], [b"\xdb\xff\xff\xff\xff"],
           [b"\x91" * 100000 + b"\xc0"], [b"\xdd\x00\x10\x00\x00" + b"\x90" * 2**20],
           [os.urandom(4096)], [b"\x00" * (8 * 2**20)]]  # bombs, random, an oversized frame

ctx = zmq.Context()


def dealer(t):
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.IDENTITY, b"evil-%d" % rep["opened"])
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.SNDHWM, 100)
    if mode.startswith("curve"):  # its own key pair, and the server's public key it was given
        d.curve_publickey, d.curve_secretkey = zmq.curve_keypair()
        d.curve_serverkey = mode.split(":", 1)[1].encode()
    d.connect(t)
    rep["opened"] += 1
    return d


rep["opened"] = 0
for t in targets:
    if t.startswith("ipc://"):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(t[6:])
            rep["connect"][t] = "ok"
        except OSError as e:
            rep["connect"][t] = errno.errorcode.get(e.errno, str(e.errno))
        finally:
            s.close()
socks = [dealer(t) for t in targets]
end = time.time() + duration
while time.time() < end:
    listening = False
    for i, t in enumerate(targets):
        d = socks[i]
        batch = [hello, hb, fetch] + ([rng.choice(fake), rng.choice(garbage)] if mode == "flood" else [])
        sent = 0
        for m in batch:
            try:
                d.send_multipart(m, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
        rep["sent"] += sent
        if not sent and mode == "flood":  # its queue is full (a dropped connection not yet re-made): a new one
            d.close(0)
            socks[i] = d = dealer(t)
        if mode == "flood" and t.startswith("ipc://"):  # non-ZMTP bytes on a raw connection
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(t[6:])
                listening = True
                s.sendall(os.urandom(512))
            except OSError:
                pass
            finally:
                s.close()
        while d.poll(20):
            d.recv_multipart()
            rep["received"] += 1
    if mode == "flood" and not listening:  # the run has ended and its sockets are gone
        break
json.dump(rep, open(out, "w"))
'''


GARBAGE = r'''
"""Random bytes at every TCP port given (gloo's pair listeners, vLLM's own) until the duration ends."""
import json, os, random, socket, sys, time

out, duration, ports = sys.argv[1], float(sys.argv[2]), [int(p) for p in sys.argv[3].split(",") if p]
rng, rep = random.Random(1), {"uid": os.getuid(), "connected": 0, "refused": 0, "opened": []}
end = time.time() + duration
while time.time() < end:
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                rep["connected"] += 1
                s.sendall(os.urandom(rng.choice([1, 8, 64, 4096, 65536])))
        except OSError:
            rep["refused"] += 1
    time.sleep(0.05)
for path in sys.argv[4:]:  # the run's files, each of which it tries to read
    try:
        with open(path, "rb") as f:
            f.read(1)
        rep["opened"].append(path)
    except OSError:
        pass
json.dump(rep, open(out, "w"))
'''


def run_listeners(la) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket the run's processes listen on."""
    import psutil

    out = []
    for p in la.processes():
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except psutil.Error:
            continue
        out += [(c.laddr.ip, c.laddr.port, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def peer_script() -> tuple[Path, Path]:
    """The peer script in a directory any user can read and write (pytest's tmp_path is 0700 to root)."""
    d = Path(tempfile.mkdtemp(prefix="tucano2-peer-"))
    d.chmod(0o777)
    script = d / "peer.py"
    script.write_text(PEER)
    script.chmod(0o644)
    return d, script


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), or None once it has exited."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return None
    return next((int(ln.split()[1]) / 1024 for ln in lines if ln.startswith("VmHWM:")), None)


class PeakSampler:
    """The last peak memory of ``pid`` seen while the block ran (sampled every 0.1 s: the learner may finish
    its run while the flood is still going)."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self._stop = pid, peak_rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            v = peak_rss_mb(self.pid)
            if v is None:
                return
            self.peak = v

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def socket_paths(over: list[str]) -> list[str]:
    ports = {k: int(v) for k, v in (o.split("=", 1) for o in over) if k in ("sync.rollout_port", "sync.weight_port")}
    return [f"ipc://{ipc_path(SyncConfig(), p)}" for p in ports.values()]


RUN = {"max_steps": 14, "learning_rate": 1e-3, "num_generations": 4, "prompts_per_step": 2,
       "max_completion_length": 16, "sync.heartbeat_s": 0.5, "learner.checkpoint_every": 100}


@pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0, reason="needs root and setpriv")
def test_another_local_user_can_neither_join_nor_read_nor_disturb(tiny_model, tmp_path):
    """Also: nothing listens beyond loopback, garbage at every TCP listener (gloo's, vLLM's) does no harm,
    and no file of the run directory can be read, though its parent is open to everyone."""
    over = e2e_overrides(tiny_model, tmp_path / "pairs", **{**RUN, "learner.checkpoint_every": 5})
    d, script = peer_script()
    (d / "garbage.py").write_text(GARBAGE)
    (d / "garbage.py").chmod(0o644)
    out = d / "report.json"
    run_dir = d / "run"  # under a directory every user may enter; made 0755 as a careless user would
    run_dir.mkdir(mode=0o755)
    run_dir.chmod(0o755)
    nobody_env = {"PATH": os.environ["PATH"], "PYTHONPATH": ""}
    try:
        with Launch(run_dir, over, tmp_path / "launch.log") as la:
            la.wait_until(lambda: train_steps(la.metrics()), 240, "the first step")
            ipc_dir = ipc_path(SyncConfig(), 1).parent
            assert stat.S_IMODE(ipc_dir.stat().st_mode) == 0o700 and ipc_dir.stat().st_uid == os.getuid()
            listeners = run_listeners(la)
            assert listeners and all(ip in ("127.0.0.1", "::1") for ip, _, _ in listeners), listeners
            ports = ",".join(str(port) for _, port, _ in listeners)
            garbage = subprocess.Popen([*NOBODY, sys.executable, str(d / "garbage.py"), str(d / "garbage.json"),
                                        "15", ports], env=nobody_env, stderr=subprocess.PIPE, text=True)
            peer = subprocess.run([*NOBODY, sys.executable, str(script), "protocol", str(out), "20",
                                   ",".join(socket_paths(over))], capture_output=True, text=True, timeout=120,
                                  env=nobody_env)
            assert peer.returncode == 0, peer.stderr[-2000:]
            assert garbage.wait(120) == 0, garbage.stderr.read()[-2000:]
            assert la.wait(timeout=300) == 0, la.log()[-4000:]
            log = la.log()
        files = [f for f in run_dir.rglob("*") if f.is_file()]
        reader = subprocess.run([*NOBODY, sys.executable, str(d / "garbage.py"), str(d / "read.json"), "0", "",
                                 *map(str, files)], env=nobody_env, capture_output=True, text=True, timeout=120)
        assert reader.returncode == 0, reader.stderr[-2000:]
        rep = json.loads(out.read_text())
        flood, read = json.loads((d / "garbage.json").read_text()), json.loads((d / "read.json").read_text())
        steps = train_steps(la.metrics())
        # Private by their own modes too, not only behind the run directory's: a user who moves a checkpoint
        # or opens up the run directory does not publish the adapter.
        loose = {str(f.relative_to(run_dir)): oct(stat.S_IMODE(f.stat().st_mode))
                 for f in [run_dir, *run_dir.rglob("*")] if stat.S_IMODE(f.stat().st_mode) & 0o077}
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert rep["uid"] == 65534 and rep["sent"] > 0
    assert set(rep["connect"].values()) == {"EACCES"}  # it cannot even reach the socket files
    assert rep["received"] == 0  # no request, no weight update, no Welcome
    assert "evil" not in log
    assert steps == list(range(1, RUN["max_steps"] + 1))
    assert flood["uid"] == 65534 and flood["connected"] > 0  # the garbage reached listeners
    assert any("mp_rank_00_model_states.pt" in str(f) for f in files) and len(files) > 10
    assert read["opened"] == []
    assert not loose, loose


@pytest.mark.skipif(shutil.which("setpriv") is None or os.getuid() != 0, reason="needs root and setpriv")
def test_another_local_user_gets_nothing_over_tcp_curve(tmp_path):
    from sync.endpoint import ActorEndpoint
    from sync.rollout import ZmqRolloutTransport
    from sync.weights import ZmqWeightPublisher
    from sync.wire import RolloutRequest, SamplingSpec

    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "sync.keys", str(keys)], check=True, capture_output=True)
    cfg = SyncConfig(transport="tcp", keys_dir=keys, heartbeat_s=0.2)
    t, pub = ZmqRolloutTransport(cfg, port=0), ZmqWeightPublisher(cfg, port=0)
    ep = ActorEndpoint(cfg, "ours", tmp_path / "shm", rollout_port=t.port, weight_port=pub.port,
                       gate_on_weights=False)
    d, script = peer_script()
    server_pub = (keys / "server.key").read_text().split('public-key = "')[1].split('"')[0]
    try:
        peers = [subprocess.Popen([*NOBODY, sys.executable, str(script), mode, str(d / f"{i}.json"), "6",
                                   f"tcp://127.0.0.1:{t.port},tcp://127.0.0.1:{pub.port},"
                                   f"tcp://127.0.0.1:{pub.fetch_port}"],
                                  env={"PATH": os.environ["PATH"]}, stderr=subprocess.PIPE, text=True)
                 for i, mode in enumerate(("protocol", f"curve:{server_pub}"))]
        import torch

        from sync.interfaces import ReceivedWeights
        from sync.wire import WeightAck

        pub.publish(0, {"m.lora_A.weight": torch.ones(2, 2)}, {"r": 2})  # something a joiner would be sent
        w = ep.poll(5)
        assert isinstance(w, ReceivedWeights)
        ep.send_ack(WeightAck("ours", 0, True, 0.0, w.checksum, learner=w.learner))
        deadline, n = time.monotonic() + 6, 0
        while time.monotonic() < deadline:  # the real actor keeps working meanwhile
            t.submit(RolloutRequest(f"r{n}", [[1]], SamplingSpec(1, 1.0, 1.0, 1)))
            assert ep.poll(5).request_id == f"r{n}"
            n += 1
            time.sleep(0.2)
        assert pub.wait_acks(0, 5)["ours"].ok
        for p in peers:
            assert p.wait(60) == 0, p.stderr.read()[-2000:]
        reps = [json.loads((d / f"{i}.json").read_text()) for i in range(2)]
    finally:
        ep.close()
        t.close()
        pub.close()
        shutil.rmtree(d, ignore_errors=True)
    assert all(r["uid"] == 65534 and r["sent"] > 0 and r["received"] == 0 for r in reps)
    assert set(t.actors()) <= {"ours"} and not any("evil" in a for a in pub.actors())
    assert any("handshake failed" in k for k in t.refusals.counts)
    assert pub.transfer == "sealed" and pub.refusals.counts["fetch"] > 0  # the plain fetch port: no ticket, nothing


def test_hostile_input_on_every_socket_gets_a_bounded_logged_refusal(tiny_model, tmp_path):
    run = {**RUN, "max_steps": 24, **INLINE}  # the learner's sockets are under test, not the actor's processes
    over = e2e_overrides(tiny_model, tmp_path / "pairs", **run)
    d, script = peer_script()
    out, go = d / "report.json", d / "go"
    # The peer starts with the run and floods from the moment the test sees step 2 (a run step takes ~0.3 s
    # here: a peer started only then could meet a run that had already ended).
    peer = subprocess.Popen([sys.executable, str(script), "flood", str(out), "240",  # until the run ends
                             ",".join(socket_paths(over)), str(go)], stderr=subprocess.PIPE, text=True)
    try:
        with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
            la.wait_until(lambda: len(train_steps(la.metrics())) >= 2, 240, "two steps", interval=0.05)
            learner = la.component_pids("learner")[0]
            before = peak_rss_mb(learner)
            assert before is not None, la.log()[-4000:]
            with PeakSampler(learner) as peak:
                go.touch()
                assert peer.wait(timeout=300) == 0, peer.stderr.read()[-2000:]
            after = peak.peak
            assert la.wait(timeout=300) == 0, la.log()[-4000:]
            log = la.log()
        rep = json.loads(out.read_text())
    finally:
        peer.kill()
        shutil.rmtree(d, ignore_errors=True)
    assert set(rep["connect"].values()) == {"ok"}, rep  # the flood began while the run listened: it met steps 3..
    assert train_steps(la.metrics()) == list(range(1, run["max_steps"] + 1))
    assert after - before < 150, f"the learner's peak memory grew by {after - before:.0f} MB under the flood"
    refusals = [ln for ln in log.splitlines() if "[learner]" in ln and "refused" in ln]
    assert any("message" in ln for ln in refusals) and any("handshake failed" in ln for ln in refusals), refusals
    assert len(refusals) < 60, f"{len(refusals)} refusal lines for {rep['sent']} messages: not rate-limited"
    totals = [re.search(r"refused (\d+) in total \((.*)\)", ln) for ln in refusals if " in total " in ln]
    messages = sum(int(n) for m in totals for n in re.findall(r"message x(\d+)", m[2]))
    assert messages >= 100, f"the learner refused only {messages} messages in total: no flood? peer: {rep}; {refusals}"
