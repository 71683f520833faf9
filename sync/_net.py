"""Shared socket plumbing: addresses and who may connect, the background I/O thread, rate-limited refusals.

Who may join a channel (the trust model, for every socket here):

* ``ipc`` (one node, the default when ``sync.host`` is loopback): the learner binds Unix sockets
  ``p<port>.sock`` in a private directory (``sync.ipc_dir``, default ``/tmp/tucano2-<uid>``). The
  directory is created 0700 and checked on every bind and connect: owned by this user, not a symlink,
  nobody else may enter it. Another local user can neither connect nor see the socket files, and cannot
  bind a fake learner there. Loopback TCP is never used: any local user can connect to 127.0.0.1.
* ``tcp`` (across nodes): the learner's sockets are CURVE servers, actors CURVE clients with the key pairs
  of ``sync.keys_dir`` (``python -m sync.keys``; files 0600). A ZAP handler admits only client keys in
  ``keys_dir/authorized``; everything on the wire is encrypted, so nobody without the keys can join, read
  or inject. TCP without CURVE is refused.

Each channel object owns a private ``zmq.Context`` and one I/O thread that alone touches its network
sockets (ZeroMQ sockets are not thread-safe). Callers change shared state under ``self._cv`` and wake the
thread through an inproc PUSH/PULL pair; the thread polls the wake socket, the network sockets and their
monitors, handles at most ``_BATCH`` messages per socket per turn, and runs ``_on_tick`` at least every
``_TICK_S`` (liveness, retries). An exception while handling one message is logged and the message
dropped; the thread keeps serving. Refused input (undecodable messages, failed handshakes, dropped
connections) is logged through :class:`Refusals`: the first of each kind at once, then one summary line
per kind at most every 30 s, so a flood of garbage cannot flood the log.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import random
import socket
import stat
import tempfile
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
_UNIX_PATH_MAX = 107


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_kind(cfg) -> str:
    """``ipc`` or ``tcp`` for a sync config (``transport: auto`` -> ipc on loopback)."""
    kind = getattr(cfg, "transport", "auto")
    if kind == "auto":
        return "ipc" if is_loopback(cfg.host) else "tcp"
    return kind


def default_ipc_dir() -> Path:
    """``/tmp/tucano2-<uid>``: fixed, not ``$TMPDIR`` or ``$XDG_RUNTIME_DIR``, which a batch job or a login
    session may set differently for the learner and the actors of one run (they would never meet)."""
    return Path("/tmp") / f"tucano2-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter: created 0700 if missing, else checked."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as e:
        raise SyncError(f"sync.ipc_dir {path}: cannot create it ({e.strerror})") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SyncError(f"sync.ipc_dir {path} is not a directory (a symlink or a file); refusing to use it")
    if st.st_uid != os.getuid():
        raise SyncError(f"sync.ipc_dir {path} is owned by uid {st.st_uid}, not by this user ({os.getuid()}): "
                        "another user could read or fake the channels; set sync.ipc_dir to a directory of yours")
    if st.st_mode & 0o077:
        raise SyncError(f"sync.ipc_dir {path} has mode {stat.S_IMODE(st.st_mode):o}: other users may enter it "
                        f"(chmod 700 {path}, or set sync.ipc_dir)")
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_pid_dirs(prefix: str, base: Path) -> None:
    """Remove ``base/<prefix>-p<pid>-*`` directories of this user whose process is gone (killed before it
    could clean up)."""
    import re
    import shutil

    for d in base.glob(f"{prefix}-p*-*"):
        m = re.match(rf"{re.escape(prefix)}-p(\d+)-", d.name)
        if m and not pid_alive(int(m.group(1))) and os.lstat(d).st_uid == os.getuid():
            shutil.rmtree(d, ignore_errors=True)


def pid_dir(prefix: str, base: Path, tag: str = "") -> Path:
    """A fresh private directory ``base/<prefix>-p<pid>-<tag>-*`` (mode 0700), after sweeping the dead ones of
    the same prefix (:func:`sweep_pid_dirs`)."""
    sweep_pid_dirs(prefix, base)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-p{os.getpid()}-{tag + '-' if tag else ''}", dir=base))


def sweep_stale_sockets(cfg) -> list[Path]:
    """Remove ipc socket files in the private directory that nobody listens on (left by killed learners)."""
    d = Path(cfg.ipc_dir) if getattr(cfg, "ipc_dir", None) else default_ipc_dir()
    out = []
    for p in d.glob("p*.sock") if d.is_dir() else []:
        if not _listening(p):
            p.unlink(missing_ok=True)
            out.append(p)
    return out


def ipc_path(cfg, port: int) -> Path:
    d = private_dir(Path(cfg.ipc_dir) if getattr(cfg, "ipc_dir", None) else default_ipc_dir())
    p = d / f"p{port}.sock"
    if len(str(p)) > _UNIX_PATH_MAX:
        raise SyncError(f"ipc socket path {p} is longer than {_UNIX_PATH_MAX} bytes; set a shorter sync.ipc_dir")
    return p


def _listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` now."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def check_free(cfg, port: int) -> None:
    """SyncError if a learner of another run already listens on ``port`` (ipc file or TCP port)."""
    if transport_kind(cfg) == "ipc":
        p = ipc_path(cfg, port)
        if p.exists() and _listening(p):
            raise SyncError(f"ipc socket {p} is in use by another run (port {port}); pick other sync ports")
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((cfg.host if cfg.host not in ("*", "0.0.0.0") else "", port))
        except OSError as e:
            raise SyncError(f"port {port} on {cfg.host} is taken ({e.strerror}); pick other sync ports") from None


def bind(sock: zmq.Socket, cfg, port: int) -> int:
    """Bind ``sock`` for the channel on ``port`` (0: a free one); returns the port."""
    if transport_kind(cfg) == "ipc":
        rng = random.Random()
        for _ in range(100 if port == 0 else 1):
            p = port or rng.randrange(20000, 60000)
            path = ipc_path(cfg, p)
            if path.exists():
                if _listening(path):
                    if port == 0:
                        continue
                    raise SyncError(f"ipc socket {path} is in use by another run (port {port}); "
                                    "pick other sync ports")
                path.unlink()  # left by a learner that died
            try:
                sock.bind(f"ipc://{path}")
            except zmq.ZMQError as e:
                raise SyncError(f"sync: cannot bind ipc://{path}: {e}") from None
            return p
        raise SyncError(f"sync: no free ipc name in {path.parent}")
    if port == 0:
        return sock.bind_to_random_port(f"tcp://{cfg.host}")
    try:
        sock.bind(f"tcp://{cfg.host}:{port}")
    except zmq.ZMQError as e:
        raise SyncError(f"sync: cannot bind tcp://{cfg.host}:{port}: {e}") from None
    return int(port)


def connect_address(cfg, port: int) -> str:
    if transport_kind(cfg) == "ipc":
        return f"ipc://{ipc_path(cfg, port)}"
    host = cfg.connect_host or cfg.host
    return f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{port}"


def connect_host(cfg) -> str:
    host = cfg.connect_host or cfg.host
    return "127.0.0.1" if host in ("0.0.0.0", "*") else host


def _keys_dir(cfg) -> Path:
    if cfg.keys_dir is None:
        raise SyncError("sync: TCP channels require CURVE authentication: set sync.keys_dir "
                        "(make keys with `python -m sync.keys DIR`)")
    return Path(cfg.keys_dir)


def setup_server(ctx: zmq.Context, sock: zmq.Socket, cfg):
    """Over TCP, make ``sock`` a CURVE server admitting only authorized client keys; returns the started
    authenticator (None over ipc, where the directory's permissions decide who may connect)."""
    if transport_kind(cfg) == "ipc":
        return None
    pub, sec, authorized = server_keys(_keys_dir(cfg))
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx, log=logging.getLogger("sync.auth"))
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_server = True
    return auth


def setup_client(sock: zmq.Socket, cfg) -> None:
    if transport_kind(cfg) == "ipc":
        return
    pub, sec, server_pub = client_keys(_keys_dir(cfg))
    sock.curve_secretkey = sec
    sock.curve_publickey = pub
    sock.curve_serverkey = server_pub


def new_incarnation() -> str:
    return uuid.uuid4().hex[:12]


class Refusals:
    """Counts refused input per kind and logs it rate-limited: up to ``burst`` lines per ``every_s`` window
    are logged as they come, the rest of the window's refusals in one summary line when it ends (kinds with
    counts, the latest reason), so a flood of garbage costs a few log lines per minute."""

    def __init__(self, logger: logging.Logger, channel: str, every_s: float = 30.0, burst: int = 10):
        self.log, self.channel, self.every_s, self.burst = logger, channel, every_s, burst
        self.counts: collections.Counter[str] = collections.Counter()
        self._warned: collections.Counter[str] = collections.Counter()  # those at WARNING or above
        self._window = time.monotonic()
        self._logged = 0
        self._held: collections.Counter[str] = collections.Counter()
        self._latest = ""

    def refuse(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        self.counts[kind] += 1
        if level >= logging.WARNING:
            self._warned[kind] += 1
        self.flush()
        if self._logged < self.burst:
            self._logged += 1
            self.log.log(level, "%s: refused %s: %s", self.channel, kind, detail[:300])
        else:
            self._held[kind] += 1
            self._latest = f"{kind}: {detail[:300]}"

    def flush(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._window < self.every_s:
            return
        if self._held:
            kinds = ", ".join(f"{k} x{n}" for k, n in self._held.most_common())
            self.log.warning("%s: refused %d more in the last %.0f s (%s); latest: %s", self.channel,
                             sum(self._held.values()), now - self._window, kinds, self._latest)
            self._held.clear()
        self._window, self._logged = now, 0

    def summary(self) -> None:
        """One line with every warning-level refusal since the start (logged once, at close, if there were
        any; an ordinary disconnect or a duplicate is counted but not summed here)."""
        if self._warned:
            kinds = ", ".join(f"{k} x{n}" for k, n in self._warned.most_common())
            self.log.warning("%s: refused %d in total (%s)", self.channel, sum(self._warned.values()), kinds)


_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
_EVENT_KIND = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "connection (handshake failed: not ZMTP, or a broken peer)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "connection (handshake failed: ZMTP protocol error)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "connection (handshake failed: CURVE authentication)",
    zmq.EVENT_DISCONNECTED: "connection (closed by a peer, or dropped for a frame over the size cap)",
}


def _recv_bounded(sock: zmq.Socket, max_frames: int) -> list[zmq.Frame] | None:
    """One message's frames (raises ``zmq.Again`` when none is waiting); None for a message of more than
    ``max_frames`` frames, whose every frame is still read (a message's frames arrive together) and freed."""
    frames = [sock.recv(zmq.NOBLOCK, copy=False)]
    more, n = frames[0].more, 1
    while more:
        f = sock.recv(copy=False)
        more, n = f.more, n + 1
        if n <= max_frames:
            frames.append(f)
    return frames if n <= max_frames else None


class IoThread:
    """Base: a private context, a wake pair and one daemon thread polling ``self._sockets``.

    A message is read frame by frame and at most ``max_frames`` of them are kept: a longer one (more frames
    than the protocol ever sends) is read to its end, dropped and counted as a refusal. ZeroMQ bounds each
    frame (``MAXMSGSIZE``) and the queue by messages (HWM), not a message's frames, so this is what bounds
    the memory one message keeps in our process: ``max_frames`` x the socket's ``MAXMSGSIZE``. The bound that
    remains: libzmq delivers a multipart message whole, so before the first frame is read it has buffered all of
    them (a 501-part message of 64 KB frames: ~32 MB, once, then freed frame by frame here). No socket option
    caps a message's frame count; only peers that passed the channel's admission (a 0700 directory on one node,
    CURVE keys across nodes) can send one."""

    max_frames = 2
    """A ROUTER's: the peer's identity and one msgpack frame (:mod:`sync.wire`)."""

    def __init__(self, name: str, channel: str | None = None):
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
        self._monitors: dict[zmq.Socket, zmq.Socket] = {}  # monitor -> the socket it watches
        self._unlink: list[Path] = []
        self.refusals = Refusals(log, channel or name)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- called from user threads
    def _start(self) -> None:
        for s in self._sockets:
            mon = s.get_monitor_socket(_MONITOR_EVENTS)
            self._monitors[mon] = s
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

    def _bind(self, sock: zmq.Socket, cfg, port: int) -> int:
        """Bind a listening socket of this channel; its ipc file is removed again on close."""
        port = bind(sock, cfg, port)
        if transport_kind(cfg) == "ipc":
            self._unlink.append(ipc_path(cfg, port))
        return port

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
        for mon, s in self._monitors.items():
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            mon.close(0)
        for s in self._sockets:
            s.close(linger=linger_ms)
        self._wake_tx.close(0)
        self._wake_rx.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        for p in self._unlink:
            p.unlink(missing_ok=True)
        self.refusals.summary()

    # -- the I/O thread
    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        poller = zmq.Poller()
        poller.register(self._wake_rx, zmq.POLLIN)
        for s in [*self._sockets, *self._monitors]:
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
                for mon in self._monitors:
                    while mon in events:
                        try:
                            ev = recv_monitor_message(mon, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_monitor(ev)
                for s in self._sockets:
                    if s in events:
                        for _ in range(_BATCH):
                            try:
                                frames = _recv_bounded(s, self.max_frames)
                            except zmq.Again:
                                break
                            if frames is None:
                                self.refusals.refuse("message with too many frames",
                                                     f"more than {self.max_frames}; dropped")
                                continue
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
                        self.refusals.flush(now)
                        next_tick = now + _TICK_S
        except BaseException as e:  # pragma: no cover - reported to callers by _check_alive
            if not self._closed:
                self._failed = e
                log.exception("sync: I/O thread failed")
        finally:
            with self._cv:
                self._cv.notify_all()

    def _on_monitor(self, ev: dict) -> None:
        kind = _EVENT_KIND.get(ev["event"])
        if kind is not None:
            level = logging.INFO if ev["event"] == zmq.EVENT_DISCONNECTED else logging.WARNING
            self.refusals.refuse(kind, f"{ev['endpoint'].decode(errors='replace')}", level)

    def _on_frames(self, sock: zmq.Socket, frames: list[zmq.Frame]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Send what user threads queued (called after every poll, under the lock)."""

    def _on_tick(self, now: float) -> None:
        """Periodic work (under the lock)."""
