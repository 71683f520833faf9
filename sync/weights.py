"""Learner side of the weight channel: fan each adapter version out to every actor, collect acks."""

from __future__ import annotations

import collections
from collections.abc import Callable
import logging
import time
from dataclasses import dataclass, field

import zmq

from sync import tensors as T
from sync._net import DEAD_AFTER_HEARTBEATS, IoThread, new_incarnation, setup_server
from sync.interfaces import SyncError
from sync.limits import CONTROL_BYTES, ChannelLimits
from sync.wire import Heartbeat, Hello, WeightAck, WeightUpdate, Welcome, WireError, decode, encode

log = logging.getLogger("sync.weights")


def jsonable(obj):
    """adapter_config -> plain JSON values (PEFT's to_dict has sets, enums and paths)."""
    import enum
    import os

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(jsonable(v) for v in obj)
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


@dataclass
class _Actor:
    actor_id: str
    incarnation: str
    last_seen: float
    version: int  # what it reports serving (possibly a version of a learner before this one)
    sent: int = -1  # newest version sent to this incarnation (-1: none)
    served: int = -2  # version of *this* learner it serves (-2: none yet)
    acks: dict[int, WeightAck] = field(default_factory=dict)


class ZmqWeightPublisher(IoThread):
    """Learner end of the weight channel (implements :class:`sync.WeightPublisher`).

    Socket invariants:

    * The learner **binds** one ROUTER on ``cfg.weight_port`` (``port=0``: a free one, see ``.port``), ipc
      or TCP + CURVE exactly as the rollout channel (who may connect: :mod:`sync._net`); each actor
      connects a DEALER with its actor id as identity. ``ROUTER_MANDATORY`` and ``ROUTER_HANDOVER`` on;
      LINGER 0. Only small messages come back: ``MAXMSGSIZE`` and the decode cap are
      ``sync.limits.CONTROL_BYTES``; refusals are counted and logged rate-limited.
    * Fan-out, not PUB/SUB: the learner knows each actor (Hello, heartbeats, acks) and sends the full
      adapter of the latest version to **every** live actor whose reported version is older, once
      per actor incarnation. An actor that says Hello (started or restarted late) gets
      ``Welcome(latest, incarnation)`` and then the latest version at once, so it can serve nothing older.
    * Versions are ordered within one learner ``incarnation``, carried by every update and echoed in acks
      and heartbeats. An actor counts as serving the latest only when it acknowledged it (or reports it)
      for this incarnation: an actor still serving a dead learner's newer version (this learner resumed
      from an older checkpoint) gets the latest like any other and takes it; acks of another learner's
      versions are ignored.
    * Latest wins: only the newest version is ever (re)sent. ``SNDHWM`` is ``hwm`` messages (default
      8); a send that would block is not queued but retried on later ticks with whatever is newest
      then. Tensor frames are built once per version and sent zero-copy to every actor.
    * Acks are matched against the checksum published for that version; :meth:`wait_acks` takes an
      ok ack of the version or a later one. Actors silent for 5 heartbeat periods are dropped from
      the set whose acks are awaited.
    * Payloads over what the actors accept (``limits.weights_bytes``) are refused at :meth:`publish`
      (SyncError) instead of being dropped by every actor.
    """

    def __init__(
        self,
        cfg,
        *,
        port: int | None = None,
        limits: ChannelLimits | None = None,
        incarnation: str | None = None,
        hwm: int = 8,
        wire_dtype: str | None = None,
    ):
        super().__init__("sync-weights", "weights")
        self.cfg = cfg
        self.wire_dtype = wire_dtype or getattr(cfg, "wire_dtype", "bf16")
        self.limits = limits or ChannelLimits.default(cfg.max_message_mb)
        self._dead_after = DEAD_AFTER_HEARTBEATS * cfg.heartbeat_s
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_BYTES)  # only small messages come back (acks, heartbeats)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            self._auth = setup_server(self._ctx, sock, cfg)
            self.port = self._bind(sock, cfg, cfg.weight_port if port is None else port)
        except BaseException:
            sock.close(0)
            self._close()
            raise
        self._sock = sock
        self._sockets = [sock]
        self._actors: dict[str, _Actor] = {}
        self._latest = -1  # nothing published: actors serve the base weights
        self._frames: list = []  # zmq.Frames of the latest version
        self._checksums: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._welcome: list[str] = []  # actors owed a Welcome
        self.incarnation = incarnation or new_incarnation()
        self._owner: bytearray | None = None  # packing buffer of the latest version
        self._retiring: list = []  # (tracker, buffer) of superseded versions, reused once done
        self._start()

    # ------------------------------------------------------------------ public API
    def publish(self, version: int, tensors, adapter_config: dict) -> str:
        self._check_alive()
        if version <= self._latest:
            raise SyncError(f"publish: version {version} is not newer than {self._latest}")
        out = self._buffer(T.packed_nbytes(tensors, self.wire_dtype))
        blobs, buf = T.pack(tensors, self.wire_dtype, out=out)
        return self.publish_blobs(version, blobs, jsonable(adapter_config), buf, _owner=out)

    def _buffer(self, nbytes: int) -> bytearray:
        """A packing buffer of ``nbytes``: one libzmq no longer holds, else a new one."""
        with self._cv:
            for i, (tracker, b) in enumerate(self._retiring):
                if tracker.done and len(b) == nbytes:
                    del self._retiring[i]
                    return b
        return bytearray(nbytes)

    def publish_blobs(
        self,
        version: int,
        blobs: dict,
        adapter_config: dict,
        buffer=None,
        checksum: str | None = None,
        _owner: bytearray | None = None,
    ) -> str:
        """Publish tensors already on the wire's dtype (``buffer``: their packed name-order buffer)."""
        self._check_alive()
        checksum = checksum or T.checksum(blobs, buffer)
        frames = encode(WeightUpdate(version, adapter_config, blobs, checksum, buffer, self.incarnation))
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.limits.weights_bytes:
            raise SyncError(
                f"publish: v{version} is {size / 2**20:.1f} MiB, over what actors accept "
                f"({self.limits.weights_bytes / 2**20:.1f} MiB; sync.max_message_mb caps it)"
            )
        # built once, sent zero-copy to every actor; the tracker says when libzmq let go of the buffer
        zframes = [zmq.Frame(f, track=_owner is not None and i == 1) for i, f in enumerate(frames)]
        with self._cv:
            if version <= self._latest:
                raise SyncError(f"publish: version {version} is not newer than {self._latest}")
            if self._owner is not None:
                self._retiring.append((self._frames[1].tracker, self._owner))
                del self._retiring[:-4]
            self._owner = _owner
            self._latest, self._frames = version, zframes
            self._checksums[version] = checksum
            while len(self._checksums) > 64:
                self._checksums.popitem(last=False)
        self._wake()
        return checksum

    def latest_version(self) -> int:
        return self._latest

    def actors(self) -> dict[str, int]:
        """Live actors -> the version of this learner each serves (-2: none of ours yet)."""
        with self._cv:
            return {a.actor_id: a.served for a in self._actors.values()}

    def acked(self) -> dict[str, WeightAck]:
        """Live actors -> their newest ack (ok or not)."""
        with self._cv:
            return {a.actor_id: a.acks[max(a.acks)] for a in self._actors.values() if a.acks}

    def wait_acks(
        self, version: int, timeout_s: float, min_actors: int = 1, stop: Callable[[], bool] | None = None
    ) -> dict[str, WeightAck]:
        """Every live actor's ok ack of ``version`` or later (at least ``min_actors`` of them).
        ``stop()``, checked every 0.1 s, ends the wait with a :class:`SyncError` (e.g. on SIGTERM)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                self._check_alive()
                if stop is not None and stop():
                    raise SyncError(f"interrupted while waiting for acks of v{version}")
                done, missing = {}, []
                for a in self._actors.values():
                    newer = [v for v in a.acks if v >= version]
                    if not newer:
                        missing.append(a.actor_id)
                        continue
                    ack = a.acks[max(newer)]
                    if not ack.ok:
                        raise SyncError(f"actor {a.actor_id} failed to load v{ack.version}: {ack.error}")
                    want = self._checksums.get(ack.version)
                    if ack.checksum != want:
                        raise SyncError(
                            f"actor {a.actor_id} acked v{ack.version} with checksum {ack.checksum}, published {want}"
                        )
                    done[a.actor_id] = ack
                if not missing and len(done) >= min_actors:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    who = ", ".join(missing) or f"(only {len(done)} of {min_actors} actors connected)"
                    raise SyncError(f"timed out after {timeout_s:.1f} s waiting for acks of v{version} from {who}")
                self._cv.wait(min(left, 0.1))

    def close(self) -> None:
        self._close(linger_ms=0)

    # ------------------------------------------------------------------ I/O thread
    def _on_frames(self, sock, frames) -> None:
        ident = frames[0].bytes.decode("utf-8", "replace")[:64]
        try:
            msg = decode(frames[1:], CONTROL_BYTES, 1024, 1024)
        except WireError as e:
            self.refusals.refuse("message", f"from {ident!r}: {e}")
            return
        now = time.monotonic()
        if isinstance(msg, (Hello, Heartbeat)):
            a = self._actors.get(ident)
            if a is None or (msg.incarnation and msg.incarnation != a.incarnation):
                a = self._actors[ident] = _Actor(ident, msg.incarnation, now, msg.version)
                self._welcome.append(ident)
                log.info("weights: actor %s connected serving v%d (latest v%d)", ident, msg.version, self._latest)
            elif isinstance(msg, Hello):
                self._welcome.append(ident)
            a.last_seen, a.version = now, msg.version
            if isinstance(msg, Heartbeat) and msg.learner == self.incarnation:
                a.served = msg.version
        elif isinstance(msg, WeightAck):
            a = self._actors.get(ident)
            if a is None:
                self.refusals.refuse("ack", f"from unknown actor {ident!r}")
                return
            a.last_seen = now
            if msg.learner != self.incarnation:
                self.refusals.refuse("ack of another learner", f"v{msg.version} from {ident}", logging.INFO)
                return
            a.acks[msg.version] = msg
            for v in [v for v in a.acks if v < msg.version - 64]:
                del a.acks[v]
            if msg.ok:
                a.served = max(a.served, msg.version)
            else:
                log.warning("weights: actor %s refused v%d: %s", ident, msg.version, msg.error)
            self._cv.notify_all()
        else:
            self.refusals.refuse("message", f"unexpected {type(msg).__name__} from {ident!r}")

    def _send(self, ident: str, frames, copy: bool = True) -> bool:
        try:
            self._sock.send_multipart([ident.encode(), *frames], zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            log.warning("weights: actor %s unreachable (%s); dropped", ident, e)
            self._actors.pop(ident, None)
            self._cv.notify_all()
            return False

    def _flush(self) -> None:
        while self._welcome:
            ident = self._welcome.pop(0)
            if ident in self._actors:
                self._send(ident, encode(Welcome(self._latest, self.incarnation)))
        if self._latest < 0:
            return
        for a in list(self._actors.values()):
            if a.sent != self._latest and a.served != self._latest:
                if self._send(a.actor_id, self._frames, copy=False):
                    a.sent = self._latest

    def _on_tick(self, now: float) -> None:
        for a in list(self._actors.values()):
            if now - a.last_seen > self._dead_after:
                log.warning("weights: actor %s silent for %.1f s, presumed dead", a.actor_id, now - a.last_seen)
                del self._actors[a.actor_id]
                self._cv.notify_all()
