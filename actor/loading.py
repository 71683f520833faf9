"""Which policy version a :class:`actor.engine.RolloutEngine` serves, and how it loads a new one.

Versions. Two ways to serve a LoRA version:
- ``merged`` (default on float32): the delta is merged into the weights in each worker (``actor.merge``);
  base-model speed, no LoRA kernels.
- ``adapter``: vLLM LoRA; each version is loaded under a new name and id (vLLM keys its prefix cache
  by adapter name, so reusing one name could serve KV computed under older weights); versions retire once
  no running request holds them (``actor.versions.LoraVersions``).

Two ways to take a version (``actor.load_mode``):
- ``drain``: ``load_adapter`` refuses while requests are in flight (``EngineBusy``: the serve loop lets them
  finish first), so a sequence has one version.
- ``inflight`` (default): ``load_adapter`` runs between two engine steps with requests in flight. Adapter mode:
  ``add_lora`` is for future requests; running ones finish on the adapter they were admitted under. Merged mode:
  the running sequences continue under the new weights, on the KV cache computed under the old ones (as
  PipelineRL), and every token records the version that sampled it. How, on vLLM 0.32 internals (pinned by
  ``tests/unit/test_actor_units.py::test_the_vllm_internals_inflight_loads_rely_on``, tested against
  transformers+PEFT per version by ``tests/integration/test_actor_engine.py::test_a_load_with_requests_in_flight``):

  1. The synchronous ``LLM`` runs EngineCore in its own process, which steps on its own while requests are
     queued: the actor does not know which step a load lands between (with ``actor.inline_engine`` EngineCore
     steps only inside ``step()``, so every load lands between two; the same calls run, the pause then a no-op
     in effect). So the load pauses the scheduler first:
     ``LLMEngine.sleep(level=0, mode="keep")`` is the utility ``EngineCore.pause_scheduler("keep")``
     (``PAUSED_ALL``: no tokens scheduled, requests and KV kept), answered once no step is in progress (its
     outputs go out before the answer, on the same queue).
  2. While paused, ``merge_lora_dir`` (a ``collective_rpc``, run by EngineCore between steps) swaps the
     weights, and ``set_weight_version(str(version))`` relabels them; then ``wake_up(["scheduling"])`` resumes.
  3. EngineCore stamps every step's outputs with the label in force (``EngineCoreOutputs.weight_version``) and
     vLLM's output processor turns a request's stamps into ``CompletionOutput.weight_versions`` spans, which
     ``actor.versions.token_runs`` turns into the wire's ``Completion.version_runs``: a token's version is
     the one whose weights ran the step that sampled it, exactly.
  4. The prefix cache: ``reset_prefix_cache`` fails while running requests hold blocks, so blocks of the old
     weights stay cached. Every prompt carries a ``cache_salt`` unique to the load it was submitted after
     (vLLM hashes the salt into the first block, and so into every block hash after it): a request submitted
     after the load never reuses a block computed under older weights. Requests already admitted keep their
     salt and may share blocks of their own version's prompts, as in-flight sequences share their KV. With
     nothing in flight the cache is also reset (frees the old blocks at once).
  The pause lasts the merge (15 ms on the tiny model); the readback follows it, resumed.
  5. Adapter mode pauses too when requests are in flight, around ``add_lora`` *and* the readback: every step
     re-activates the running batch's adapters and evicts the least recently used one from a full set of LoRA slots,
     so a step between the two could evict the new adapter and the readback read an empty slot (pinned by
     ``tests/integration/test_actor_precision.py::test_the_readback_sees_the_new_adapter_under_slot_pressure``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger("actor.engine")


class EngineBusy(RuntimeError):
    """A weight version was to be loaded while requests were still being generated (``actor.load_mode: drain``)."""


class AdapterLoadError(RuntimeError):
    """An adapter was refused (unreadable, wrong shapes, wrong checksum); the served version is unchanged.

    When the refusal came out of the engine (add_lora, collective_rpc) the engine's own exception is its
    ``__cause__``, so ``actor.serve.engine_gone`` can tell a dead EngineCore from a bad adapter."""


def _worker_error(e: Exception) -> str:
    """The worker's own message out of vLLM's collective_rpc wrapper, on one line."""
    msg = str(e)
    if "Worker failed with error '" in msg:
        msg = msg.split("Worker failed with error '", 1)[1].rsplit("', please check", 1)[0]
    return msg.splitlines()[0] if msg else type(e).__name__


STALE_FAULT_ENV = "TUCANO2_FAULT_STALE_ADAPTER"
"""A fault for the tests, never set by the project: ``<n>``: from the n-th adapter load on, requests go out on the
previous version's adapter while the actor reports (and reads back) the new one; the logprob probe must see it."""


def _quietly(fn, *args) -> None:
    """Call ``fn`` while another error is on its way up: its own failure is logged, not raised."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        log.warning("%s after a failed load: %s", getattr(fn, "__name__", fn), e)


def _stale_fault(load: int) -> bool:
    n = os.environ.get(STALE_FAULT_ENV)
    return bool(n) and load >= int(n)


class VersionLoading:
    """The version half of :class:`actor.engine.RolloutEngine` (the module docstring). The engine's ``__init__``
    sets the state these methods share: ``cfg``, ``llm``, ``mode``, ``load_mode``, ``delete_retired``, ``loras``
    (:class:`actor.versions.LoraVersions`), ``_version``, ``_fingerprint``, ``_delta_cosine``, ``readback``,
    ``_lora``, ``_stale``, ``_next_lora_id``, ``_merged_dir``, ``_salt``, ``_loads``, ``pause_s``; and what is in
    flight, ``_pending`` and ``_by_key``, which its rollout half keeps."""

    @property
    def version(self) -> int:
        """Policy version every new request is generated with."""
        return self._version

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def delta_cosine(self) -> float:
        """Cosine between the LoRA delta every worker serves, read back from the engine, and the adapter's
        (``actor.readback``)."""
        return self._delta_cosine

    def load_adapter(self, version: int, adapter_dir: Path | str | None, expect_checksum: str | None = None
                     ) -> str:
        """Serve ``version`` from the PEFT adapter dir (None: the base model). Returns its fingerprint:
        the wire checksum (``sync.tensors.checksum``) of the tensors read from the directory.

        With ``actor.load_mode: drain`` it refuses (``EngineBusy``) while requests are in flight; ``inflight``
        loads between two engine steps (the module docstring). On any failure, including a fingerprint other
        than ``expect_checksum``, the previously served version stays in place (everything is checked before
        the weights are touched).
        """
        if self._by_key and self.load_mode == "drain":  # an episode waiting on a tool is in flight
            raise EngineBusy(f"cannot load version {version}: {len(self._by_key)} requests in flight")
        adapter_dir = None if adapter_dir is None else Path(adapter_dir)
        if self.mode == "merged":
            fingerprint, served_dir = self._load_merged(version, adapter_dir, expect_checksum)
            self._version = version
            self._fingerprint = fingerprint
            self._read_back(served_dir)   # the weights stay as merged whatever runs: read back resumed
            return fingerprint
        fingerprint = self._adapter_fingerprint(adapter_dir, expect_checksum)
        # add_lora puts the adapter in a LoRA slot, and every engine step re-activates the running batch's adapters,
        # evicting the least recently used when the slots are full: with running requests on max_loras older versions
        # a step between add_lora and the readback would evict the new one, and the readback read an empty slot. Both
        # run inside one scheduler pause, so the readback sees the slot the adapter was loaded into (what a request of
        # it is served from: evicted, it is loaded again from the same LoRAModel).
        with self._paused():
            served_dir = self._load_lora(version, adapter_dir)
            self._version = version
            self._fingerprint = fingerprint
            self._read_back(served_dir)
        return fingerprint

    @contextlib.contextmanager
    def _paused(self):
        """While requests are in flight, hold the scheduler between two engine steps (``sleep(level=0, mode="keep")``:
        EngineCore's ``pause_scheduler("keep")``, answered once no step is in progress and its batch queue is empty;
        requests and KV kept) until the block ends (``wake_up(["scheduling"])``). Yields whether it paused; an idle
        engine is not paused (nothing steps)."""
        engine = self.llm.llm_engine
        busy = bool(self._pending)
        t0 = time.perf_counter()
        if busy:
            engine.sleep(level=0, mode="keep")
        try:
            yield busy
        except BaseException:
            if busy:
                _quietly(engine.wake_up, ["scheduling"])
            raise
        if busy:
            engine.wake_up(["scheduling"])
            self.pause_s = time.perf_counter() - t0

    def _load_merged(self, version: int, adapter_dir: Path | None, expect_checksum: str | None
                     ) -> tuple[str, Path | None]:
        """Merge ``adapter_dir`` into every worker's weights and label them ``version``; with requests in flight,
        inside a scheduler pause (steps 1-2 of the module docstring). (fingerprint, the directory merged from: the
        engine's own until the next load, see :meth:`actor.versions.LoraVersions.take_dir`)."""
        engine = self.llm.llm_engine
        live = None if adapter_dir is None else self.loras.take_dir(adapter_dir)
        try:
            with self._paused() as busy:
                try:
                    res = self.llm.collective_rpc("merge_lora_dir", args=(
                        None if live is None else str(live), expect_checksum, self.cfg.actor.shared_gpu))
                except Exception as e:
                    raise AdapterLoadError(f"v{version} from {adapter_dir}: {_worker_error(e)}") from e
                fps = {r["fingerprint"] for r in res}
                if len(fps) != 1:
                    raise RuntimeError(f"workers loaded different adapters: {sorted(fps)}")
                engine.set_weight_version(str(version))
        except BaseException:
            if live is not None:
                self.loras.give_back(live, adapter_dir)
            raise
        if not busy:
            self.llm.reset_prefix_cache()
        self._salt = f"w{next(self._loads)}"
        old, self._merged_dir = self._merged_dir, live
        if old is not None and old != live:
            self._retire_dir(old)
        return fps.pop(), live

    def _read_back(self, adapter_dir: Path | None) -> None:
        """What every worker now serves against the adapter (``actor.readback``): ``delta_cosine``, ``readback``."""
        from actor.readback import combine

        lora_id = None if self.mode == "merged" else (self._lora.lora_int_id if self._lora is not None else 0)
        try:
            res = self.llm.collective_rpc("readback_served",
                                          args=(None if adapter_dir is None else str(adapter_dir), lora_id))
        except Exception as e:
            raise AdapterLoadError(f"reading back v{self._version}: {_worker_error(e)}") from e
        self.readback = combine(res)
        self._delta_cosine = self.readback["cosine"]

    @staticmethod
    def _adapter_fingerprint(adapter_dir: Path | None, expect_checksum: str | None) -> str:
        """The wire checksum of the adapter file (``"base"`` for None), checked against ``expect_checksum``; an
        unreadable or mismatching adapter is refused here, before the engine is touched or paused."""
        from actor.merge import read_adapter

        if adapter_dir is None:
            return "base"
        try:
            _, _, fingerprint = read_adapter(adapter_dir)
        except Exception as e:  # noqa: BLE001 - unreadable, truncated, not a LoRA adapter: refused, unchanged
            raise AdapterLoadError(f"{adapter_dir}: {type(e).__name__}: {e}") from None
        if expect_checksum is not None and fingerprint != expect_checksum:
            raise AdapterLoadError(f"{adapter_dir}: adapter file hashes to {fingerprint}, expected {expect_checksum}")
        return fingerprint

    def _load_lora(self, version: int, adapter_dir: Path | None) -> Path | None:
        """Load the checked adapter under a new name and id for the requests submitted from now on; returns the
        directory it is served from (the engine's own, see :meth:`actor.versions.LoraVersions.take_dir`)."""
        from vllm.lora.request import LoRARequest

        if adapter_dir is None:
            self._lora = self._stale = None
            self.loras.newest = None
            self.loras.retire_unused()
            return None
        live_dir = self.loras.take_dir(adapter_dir)
        req = LoRARequest(f"v{version}-{self._next_lora_id}", self._next_lora_id, str(live_dir))
        try:
            added = self.llm.llm_engine.add_lora(req)
        except Exception as e:
            self.loras.give_back(live_dir, adapter_dir)
            raise AdapterLoadError(f"v{version} from {adapter_dir}: {_worker_error(e)}") from e
        if not added:
            self.loras.give_back(live_dir, adapter_dir)
            raise AdapterLoadError(f"vLLM refused to load adapter {adapter_dir}")
        self._next_lora_id += 1
        self._stale = self._lora if _stale_fault(req.lora_int_id) else None
        self.loras.pinned = {self._stale.lora_int_id} if self._stale is not None else set()
        self._lora = req
        self.loras.add(version, req, live_dir)
        return live_dir

    def _retire_dir(self, d: Path) -> None:
        if self.delete_retired:
            shutil.rmtree(d, ignore_errors=True)

    def loaded_lora_ids(self) -> set[int]:
        """Adapter ids vLLM holds (adapter mode)."""
        return set(self.llm.llm_engine.list_loras()) if self.mode == "adapter" else set()
