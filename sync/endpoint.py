"""Actor side of both channels: one object the actor's serve loop polls. What it does with a weight message (admit,
receive, check, stage) is :mod:`sync.endpoint_weights`, which :class:`ActorEndpoint` inherits."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

from sync._net import IoThread, connect_address, new_incarnation, pid_dir, setup_client, transport_kind
from sync.endpoint_weights import WeightReceiver
from sync.interfaces import ReceivedWeights
from sync.limits import ChannelLimits
from sync.wire import (
    Heartbeat,
    Hello,
    RolloutGroup,
    RolloutRequest,
    Shutdown,
    WeightAck,
    WeightFile,
    WeightSealed,
    WeightUpdate,
    Welcome,
    WireError,
    decode,
    encode,
)

log = logging.getLogger("sync.endpoint")


def _default_shm_dir(actor_id: str, base: Path | None = None) -> Path:
    """A fresh ``tucano2-sync-p<pid>-<actor>-*`` directory on /dev/shm (else the temp dir); those of dead
    actors (SIGKILL) are removed first."""
    if base is None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return pid_dir("tucano2-sync", base, actor_id)


def _peek_update(frames) -> tuple[int | None, str]:
    """(version, learner) of a weight message too broken to decode, for the refusal ack."""
    try:
        body = msgpack.unpackb(frames[0].buffer, raw=False)[3]
        v, learner = body["version"], body.get("learner", "")
        return (v if type(v) is int else None), (learner if isinstance(learner, str) else "")
    except Exception:
        return None, ""


class ActorEndpoint(WeightReceiver, IoThread):
    """Actor end of the rollout and weight channels.

    Socket invariants:

    * The actor **connects** two DEALERs (identity = ``actor_id``) to the learner's ROUTERs on
      ``cfg.rollout_port`` / ``cfg.weight_port`` (override with ``rollout_port=``/``weight_port=``): the
      ipc files in the private ipc directory on one node, or TCP to ``cfg.connect_host or cfg.host`` as a
      CURVE client across nodes (who may connect: :mod:`sync._net`). ZeroMQ reconnects by itself when the
      learner restarts; heartbeats register the actor with the new learner.
    * A background thread sends Hello at start and a :class:`Heartbeat` on both sockets every
      ``cfg.heartbeat_s`` (the last one given to :meth:`heartbeat`, with the endpoint's own queue depth
      and in-flight counts), so a long ``generate`` call does not make the actor look dead.
    * Caps (``limits``, :mod:`sync.limits`): requests up to ``limits.request_bytes``, weight updates up to
      ``limits.weights_bytes`` (``MAXMSGSIZE`` per socket and the decode caps); a group larger than the
      learner's ``limits.group_bytes`` is replaced by an error group before it is sent. Refusals are
      counted and logged rate-limited.
    * A :class:`sync.wire.WeightFile` (one node, ``sync.weight_transfer: file``) names a file the learner wrote
      once: it is hard-linked (copied across filesystems) into ``shm_dir/v{version}``, refused unless it is a
      regular file of this user of the announced size within ``limits.weights_bytes`` whose checksum matches,
      and then handled as an accepted update.
    * A :class:`sync.wire.WeightSealed` (across nodes, ``sync.weight_transfer: sealed``) is fetched over a third
      DEALER, plain TCP (made with the endpoint over TCP, connected to the port the notice names; no identity
      set; ``MAXMSGSIZE`` the weights cap + the tag): a :class:`sync.wire.Fetch` with the notice's ticket, asked
      again every ``FETCH_RETRY_S`` until the answer comes or a newer version replaces it. The answer is opened
      with the notice's key (:mod:`sync.seal`), must be the announced version with the announced checksum, and is
      then handled as an inline update. A frame failing authentication is fetched again, and acked ``ok=False``
      after the third failure. Heartbeats never go to this socket.
    * Weight updates are received zero-copy, refused when oversized, malformed, out of order (version <=
      the newest accepted from the same learner) or failing their checksum: logged, and an ``ok=False``
      ack sent where a version can be read. Accepted ones are verified and written to
      ``shm_dir/v{version}`` (one ``writev``) by the background thread, then surface from :meth:`poll` as
      :class:`ReceivedWeights` (only the newest if several are waiting). The newest ``keep_versions``
      directories are kept.
    * Learner incarnations: a Welcome or an update from a new learner incarnation (restarted, or resumed
      from an older checkpoint) starts a new version order. From then on the actor serves nothing until it
      has loaded that learner's version, whatever version it served before; queued requests of the replaced
      learner, and any that still arrive, are dropped and counted (``dropped_foreign``).
    * Requests are held back (they stay queued, never dropped) until the actor serves the latest version
      the current learner announced and at least the request's ``min_version`` (``gate_on_weights=False``
      only waits for ``min_version``). "Serves" means acked ok via :meth:`send_ack`.
    * A request whose id is already held (queued, or handed out and not yet answered: the learner re-sent
      it after ``request_timeout_s``) is dropped as a duplicate (``dropped_duplicates``); its one group is
      sent when it is done.
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
        limits: ChannelLimits | None = None,
        gate_on_weights: bool = True,
        keep_versions: int = 3,
        hwm: int = 1000,
    ):
        super().__init__(f"sync-actor-{actor_id}", f"endpoint {actor_id}")
        self.cfg = cfg
        self.actor_id = actor_id
        self.incarnation = new_incarnation()
        self.limits = limits or ChannelLimits.default(cfg.max_message_mb)
        # A DEALER's messages have no identity frame; a weight update is its header and one frame per tensor
        # at most (one packed buffer as the learner sends it), as many as the header's rows may list.
        self.max_frames = 1 + self.limits.max_array_len
        self._own_shm = shm_dir is None
        self.shm_dir = _default_shm_dir(actor_id) if shm_dir is None else Path(shm_dir)
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        self._keep = keep_versions
        self._gate = gate_on_weights
        socks = []
        try:
            for port, default, cap in (
                (rollout_port, cfg.rollout_port, self.limits.request_bytes),
                (weight_port, cfg.weight_port, self.limits.weights_bytes),
            ):
                s = self._ctx.socket(zmq.DEALER)
                socks.append(s)
                s.setsockopt(zmq.IDENTITY, actor_id.encode())
                s.setsockopt(zmq.SNDHWM, hwm)
                s.setsockopt(zmq.RCVHWM, hwm)
                s.setsockopt(zmq.MAXMSGSIZE, cap)
                s.setsockopt(zmq.LINGER, 1000)
                setup_client(s, cfg)
                s.connect(connect_address(cfg, default if port is None else port))
        except BaseException:
            for s in socks:
                s.close(0)
            self._close()
            raise
        self._rsock, self._wsock = socks
        self._sockets = socks
        self._fsock: zmq.Socket | None = None  # sealed weights: made over TCP, connected to the notice's port
        if transport_kind(cfg) == "tcp":
            fs = self._fsock = self._ctx.socket(zmq.DEALER)
            fs.setsockopt(zmq.LINGER, 0)
            fs.setsockopt(zmq.SNDHWM, 16)
            fs.setsockopt(zmq.RCVHWM, 4)
            fs.setsockopt(zmq.MAXMSGSIZE, self.limits.weights_bytes + 64)
            self._sockets = [*socks, fs]
        self._fetch_addr = ""
        self._sealed: WeightSealed | None = None  # the notice whose sealed frames are awaited
        self._fetch_due = 0.0
        self._fetch_tries = 0
        self._open_buf: bytearray | None = None
        # state shared with the I/O thread (under self._cv)
        self._requests: collections.deque[RolloutRequest] = collections.deque()
        self._held: set[tuple[str, str]] = set()  # (learner, request id): queued or handed out, not answered
        self._weights: list[ReceivedWeights] = []
        self._shutdown: Shutdown | None = None
        self._outbox: collections.deque[tuple[zmq.Socket, list]] = collections.deque()
        self._served, self._served_learner = version, ""  # acked ok by the actor
        self._accepted, self._accepted_learner = version, ""  # newest verified update
        self._learner: str | None = None  # incarnation of the learner we follow
        self._past: set[str] = set()  # learners replaced since
        self._announced: int | None = None  # the current learner's Welcome
        self._last_ack: WeightAck | None = None
        self._tokens_per_s = 0.0
        self._hb_due = 0.0
        self._said_hello = False
        self._prune_due = False
        self.dropped_foreign = 0
        self.dropped_duplicates = 0
        self._start()

    # ------------------------------------------------------------------ public API (actor thread)
    @property
    def version(self) -> int:
        return self._served

    def _ready(self) -> bool:
        if not self._gate:
            return True
        if self._announced is None:
            return False
        if self._served_learner == self._learner and self._served >= self._announced:
            return True
        return self._announced < 0 and self._served < 0  # nothing published yet: the base weights

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
                if self._ready():
                    for i, req in enumerate(self._requests):
                        if req.min_version <= self._served:
                            del self._requests[i]
                            return req
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)

    def send_group(self, group: RolloutGroup) -> None:
        """Send the group answering a request from :meth:`poll`; an empty ``learner`` is filled in from the
        request it answers."""
        if not group.learner:  # the request handed out under this id (not one still queued)
            with self._cv:
                queued = {(r.learner, r.request_id) for r in self._requests}
                owners = [k[0] for k in self._held - queued if k[1] == group.request_id]
            group.learner = owners[0] if len(owners) == 1 else (self._learner or "")
        frames = encode(group)
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.limits.group_bytes:
            log.error("endpoint %s: group %s is %.1f MiB, over the learner's %.1f MiB cap; sending an error group",
                      self.actor_id, group.request_id, size / 2**20, self.limits.group_bytes / 2**20)
            frames = encode(RolloutGroup(group.request_id, group.actor_id, group.version, [], {"error": 1.0}, None,
                                         {**group.meta, "error": f"group of {size} bytes over the cap"},
                                         group.learner))
        self._queue(self._rsock, frames)
        with self._cv:
            self._held.discard((group.learner, group.request_id))

    def send_ack(self, ack: WeightAck) -> None:
        with self._cv:
            if ack.ok:
                self._served, self._served_learner = ack.version, ack.learner
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
        if self._sealed is not None and now >= self._fetch_due:
            log.info("endpoint %s: asking again for sealed v%d", self.actor_id, self._sealed.version)
            self._fetch()
        if now < self._hb_due:
            return
        first, self._said_hello = not self._said_hello, True
        self._hb_due = now + self.cfg.heartbeat_s
        in_flight = len(self._held) - len(self._requests)
        hb = Heartbeat(self.actor_id, self._served, len(self._requests), in_flight, self._tokens_per_s,
                       self.incarnation, self._served_learner)
        msgs = [encode(Hello(self.actor_id, self.incarnation, self._served))] if first else []
        msgs.append(encode(hb))
        for s in (self._rsock, self._wsock):
            for frames in msgs:
                try:
                    s.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # heartbeats are dropped, not queued, when the learner is not reading

    def _on_frames(self, sock, frames) -> None:
        if sock is self._fsock:
            self._on_sealed_answer(frames)
            self._cv.notify_all()
            return
        lim = self.limits
        cap = lim.weights_bytes if sock is self._wsock else lim.request_bytes
        try:
            msg = decode(frames, cap, lim.max_array_len, lim.max_map_len)
        except WireError as e:
            if sock is self._wsock:
                v, learner = _peek_update(frames)
                self.refusals.refuse("weight update", f"v{v}: {e}")
                if v is not None:
                    self._refuse(v, str(e), "", learner)
            else:
                self.refusals.refuse("message", str(e))
            return
        if isinstance(msg, RolloutRequest):
            self._on_request(msg)
        elif isinstance(msg, WeightUpdate):
            self._on_weights(msg)
        elif isinstance(msg, WeightFile):
            self._on_weight_file(msg)
        elif isinstance(msg, WeightSealed) and self._fsock is not None:
            self._on_sealed(msg)
        elif isinstance(msg, Welcome):
            if msg.incarnation:
                self._follow(msg.incarnation)
            self._announced = msg.version
            log.info("endpoint %s: learner's latest version is v%d", self.actor_id, msg.version)
        elif isinstance(msg, Shutdown):
            self._shutdown = msg
        else:
            self.refusals.refuse("message", f"unexpected {type(msg).__name__}")
            return
        self._cv.notify_all()

    def _follow(self, learner: str) -> None:
        """Follow ``learner`` (a new incarnation starts a new version order); drop the old one's requests."""
        if learner == self._learner:
            return
        if self._learner is not None:
            self._past.add(self._learner)
            log.warning("endpoint %s: a new learner (%s, was %s); serving nothing until its version is loaded "
                        "(now serving v%d of %s)", self.actor_id, learner, self._learner, self._served,
                        self._served_learner or "base")
        self._learner, self._announced = learner, None
        stale = [r for r in self._requests if r.learner in self._past]
        for r in stale:
            self._requests.remove(r)
            self._held.discard((r.learner, r.request_id))
        self.dropped_foreign += len(stale)

    def _on_request(self, req: RolloutRequest) -> None:
        key = (req.learner, req.request_id)
        if req.learner in self._past:
            self.dropped_foreign += 1
            self.refusals.refuse("request of a replaced learner", req.request_id, logging.INFO)
        elif key in self._held:
            self.dropped_duplicates += 1
            self.refusals.refuse("duplicate request (already held; its group follows)", req.request_id,
                                 logging.INFO)
        else:
            self._held.add(key)
            self._requests.append(req)


def serve_forever(endpoint: ActorEndpoint, handle_request, load_weights, idle_s: float = 0.5) -> str:
    """A minimal serve loop (what ``python -m actor`` does around a real engine).

    ``handle_request(req) -> RolloutGroup``; ``load_weights(ReceivedWeights) -> checksum loaded`` (the
    adapter as received, so the served delta is the published one). Returns the shutdown reason."""
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
                    item.learner,
                    1.0 if loaded == item.checksum else None,  # loaded as received: the delta is served as is
                )
            except Exception as e:  # keep serving the last good adapter
                ack = WeightAck(endpoint.actor_id, item.version, False, time.monotonic() - t0, "", repr(e),
                                item.learner)
            endpoint.send_ack(ack)
        else:
            group = handle_request(item)
            group.learner = item.learner
            endpoint.send_group(group)
