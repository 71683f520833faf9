"""The learner's process group: how ranks meet, and every collective the project issues.

One place decides which GPU a rank uses, :func:`cuda_index` (``cuda:LOCAL_RANK`` when a rank sees its node's GPUs,
``cuda:0`` when Slurm binds one GPU per task), and one the communication device: :func:`comm_device`,
``cuda:<current>`` when the group's backend is NCCL (which serves no CPU tensor: "No backend type associated with
device type cpu"), ``cpu`` for gloo. Every collective of ours goes through :func:`all_reduce`,
:func:`broadcast_object` or :func:`barrier`, which move their tensors to that device and back. No other file of
ours calls ``torch.distributed`` or ``deepspeed.comm`` collectives: ``tests/unit/test_comm_device.py`` checks the
source, and :func:`guard` (on whenever ``TUCANO2_COMM_GUARD=1``, which the test suite sets for every learner it
starts) refuses at run time a collective that our code issues from anywhere else, so a new direct call fails the
two-rank CPU tests although gloo itself would take its CPU tensor.

Rendezvous (:func:`init`). torch.distributed's store is unauthenticated: whoever reaches it can join the
group or rewrite its keys, and the gloo/NCCL data plane trusts every peer the store introduced. So:

* one rank: an in-memory ``HashStore``, no listener at all;
* every rank on this node (``MASTER_ADDR`` is a loopback address): a ``FileStore`` in ``RUN_DIR/.dist``
  (mode 0700), no TCP listener, gloo's pair sockets on the loopback interface (``GLOO_SOCKET_IFNAME=lo``);
* ranks across nodes: rank 0's ``TCPStore`` listens on ``MASTER_ADDR`` only (the learner node's cluster
  address), not on every interface as torch's default does. The cluster network is then the trust
  boundary, as it is for NCCL's own sockets.

What CUDA changes (read in torch 2.13 and DeepSpeed 0.19.8, pinned by ``tests/unit/test_comm_device.py``):

* ``LOCAL_RANK`` is rewritten to this rank's device index (:func:`bind_local_rank`) before DeepSpeed starts.
  DeepSpeed hands the engine the device we pass (``deepspeed_args``), but ZeRO-3's ``zero.Init``
  (``runtime/zero/partition_parameters.py``) and ``runtime/zero/utils.py`` call ``set_device`` /
  ``device_name(os.environ["LOCAL_RANK"])`` themselves: under Slurm's GPU binding every rank sees one GPU, its
  ``cuda:0``, and ``LOCAL_RANK`` = ``SLURM_LOCALID`` would be "invalid device ordinal" on every rank but the first.
* The group's timeout is :func:`group_timeout_s`, not torch's default: NCCL's is 10 minutes
  (``default_pg_nccl_timeout``; gloo's, which the CPU tests see, 30), and rank 0 alone waits longer than that
  while the other ranks sit in a broadcast (rollouts, an actor's restart, the eval, the acks): NCCL's watchdog
  would take them down.
* ``device_id`` is bound only when there is more than one rank: as DeepSpeed's own ``init_process_group``
  (``comm/torch.py``; its issue #8248: a bound device makes torch split every later group with
  ``ncclCommSplit``, CUDA error 600 on some single-GPU setups, and one rank has no peer to split with).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from pathlib import Path

import torch

from sync._net import is_loopback

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = ("actor", "commerce", "configs", "launch", "learner", "rewards", "sync", "zoo")


def _listening_socket(addr: str, port: int) -> socket.socket:
    """A TCP listener on ``addr:port`` only (torch's own TCPStore server binds every interface)."""
    info = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    s = socket.socket(info[0], socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(info[4])
    except OSError as e:
        s.close()
        raise RuntimeError(f"learner rendezvous: cannot listen on {addr}:{port} (MASTER_ADDR/MASTER_PORT): "
                           f"{e.strerror}") from None
    s.listen(128)
    return s


def cuda_index(env=None, visible: int | None = None) -> int:
    """This rank's CUDA device, decided here for the whole learner (its model, the NCCL group's device, DeepSpeed's
    engine). Two layouts put ranks on GPUs:

    * plain: every rank sees all of its node's GPUs (the DeepSpeed launcher's ``--include``, srun without GPU
      binding); ``LOCAL_RANK`` picks one: ``cuda:LOCAL_RANK``;
    * bound: each rank sees only its own GPU (``srun --gpus-per-task=1``, ``--gpu-bind``, a cgroup per task):
      ``CUDA_VISIBLE_DEVICES`` lists one GPU, which is ``cuda:0`` whatever ``LOCAL_RANK`` is.

    ``visible``: how many GPUs this process sees (default: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set,
    else ``torch.cuda.device_count()``). A ``LOCAL_RANK`` that fits neither layout is one line of error."""
    env = os.environ if env is None else env
    local = int(env.get("LOCAL_RANK", "0"))
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        visible = len([x for x in cvd.split(",") if x.strip()]) if cvd is not None else torch.cuda.device_count()
    if visible == 1:
        return 0
    if 0 <= local < visible:
        return local
    raise RuntimeError(f"learner rank with LOCAL_RANK {local} sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES="
                       f"{cvd if cvd is not None else 'unset'}): give each rank its node's GPUs or exactly one")


def bind_local_rank(env=None) -> int:
    """This rank's CUDA device (:func:`cuda_index`), with ``LOCAL_RANK`` set to it in ``env`` (default the process
    environment), which DeepSpeed's ZeRO-3 reads for its device (see the module docstring). In the plain layout
    nothing changes; bound, every rank's ``LOCAL_RANK`` becomes 0."""
    env = os.environ if env is None else env
    index = cuda_index(env)
    env["LOCAL_RANK"] = str(index)
    return index


ROLLOUT_ATTEMPTS = 4
"""A step's rollouts are waited for at most this many times (the first request and three re-requests of stale
groups: ``learner.trainer.Trainer._collect``)."""
SLACK_S = 600.0
"""Rank 0's own work between two collectives beside its waits: rewards and their sandboxes, scoring the eval,
writing metrics."""


def group_timeout_s(cfg) -> float:
    """The process group's timeout: the longest rank 0 can spend between two collectives while the other ranks sit
    in a broadcast, from the run's own limits (each wait's, at its limit):

    * a step's rollouts: :data:`ROLLOUT_ATTEMPTS` waits of up to 3 x ``sync.request_timeout_s`` with no group
      arriving (``learner.evaluate.Broker``), each followed by the acks of the versions it used (up to
      ``sync.ack_timeout_s``, ``learner.acks.AckWatch.verify``);
    * or after a step: the publication's acks (``sync.wait_for_acks``), the probe's and the eval's rollouts
      (3 x ``request_timeout_s`` each);
    * plus an actor restarted meanwhile (``sync.actor_start_timeout_s``; the broker's wait covers the restart only
      when it is the longer) and :data:`SLACK_S`.

    The final acks (``ack_timeout_s``) and the first ones are shorter than either stretch. With the defaults
    (request 600 s, acks 120 s, actor start 900 s) that is 9,180 s against NCCL's 600: a rank that really died is
    noticed sooner by the launchers, which stop every component when one fails. The start-up wait for the actors
    (``learner.__main__.wait_for_actors``) polls, so it needs no share of it."""
    s = cfg.sync
    rollout = 3 * s.request_timeout_s
    step = ROLLOUT_ATTEMPTS * (rollout + s.ack_timeout_s)
    after = s.ack_timeout_s + 2 * rollout
    return max(step, after) + s.actor_start_timeout_s + SLACK_S


def make_store(rank: int, world: int, store_dir: Path, timeout_s: float = 1800.0):
    """The rendezvous store for this group (see the module docstring); the caller keeps it alive."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if world == 1:
        return dist.HashStore()
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29500"))
    if is_loopback(addr):
        store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store_dir.chmod(0o700)
        # MASTER_PORT tells this launch's file from a crashed one's (each launch picks its own port).
        return dist.FileStore(str(store_dir / f"store-{port}"), world)
    if rank == 0:
        sock = _listening_socket(addr, port)
        store = dist.TCPStore(addr, port, world, True, timeout, master_listen_fd=sock.detach())
    else:
        store = dist.TCPStore(addr, port, world, False, timeout)
    return store


def init(cpu: bool, store_dir: Path, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise torch.distributed (then DeepSpeed's wrapper of it) once per process; return (rank, world).

    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` come from the launcher (deepspeed,
    srun through :mod:`launch.slurm_task`); a lone process is rank 0 of 1. ``timeout_s``: the group's
    (:func:`group_timeout_s` for a run). On a GPU, ``LOCAL_RANK`` becomes the device index (:func:`bind_local_rank`)
    and ``device_id`` is bound when there are several ranks (module docstring)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if world > 1 and is_loopback(os.environ.get("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        kw = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if not cpu:
            index = bind_local_rank()
            if world > 1:
                kw["device_id"] = torch.device("cuda", index)
        store = make_store(rank, world, store_dir, timeout_s)
        dist.init_process_group("gloo" if cpu else "nccl", store=store, rank=rank, world_size=world, **kw)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl", verbose=False,
                               timeout=datetime.timedelta(seconds=timeout_s))
    if os.environ.get("TUCANO2_COMM_GUARD") == "1":
        guard()
    return dist.get_rank(), dist.get_world_size()


def comm_device() -> torch.device:
    """The device the group's backend serves: the current CUDA device under NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over every rank (``op``: sum or max), on ``t``'s own device; ``t`` as is at one rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    buf = t.to(comm_device())
    dist.all_reduce(buf, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return buf.to(t.device)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (torch's pickle, between the group's own ranks only)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        if comm_device().type == "cuda":
            dist.barrier(device_ids=[comm_device().index])
        else:
            dist.barrier()


def shutdown() -> None:
    """Tear the process group down before the process exits on an error every rank raised together: a gloo group
    left to the interpreter's exit once aborted the second rank ("terminate called without an active exception",
    SIGABRT) right after its peer had left."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


# --------------------------------------------------------------------------------------------- the guard
COLLECTIVES = ("all_reduce", "broadcast", "broadcast_object_list", "all_gather", "all_gather_into_tensor",
               "all_gather_object", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter",
               "all_to_all", "all_to_all_single", "barrier", "gather_object", "scatter_object_list")


class CommGuardError(RuntimeError):
    """A collective issued by our code outside :mod:`learner.comm`."""


def _first_caller() -> tuple[str, int] | None:
    """(file, line) of the frame that issued this collective when it is ours and not this module's; None when
    it came through this module or from a library (DeepSpeed's engine, torch)."""
    f = sys._getframe(2)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if path == os.path.abspath(__file__):
            return None
        if f"{os.sep}torch{os.sep}distributed{os.sep}" in path or f"{os.sep}deepspeed{os.sep}comm{os.sep}" in path:
            f = f.f_back
            continue
        rel = os.path.relpath(path, _REPO)
        return (rel, f.f_lineno) if rel.split(os.sep)[0] in _OURS else None
    return None


def guard() -> None:
    """Wrap torch.distributed's collectives so that one our code issues from outside this module raises
    :class:`CommGuardError` naming the file and line (DeepSpeed's own collectives pass: they run on the
    engine's device). Idempotent."""
    import torch.distributed as dist

    if getattr(dist, "_tucano2_guarded", False):
        return
    for name in COLLECTIVES:
        orig = getattr(dist, name, None)
        if orig is None:
            continue

        def wrapped(*a, _orig=orig, _name=name, **kw):
            caller = _first_caller()
            if caller is not None:
                raise CommGuardError(f"torch.distributed.{_name} called from {caller[0]}:{caller[1]}: issue "
                                     f"collectives through learner.comm, which puts them on {comm_device()}")
            return _orig(*a, **kw)

        wrapped.__wrapped__ = orig
        setattr(dist, name, wrapped)
    dist._tucano2_guarded = True
