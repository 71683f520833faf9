"""The actors' acknowledgements, checked in the background (rank 0): :class:`AckWatch`.

The learner publishes version v and goes straight on to its next forward/backward. What the actors say
about v arrives on the weight channel's I/O thread while it trains; this watch reads it without waiting
(:meth:`AckWatch.poll`, at every step boundary and every second of a rollout wait) and turns it into the same
one-line stop reasons the learner used to raise while it blocked on them:

* an ack with ``ok=False`` (``actor A failed to load vN: ...``), a checksum other than the one published
  (``actor A acked vN with checksum ..., published ...``): :meth:`ack_status` of the publisher raises them;
* a served LoRA delta, read back from the actor's engine, at a cosine under ``sync.min_delta_cosine`` to the
  published one (``actor A serves vN with a LoRA delta, read back from its engine, at cosine ...``);
* a version some live actor has not acknowledged (nor any later one) ``sync.ack_timeout_s`` after it was
  published (``timed out after T s waiting for acks of vN from A``).

A late ack is no failure: a version is complete once every live actor acked it or a later one, whenever that
comes within the timeout. And the learner never trains on rollouts of a version it has not seen acknowledged
(:meth:`AckWatch.verify`: every group's (actor, version) must have its ok ack, cosine checked, before the batch
is trained on; the actor sends that ack before it generates with the version, so this almost never waits).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sync import SyncError

STOPPED = "stopped"
"""What :meth:`AckWatch.wait` and :meth:`AckWatch.verify` return when ``stop()`` cut them short."""


def sampled_by(groups) -> set[tuple[str, int]]:
    """Every (actor, version) that sampled a token of ``groups``: each group's version and, for completions
    that spanned versions (loaded in flight), every version of their ``version_runs``."""
    out = set()
    for g in groups:
        if g.version >= 0:
            out.add((g.actor_id, g.version))
        for r in g.results:
            for c in r.completions:
                out.update((g.actor_id, v) for v in c.version_runs[1::2] if v >= 0)
    return out


class AckWatch:
    """``publisher``: a :class:`sync.WeightPublisher`; ``cfg``: the run's ``sync`` section; ``write``: a log line."""

    def __init__(self, publisher, cfg, write: Callable[[str], None] = print):
        self.pub, self.cfg, self.write = publisher, cfg, write
        self.pending: dict[int, float] = {}  # version -> published at (time.monotonic)
        self.checked: dict[tuple[str, int], float | None] = {}  # (actor, version) -> its served cosine
        self._metrics: dict[str, float] = {}
        self.wait_s = 0.0  # time the learner waited on acks since the last take_metrics()

    # ------------------------------------------------------------------ bookkeeping
    def published(self, version: int) -> None:
        self.pending[version] = time.monotonic()

    def take_metrics(self) -> dict[str, float]:
        """What completed since the last call: ``sync/served_delta_cosine`` (the worst actor's), ``sync/ack_s``
        (publish to the last actor's ack of the newest completed version), ``sync/actor_load_s`` (the longest
        load among those acks), ``sync/actor_held_s`` (the longest wait of a version for its load: a drain),
        ``sync/actor_in_flight`` (the fewest requests an actor was generating while it loaded: > 0, the engine stayed
        busy through the sync), ``sync/served_checked`` (acks whose served cosine was checked: every version each
        actor loaded is checked once), ``sync/acked_version`` (the newest version every live actor acknowledged),
        ``sync/unacked_versions`` (published, not yet acknowledged by every actor) and ``perf/ack_wait_s``."""
        m, self._metrics = self._metrics, {}
        m["sync/unacked_versions"] = float(len(self.pending))
        m["perf/ack_wait_s"], self.wait_s = self.wait_s, 0.0
        return m

    def _served(self, aid: str, ack) -> str | None:
        """Check one ok ack's served cosine (once per actor and version); a stop line or None."""
        key = (aid, ack.version)
        if key in self.checked:
            return None
        self.checked[key] = ack.delta_cosine
        if len(self.checked) > 4096:
            del self.checked[next(iter(self.checked))]
        self._metrics["sync/served_checked"] = self._metrics.get("sync/served_checked", 0.0) + 1
        if ack.delta_cosine is None:
            self.write(f"learner: actor {aid} did not report a served-delta cosine for v{ack.version}")
            return None
        cos, floor = ack.delta_cosine, self.cfg.min_delta_cosine
        worst = self._metrics.get("sync/served_delta_cosine")
        self._metrics["sync/served_delta_cosine"] = cos if worst is None else min(worst, cos)
        if cos >= floor:
            return None
        detail = ack.served_detail or "the delta as a whole"
        hint = ("in merged bf16/fp16 serving small deltas round away (actor.serve_mode: adapter fixes it); "
                "otherwise the engine does not serve what was published")
        return (f"sync failed: actor {aid} serves v{ack.version} with a LoRA delta, read back from its engine, at "
                f"cosine {cos:.4f} to the published one (< sync.min_delta_cosine {floor}): {detail}; {hint}")

    def _complete(self, version: int, done: dict) -> str | None:
        t0 = self.pending.pop(version)
        at = getattr(self.pub, "acked_at", None)
        stamps = [at(aid, a.version) for aid, a in done.items()] if at else []
        last = max((t for t in stamps if t is not None), default=time.monotonic())
        self._metrics["sync/ack_s"] = max(0.0, last - t0)
        mine = [a for a in done.values() if a.version == version]
        if mine:  # what the actors' engines did through this sync
            m = self._metrics
            m["sync/actor_load_s"] = max(m.get("sync/actor_load_s", 0.0), max(a.load_s for a in mine))
            m["sync/actor_held_s"] = max(m.get("sync/actor_held_s", 0.0), max(a.held_s for a in mine))
            m["sync/actor_in_flight"] = min(m.get("sync/actor_in_flight", float("inf")),
                                            min(a.in_flight for a in mine))
        self._metrics["sync/acked_version"] = float(version)
        ack_of = getattr(self.pub, "ack_of", None)
        for aid, ack in done.items():
            # this version's own ack too when a later one came before this poll: every load is checked
            exact = ack_of(aid, version) if ack_of is not None and ack.version != version else None
            for a in (exact, ack):
                reason = self._served(aid, a) if a is not None else None
                if reason:
                    return reason
        return None

    # ------------------------------------------------------------------ checks
    def poll(self) -> str | None:
        """Everything that came in, without waiting: a stop line (``sync failed: ...``) or None."""
        try:
            for v in sorted(self.pending):
                done, missing = self.pub.ack_status(v)
                if not missing and done:
                    reason = self._complete(v, done)
                    if reason:
                        return reason
                elif time.monotonic() - self.pending[v] > self.cfg.ack_timeout_s:
                    from sync.weights import timeout_error

                    raise timeout_error(v, self.cfg.ack_timeout_s, done, missing)
        except SyncError as e:
            return f"sync failed: {e}"
        return None

    def wait(self, version: int, stop: Callable[[], bool] | None = None) -> str | None:
        """Block until ``version`` is acknowledged (``sync.wait_for_acks``, and the end of a run); a stop line,
        :data:`STOPPED` when ``stop()`` cut the wait short (SIGTERM), or None."""
        t0 = time.perf_counter()
        try:
            while version in self.pending:
                if stop is not None and stop():
                    return STOPPED
                reason = self.poll()
                if reason or version not in self.pending:
                    return reason
                time.sleep(0.005)
            return None
        finally:
            self.wait_s += time.perf_counter() - t0

    def verify(self, groups, stop: Callable[[], bool] | None = None) -> str | None:
        """Before training on ``groups``: each one's (actor, version) has an ok ack whose served cosine passed,
        waiting for it if needed (up to ``sync.ack_timeout_s`` from the version's publication). None when they are
        all verified, else a stop line or :data:`STOPPED`."""
        ack_of = getattr(self.pub, "ack_of", None)
        if ack_of is None:
            return None
        t0 = time.perf_counter()
        try:
            for aid, v in sorted(sampled_by(groups)):
                since = self.pending.get(v, time.monotonic())
                while True:
                    try:
                        ack = ack_of(aid, v)
                    except SyncError as e:
                        return f"sync failed: {e}"
                    if ack is not None:
                        reason = self._served(aid, ack)
                        if reason:
                            return reason
                        break
                    if stop is not None and stop():
                        return STOPPED
                    if time.monotonic() - since > self.cfg.ack_timeout_s:
                        return (f"sync failed: timed out after {self.cfg.ack_timeout_s:.1f} s waiting for acks of "
                                f"v{v} from {aid} (it sent rollouts generated with v{v})")
                    time.sleep(0.005)
            return None
        finally:
            self.wait_s += time.perf_counter() - t0
