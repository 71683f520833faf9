"""A dead EngineCore fails the calls that wait on it, so the actor exits instead of hanging.

vLLM 0.32's ``SyncMPClient`` is the client ``vllm.LLM`` drives whenever EngineCore is a process of its own: on CUDA
always (vLLM forks it there), on the CPU unless the engine runs inline. The client hears from EngineCore only on its
output socket. When EngineCore dies without a last word (a SIGKILL, from the OOM killer say, or a crash during its
own shutdown), vLLM's monitor thread marks the client dead (``resources.engine_dead``) and closes the
sockets. Nothing reaches the two things a caller waits on:

- ``LLMEngine.step()`` waits on ``outputs_queue``;
- a utility call (``collective_rpc``, ``add_lora``, the scheduler pause around a load) waits on its future in
  ``utility_results``.

So the caller waits forever. With the engine's processes SIGKILLed here, ``llm.reset_prefix_cache()`` and
``llm_engine.step()`` were both still waiting after 20 s. An actor waiting so never exits, and its launcher never
restarts it. A Ctrl-C that reached EngineCore in the middle of a load ended in the launcher's SIGKILL, with vLLM's
shared-memory queues (160-250 MB each on a GPU) left in /dev/shm; CI saw this.

:class:`CoreWatch` is a daemon thread that looks every ``poll_s`` at the flag vLLM's monitor sets. Once it is set,
the thread puts ``EngineDeadError`` on the output queue (again whenever the queue is drained) and on every
outstanding utility future. The caller then gets vLLM's own error for a dead engine, which ``actor.serve.engine_gone``
recognises, and the actor stops. This reads private attributes of vLLM's client: ``actor.vllm_pins`` lists them, and
``tests/integration/test_actor_core_death.py`` kills a real EngineCore under a waiting call.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class CoreWatch:
    """Watches one engine's client; :meth:`stop` before shutting the engine down on purpose."""

    def __init__(self, client, poll_s: float = 0.25):
        self._client = client
        self._poll_s = poll_s
        self._stop = threading.Event()
        self.failed = 0  # waits failed with EngineDeadError (calls and steps)
        self._thread = threading.Thread(target=self._run, name="EngineCoreWatch", daemon=True)
        self._thread.start()

    @classmethod
    def attach(cls, llm, poll_s: float = 0.25) -> CoreWatch | None:
        """A watch on ``llm``'s client if it is vLLM's multiprocess sync client (None inline: nothing can hang)."""
        client = llm.llm_engine.engine_core
        if not all(hasattr(client, a) for a in ("resources", "utility_results", "outputs_queue")):
            return None
        return cls(client, poll_s)

    def dead(self) -> bool:
        return bool(getattr(self._client.resources, "engine_dead", False))

    def _run(self) -> None:
        told = False
        while not self._stop.wait(self._poll_s):
            if not self.dead():
                continue
            if not told:
                log.error("EngineCore died: failing the engine calls that wait on it")
                told = True
            self.fail_waiting()

    def fail_waiting(self) -> int:
        """Fail every outstanding utility call and the output queue's reader with ``EngineDeadError``."""
        from vllm.v1.engine.exceptions import EngineDeadError

        n = 0
        results = self._client.utility_results
        for call_id in list(results):
            future = results.pop(call_id, None)
            if future is not None and not future.done():
                try:
                    future.set_exception(EngineDeadError())
                    n += 1
                except Exception:  # noqa: BLE001 - answered between the check and the set
                    pass
        if self._client.outputs_queue.empty():
            self._client.outputs_queue.put_nowait(EngineDeadError())
            n += 1
        self.failed += n
        return n

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
