"""What the learner and the actor code against: the two learner-side Protocols and shared types.

The learner is handed a :class:`RolloutTransport` and a :class:`WeightPublisher`; the ZeroMQ
implementations are :class:`sync.ZmqRolloutTransport` and :class:`sync.ZmqWeightPublisher`, and
:mod:`sync.inproc` has in-process ones for tests that run learner and actor in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sync.wire import Heartbeat, RolloutGroup, RolloutRequest, WeightAck

if TYPE_CHECKING:  # torch only at the edges
    import torch


class SyncError(RuntimeError):
    """A sync failure the run cannot continue past (the message is one line)."""


@dataclass(slots=True)
class ReceivedWeights:
    """A weight update already checksum-verified and written as a PEFT adapter directory
    (``adapter_config.json`` + ``adapter_model.safetensors``), ready for the engine to load."""

    version: int
    adapter_dir: Path
    checksum: str
    adapter_config: dict[str, Any]
    learner: str = ""
    """Incarnation of the learner that published it (echoed in the ack)."""


@runtime_checkable
class RolloutTransport(Protocol):
    def submit(self, req: RolloutRequest) -> None:
        """Queue a request for the actors (never blocks on the network)."""

    def receive(self, timeout_s: float) -> RolloutGroup | None:
        """The next group (each submitted request's exactly once), or None after ``timeout_s``."""

    def actors(self) -> dict[str, Heartbeat]:
        """Live actors and their latest heartbeat."""

    def close(self) -> None: ...


@runtime_checkable
class WeightPublisher(Protocol):
    def publish(self, version: int, tensors: dict[str, torch.Tensor], adapter_config: dict) -> str:
        """Send the full adapter state of ``version`` to every actor; returns its checksum."""

    def wait_acks(self, version: int, timeout_s: float, stop=None) -> dict[str, WeightAck]:
        """Block until every live actor acknowledged ``version`` (or a later one); SyncError on a
        checksum mismatch, a failed load, the timeout, or ``stop()`` turning true while waiting."""

    def ack_status(self, version: int) -> tuple[dict[str, WeightAck], list[str]]:
        """Without waiting: (every live actor's ok ack of ``version`` or later, the live actors with none yet);
        SyncError on a checksum mismatch or a failed load, with the lines of :meth:`wait_acks`."""

    def ack_of(self, actor_id: str, version: int) -> WeightAck | None:
        """``actor_id``'s ack of exactly ``version``, None if none came yet; SyncError if it failed or its
        checksum differs from the published one."""

    def latest_version(self) -> int:
        """The newest published version; -1 before the first publication (actors serve the base weights)."""

    def close(self) -> None: ...
