"""Learner side of the weight channel: fan each adapter version out to every actor, collect acks."""

from __future__ import annotations

import collections
import hmac
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from sync import tensors as T
from sync._net import DEAD_AFTER_HEARTBEATS, IoThread, new_incarnation, pid_dir, setup_server, transport_kind
from sync.carry import Job, Writer, resolve_transfer, seal_job, write_file
from sync.interfaces import SyncError
from sync.limits import CONTROL_BYTES, ChannelLimits
from sync.wire import Fetch, Heartbeat, Hello, TensorBlob, WeightAck, WeightUpdate, Welcome, WireError, decode, encode

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


class _Done:
    done = True  # a written buffer: nobody holds it any more


_DONE = _Done()


def _tmp() -> Path:
    import tempfile

    return Path(tempfile.gettempdir())


def timeout_error(version: int, timeout_s: float, done: dict, missing: list[str], min_actors: int = 1) -> SyncError:
    """The one line a version unacknowledged after ``timeout_s`` stops the run with."""
    who = ", ".join(missing) or f"(only {len(done)} of {min_actors} actors connected)"
    return SyncError(f"timed out after {timeout_s:.1f} s waiting for acks of v{version} from {who}")


class ZmqWeightPublisher(IoThread):
    """Learner end of the weight channel (implements :class:`sync.WeightPublisher`).

    Socket invariants:

    * The learner **binds** one ROUTER on ``cfg.weight_port`` (``port=0``: a free one, see ``.port``), ipc
      or TCP + CURVE exactly as the rollout channel (who may connect: :mod:`sync._net`); each actor
      connects a DEALER with its actor id as identity. ``ROUTER_MANDATORY`` and ``ROUTER_HANDOVER`` on;
      LINGER 0. Only small messages come back: ``MAXMSGSIZE`` and the decode cap are
      ``sync.limits.CONTROL_BYTES``; refusals are counted and logged rate-limited.
    * How a version travels is ``transfer`` (``sync.weight_transfer``, :mod:`sync.carry`): inline in the message,
      or (one node) a file written once in the learner's private directory ``file_dir`` on /dev/shm (0700),
      which the message names, or (across nodes) sealed once for every actor (:mod:`sync.seal`): the message
      carries its key and ticket, and the actors fetch the sealed frames from a second ROUTER, the **fetch port**
      (``fetch_port``, default ``cfg.fetch_port``; 0: a free one, named in each message). It is plain TCP (what
      it serves is sealed already), answers only a :class:`sync.wire.Fetch` showing the ticket of a version it
      keeps (the newest 2), refuses and counts anything else, ``MAXMSGSIZE`` ``CONTROL_BYTES``, ``SNDHWM``
      ``hwm`` (answers that would block wait in memory, one per fetch). :meth:`publish` packs the tensors into
      a buffer of the publisher's (the snapshot: the caller may change its tensors as soon as it returns) and
      computes the checksum; the file is written (the version sealed) by a background thread, after which the
      version goes out.
    * Fan-out, not PUB/SUB: the learner knows each actor (Hello, heartbeats, acks) and sends the latest
      version to **every** live actor whose reported version is older, once per actor incarnation. An actor
      that says Hello (started or restarted late) gets ``Welcome(latest, incarnation)`` and then the latest
      version at once, so it can serve nothing older.
    * Versions are ordered within one learner ``incarnation``, carried by every update and echoed in acks
      and heartbeats. An actor counts as serving the latest only when it acknowledged it (or reports it)
      for this incarnation: an actor still serving a dead learner's newer version (this learner resumed
      from an older checkpoint) gets the latest like any other and takes it; acks of another learner's
      versions are ignored.
    * Latest wins: only the newest version is ever (re)sent. ``SNDHWM`` is ``hwm`` messages (default
      8); a send that would block is not queued but retried on later ticks with whatever is newest
      then. Tensor frames are built once per version and sent zero-copy to every actor.
    * Acks are matched against the checksum published for that version: :meth:`ack_status` (without
      waiting) and :meth:`wait_acks` take an ok ack of the version or a later one; :meth:`ack_of` is one
      actor's ack of one version (kept across that actor's restarts, the newest 4096). Actors silent for 5
      heartbeat periods are dropped from the set whose acks are awaited.
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
        transfer: str | None = None,
        file_dir: str | os.PathLike | None = None,
        fetch_port: int | None = None,
    ):
        super().__init__("sync-weights", "weights")
        self.cfg = cfg
        self.wire_dtype = wire_dtype or getattr(cfg, "wire_dtype", "bf16")
        self.transfer = resolve_transfer(cfg, transfer)
        if self.transfer == "file" and transport_kind(cfg) != "ipc":
            self._close()
            raise SyncError("sync.weight_transfer file needs every actor on the learner's node (transport ipc)")
        if self.transfer == "sealed" and transport_kind(cfg) != "tcp":
            self._close()
            raise SyncError("sync.weight_transfer sealed is for actors across nodes (transport tcp)")
        self.limits = limits or ChannelLimits.default(cfg.max_message_mb)
        self._dead_after = DEAD_AFTER_HEARTBEATS * cfg.heartbeat_s
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_BYTES)  # only small messages come back (acks, heartbeats)
        sock.setsockopt(zmq.LINGER, 0)
        self._fsock, self.fetch_port = None, 0
        try:
            self._auth = setup_server(self._ctx, sock, cfg)
            self.port = self._bind(sock, cfg, cfg.weight_port if port is None else port)
            if self.transfer == "sealed":
                fs = self._fsock = self._ctx.socket(zmq.ROUTER)
                fs.setsockopt(zmq.ROUTER_MANDATORY, 1)
                fs.setsockopt(zmq.SNDHWM, hwm)
                fs.setsockopt(zmq.RCVHWM, 100)
                fs.setsockopt(zmq.MAXMSGSIZE, CONTROL_BYTES)
                fs.setsockopt(zmq.LINGER, 0)
                self.fetch_port = self._bind(fs, cfg, getattr(cfg, "fetch_port", 0) if fetch_port is None
                                             else fetch_port)
        except BaseException:
            sock.close(0)
            if self._fsock is not None:
                self._fsock.close(0)
            self._close()
            raise
        self._sock = sock
        self._sockets = [sock] if self._fsock is None else [sock, self._fsock]
        self._fetchable: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._answers: collections.deque[tuple[bytes, list]] = collections.deque()  # fetch answers owed
        self._actors: dict[str, _Actor] = {}
        self._latest = -1  # newest version published (actors serve the base weights before the first)
        self._ready = -1  # newest version going out (file: once written)
        self._frames: list = []  # zmq.Frames of the ready version
        self._checksums: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._ack_log: collections.OrderedDict[tuple[str, int], tuple[WeightAck, float]] = collections.OrderedDict()
        self._welcome: list[str] = []  # actors owed a Welcome
        self.incarnation = incarnation or new_incarnation()
        self._owner: tuple | None = None  # (tracker, packing buffer) of the ready version (inline)
        self._retiring: list = []  # (tracker, buffer) of superseded versions, reused once done
        self.timings: collections.OrderedDict[int, dict] = collections.OrderedDict()
        """Per version: ``pack_ms``, ``checksum_ms``, ``write_ms`` (file), ``seal_ms`` (sealed), ``t_published``,
        ``t_ready``."""
        self.file_dir: Path | None = None
        self._writer: Writer | None = None
        if self.transfer == "file":
            base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
            self.file_dir = Path(file_dir) if file_dir is not None else pid_dir("tucano2-pub", base or _tmp())
            self.file_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.transfer != "inline":
            self._writer = Writer("sync-weights-write", self._write, lambda job: self._give_back(job.owner))
        self._start()

    # ------------------------------------------------------------------ public API
    def publish(self, version: int, tensors, adapter_config: dict) -> str:
        self._check_alive()
        if version <= self._latest:
            raise SyncError(f"publish: version {version} is not newer than {self._latest}")
        t0 = time.perf_counter()
        out = self._buffer(T.packed_nbytes(tensors, self.wire_dtype))
        blobs, buf = T.pack(tensors, self.wire_dtype, out=out)
        pack_ms = (time.perf_counter() - t0) * 1e3
        return self.publish_blobs(version, blobs, jsonable(adapter_config), buf, _owner=out, _pack_ms=pack_ms)

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
        _pack_ms: float = 0.0,
    ) -> str:
        """Publish tensors already on the wire's dtype (``buffer``: their packed name-order buffer)."""
        self._check_alive()
        t_pub, t0 = time.monotonic(), time.perf_counter()
        checksum = checksum or T.checksum(blobs, buffer)
        checksum_ms = (time.perf_counter() - t0) * 1e3
        frames = encode(WeightUpdate(version, adapter_config, blobs, checksum, buffer, self.incarnation))
        size = sum(memoryview(f).nbytes for f in frames)
        if size > self.limits.weights_bytes:
            raise SyncError(
                f"publish: v{version} is {size / 2**20:.1f} MiB, over what actors accept "
                f"({self.limits.weights_bytes / 2**20:.1f} MiB; sync.max_message_mb caps it)"
            )
        with self._cv:
            if version <= self._latest:
                raise SyncError(f"publish: version {version} is not newer than {self._latest}")
            self._latest = version
            self._checksums[version] = checksum
            while len(self._checksums) > 64:
                self._checksums.popitem(last=False)
            self.timings[version] = {"pack_ms": _pack_ms, "checksum_ms": checksum_ms, "t_published": t_pub}
            while len(self.timings) > 64:
                self.timings.popitem(last=False)
        if self._writer is not None:
            if buffer is None:  # blobs of their own: one contiguous copy, for a file written in one piece
                names = sorted(blobs)
                _owner = bytearray(b"".join(memoryview(blobs[n].data).cast("B") for n in names))
                buffer, off, blobs = memoryview(_owner), 0, dict(blobs)
                for n in names:
                    b = blobs[n]
                    blobs[n] = TensorBlob(b.dtype, b.shape, buffer[off: off + b.nbytes])
                    off += b.nbytes
            self._writer.submit(Job(version, blobs, buffer, adapter_config, checksum, self.incarnation, _owner))
            return checksum
        # built once, sent zero-copy to every actor; the tracker says when libzmq let go of the buffer
        zframes = [zmq.Frame(f, track=_owner is not None and i == 1) for i, f in enumerate(frames)]
        self._set_ready(version, zframes, (zframes[1].tracker, _owner) if _owner is not None else None)
        return checksum

    def _set_ready(self, version: int, zframes: list, retire: tuple | None) -> None:
        """``version`` goes out with ``zframes``; ``retire``: (tracker, buffer) reusable once it is superseded
        and the tracker is done."""
        with self._cv:
            if version <= self._ready:  # pragma: no cover - versions are made ready in order
                return
            if self._owner is not None:
                self._retiring.append(self._owner)
                del self._retiring[:-6]
            self._owner = retire
            self._ready, self._frames = version, zframes
            t = self.timings.get(version)
            if t is not None:
                t["t_ready"] = time.monotonic()
        self._wake()

    def _write(self, job: Job) -> None:
        """The writer thread: the file written (the version sealed), then the version goes out; the packing
        buffer is free again."""
        if self.transfer == "sealed":
            from sync.seal import sealed_nbytes

            out = self._buffer(sealed_nbytes(memoryview(job.buffer).nbytes))
            frames, answer, ticket, ms = seal_job(job, self.fetch_port, out)
            answer = [zmq.Frame(f, track=i == 2) for i, f in enumerate(answer)]  # Sealed, header, tensors
            with self._cv:
                self._fetchable[job.version] = (ticket, answer, out)
                while len(self._fetchable) > 2:  # the oldest's buffer: reusable once libzmq let go of it
                    _, old, old_out = self._fetchable.popitem(last=False)[1]
                    self._retiring.append((old[2].tracker, old_out))
                    del self._retiring[:-6]
            key = "seal_ms"
        else:
            frames, ms = write_file(self.file_dir, job)
            key = "write_ms"
        self._give_back(job.owner)
        with self._cv:
            if job.version in self.timings:
                self.timings[job.version][key] = ms
        self._set_ready(job.version, [zmq.Frame(f) for f in frames], None)

    def _give_back(self, buf) -> None:
        if isinstance(buf, bytearray):
            with self._cv:
                self._retiring.append((_DONE, buf))
                del self._retiring[:-6]

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the newest version is written (sealed) and going out (``file``, ``sealed``; tests and benches)."""
        return self._writer is None or self._writer.idle(timeout_s)

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

    def _check_ack(self, actor_id: str, ack: WeightAck) -> None:
        if not ack.ok:
            raise SyncError(f"actor {actor_id} failed to load v{ack.version}: {ack.error}")
        want = self._checksums.get(ack.version)
        if ack.checksum != want:
            raise SyncError(f"actor {actor_id} acked v{ack.version} with checksum {ack.checksum}, published {want}")

    def ack_status(self, version: int) -> tuple[dict[str, WeightAck], list[str]]:
        """Without waiting: (every live actor's ok ack of ``version`` or later, the live actors with none yet).
        SyncError on a failed load, a checksum mismatch, or a failure of this channel."""
        with self._cv:
            self._check_alive()
            done, missing = {}, []
            for a in self._actors.values():
                newer = [v for v in a.acks if v >= version]
                if not newer:
                    missing.append(a.actor_id)
                    continue
                ack = a.acks[max(newer)]
                self._check_ack(a.actor_id, ack)
                done[a.actor_id] = ack
            return done, missing

    def ack_of(self, actor_id: str, version: int) -> WeightAck | None:
        """``actor_id``'s ack of exactly ``version`` (None: none came yet); SyncError if it failed or its
        checksum differs from the published one."""
        with self._cv:
            got = self._ack_log.get((actor_id, version))
            if got is None:
                return None
            self._check_ack(actor_id, got[0])
            return got[0]

    def acked_at(self, actor_id: str, version: int) -> float | None:
        """When (``time.monotonic``) the learner received that ack."""
        with self._cv:
            got = self._ack_log.get((actor_id, version))
            return None if got is None else got[1]

    def wait_acks(
        self, version: int, timeout_s: float, min_actors: int = 1, stop: Callable[[], bool] | None = None
    ) -> dict[str, WeightAck]:
        """Every live actor's ok ack of ``version`` or later (at least ``min_actors`` of them).
        ``stop()``, checked every 0.1 s, ends the wait with a :class:`SyncError` (e.g. on SIGTERM)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                if stop is not None and stop():
                    raise SyncError(f"interrupted while waiting for acks of v{version}")
                done, missing = self.ack_status(version)
                if not missing and len(done) >= min_actors:
                    return done
                left = deadline - time.monotonic()
                if left <= 0:
                    raise timeout_error(version, timeout_s, done, missing, min_actors)
                self._cv.wait(min(left, 0.1))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._close(linger_ms=0)
        if self.file_dir is not None:
            shutil.rmtree(self.file_dir, ignore_errors=True)

    def _check_alive(self) -> None:
        super()._check_alive()
        if self._writer is not None and self._writer.error is not None:
            e = self._writer.error
            raise SyncError(f"publish: cannot write the weights to {self.file_dir}: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ I/O thread
    def _on_frames(self, sock, frames) -> None:
        if sock is self._fsock:
            self._on_fetch(frames)
            return
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
            self._ack_log[(ident, msg.version)] = (msg, now)
            while len(self._ack_log) > 4096:
                self._ack_log.popitem(last=False)
            for v in [v for v in a.acks if v < msg.version - 64]:
                del a.acks[v]
            if msg.ok:
                a.served = max(a.served, msg.version)
            else:
                log.warning("weights: actor %s refused v%d: %s", ident, msg.version, msg.error)
            self._cv.notify_all()
        else:
            self.refusals.refuse("message", f"unexpected {type(msg).__name__} from {ident!r}")

    def _on_fetch(self, frames) -> None:
        """A :class:`Fetch` on the (plain TCP) fetch port, answered only with a kept version's ticket."""
        try:
            msg = decode(frames[1:], CONTROL_BYTES, 16, 16)
        except WireError as e:
            self.refusals.refuse("fetch", str(e))
            return
        if not isinstance(msg, Fetch):
            self.refusals.refuse("fetch", f"unexpected {type(msg).__name__}")
            return
        kept = self._fetchable.get(msg.version)
        if kept is None or not hmac.compare_digest(kept[0], msg.ticket.encode()):
            what = "without its ticket" if kept is not None else "no longer kept (a newer one is on its way)"
            self.refusals.refuse("fetch", f"v{msg.version} {what}", logging.INFO if kept is None else logging.WARNING)
            return
        if len(self._answers) >= 64:  # each is a reference to the kept frames; a peer asking in a loop gets no more
            self.refusals.refuse("fetch", f"v{msg.version}: 64 answers already waiting")
            return
        self._answers.append((frames[0].bytes, kept[1]))

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
        while self._answers:
            ident, frames = self._answers[0]
            try:
                self._fsock.send_multipart([ident, *frames], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError as e:
                log.info("weights: a fetch's requester is gone (%s)", e)
            self._answers.popleft()
        while self._welcome:
            ident = self._welcome.pop(0)
            if ident in self._actors:
                self._send(ident, encode(Welcome(self._latest, self.incarnation)))
        if self._ready < 0:
            return
        for a in list(self._actors.values()):
            if a.sent != self._ready and a.served != self._ready:
                if self._send(a.actor_id, self._frames, copy=False):
                    a.sent = self._ready

    def _on_tick(self, now: float) -> None:
        for a in list(self._actors.values()):
            if now - a.last_seen > self._dead_after:
                log.warning("weights: actor %s silent for %.1f s, presumed dead", a.actor_id, now - a.last_seen)
                del self._actors[a.actor_id]
                self._cv.notify_all()
