"""Fixtures of the unit tests: a fake learner for the actor endpoint's refusal tests."""

from __future__ import annotations

import time

import pytest


class FakeLearner:
    """Bare sockets where an :class:`sync.endpoint.ActorEndpoint` connects, standing in for a broken or hostile
    learner: a ROUTER as the weight channel (ipc, or TCP as a CURVE server) and, over TCP, a plain ROUTER as the
    fetch port of sealed versions (``fetch``, ``fetch_port``)."""

    def __init__(self, cfg):
        import zmq

        from sync._net import bind, setup_server, transport_kind

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth = setup_server(self.ctx, self.sock, cfg)
        self.port = bind(self.sock, cfg, 0)
        self.fetch, self.fetch_port = None, 0
        if transport_kind(cfg) == "tcp":
            self.fetch = self.ctx.socket(zmq.ROUTER)
            self.fetch.setsockopt(zmq.LINGER, 0)
            self.fetch_port = bind(self.fetch, cfg, 0)

    def recv(self, want, timeout=5.0, sock=None):
        """(identity, message) of the first ``want`` message on ``sock`` (the weight channel's by default)."""
        from sync.wire import decode

        sock = sock or self.sock
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.poll(100):
                ident, *frames = sock.recv_multipart()
                msg = decode(frames)
                if isinstance(msg, want):
                    return ident, msg
        raise AssertionError(f"no {want.__name__} received")

    def send(self, ident, frames, sock=None):
        (sock or self.sock).send_multipart([ident, *frames])

    def close(self):
        for s in (self.sock, self.fetch):
            if s is not None:
                s.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


@pytest.fixture
def fake_learner():
    """``fake_learner(cfg)`` -> a :class:`FakeLearner` for that sync config, closed after the test."""
    made = []

    def make(cfg):
        made.append(FakeLearner(cfg))
        return made[-1]

    yield make
    for f in made:
        f.close()
