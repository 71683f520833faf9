"""Learner <-> actor synchronisation: the wire schema, the rollout and weight channels, CURVE keys.

``import sync`` and ``import sync.wire`` pull in neither torch nor zmq; the ZeroMQ classes are
imported on first use (``sync.ZmqRolloutTransport`` etc.).
"""

from __future__ import annotations

from sync.interfaces import ReceivedWeights, RolloutTransport, SyncError, WeightPublisher
from sync.limits import ChannelLimits
from sync.wire import (
    Completion,
    Heartbeat,
    Hello,
    PromptResult,
    RolloutGroup,
    RolloutRequest,
    SamplingSpec,
    Shutdown,
    TensorBlob,
    WeightAck,
    WeightUpdate,
    Welcome,
    WireError,
    decode,
    encode,
)

_LAZY = {
    "ZmqRolloutTransport": "sync.rollout",
    "ZmqWeightPublisher": "sync.weights",
    "ActorEndpoint": "sync.endpoint",
    "InprocRolloutTransport": "sync.inproc",
    "InprocWeightPublisher": "sync.inproc",
}

__all__ = [
    "Completion",
    "Heartbeat",
    "Hello",
    "PromptResult",
    "RolloutGroup",
    "RolloutRequest",
    "SamplingSpec",
    "Shutdown",
    "TensorBlob",
    "WeightAck",
    "WeightUpdate",
    "Welcome",
    "WireError",
    "decode",
    "encode",
    "ChannelLimits",
    "ReceivedWeights",
    "RolloutTransport",
    "SyncError",
    "WeightPublisher",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sync' has no attribute {name!r}")
