"""Shared socket plumbing: addresses, CURVE set-up, and the background I/O thread every channel runs.

Each channel object owns a private ``zmq.Context`` and one I/O thread that alone touches its
network sockets (ZeroMQ sockets are not thread-safe). Callers change shared state under
``self._cv`` and wake the thread through an inproc PUSH/PULL pair; the thread polls the wake
socket and the network sockets, handles at most ``_BATCH`` messages per socket per turn, and runs
``_on_tick`` at least every ``_TICK_S`` (liveness, retries). An exception while handling one
message is logged and the message dropped; the thread keeps serving.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from pathlib import Path

import zmq

from sync.interfaces import SyncError
from sync.keys import client_keys, server_keys

log = logging.getLogger("sync")

_TICK_S = 0.05
_BATCH = 256
DEAD_AFTER_HEARTBEATS = 5


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def curve_wanted(cfg, require_curve: bool) -> bool:
    """CURVE is on when forced or when the learner binds a non-loopback address."""
    return require_curve or not is_loopback(cfg.host)


def _keys_dir(cfg, why: str) -> Path:
    if cfg.keys_dir is None:
        raise SyncError(
            f"sync: {why} requires CURVE authentication: set sync.keys_dir (make keys with `python -m sync.keys DIR`)"
        )
    return Path(cfg.keys_dir)


def max_bytes(cfg) -> int:
    return int(cfg.max_message_mb) * 2**20


def setup_server(ctx: zmq.Context, sock: zmq.Socket, cfg, require_curve: bool):
    """Make ``sock`` a CURVE server when required; returns the started authenticator (or None)."""
    if not curve_wanted(cfg, require_curve):
        return None
    why = "forced CURVE (require_curve=True)" if require_curve else f"binding non-loopback {cfg.host!r}"
    pub, sec, authorized = server_keys(_keys_dir(cfg, why))
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("sync.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def setup_client(sock: zmq.Socket, cfg, require_curve: bool) -> None:
    if not curve_wanted(cfg, require_curve):
        return
    why = "forced CURVE (require_curve=True)" if require_curve else f"a non-loopback learner {cfg.host!r}"
    pub, sec, server_pub = client_keys(_keys_dir(cfg, why))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_serverkey = server_pub


def bind(sock: zmq.Socket, host: str, port: int | None) -> int:
    """Bind to ``host:port`` (port 0: a random free port); returns the port."""
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{host}")
    try:
        sock.bind(f"tcp://{host}:{port}")
    except zmq.ZMQError as e:
        raise SyncError(f"sync: cannot bind tcp://{host}:{port}: {e}") from None
    return int(port)


def connect_host(cfg) -> str:
    host = cfg.connect_host or cfg.host
    return "127.0.0.1" if host in ("0.0.0.0", "*") else host


def new_incarnation() -> str:
    return uuid.uuid4().hex[:12]


class IoThread:
    """Base: a private context, a wake pair and one daemon thread polling ``self._sockets``."""

    def __init__(self, name: str):
        self._ctx = zmq.Context()
        self._cv = threading.Condition(threading.RLock())
        self._sockets: list[zmq.Socket] = []
        self._closed = False
        self._failed: BaseException | None = None
        addr = f"inproc://wake-{uuid.uuid4().hex}"
        self._wake_rx = self._ctx.socket(zmq.PULL)
        self._wake_rx.bind(addr)
        self._wake_tx = self._ctx.socket(zmq.PUSH)
        self._wake_tx.connect(addr)
        self._wake_lock = threading.Lock()
        self._auth = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- called from user threads
    def _start(self) -> None:
        self._thread.start()

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._closed:
                try:
                    self._wake_tx.send(b"", zmq.NOBLOCK)
                except zmq.Again:
                    pass  # a wake-up is already queued

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise SyncError(f"sync I/O thread {self._thread.name} died: {self._failed!r}")
        if self._closed:
            raise SyncError(f"{type(self).__name__} is closed")

    def close(self) -> None:  # subclasses close with their own linger and farewell messages
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _close(self, linger_ms: int = 0) -> None:
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        for s in self._sockets:
            s.close(linger=linger_ms)
        self._wake_tx.close(0)
        self._wake_rx.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    # -- the I/O thread
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        for s in self._sockets:
            poller.register(s, zmq.POLLIN)
        next_tick = 0.0
        try:
            while not self._closed:
                timeout = max(0.0, next_tick - time.monotonic())
                events = dict(poller.poll(int(timeout * 1000) + 1))
                if self._closed:
                    break
                if self._wake_rx in events:
                    while True:
                        try:
                            self._wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                for s in self._sockets:
                    if s in events:
                        for _ in range(_BATCH):
                            try:
                                frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
                            except zmq.Again:
                                break
                            try:
                                with self._cv:
                                    self._on_frames(s, frames)
                            except Exception:  # one bad message must not stop the channel
                                log.exception("sync: error handling a message; dropped")
                with self._cv:
                    self._flush()
                    now = time.monotonic()
                    if now >= next_tick:
                        self._on_tick(now)
                        next_tick = now + _TICK_S
        except BaseException as e:  # pragma: no cover - reported to callers by _check_alive
            if not self._closed:
                self._failed = e
                log.exception("sync: I/O thread failed")
        finally:
            with self._cv:
                self._cv.notify_all()

    def _on_frames(self, sock: zmq.Socket, frames: list[zmq.Frame]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Send what user threads queued (called after every poll, under the lock)."""

    def _on_tick(self, now: float) -> None:
        """Periodic work (under the lock)."""
