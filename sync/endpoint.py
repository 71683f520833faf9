"""Actor side of both channels: one object the actor's serve loop polls."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

from sync import tensors as T
from sync._net import IoThread, connect_host, max_bytes, new_incarnation, setup_client
from sync.interfaces import ReceivedWeights
from sync.wire import (
    Heartbeat,
    Hello,
    RolloutGroup,
    RolloutRequest,
    Shutdown,
    WeightAck,
    WeightUpdate,
    Welcome,
    WireError,
    decode,
    encode,
)

log = logging.getLogger("sync.endpoint")


def _default_shm_dir(actor_id: str, base: Path | None = None) -> Path:
    """A fresh ``tucano2-sync-p<pid>-<actor>-*`` directory on /dev/shm (else the temp dir). Directories
    left by actors that died without cleaning up (SIGKILL) are removed first: their pid is gone."""
    if base is None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    for d in base.glob("tucano2-sync-p*-*"):
        m = re.match(r"tucano2-sync-p(\d+)-", d.name)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"tucano2-sync-p{os.getpid()}-{actor_id}-", dir=base))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _peek_version(frames) -> int | None:
    """The version field of a weight message too broken to decode, for the refusal ack."""
    try:
        head = msgpack.unpackb(frames[0].buffer, raw=False)
        v = head[3]["version"]
        return v if type(v) is int else None
    except Exception:
        return None


class ActorEndpoint(IoThread):
    """Actor end of the rollout and weight channels.

    Socket invariants:

    * The actor **connects** two DEALERs (identity = ``actor_id``) to the learner's ROUTERs at
      ``cfg.connect_host or cfg.host`` on ``cfg.rollout_port`` / ``cfg.weight_port`` (override with
      ``rollout_port=``/``weight_port=``), CURVE clients when the learner is a CURVE server. ZeroMQ
      reconnects by itself when the learner restarts; the endpoint then says Hello again on the
      next heartbeat's answer (heartbeats register an unknown actor too).
    * A background thread sends Hello at start and a :class:`Heartbeat` on both sockets every
      ``cfg.heartbeat_s`` (the last one given to :meth:`heartbeat`, with the endpoint's own queue depth
      and in-flight counts), so a long ``generate`` call does not make the actor look dead.
    * Weight updates are received zero-copy, refused when oversized (``cfg.max_message_mb``, also
      ``MAXMSGSIZE`` per frame), malformed, out of order (version <= the newest accepted) or failing
      their checksum: logged, and an ``ok=False`` ack sent where a version can be read. Accepted ones
      are verified and written to ``shm_dir/v{version}`` (one ``writev``) by the background thread,
      then surface from :meth:`poll` as :class:`ReceivedWeights` (only the newest if several are
      waiting). The newest ``keep_versions`` directories are kept.
    * Requests are held back (they stay queued, never dropped) until the actor serves the latest
      version the learner announced in its Welcome and at least the request's ``min_version``
      (``gate_on_weights=False`` only waits for ``min_version``). "Serves" means acked ok via
      :meth:`send_ack`.
    * Outgoing groups and acks are queued in memory and sent by the background thread (never
      dropped; ``SNDHWM`` = ``hwm``); ``close()`` lingers up to 1 s for them to leave.
    """

    def __init__(
        self,
        cfg,
        actor_id: str,
        shm_dir: str | os.PathLike | None = None,
        *,
        version: int = -1,
        rollout_port: int | None = None,
        weight_port: int | None = None,
        require_curve: bool = False,
        gate_on_weights: bool = True,
        keep_versions: int = 3,
        hwm: int = 1000,
    ):
        super().__init__(f"sync-actor-{actor_id}")
        self.cfg = cfg
        self.actor_id = actor_id
        self.incarnation = new_incarnation()
        self._max_bytes = max_bytes(cfg)
        self._own_shm = shm_dir is None
        self.shm_dir = _default_shm_dir(actor_id) if shm_dir is None else Path(shm_dir)
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        self._keep = keep_versions
        self._gate = gate_on_weights
        host = connect_host(cfg)
        socks = []
        try:
            for port, default, limit in (
                (rollout_port, cfg.rollout_port, self._max_bytes),
                (weight_port, cfg.weight_port, self._max_bytes),
            ):
                s = self._ctx.socket(zmq.DEALER)
                socks.append(s)
                s.setsockopt(zmq.IDENTITY, actor_id.encode())
                s.setsockopt(zmq.SNDHWM, hwm)
                s.setsockopt(zmq.RCVHWM, hwm)
                s.setsockopt(zmq.MAXMSGSIZE, limit)
                s.setsockopt(zmq.LINGER, 1000)
                setup_client(s, cfg, require_curve)
                s.connect(f"tcp://{host}:{default if port is None else port}")
        except BaseException:
            for s in socks:
                s.close(0)
            self._close()
            raise
        self._rsock, self._wsock = socks
        self._sockets = socks
        # state shared with the I/O thread (under self._cv)
        self._requests: collections.deque[RolloutRequest] = collections.deque()
        self._weights: list[ReceivedWeights] = []
        self._shutdown: Shutdown | None = None
        self._outbox: collections.deque[tuple[zmq.Socket, list]] = collections.deque()
        self._served = version  # acked ok by the actor
        self._accepted = version  # newest verified update
        self._announced: int | None = None  # the learner's Welcome
        self._last_ack: WeightAck | None = None
        self._in_flight = 0
        self._tokens_per_s = 0.0
        self._hb_due = 0.0
        self._said_hello = False
        self._learner: str | None = None  # incarnation of the learner that welcomed us
        self._rolled_back = False
        self._prune_due = False
        self._start()

    # ------------------------------------------------------------------ public API (actor thread)
    @property
    def version(self) -> int:
        return self._served

    def poll(self, timeout_s: float) -> RolloutRequest | ReceivedWeights | Shutdown | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            while True:
                self._check_alive()
                if self._shutdown is not None:
                    return self._shutdown
                if self._weights:
                    w = self._weights[-1]
                    self._weights.clear()
                    return w
                ready = not self._gate or (
                    self._announced is not None and self._served >= self._announced and not self._rolled_back
                )
                if ready:
                    for i, req in enumerate(self._requests):
                        if req.min_version <= self._served:
                            del self._requests[i]
                            self._in_flight += 1
                            return req
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def send_group(self, group: RolloutGroup) -> None:
        self._queue(self._rsock, encode(group))
        with self._cv:
            self._in_flight = max(0, self._in_flight - 1)

    def send_ack(self, ack: WeightAck) -> None:
        with self._cv:
            if ack.ok:
                self._served = ack.version
                self._rolled_back = False
                self._cv.notify_all()
            self._last_ack = ack
        self._queue(self._wsock, encode(ack))

    def heartbeat(self, hb: Heartbeat) -> None:
        """Record the actor's throughput and send a heartbeat now (they also go out periodically)."""
        with self._cv:
            self._tokens_per_s = hb.tokens_per_s
            self._hb_due = 0.0
        self._wake()

    def close(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self._closed and self._failed is None:
            with self._cv:
                if not self._outbox:
                    break
                self._cv.wait(0.05)
        self._close(linger_ms=200)
        if self._own_shm:
            shutil.rmtree(self.shm_dir, ignore_errors=True)

    # ------------------------------------------------------------------ I/O thread
    def _queue(self, sock, frames) -> None:
        self._check_alive()
        with self._cv:
            self._outbox.append((sock, frames))
        self._wake()

    def _flush(self) -> None:
        while self._outbox:
            sock, frames = self._outbox[0]
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._outbox.popleft()
        if not self._outbox:
            self._cv.notify_all()

    def _on_tick(self, now: float) -> None:
        if self._prune_due:
            self._prune()
        if now < self._hb_due:
            return
        first, self._said_hello = not self._said_hello, True
        self._hb_due = now + self.cfg.heartbeat_s
        hb = Heartbeat(
            self.actor_id, self._served, len(self._requests), self._in_flight, self._tokens_per_s, self.incarnation
        )
        msgs = [encode(Hello(self.actor_id, self.incarnation, self._served))] if first else []
        msgs.append(encode(hb))
        for s in self._sockets:
            for frames in msgs:
                try:
                    s.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # heartbeats are dropped, not queued, when the learner is not reading

    def _on_frames(self, sock, frames) -> None:
        limit = self._max_bytes
        try:
            msg = decode(frames, limit)
        except WireError as e:
            if sock is self._wsock:
                v = _peek_version(frames)
                log.warning("endpoint %s: refused a weight update (v%s): %s", self.actor_id, v, e)
                if v is not None:
                    self._refuse(v, str(e), "")
            else:
                log.warning("endpoint %s: refused a message: %s", self.actor_id, e)
            return
        if isinstance(msg, RolloutRequest):
            self._requests.append(msg)
        elif isinstance(msg, WeightUpdate):
            self._on_weights(msg)
        elif isinstance(msg, Welcome):
            if self._learner is not None and msg.incarnation != self._learner and 0 <= msg.version < self._served:
                log.warning(
                    "endpoint %s: a new learner resumed at v%d, older than the v%d served; taking it next",
                    self.actor_id,
                    msg.version,
                    self._served,
                )
                self._accepted, self._rolled_back = -1, True
            self._learner = msg.incarnation
            self._announced = msg.version
            log.info("endpoint %s: learner's latest version is v%d", self.actor_id, msg.version)
        elif isinstance(msg, Shutdown):
            self._shutdown = msg
        else:
            log.warning("endpoint %s: unexpected %s dropped", self.actor_id, type(msg).__name__)
            return
        self._cv.notify_all()

    def _refuse(self, version: int, error: str, checksum: str) -> None:
        ack = WeightAck(self.actor_id, version, False, 0.0, checksum, error[:500])
        self._outbox.append((self._wsock, encode(ack)))

    def _on_weights(self, u: WeightUpdate) -> None:
        if u.version <= self._accepted:
            if (
                u.version == self._accepted
                and self._last_ack is not None
                and self._last_ack.version == u.version
                and self._last_ack.checksum == u.checksum
            ):
                self._outbox.append((self._wsock, encode(self._last_ack)))  # our ack was lost: resend
                return
            log.warning(
                "endpoint %s: refused out-of-order update v%d (have v%d)", self.actor_id, u.version, self._accepted
            )
            return
        got = T.checksum(u.tensors, u.buffer)
        if got != u.checksum:
            log.warning(
                "endpoint %s: refused v%d: checksum mismatch (got %s, sent %s)",
                self.actor_id,
                u.version,
                got,
                u.checksum,
            )
            self._refuse(u.version, f"checksum mismatch: got {got}, sent {u.checksum}", got)
            return
        try:
            out = T.write_adapter_dir(
                self.shm_dir / f"v{u.version}",
                u.tensors,
                u.adapter_config,
                u.buffer,
                metadata={"format": "pt", "version": str(u.version), "checksum": u.checksum},
            )
        except OSError as e:
            log.error("endpoint %s: cannot write v%d to %s: %s", self.actor_id, u.version, self.shm_dir, e)
            self._refuse(u.version, f"write failed: {e}", got)
            return
        self._accepted = u.version
        if self._announced is None or u.version > self._announced:
            self._announced = u.version
        self._weights.append(ReceivedWeights(u.version, out, u.checksum, u.adapter_config))
        self._prune_due = True  # on the next tick: freeing tmpfs pages costs ~10 ms per 66 MB

    def _prune(self) -> None:
        self._prune_due = False

        dirs = sorted((p for p in self.shm_dir.glob("v*") if p.name[1:].isdigit()), key=lambda p: int(p.name[1:]))
        for p in dirs[: -self._keep]:
            if int(p.name[1:]) != self._served:
                shutil.rmtree(p, ignore_errors=True)


def serve_forever(endpoint: ActorEndpoint, handle_request, load_weights, idle_s: float = 0.5) -> str:
    """A minimal serve loop (what ``python -m actor`` does around a real engine).

    ``handle_request(req) -> RolloutGroup``; ``load_weights(ReceivedWeights) -> checksum loaded``.
    Returns the shutdown reason."""
    while True:
        item = endpoint.poll(idle_s)
        if item is None:
            continue
        if isinstance(item, Shutdown):
            return item.reason
        if isinstance(item, ReceivedWeights):
            t0 = time.monotonic()
            try:
                loaded = load_weights(item)
                ack = WeightAck(
                    endpoint.actor_id,
                    item.version,
                    loaded == item.checksum,
                    time.monotonic() - t0,
                    loaded,
                    None if loaded == item.checksum else "loaded checksum differs",
                )
            except Exception as e:  # keep serving the last good adapter
                ack = WeightAck(endpoint.actor_id, item.version, False, time.monotonic() - t0, "", repr(e))
            endpoint.send_ack(ack)
        else:
            endpoint.send_group(handle_request(item))
