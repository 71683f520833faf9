"""The learner's background check of acknowledgements (learner.acks.AckWatch) over a real weight channel:
publishing returns before any actor acked, and a late, failed, mismatched, low-cosine or missing ack still
becomes the learner's one stop line."""

from __future__ import annotations

import time

import pytest

from adapters import ADAPTER, received, state
from configs.schema import SyncConfig
from learner.acks import STOPPED, AckWatch, sampled_by
from sync.endpoint import ActorEndpoint
from sync.interfaces import ReceivedWeights
from sync.weights import ZmqWeightPublisher
from sync.wire import Completion, PromptResult, RolloutGroup, WeightAck

CFG = SyncConfig(heartbeat_s=0.1, max_message_mb=1, ack_timeout_s=0.5)


@pytest.fixture
def channel(tmp_path):
    """A publisher, one actor endpoint "a" connected to it (acks are the test's to send) and a watch."""
    pub = ZmqWeightPublisher(CFG, port=0)
    ep = ActorEndpoint(CFG, "a", tmp_path / "a", weight_port=pub.port, rollout_port=1, gate_on_weights=False)
    lines: list[str] = []
    deadline = time.monotonic() + 5
    while "a" not in pub.actors():
        assert time.monotonic() < deadline, "actor never connected"
        time.sleep(0.02)
    yield pub, ep, AckWatch(pub, CFG, lines.append), lines
    ep.close()
    pub.close()


def ack(ep, w: ReceivedWeights, ok=True, checksum=None, cosine=1.0, error=None, in_flight=0, held_s=0.0) -> None:
    ep.send_ack(WeightAck("a", w.version, ok, 0.01, checksum or w.checksum, error, w.learner, delta_cosine=cosine,
                          served_detail="q_proj served at cosine 0.5000" if cosine and cosine < 0.9 else "",
                          in_flight=in_flight, held_s=held_s))


def poll_until(watch, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        reason = watch.poll()
        if cond(reason):
            return reason
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_publish_does_not_wait_and_a_late_ack_completes_the_version(channel):
    pub, ep, watch, _ = channel
    t0 = time.perf_counter()
    pub.publish(1, state(1), ADAPTER)
    watch.published(1)
    assert watch.poll() is None and 1 in watch.pending  # no actor acked yet: nothing waited, nothing failed
    assert time.perf_counter() - t0 < CFG.ack_timeout_s
    w = received(ep)
    ack(ep, w, cosine=0.9995, in_flight=3, held_s=0.25)
    poll_until(watch, lambda r: r is None and not watch.pending)
    m = watch.take_metrics()
    assert m["sync/served_delta_cosine"] == pytest.approx(0.9995)
    # what the actor's engine did through the sync: generating 3 requests while it loaded, the version waited 0.25 s
    assert m["sync/actor_in_flight"] == 3 and m["sync/actor_held_s"] == pytest.approx(0.25)
    assert m["sync/served_checked"] == 1 and m["sync/acked_version"] == 1
    assert m["sync/unacked_versions"] == 0.0 and m["sync/ack_s"] >= 0.0 and m["perf/ack_wait_s"] == 0.0


def test_an_ack_of_a_later_version_completes_the_earlier_ones(channel):
    pub, ep, watch, _ = channel
    for v in (1, 2):
        pub.publish(v, state(v), ADAPTER)
        watch.published(v)
    w = received(ep)
    while w.version < 2:  # latest wins: the actor may never see v1
        w = received(ep)
    ack(ep, w)
    poll_until(watch, lambda r: not watch.pending)


def test_a_missing_ack_stops_with_the_timeout_line(channel):
    pub, _, watch, _ = channel
    pub.publish(1, state(1), ADAPTER)
    watch.published(1)
    assert watch.poll() is None
    reason = poll_until(watch, lambda r: r is not None)
    assert reason == "sync failed: timed out after 0.5 s waiting for acks of v1 from a"


@pytest.mark.parametrize(
    ("how", "line"),
    [
        ({"ok": False, "error": "engine refused it"}, "sync failed: actor a failed to load v1: engine refused it"),
        ({"checksum": "xxh3_128:" + "0" * 32}, "sync failed: actor a acked v1 with checksum xxh3_128:000"),
        ({"cosine": 0.5}, "sync failed: actor a serves v1 with a LoRA delta, read back from its engine, at cosine "
                          "0.5000 to the published one (< sync.min_delta_cosine 0.99): q_proj served at cosine"),
    ],
)
def test_a_bad_ack_arriving_in_the_background_is_the_stop_line(channel, how, line):
    pub, ep, watch, _ = channel
    pub.publish(1, state(1), ADAPTER)
    watch.published(1)
    ack(ep, received(ep), **how)
    reason = poll_until(watch, lambda r: r is not None)
    assert reason.startswith(line)


def group(version: int, runs: list[int]) -> RolloutGroup:
    c = Completion([1, 2, 3, 4], [-0.1] * 4, "x", "stop", runs)
    return RolloutGroup("r", "a", version, [PromptResult([9], [c])])


def test_sampled_by_counts_every_version_of_an_in_flight_completion():
    assert sampled_by([group(1, []), group(1, [0, 1, 2, 2])]) == {("a", 1), ("a", 2)}
    assert sampled_by([group(-1, [])]) == set()


def test_verify_trains_only_on_rollouts_of_acknowledged_versions(channel):
    pub, ep, watch, _ = channel
    pub.publish(1, state(1), ADAPTER)
    watch.published(1)
    w1 = received(ep)
    ack(ep, w1)
    pub.publish(2, state(2), ADAPTER)
    watch.published(2)
    w2 = received(ep)
    # the completion's last tokens came from v2, whose ack has not come: verify waits, then times out
    t0 = time.monotonic()
    reason = watch.verify([group(1, [0, 1, 2, 2])])
    assert reason.startswith("sync failed: timed out after 0.5 s waiting for acks of v2 from a")
    assert time.monotonic() - t0 >= 0.3
    ack(ep, w2)
    deadline = time.monotonic() + 5
    while pub.ack_of("a", 2) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert watch.verify([group(1, [0, 1, 2, 2])]) is None
    assert watch.verify([group(2, [])], stop=lambda: True) is None  # acked already: stop() never consulted
    pub.publish(3, state(3), ADAPTER)
    watch.published(3)
    assert watch.verify([group(3, [])], stop=lambda: True) == STOPPED  # SIGTERM cuts the wait short


def test_wait_blocks_until_the_ack_and_reports_the_wait(channel):
    pub, ep, watch, _ = channel
    pub.publish(1, state(1), ADAPTER)
    watch.published(1)
    w = received(ep)
    import threading

    threading.Timer(0.2, lambda: ack(ep, w)).start()
    assert watch.wait(1) is None and not watch.pending
    assert watch.take_metrics()["perf/ack_wait_s"] >= 0.1
