"""Learner side of the rollout channel: dispatch requests to live actors, collect each group once."""

from __future__ import annotations

import collections
import logging
import queue
import time
from dataclasses import dataclass, field

import zmq

from sync._net import DEAD_AFTER_HEARTBEATS, IoThread, new_incarnation, setup_server
from sync.interfaces import SyncError
from sync.limits import ChannelLimits
from sync.wire import Heartbeat, Hello, RolloutGroup, RolloutRequest, Shutdown, WireError, decode, encode

log = logging.getLogger("sync.rollout")


@dataclass
class _Actor:
    actor_id: str
    incarnation: str
    last_seen: float
    heartbeat: Heartbeat
    in_flight: set[str] = field(default_factory=set)
    last_assigned: float = 0.0


class ZmqRolloutTransport(IoThread):
    """Learner end of the rollout channel (implements :class:`sync.RolloutTransport`).

    Socket invariants:

    * The learner **binds** one ROUTER on ``cfg.rollout_port`` (``port=0``: a free one, read back from
      ``.port``): ``p<port>.sock`` in the private ipc directory on one node, or ``tcp://{cfg.host}:<port>``
      as a CURVE server across nodes (who may connect: :mod:`sync._net`). Actors connect DEALERs whose
      identity is their actor id.
    * ``ROUTER_MANDATORY``: a send to an actor that is gone raises instead of vanishing, and the
      request goes back to the head of the queue. ``ROUTER_HANDOVER``: a restarted actor with the same
      id takes its identity over.
    * High-water marks: ``hwm`` messages each way per actor (default 1000). Sends never block: a
      request that would block goes back to the head of the queue and is retried on the next tick.
      Requests wait in the learner's own queue (at most ``max_pending`` submitted-but-undelivered
      requests; ``submit`` raises SyncError beyond that) and each live actor gets the next request
      when it has the fewest in flight (ties: the longest idle).
    * What comes in is capped at what a group can legitimately need (``limits.group_bytes``, derived from
      the run's lengths, :mod:`sync.limits`): ``MAXMSGSIZE`` drops a connection sending a larger frame,
      :func:`sync.wire.decode` refuses larger totals and forged msgpack headers; ``RCVHWM`` 64 messages per
      actor, so at most 64 caps are queued per connection. Refusals are counted and logged rate-limited.
    * Every request carries this transport's ``incarnation`` (``learner``); a group answering another
      learner's request (one that died, its actor still generating) is dropped and counted
      (``dropped_foreign``), even if its request id is one of ours.
    * Liveness: an actor is live from its Hello/heartbeat until it is silent for 5 heartbeat periods
      (``cfg.heartbeat_s``) or a new incarnation of it says Hello; then its in-flight requests are
      re-sent to other actors. A request unanswered after ``cfg.request_timeout_s`` is re-sent too,
      preferably to an actor it was not sent to before.
    * Exactly once: a group is delivered only for a submitted, undelivered request id of this learner; later copies
      (duplicates, answers to re-sent requests) and groups for unknown ids are dropped and logged.
      Delivered groups wait in an unbounded local queue (bounded by ``max_pending``) for ``receive``.
    * ``close()`` sends Shutdown to live actors (unless ``shutdown_actors=False``), linger 200 ms.
    """

    def __init__(
        self,
        cfg,
        *,
        port: int | None = None,
        limits: ChannelLimits | None = None,
        incarnation: str | None = None,
        hwm: int = 1000,
        max_pending: int = 10000,
        request_timeout_s: float | None = None,
    ):
        super().__init__("sync-rollout", "rollout")
        self.cfg = cfg
        self.limits = limits or ChannelLimits.default(cfg.max_message_mb)
        self.incarnation = incarnation or new_incarnation()
        self._dead_after = DEAD_AFTER_HEARTBEATS * cfg.heartbeat_s
        self._request_timeout = request_timeout_s or cfg.request_timeout_s
        self._max_pending = max_pending
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.group_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self._auth = setup_server(self._ctx, sock, cfg)
            self.port = self._bind(sock, cfg, cfg.rollout_port if port is None else port)
        except BaseException:
            sock.close(0)
            self._close()
            raise
        self._sock = sock
        self._sockets = [sock]
        self._actors: dict[str, _Actor] = {}
        self._requests: dict[str, tuple[RolloutRequest, list]] = {}  # submitted, undelivered
        self._pending: collections.deque[str] = collections.deque()
        self._assigned: dict[str, tuple[str, float]] = {}  # request id -> (actor id, sent at)
        self._tried: dict[str, set[str]] = {}  # request id -> actors it was sent to
        self._delivered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._out: queue.Queue[RolloutGroup] = queue.Queue()
        self._shutdown_reason: str | None = None
        self.dropped_duplicates = 0
        self.dropped_foreign = 0
        self.resent = 0
        self._start()

    # ------------------------------------------------------------------ public API (any thread)
    def submit(self, req: RolloutRequest) -> None:
        self._check_alive()
        if not req.learner:
            req.learner = self.incarnation
        frames = encode(req)
        with self._cv:
            rid = req.request_id
            if rid in self._requests or rid in self._delivered:
                raise SyncError(f"request id {rid!r} was already submitted")
            if len(self._requests) >= self._max_pending:
                raise SyncError(f"{len(self._requests)} requests pending (max_pending): receive groups first")
            self._requests[rid] = (req, frames)
            self._pending.append(rid)
        self._wake()

    def receive(self, timeout_s: float) -> RolloutGroup | None:
        self._check_alive()
        try:
            return self._out.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            self._check_alive()
            return None

    def actors(self) -> dict[str, Heartbeat]:
        with self._cv:
            return {a.actor_id: a.heartbeat for a in self._actors.values()}

    def assignments(self) -> dict[str, str]:
        """Request id -> the actor now holding it, for sent requests whose group has not come back."""
        with self._cv:
            return {rid: aid for rid, (aid, _) in self._assigned.items()}

    def pending(self) -> int:
        """Submitted requests whose group has not been delivered yet."""
        with self._cv:
            return len(self._requests)

    def close(self, shutdown_actors: bool = True, reason: str = "learner closed") -> None:
        if shutdown_actors and not self._closed and self._failed is None:
            with self._cv:
                self._shutdown_reason = reason
            self._wake()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                with self._cv:
                    if self._shutdown_reason is None:
                        break
                    self._cv.wait(0.05)
        self._close(linger_ms=200)

    # ------------------------------------------------------------------ I/O thread
    def _on_frames(self, sock, frames) -> None:
        ident = frames[0].bytes.decode("utf-8", "replace")[:64]
        try:
            msg = decode(frames[1:], self.limits.group_bytes, self.limits.max_array_len, self.limits.max_map_len)
        except WireError as e:
            self.refusals.refuse("message", f"from {ident!r}: {e}")
            return
        now = time.monotonic()
        if isinstance(msg, (Hello, Heartbeat)):
            self._seen(ident, msg, now)
        elif isinstance(msg, RolloutGroup):
            self._on_group(ident, msg, now)
        else:
            self.refusals.refuse("message", f"unexpected {type(msg).__name__} from {ident!r}")

    def _seen(self, ident: str, msg: Hello | Heartbeat, now: float) -> None:
        a = self._actors.get(ident)
        if a is not None and msg.incarnation and a.incarnation and msg.incarnation != a.incarnation:
            log.warning("rollout: actor %s restarted; re-sending its %d requests", ident, len(a.in_flight))
            self._forget(a)
            a = None
        hb = msg if isinstance(msg, Heartbeat) else Heartbeat(ident, msg.version, 0, 0, 0.0, msg.incarnation)
        if a is None:
            a = self._actors[ident] = _Actor(ident, msg.incarnation, now, hb)
            log.info("rollout: actor %s is live (version %d)", ident, msg.version)
        a.last_seen, a.heartbeat = now, hb
        a.incarnation = a.incarnation or msg.incarnation

    def _on_group(self, ident: str, g: RolloutGroup, now: float) -> None:
        rid = g.request_id
        a = self._actors.get(ident)
        if a is not None:
            a.last_seen = now
        if g.learner != self.incarnation:  # answers a request of a learner before us (it died, we resumed)
            self.dropped_foreign += 1
            self.refusals.refuse("group of another learner", f"{rid} from {ident} (learner {g.learner!r})",
                                 logging.INFO)
            return
        if a is not None:
            a.in_flight.discard(rid)
        if rid in self._delivered:
            self.dropped_duplicates += 1
            self.refusals.refuse("duplicate group", f"{rid} from {ident}", logging.INFO)
            return
        if rid not in self._requests:
            self.refusals.refuse("group for an unknown request", f"{rid} from {ident}")
            return
        del self._requests[rid]
        self._tried.pop(rid, None)
        owner = self._assigned.pop(rid, None)
        if owner is not None and owner[0] in self._actors:
            self._actors[owner[0]].in_flight.discard(rid)
        try:
            self._pending.remove(rid)  # answered by an actor presumed dead, before its re-send went out
        except ValueError:
            pass
        self._delivered[rid] = None
        while len(self._delivered) > 100_000:
            self._delivered.popitem(last=False)
        self._out.put(g)

    def _forget(self, a: _Actor) -> None:
        """Drop an actor; its in-flight requests go back to the head of the queue, in order."""
        self._actors.pop(a.actor_id, None)
        back = [rid for rid in a.in_flight if rid in self._requests]
        back.sort(key=lambda r: self._assigned.get(r, ("", 0.0))[1])
        for rid in reversed(back):
            self._assigned.pop(rid, None)
            self._pending.appendleft(rid)
        self.resent += len(back)

    def _on_tick(self, now: float) -> None:
        for a in list(self._actors.values()):
            if now - a.last_seen > self._dead_after:
                log.warning(
                    "rollout: actor %s silent for %.1f s, presumed dead; re-sending %d requests",
                    a.actor_id,
                    now - a.last_seen,
                    len(a.in_flight),
                )
                self._forget(a)
        for rid, (aid, sent) in list(self._assigned.items()):
            if now - sent > self._request_timeout and len(self._actors) > 0:
                log.warning("rollout: request %s unanswered by %s after %.0f s; re-sending", rid, aid, now - sent)
                self._assigned.pop(rid)
                if aid in self._actors:
                    self._actors[aid].in_flight.discard(rid)
                self._pending.appendleft(rid)
                self.resent += 1

    def _flush(self) -> None:
        if self._shutdown_reason is not None:
            frames = encode(Shutdown(self._shutdown_reason))
            for aid in list(self._actors):
                try:
                    self._sock.send_multipart([aid.encode(), *frames], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self._shutdown_reason = None
            self._cv.notify_all()
            return
        while self._pending and self._actors:
            rid = self._pending[0]
            if rid not in self._requests:
                self._pending.popleft()
                continue
            tried = self._tried.setdefault(rid, set())
            a = min(
                self._actors.values(),  # prefer actors it was not sent to yet, then the least busy
                key=lambda x: (x.actor_id in tried, len(x.in_flight), x.last_assigned),
            )
            _, frames = self._requests[rid]
            try:
                self._sock.send_multipart([a.actor_id.encode(), *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # the actor's queue is full: retry on the next turn
            except zmq.ZMQError as e:  # EHOSTUNREACH: the actor is gone
                log.warning("rollout: actor %s unreachable (%s)", a.actor_id, e)
                self._forget(a)
                continue
            self._pending.popleft()
            now = time.monotonic()
            self._assigned[rid] = (a.actor_id, now)
            tried.add(a.actor_id)
            a.in_flight.add(rid)
            a.last_assigned = now
