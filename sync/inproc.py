"""In-process RolloutTransport and WeightPublisher for tests that run learner and actor in one process.

They keep the channels' contracts (exactly-once groups, every actor acks every version, checksums
compared, SyncError on failure) without sockets: requests are served by a callable in a worker
thread; weights are packed exactly as on the wire (same dtype conversion, same checksum) and handed
to each registered actor callback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from sync import tensors as T
from sync.interfaces import SyncError
from sync.weights import jsonable
from sync.wire import Heartbeat, RolloutGroup, RolloutRequest, TensorBlob, WeightAck


class InprocRolloutTransport:
    """``serve(req) -> RolloutGroup`` runs in one worker thread per transport, requests in order."""

    def __init__(self, serve: Callable[[RolloutRequest], RolloutGroup], actor_id: str = "inproc-0"):
        self._serve = serve
        self.actor_id = actor_id
        self._in: queue.Queue[RolloutRequest | None] = queue.Queue()
        self._out: queue.Queue[RolloutGroup] = queue.Queue()
        self._seen: set[str] = set()
        self._error: BaseException | None = None
        self._busy = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="inproc-rollout")
        self._thread.start()

    def _run(self) -> None:
        while (req := self._in.get()) is not None:
            try:
                self._out.put(self._serve(req))
            except BaseException as e:  # surfaced by receive()
                self._error = e
            finally:
                self._busy -= 1

    def submit(self, req: RolloutRequest) -> None:
        if req.request_id in self._seen:
            raise SyncError(f"request id {req.request_id!r} was already submitted")
        self._seen.add(req.request_id)
        self._busy += 1
        self._in.put(req)

    def receive(self, timeout_s: float) -> RolloutGroup | None:
        try:
            return self._out.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            if self._error is not None:
                raise SyncError(f"in-process actor failed: {self._error!r}") from self._error
            return None

    def actors(self) -> dict[str, Heartbeat]:
        return {self.actor_id: Heartbeat(self.actor_id, 0, self._in.qsize(), self._busy, 0.0)}

    def close(self) -> None:
        self._in.put(None)
        self._thread.join(5)


class InprocWeightPublisher:
    """``actors``: id -> ``load(version, blobs, adapter_config) -> checksum of what was loaded`` (or
    ``(checksum, served-delta cosine)``)."""

    def __init__(
        self,
        actors: dict[str, Callable[[int, dict[str, TensorBlob], dict], str]] | None = None,
        wire_dtype: str = "bf16",
    ):
        self.loaders = dict(actors or {})
        self.wire_dtype = wire_dtype
        self._latest = -1
        self._checksums: dict[int, str] = {}
        self._acks: dict[str, WeightAck] = {}
        self._ack_log: dict[tuple[str, int], WeightAck] = {}

    def publish(self, version: int, tensors, adapter_config: dict) -> str:
        if version <= self._latest:
            raise SyncError(f"publish: version {version} is not newer than {self._latest}")
        blobs, buf = T.pack(tensors, self.wire_dtype)
        checksum = T.checksum(blobs, buf)
        self._latest, self._checksums[version] = version, checksum
        cfg = jsonable(adapter_config)
        for aid, load in self.loaders.items():
            try:
                got = load(version, blobs, cfg)
                got, cos = got if isinstance(got, tuple) else (got, None)
                self._acks[aid] = WeightAck(aid, version, True, 0.0, got, delta_cosine=cos)
            except Exception as e:
                self._acks[aid] = WeightAck(aid, version, False, 0.0, "", repr(e))
            self._ack_log[(aid, version)] = self._acks[aid]
        return checksum

    def _check(self, aid: str, ack: WeightAck) -> None:
        if not ack.ok:
            raise SyncError(f"actor {aid} failed to load v{ack.version}: {ack.error}")
        if ack.checksum != self._checksums[ack.version]:
            raise SyncError(
                f"actor {aid} acked v{ack.version} with checksum {ack.checksum}, "
                f"published {self._checksums[ack.version]}"
            )

    def ack_status(self, version: int) -> tuple[dict[str, WeightAck], list[str]]:
        done, missing = {}, []
        for aid in self.loaders:
            ack = self._acks.get(aid)
            if ack is None or ack.version < version:
                missing.append(aid)
                continue
            self._check(aid, ack)
            done[aid] = ack
        return done, missing

    def ack_of(self, actor_id: str, version: int) -> WeightAck | None:
        ack = self._ack_log.get((actor_id, version))
        if ack is not None:
            self._check(actor_id, ack)
        return ack

    def wait_acks(self, version: int, timeout_s: float, stop=None) -> dict[str, WeightAck]:  # noqa: ARG002
        # loads happen inside publish(): nothing to wait for, so ``stop`` is never consulted
        from sync.weights import timeout_error

        done, missing = self.ack_status(version)
        if missing:
            raise timeout_error(version, timeout_s, done, missing)
        return done

    def latest_version(self) -> int:
        return self._latest

    def close(self) -> None:
        pass
