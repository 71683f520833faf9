"""vLLM's shared-memory queues, released when the engine's processes are gone.

The warning at every actor exit, ``resource_tracker: There appear to be 1 leaked shared_memory objects to clean up
at shutdown``, came from vLLM's message queues (``vllm.distributed.device_communicators.shm_broadcast``): EngineCore
creates the ring buffer it broadcasts to its workers (``MultiprocExecutor.rpc_broadcast_mq``) and each worker the one
it answers on, as ``multiprocessing.shared_memory.SharedMemory(create=True)`` segments (``/dev/shm/psm_*``). Python
registers a created segment with the resource tracker, which the actor process started and its engine's children
share; the segment is unlinked, and unregistered, only by the ring buffer's ``__del__``. vLLM's shutdown drops its
last reference (``rpc_broadcast_mq = None``) but a second SIGTERM while EngineCore waits for its workers (the
launcher stops a component's whole process group, so EngineCore and its worker get one of their own besides the
actor's) ends the process through ``os._exit`` first: no ``__del__``, the segment stays (160-250 MB on a GPU
engine) until the tracker unlinks it at the actor's exit and warns.

:func:`engine_segments` lists the segments the engine's processes map, read once the engine is up (EngineCore may
be dead by the time the actor closes it); :func:`release_segments`, after those processes exited, unlinks the ones
still there and has this process's resource tracker (the one the engine's processes registered them with: they are
its children) forget them all, so nothing is left and nothing is warned about. Stdlib only.
"""

from __future__ import annotations

import os
from pathlib import Path

SHM = Path("/dev/shm")
PREFIX = "psm_"  # multiprocessing.shared_memory's own names (vLLM's queues pass none)


def engine_segments(pids, shm: Path = SHM) -> set[str]:
    """Names of this user's ``psm_*`` segments under ``shm`` that any of ``pids`` maps now (``/proc/PID/maps``)."""
    root = str(shm.resolve()) + "/"
    out: set[str] = set()
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:  # exited already, or not ours to read
            continue
        for line in lines:
            path = line.split(None, 5)[-1].removesuffix(" (deleted)") if line.count(" ") >= 5 else ""
            if path.startswith(root) and path[len(root):].startswith(PREFIX) and "/" not in path[len(root):]:
                out.add(path[len(root):])
    return out


def release_segments(names, shm: Path = SHM) -> list[str]:
    """Once the processes that used them have exited: unlink the segments of ``names`` still under ``shm`` (this
    user's), and have this process's resource tracker forget every one of them, present or not (a process killed
    inside ``SharedMemory.unlink`` removes the file but never unregisters it: the tracker would warn about it too).
    Returns the names whose segment was still there."""
    from multiprocessing import resource_tracker

    released = []
    for name in sorted(names):
        f = shm / name
        try:
            if f.stat().st_uid == os.getuid():
                f.unlink()  # /dev/shm/NAME is the POSIX object: this is shm_unlink
                released.append(name)
        except OSError:
            pass
        # REGISTER then UNREGISTER: the tracker's set holds the name at most once, and its UNREGISTER of a name it
        # does not hold would print a KeyError; in this order the name is gone whatever the tracker held before.
        resource_tracker.register(f"/{name}", "shared_memory")
        resource_tracker.unregister(f"/{name}", "shared_memory")
    return released
