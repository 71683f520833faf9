"""How a weight version travels from the learner to its actors (``sync.weight_transfer``).

* ``inline``: the packed tensors ride in the :class:`sync.wire.WeightUpdate` itself, one zero-copy frame sent to
  every actor; each actor receives its own copy through its socket, checks it and writes it to its directory.
  Over TCP, CURVE encrypts that frame once per actor.
* ``file`` (one node, the default with ipc): the learner writes the version once to a file in its private
  directory on /dev/shm (0700, a new file per version, never rewritten) and sends each actor a
  :class:`sync.wire.WeightFile` with its path, size and checksum. The actor hard-links the file into its own
  directory (a copy when the two are on different filesystems), checks the checksum of that file and loads it:
  the bytes are written once for every actor instead of pushed through a socket and written again by each.
  Only this user's processes can enter either directory; the learner keeps its newest :data:`KEEP_FILES` files,
  the actors their links (removing the learner's name never takes a file from an actor).

* ``sealed`` (across nodes, the default with TCP): the version is sealed once for every actor (:mod:`sync.seal`)
  and each actor fetches the sealed bytes from the learner's fetch port, with the key it received over CURVE.

``file`` writes (``sealed`` seals) in a background thread (:class:`Writer`) after ``publish`` has packed the version
into a buffer of the publisher's own, so the learner's next optimizer step may change its parameters at once and
never waits for the write. The newest version wins: a version not yet written when a newer one comes is skipped
(actors take the newest anyway, and an ack of a later version counts for the earlier ones).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync import tensors as T
from sync._net import transport_kind
from sync.wire import WeightFile, encode

log = logging.getLogger("sync.weights")

TRANSFERS = ("inline", "file", "sealed")
KEEP_FILES = 4
"""Versions the learner keeps in its directory: a WeightFile still on its way to an actor names one of them."""


def resolve_transfer(cfg, transfer: str | None = None) -> str:
    """``inline``, ``file`` or ``sealed`` for a sync config (``auto``: file on ipc, sealed on TCP)."""
    t = transfer or getattr(cfg, "weight_transfer", "auto")
    if t == "auto":
        return "file" if transport_kind(cfg) == "ipc" else "sealed"
    if t not in TRANSFERS:
        raise ValueError(f"sync.weight_transfer {t!r}: expected auto, {', '.join(TRANSFERS)}")
    return t


@dataclass
class Job:
    version: int
    blobs: dict
    buffer: Any
    adapter_config: dict
    checksum: str
    learner: str
    owner: bytearray | None
    """The packing buffer, handed back to the publisher once written."""


def write_file(file_dir: Path, job: Job) -> tuple[list, float]:
    """``file``: the version written once to ``file_dir/v<N>.safetensors``; (its WeightFile frames, write ms)."""
    t0 = time.perf_counter()
    path = Path(file_dir) / f"v{job.version}.safetensors"
    meta = {"format": "pt", "version": str(job.version), "checksum": job.checksum}
    nbytes = T.write_file_once(path, job.blobs, job.buffer, meta)
    frames = encode(WeightFile(job.version, job.adapter_config, job.checksum, str(path), nbytes, job.learner))
    for p in Path(file_dir).glob("v*.safetensors"):  # keep the newest KEEP_FILES
        v = p.name[1:].split(".", 1)[0]
        if v.isdigit() and int(v) <= job.version - KEEP_FILES:
            p.unlink(missing_ok=True)
    return frames, (time.perf_counter() - t0) * 1e3


def seal_job(job: Job, port: int, out) -> tuple[list, list, bytes, float]:
    """``sealed``: (the WeightSealed notice's frames, the fetch answer's frames, the ticket, seal ms). ``out``: the
    buffer the sealed tensors go to (``seal.sealed_nbytes`` of the packed size)."""
    import secrets

    from sync import seal
    from sync.wire import Sealed, WeightSealed, WeightUpdate

    t0 = time.perf_counter()
    header, tensors = encode(WeightUpdate(job.version, job.adapter_config, job.blobs, job.checksum, job.buffer,
                                          job.learner))
    key, ticket = seal.new_key(), secrets.token_hex(16)
    s_head, s_tensors = seal.seal(key, header, tensors, out)
    notice = encode(WeightSealed(job.version, job.checksum, key.hex(), ticket, port, s_tensors.nbytes, job.learner))
    answer = [*encode(Sealed(job.version, job.learner)), s_head, s_tensors]
    return notice, answer, ticket.encode(), (time.perf_counter() - t0) * 1e3


class Writer:
    """One daemon thread running ``work(job)`` on the newest submitted :class:`Job`; a job still waiting when a
    newer one comes is dropped (``dropped(job)``). An exception is kept in ``error`` (the publisher raises it as
    a one-line :class:`sync.SyncError` at its next call)."""

    def __init__(self, name: str, work: Callable[[Job], None], dropped: Callable[[Job], None]):
        self._work, self._dropped = work, dropped
        self._cv = threading.Condition()
        self._job: Job | None = None
        self._busy = self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._job is not None:
                self._dropped(self._job)
            self._job = job
            self._cv.notify_all()

    def idle(self, timeout_s: float) -> bool:
        """Wait until nothing is waiting or being written."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while (self._job is not None or self._busy) and time.monotonic() < deadline:
                self._cv.wait(0.01)
            return self._job is None and not self._busy

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                job, self._job, self._busy = self._job, None, True
            try:
                self._work(job)
            except Exception as e:  # the learner sees it at its next publish or ack check
                log.exception("weights: writing v%d failed", job.version)
                self.error = e
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
