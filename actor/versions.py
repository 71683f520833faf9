"""Policy versions inside one engine: adapter versions live at once (adapter mode) and per-token versions.

Adapter mode (:class:`LoraVersions`). Each published version is loaded under a new LoRA name and id (vLLM keys
its prefix cache by adapter name). New requests take the newest adapter; a running request keeps the one it was
admitted under until it finishes (vLLM's ``add_lora`` loads "for future requests"), so several versions can be
live in one batch: vLLM's ``max_loras`` (``RunConfig.lora_slots``) is sized to them, and its scheduler holds back
a request whose adapter would exceed it. A version retires (``remove_lora`` through the engine, then its directory
is removed) once it is neither the newest nor held by a running request. The engine takes each adapter directory
over at load time, in both serve modes (renamed to ``.live-*`` beside it, out of the sync endpoint's pruning,
which counts only ``v<N>`` names, so no later update can delete it under a load): vLLM reloads an adapter evicted
from its CPU cache (``max_cpu_loras``) from that path while a request still needs it, so the directory of a
referenced version is never deleted.

Merged mode (:func:`token_runs`). Every EngineCoreOutputs of vLLM 0.32 carries the engine's weight label
(``EngineCore._weight_version``, set by ``set_weight_version``) and the output processor turns the labels of a
request's steps into ``CompletionOutput.weight_versions`` spans (``WeightVersionSpan(version, start, end)``:
output tokens ``[start, end)`` came from steps run under that label). The engine labels its weights with the
version it merged, inside a scheduler pause (see ``actor.loading``), so the spans are the versions that sampled
each token; here they become the wire's ``version_runs``.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("actor.engine")


def token_runs(spans, n_tokens: int, default: int) -> list[int]:
    """``Completion.version_runs`` (``[start, version, ...]``) from vLLM's weight-version spans of one completion.

    ``spans``: ``[WeightVersionSpan(version: str, start, end)]`` or None (no label reported: every token is
    ``default``'s). Empty spans are skipped, neighbours of the same version merged, a label that is not an int
    counts as ``default``, and the first run always starts at token 0.

    >>> from types import SimpleNamespace as S
    >>> token_runs([S(version="3", start=0, end=5), S(version="4", start=5, end=9)], 9, 3)
    [0, 3, 5, 4]
    >>> token_runs([S(version="3", start=0, end=4), S(version="3", start=4, end=4)], 4, 3)
    [0, 3]
    >>> token_runs(None, 6, 2), token_runs([S(version="default", start=0, end=2)], 2, 7), token_runs([], 0, 1)
    ([0, 2], [0, 7], [])
    """
    if n_tokens == 0:
        return []
    out: list[int] = []
    for sp in spans or ():
        start, end = int(sp.start), min(int(sp.end), n_tokens)
        if end <= start:
            continue
        try:
            v = int(sp.version)
        except (TypeError, ValueError):
            v = default
        if out and out[-1] == v:
            continue
        out += [start, v]
    if not out:
        return [0, default]
    if out[0] != 0:  # tokens before the first label: the request's own version
        out = ([0, default] + out) if out[1] != default else [0, *out[1:]]
    return out


@dataclass
class _Live:
    version: int
    request: object  # vllm LoRARequest
    dir: Path | None
    refs: int = 0


class LoraVersions:
    """The adapter versions one engine holds (adapter mode): which is newest, which running requests use."""

    def __init__(self, llm_engine, slots: int, *, own_dirs: bool):
        self.engine = llm_engine
        self.slots = slots
        self.own_dirs = own_dirs
        self.live: dict[int, _Live] = {}  # lora_int_id -> version, in load order
        self.newest: int | None = None
        self.pinned: set[int] = set()     # kept whatever their references (the stale-adapter test fault)
        self._warned = 0

    def take_dir(self, adapter_dir: Path) -> Path:
        """The directory the engine will load ``adapter_dir`` from and own: renamed beside it to a name the
        sync endpoint does not prune (when this engine owns its directories)."""
        if not self.own_dirs:
            return adapter_dir
        live = adapter_dir.with_name(f".live-{adapter_dir.name}-{uuid.uuid4().hex[:8]}")
        adapter_dir.rename(live)
        return live

    def give_back(self, live_dir: Path, original: Path) -> None:
        """Undo :meth:`take_dir` after a refused load (the endpoint prunes it as before)."""
        if live_dir != original and live_dir.exists() and not original.exists():
            live_dir.rename(original)

    def add(self, version: int, request, adapter_dir: Path | None) -> None:
        """``request`` (loaded) is the newest version; versions no request holds retire."""
        self.live[request.lora_int_id] = _Live(version, request, adapter_dir)
        self.newest = request.lora_int_id
        self.retire_unused()
        n = len(self.live)
        if n > self.slots and n > self._warned:
            self._warned = n
            log.warning("%d adapter versions live (requests of older ones still running), over vLLM's max_loras=%d "
                        "(actor.max_lora_versions): requests of the newest wait for a slot", n, self.slots)

    def acquire(self, lora_id: int | None) -> None:
        if lora_id is not None:
            self.live[lora_id].refs += 1

    def release(self, lora_id: int | None) -> None:
        if lora_id is None or lora_id not in self.live:
            return
        self.live[lora_id].refs -= 1
        if self.live[lora_id].refs <= 0 and lora_id != self.newest and lora_id not in self.pinned:
            self._retire(lora_id)

    def retire_unused(self) -> None:
        for lid in [lid for lid, v in self.live.items() if v.refs <= 0 and lid != self.newest and lid not in
                    self.pinned]:
            self._retire(lid)

    def _retire(self, lora_id: int) -> None:
        v = self.live.pop(lora_id)
        try:
            self.engine.remove_lora(lora_id)
        except Exception as e:  # noqa: BLE001 - the engine is going away: nothing left to free
            log.warning("removing adapter v%d (id %d): %s", v.version, lora_id, e)
        if self.own_dirs and v.dir is not None:
            shutil.rmtree(v.dir, ignore_errors=True)

    def referenced(self) -> dict[int, int]:
        """lora_int_id -> running requests that hold it."""
        return {lid: v.refs for lid, v in self.live.items() if v.refs > 0}

    def close(self) -> None:
        """Remove every directory still owned (the engine is shutting down)."""
        if self.own_dirs:
            for v in self.live.values():
                if v.dir is not None:
                    shutil.rmtree(v.dir, ignore_errors=True)
        self.live.clear()
        self.newest = None
