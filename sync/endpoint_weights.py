"""The weight half of the actor's endpoint (:class:`sync.endpoint.ActorEndpoint`, whose class docstring holds the
socket invariants): a version is admitted or refused, received in one of its three ways (an inline update, a file
the learner wrote on this node, sealed frames fetched across nodes), checked, staged as ``shm_dir/v{version}`` and
handed to the actor's thread; refusals are acked ``ok=False``. All of it runs on the endpoint's I/O thread."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import zmq

from sync import tensors as T
from sync._net import connect_host
from sync.interfaces import ReceivedWeights
from sync.limits import CONTROL_BYTES
from sync.wire import Fetch, Sealed, WeightAck, WeightFile, WeightSealed, WeightUpdate, WireError, decode, encode

log = logging.getLogger("sync.endpoint")

FETCH_RETRY_S = 10.0
"""A sealed version not received this long after its Fetch is asked for again (the Fetch or its answer was lost)."""


class WeightReceiver:
    """What :class:`sync.endpoint.ActorEndpoint` does with a weight message on its I/O thread. The endpoint sets the
    state these methods share: ``cfg``, ``actor_id``, ``limits``, ``refusals``, ``shm_dir``, ``_keep``, the weight
    and fetch sockets (``_wsock``, ``_fsock``, ``_fetch_addr``), the sealed notice awaited (``_sealed``,
    ``_fetch_due``, ``_fetch_tries``, ``_open_buf``), the versions (``_served``, ``_accepted``,
    ``_accepted_learner``, ``_announced``, ``_last_ack``), the learners (``_past``, :meth:`_follow`), and the queues
    to the actor's thread (``_weights``, ``_outbox``, ``_prune_due``)."""

    def _refuse(self, version: int, error: str, checksum: str, learner: str) -> None:
        ack = WeightAck(self.actor_id, version, False, 0.0, checksum, error[:500], learner)
        self._outbox.append((self._wsock, encode(ack)))

    def _admit(self, u: WeightUpdate | WeightFile | WeightSealed) -> bool:
        """Whether a version is new for this actor (same checks for both ways a version travels)."""
        if u.learner in self._past:
            self.refusals.refuse("weight update of a replaced learner", f"v{u.version}", logging.INFO)
            return False
        if u.learner:
            self._follow(u.learner)
        if u.learner == self._accepted_learner and u.version <= self._accepted:
            last = self._last_ack
            if (u.version == self._accepted and last is not None and last.version == u.version
                    and last.checksum == u.checksum and last.learner == u.learner):
                self._outbox.append((self._wsock, encode(last)))  # our ack was lost: resend
                return False
            self.refusals.refuse("out-of-order weight update", f"v{u.version} (have v{self._accepted})")
            return False
        return True

    def _accept(self, u: WeightUpdate | WeightFile, out: Path) -> None:
        self._accepted, self._accepted_learner = u.version, u.learner
        if self._announced is None or u.version > self._announced:
            self._announced = u.version
        self._weights.append(ReceivedWeights(u.version, out, u.checksum, u.adapter_config, u.learner))
        self._prune_due = True  # on the next tick: freeing tmpfs pages costs ~10 ms per 66 MB

    def _on_weight_file(self, u: WeightFile) -> None:
        """A version written once by the learner on this node: link it into our directory (copy across
        filesystems), check that file's size, owner and checksum, then serve it like an inline update."""
        if not self._admit(u):
            return
        out = self.shm_dir / f"v{u.version}"
        tmp = self.shm_dir / f".v{u.version}.tmp{os.getpid()}"
        try:
            if u.nbytes > self.limits.weights_bytes:
                raise ValueError(f"{u.nbytes / 2**20:.1f} MiB, over the {self.limits.weights_bytes / 2**20:.0f} "
                                 "MiB this actor accepts")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(mode=0o700, parents=True)
            dst = tmp / "adapter_model.safetensors"
            try:
                os.link(u.path, dst, follow_symlinks=False)
            except OSError as e:  # another filesystem (EXDEV) or no links there: a copy
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
                shutil.copyfile(u.path, dst, follow_symlinks=False)
            st = os.lstat(dst)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size != u.nbytes:
                raise ValueError(f"{u.path} is not a regular file of this user of {u.nbytes} bytes")
            blobs, _ = T.read_safetensors(dst)
            got = T.checksum(blobs)
            del blobs
            if got != u.checksum:
                self.refusals.refuse("weight file", f"v{u.version}: checksum mismatch (got {got}, sent {u.checksum})")
                self._refuse(u.version, f"checksum mismatch: got {got}, sent {u.checksum}", got, u.learner)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            (tmp / "adapter_config.json").write_text(json.dumps(u.adapter_config, indent=1))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except (OSError, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("endpoint %s: cannot take v%d from %s: %s", self.actor_id, u.version, u.path, e)
            self.refusals.refuse("weight file", f"v{u.version}: {e}")
            self._refuse(u.version, f"weight file: {e}", "", u.learner)
            return
        self._accept(u, out)

    def _on_sealed(self, m: WeightSealed) -> None:
        if not self._admit(m):
            return
        if m.nbytes > self.limits.weights_bytes + 64:
            self.refusals.refuse("sealed weights", f"v{m.version}: {m.nbytes} bytes, over the cap")
            self._refuse(m.version, f"sealed weights of {m.nbytes / 2**20:.1f} MiB, over the "
                         f"{self.limits.weights_bytes / 2**20:.0f} MiB this actor accepts", "", m.learner)
            return
        self._sealed, self._fetch_tries = m, 0
        self._fetch()

    def _fetch(self) -> None:
        m = self._sealed
        addr = f"tcp://{connect_host(self.cfg)}:{m.port}"
        if addr != self._fetch_addr:  # the first notice, or a restarted learner on another port
            if self._fetch_addr:
                self._fsock.disconnect(self._fetch_addr)
            self._fsock.connect(addr)
            self._fetch_addr = addr
        try:
            self._fsock.send_multipart(encode(Fetch(m.version, m.ticket, m.learner)), zmq.NOBLOCK)
        except zmq.Again:
            pass  # asked again on a later tick
        self._fetch_due = time.monotonic() + FETCH_RETRY_S

    def _on_sealed_answer(self, frames) -> None:
        """The fetch port's answer: the awaited version's sealed frames, opened and handled as inline."""
        from sync import seal

        m = self._sealed
        try:
            head = decode(frames[:1], CONTROL_BYTES, 16, 16)
        except WireError as e:
            self.refusals.refuse("fetch answer", str(e))
            return
        if (m is None or not isinstance(head, Sealed) or len(frames) != 3
                or (head.version, head.learner) != (m.version, m.learner)):
            self.refusals.refuse("fetch answer", f"{type(head).__name__} not awaited", logging.INFO)
            return
        n = max(frames[2].buffer.nbytes - seal.TAG_BYTES, 0)
        if self._open_buf is None or len(self._open_buf) != n:
            self._open_buf = bytearray(n)
        try:
            hdr, body = seal.open_sealed(bytes.fromhex(m.key), frames[1].buffer, frames[2].buffer, self._open_buf)
        except ValueError as e:
            self._fetch_tries += 1
            self.refusals.refuse("sealed weights", f"v{m.version}: {e} (attempt {self._fetch_tries})")
            if self._fetch_tries >= 3:
                self._sealed = None
                self._refuse(m.version, f"sealed weights: {e}", "", m.learner)
            else:
                self._fetch()
            return
        self._sealed = None
        lim = self.limits
        try:
            u = decode([hdr, body], lim.weights_bytes, lim.max_array_len, lim.max_map_len)
            if not isinstance(u, WeightUpdate) or (u.version, u.learner, u.checksum) != (m.version, m.learner,
                                                                                         m.checksum):
                raise WireError("the sealed update is not the version announced")
        except WireError as e:
            self.refusals.refuse("sealed weights", f"v{m.version}: {e}")
            self._refuse(m.version, str(e), "", m.learner)
            return
        self._on_weights(u)

    def _on_weights(self, u: WeightUpdate) -> None:
        if not self._admit(u):
            return
        got = T.checksum(u.tensors, u.buffer)
        if got != u.checksum:
            self.refusals.refuse("weight update", f"v{u.version}: checksum mismatch (got {got}, sent {u.checksum})")
            self._refuse(u.version, f"checksum mismatch: got {got}, sent {u.checksum}", got, u.learner)
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
            self._refuse(u.version, f"write failed: {e}", got, u.learner)
            return
        self._accept(u, out)

    def _prune(self) -> None:
        self._prune_due = False

        dirs = sorted((p for p in self.shm_dir.glob("v*") if p.name[1:].isdigit()), key=lambda p: int(p.name[1:]))
        for p in dirs[: -self._keep]:
            if int(p.name[1:]) != self._served:
                shutil.rmtree(p, ignore_errors=True)
