"""One real ``python -m actor`` process, driven by the learner's side of the channels: rewards scored on the
actor (``actor.score_rewards``) are the learner's own, with the prompts' reference columns; a request the
learner re-sends while the actor still generates it is answered once, with the real group."""

from __future__ import annotations

import time

import pytest

from configs import load_config
from learner.data import make_reward_fn
from learner.rollouts import rollout_request
from sync.rollout import ZmqRolloutTransport
from sync.weights import ZmqWeightPublisher

pytestmark = pytest.mark.slow
START_S = 240


@pytest.fixture(scope="module")
def setup(actor_kit, commerce_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("actor-requests")
    before = leftovers()
    over = [f"model_id={actor_kit.model}", "actor.score_rewards=true", "sync.heartbeat_s=0.5",
            f"data.db_path={commerce_data / 'commerce.db'}",
            f"data.train_pairs={commerce_data / 'pairs' / 'train.jsonl'}", "actor.enforce_eager=true"]
    cfg = load_config(actor_kit.config, over)
    transport = ZmqRolloutTransport(cfg.sync, port=0, request_timeout_s=1.0)
    publisher = ZmqWeightPublisher(cfg.sync, port=0)
    over += [f"sync.rollout_port={transport.port}", f"sync.weight_port={publisher.port}"]
    actor = actor_kit.ActorProc(actor_kit.config, over, tmp / "actor.log", actor_id="solo")
    try:
        actor_kit.wait_for(lambda: "solo" in transport.actors(), START_S, "the actor to connect", proc=actor)
        ad = actor_kit.make_adapter(actor_kit.model, tmp / "v0", seed=4)
        tensors, acfg = actor_kit.adapter_tensors(ad)
        publisher.publish(0, tensors, acfg)
        publisher.wait_acks(0, 120)
        yield load_config(actor_kit.config, over), transport, actor, before
    finally:
        actor.kill_all()
        transport.close(shutdown_actors=False)
        publisher.close()


def leftovers() -> set[str]:
    """What lies in the shared temp directories: /tmp and /dev/shm."""
    import glob

    return set(glob.glob("/tmp/*")) | set(glob.glob("/dev/shm/*"))


def receive(transport, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = transport.receive(0.5)
        if g is not None:
            return g
    raise AssertionError("no group")


def test_actor_scores_with_the_learners_reference_columns(setup):
    """The push reward's product mention comes from the ``context`` column: the same completions (same
    prompt, same seed) score differently under two contexts, and the actor's scores are the learner's own."""
    import json

    from learner.rollouts import PromptItem
    from rewards.common import fold

    cfg, transport, _, _ = setup
    chat = [{"role": "system", "content": "Você é redator de CRM."},
            {"role": "user", "content": "Escreva uma notificação push curta para o cliente."}]
    fn = make_reward_fn(cfg)

    def scored(rid, context):
        item = PromptItem(0, chat, {"task": "push", "context": json.dumps({"produto": context})}, "push")
        req = rollout_request(cfg, "train", [item], 4, 1.0, 24, 1234, rid, 0, 0)
        assert req.meta["columns"] == [item.columns]
        transport.submit(req)
        g = receive(transport)
        assert "columns" not in g.meta  # not echoed back
        texts = [c.text for c in g.results[0].completions]
        cols = {key: [v] * len(texts) for key, v in item.columns.items()}
        return texts, g.rewards[0], fn(texts, prompts=[chat] * len(texts), **cols)

    texts, _, _ = scored("probe", "nada")
    word = next(fold(t).strip()[:5] for t in texts if fold(t).strip())  # a "product" the first sample names
    texts_a, actor_a, learner_a = scored("mention", word)
    texts_b, actor_b, learner_b = scored("no-mention", "xyzzy-qwerty")
    assert texts_a == texts_b == texts  # same completions: only the columns differ
    assert actor_a == pytest.approx(learner_a, abs=1e-9) and actor_b == pytest.approx(learner_b, abs=1e-9)
    assert actor_a != actor_b  # the actor used the columns it was sent


def test_request_resent_to_the_actor_holding_it_is_answered_once(setup):
    """request_timeout_s is 0.2 s, the generation takes longer: the transport re-sends the request to the only
    actor, which already holds it. It must not answer the copy with an error group (delivered first, the
    real group then dropped as a duplicate); it answers once, with the completions."""
    cfg, transport, actor, _ = setup
    from sync.wire import RolloutRequest, SamplingSpec

    chat = [{"role": "user", "content": "Escreva uma avaliação longa sobre o pedido " * 5}]
    req = RolloutRequest("long-1", [chat], SamplingSpec(16, 1.0, 1.0, 600, 5), 0, {"ignore_eos": True})
    resent = transport.resent
    transport._request_timeout = 0.2  # well under the generation's time, on any machine (the fixture's 1 s was not)
    try:
        transport.submit(req)
        g = receive(transport, 300)
    finally:
        transport._request_timeout = 1.0
    assert g.request_id == "long-1" and "error" not in g.meta and g.results, g.meta
    assert transport.resent > resent  # it was re-sent while the actor generated it
    assert [len(c.token_ids) for c in g.results[0].completions] == [600] * 16
    assert transport.receive(3.0) is None
    assert "duplicate request" in actor.log()
    # the heartbeat counters agree: nothing is held any more
    deadline = time.monotonic() + 10
    while (hb := transport.actors()["solo"]).in_flight or hb.queue_depth:
        assert time.monotonic() < deadline, f"the actor still holds work: {hb}"
        time.sleep(0.2)


def test_a_stopped_actor_leaves_nothing_in_tmp_or_shm(setup):
    """vLLM's own ipc sockets (~7 per engine in /tmp), its shared-memory queues and OpenMP's files in
    /dev/shm, our sync directory: a clean stop removes all of it (the module's actor ran two tests)."""
    import signal

    _, _, actor, before = setup
    actor.snapshot_children()
    actor.signal(signal.SIGTERM)
    assert actor.wait(120) == 0, actor.log()[-2000:]
    deadline = time.monotonic() + 10
    while actor.alive_descendants() and time.monotonic() < deadline:
        time.sleep(0.2)
    from actor.runtime import _mapped_files

    pids = {actor.pid, *actor.descendants}
    live = _mapped_files("/dev/shm")  # shared memory a running process (not ours: it stopped) still maps
    new = leftovers() - before
    mine = {p for p in new
            if f"p{actor.pid}-" in p  # our vLLM socket directory, our sync directory
            or any(p.startswith(f"/dev/shm/__KMP_REGISTERED_LIB_{pid}_") for pid in pids)
            or (p.startswith("/dev/shm/psm_") and p not in live)
            or (p.startswith("/tmp/") and len(p) == 41 and p.count("-") == 4)}  # vLLM's uuid4 sockets
    assert not mine, sorted(mine)
