"""Every collective of ours runs on the device its backend serves, decided in one place (learner.comm).

Gloo takes CPU tensors, so a CPU test cannot see a collective that NCCL would refuse. Two checks catch
the next one instead: the source of every shipped package issues no torch.distributed / deepspeed.comm
collective outside learner/comm.py, and at run time learner.comm.guard (on in every learner the tests
start) refuses one our code issues from anywhere else."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from learner import comm

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("actor", "commerce", "configs", "launch", "learner", "rewards", "sync", "zoo")
DIST_MODULES = {"torch.distributed", "deepspeed.comm", "deepspeed"}


def direct_collectives(path: Path) -> list[str]:
    """``file:line name`` of each collective called on torch.distributed / deepspeed.comm in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}  # local name -> module ("torch.distributed") or "fn"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in DIST_MODULES or a.name == "torch":
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in DIST_MODULES:
                    aliases[a.asname or a.name] = full
                elif node.module in DIST_MODULES and a.name in comm.COLLECTIVES:
                    aliases[a.asname or a.name] = "fn"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and aliases.get(f.id) == "fn":
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {f.id}")
        elif isinstance(f, ast.Attribute) and f.attr in comm.COLLECTIVES:
            parts, v = [], f.value
            while isinstance(v, ast.Attribute):
                parts.insert(0, v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in aliases:
                base = ".".join([aliases[v.id], *parts])
                if base in DIST_MODULES:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {base}.{f.attr}")
    return found


def test_no_collective_outside_learner_comm():
    found = [hit for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*.py"))
             if f != REPO / "learner" / "comm.py" for hit in direct_collectives(f)]
    assert not found, f"collectives outside learner.comm (NCCL refuses CPU tensors): {found}"


def test_the_source_check_sees_every_spelling(tmp_path):
    (tmp_path / "x.py").write_text(
        "import torch\nimport torch.distributed as dist\nimport deepspeed\nfrom deepspeed import comm as dc\n"
        "from torch.distributed import all_reduce as ar\n"
        "def f(t):\n    dist.all_reduce(t)\n    torch.distributed.broadcast(t, 0)\n    deepspeed.comm.barrier()\n"
        "    dc.all_gather_into_tensor(t, t)\n    ar(t)\n    dist.get_rank()\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        hits = direct_collectives(tmp_path / "x.py")
    finally:
        REPO = old
    assert [h.split(" ")[1] for h in hits] == ["torch.distributed.all_reduce", "torch.distributed.broadcast",
                                               "deepspeed.comm.barrier", "deepspeed.comm.all_gather_into_tensor",
                                               "ar"]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A one-rank gloo group in this process (an in-memory store, as learner.comm.init makes), guarded."""
    import torch.distributed as dist

    made = not dist.is_initialized()
    if made:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    comm.guard()
    yield dist
    for name in comm.COLLECTIVES:  # the next module's tests run unguarded, with no group of ours
        fn = getattr(dist, name, None)
        if hasattr(fn, "__wrapped__"):
            setattr(dist, name, fn.__wrapped__)
    dist._tucano2_guarded = False
    if made:  # a learner started later in this process makes its own group, with its launcher variables
        import deepspeed.comm.comm as dcc
        from deepspeed.utils import groups

        dist.destroy_process_group()
        dcc.cdb = None
        groups._release_process_group_references(None)


def test_the_guard_refuses_a_collective_our_code_issues_elsewhere(group):
    t = torch.ones(2)
    fake = str(REPO / "learner" / "trainer.py")  # code compiled as if it were ours
    code = compile("dist.all_reduce(t)\n", fake, "exec")
    with pytest.raises(comm.CommGuardError, match=r"all_reduce called from learner/trainer.py:1"):
        exec(code, {"dist": group, "t": t})
    import deepspeed.comm as dc

    dc.init_distributed(dist_backend="gloo", verbose=False)
    with pytest.raises(comm.CommGuardError, match="barrier called from learner/trainer.py"):
        exec(compile("dc.barrier()\n", fake, "exec"), {"dc": dc})


def test_the_guard_lets_learner_comm_and_libraries_through(group):
    t = torch.tensor([1.0, 3.0])
    group.all_reduce(t)  # a test file is not ours: a library call path
    exec(compile("comm.barrier(); r = comm.all_reduce(t, op='max')\n", str(REPO / "learner" / "trainer.py"), "exec"),
         {"comm": comm, "t": t})
    assert comm.comm_device() == torch.device("cpu")


def test_comm_device_follows_the_backend(monkeypatch, group):
    monkeypatch.setattr(group, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert comm.comm_device() == torch.device("cuda", 3)
    monkeypatch.setattr(group, "get_backend", lambda *a: "gloo")
    assert comm.comm_device() == torch.device("cpu")


# ------------------------------------------------------------------------------- which GPU a rank uses
# A fake of what this CPU box lacks: the GPUs a process sees, as CUDA_VISIBLE_DEVICES in a fake environment.
NODE = "0,1,2,3,4,5,6,7"


def test_each_rank_gets_its_gpu_in_plain_and_bound_layouts():
    from learner.engine import deepspeed_args, select_device_dtype

    for local in range(8):
        plain = {"LOCAL_RANK": str(local), "CUDA_VISIBLE_DEVICES": NODE}           # every rank sees the node
        bound = {"LOCAL_RANK": str(local), "CUDA_VISIBLE_DEVICES": str(local)}     # srun --gpus-per-task=1
        assert comm.cuda_index(plain) == local
        assert comm.cuda_index(bound) == 0  # its one GPU is cuda:0, whatever LOCAL_RANK says
        assert select_device_dtype("auto", True, bound) == (torch.device("cuda", 0), torch.bfloat16)
        assert select_device_dtype("fp32", True, plain) == (torch.device("cuda", local), torch.float32)
    assert comm.cuda_index({"LOCAL_RANK": "5"}, visible=8) == 5  # no CUDA_VISIBLE_DEVICES: torch's count
    assert comm.cuda_index({"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "GPU-1f2e"}) == 0
    # DeepSpeed would take LOCAL_RANK for its device: it is handed the one decided here
    assert deepspeed_args(torch.device("cuda", 0)).device_rank == 0
    assert deepspeed_args(torch.device("cpu")) is None
    assert select_device_dtype("auto", False) == (torch.device("cpu"), torch.float32)


def test_a_local_rank_that_fits_no_layout_is_one_line():
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK 3 sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES=4,5\)"):
        comm.cuda_index({"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "4,5"})


def test_no_other_file_picks_a_gpu_from_local_rank():
    """LOCAL_RANK is read for a device in learner/comm.py only (the launchers set it; DeepSpeed is handed the
    device through deepspeed_args)."""
    hits = [f"{f.relative_to(REPO)}:{n}" for pkg in ("actor", "learner", "sync", "zoo")
            for f in sorted((REPO / pkg).rglob("*.py")) if f != REPO / "learner" / "comm.py"
            for n, line in enumerate(f.read_text().splitlines(), 1)
            if "LOCAL_RANK" in line and not line.lstrip().startswith(("#", "``"))
            and "environ" in line]
    assert not hits, hits


# ------------------------------------------------------------------------- what only CUDA has, faked
# A fake of what this CPU box lacks: torch sees GPUs (torch.cuda.is_available), set_device is recorded, and
# init_process_group records its arguments and stops there (no NCCL here). Everything before it is the
# learner's own start-up (learner.engine.PolicyEngine).
class Captured(Exception):
    """The fake init_process_group's stop."""


def start_on_cuda(tmp_path, env: dict, **over) -> dict:
    """PolicyEngine's start-up on a faked GPU node under ``env`` (the launcher's variables) up to
    init_process_group; returns what it was called with and the device torch was set to."""
    import torch.distributed as dist

    from configs import load_config
    from learner.engine import PolicyEngine

    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                      [f"run_dir={tmp_path / 'run'}", *[f"{k}={v}" for k, v in over.items()]])
    calls: dict = {}

    def init_process_group(backend, **kw):
        calls["backend"], calls["kw"] = backend, kw
        raise Captured

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29733", **env}.items():
            mp.setenv(k, v)
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
        mp.setattr(dist, "is_initialized", lambda: False)
        mp.setattr(dist, "init_process_group", init_process_group)
        with pytest.raises(Captured):
            PolicyEngine(cfg)
        calls["LOCAL_RANK"] = os.environ["LOCAL_RANK"]
    calls["cfg"] = cfg
    return calls


SLURM_BOUND = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "3"}  # --gpus-per-task=1
PLAIN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": NODE}


def test_the_nccl_group_waits_as_long_as_rank_0_can(tmp_path):
    """NCCL's default timeout is 10 minutes; rank 0 alone waits up to 3 x request_timeout_s for rollouts (and an
    actor's restart, the eval, the acks) while the others sit in a broadcast. The group gets the run's bound."""
    import datetime

    from torch.distributed.constants import default_pg_nccl_timeout, default_pg_timeout

    got = start_on_cuda(tmp_path, PLAIN)
    assert got["backend"] == "nccl"
    cfg, timeout = got["cfg"], got["kw"]["timeout"]
    assert timeout == datetime.timedelta(seconds=comm.group_timeout_s(cfg))
    s = cfg.sync
    longest_wait = comm.ROLLOUT_ATTEMPTS * (3 * s.request_timeout_s + s.ack_timeout_s) + s.actor_start_timeout_s
    assert timeout.total_seconds() > longest_wait
    assert timeout.total_seconds() > 3 * s.request_timeout_s + s.actor_start_timeout_s + 2 * s.ack_timeout_s
    nccl = default_pg_nccl_timeout or datetime.timedelta(minutes=10)  # None in a torch built without NCCL
    assert timeout > nccl and timeout > default_pg_timeout
    # each limit moves it
    base = comm.group_timeout_s(cfg)
    for key in ("request_timeout_s", "ack_timeout_s", "actor_start_timeout_s"):
        longer = cfg.model_copy(update={"sync": s.model_copy(update={key: getattr(s, key) * 4})})
        assert comm.group_timeout_s(longer) > base, key


def test_each_rank_binds_its_own_device_and_one_rank_binds_none(tmp_path):
    plain = start_on_cuda(tmp_path, PLAIN)
    assert plain["kw"]["device_id"] == torch.device("cuda", 3) == plain["set_device"]
    assert plain["LOCAL_RANK"] == "3"
    bound = start_on_cuda(tmp_path, SLURM_BOUND)
    assert bound["kw"]["device_id"] == torch.device("cuda", 0) == bound["set_device"]
    assert bound["LOCAL_RANK"] == "0"  # what DeepSpeed's ZeRO-3 takes for its device (next test)
    # one rank: no device_id, as DeepSpeed's own init_process_group (its #8248: CUDA error 600 on some single-GPU
    # setups once the group splits every later one with ncclCommSplit)
    one = start_on_cuda(tmp_path, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "5"})
    assert "device_id" not in one["kw"] and one["set_device"] == torch.device("cuda", 0)


def test_zero3_init_sets_the_device_the_learner_chose(tmp_path, group):
    """ZeRO-3's zero.Init calls set_device(device_name(os.environ["LOCAL_RANK"])) itself. Under Slurm's GPU binding
    each rank sees one GPU (cuda:0) while LOCAL_RANK is SLURM_LOCALID: "invalid device ordinal" on every rank but
    the first. After the learner's start-up, what DeepSpeed asks for is the device the learner chose."""
    import deepspeed
    import deepspeed.comm as dc
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCAL_RANK", "3")
        chosen = start_on_cuda(tmp_path, SLURM_BOUND)
        mp.setenv("LOCAL_RANK", chosen["LOCAL_RANK"])  # the environment the learner leaves to DeepSpeed
        asked: list = []
        real_name = acc.device_name
        mp.setattr(acc, "device_name", lambda i=None: (asked.append(("device_name", i)), real_name(i))[1])
        mp.setattr(acc, "set_device", lambda d: asked.append(("set_device", d)))
        dc.init_distributed(dist_backend="gloo", verbose=False)
        ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
        deepspeed.zero.Init(module=torch.nn.Linear(4, 4), config_dict_or_path=ds_config)
    indices = {int(i) for what, i in asked if what == "device_name" and i is not None}
    assert any(what == "set_device" for what, _ in asked)  # it set the device it named (on CPU: "cpu")
    assert indices == {chosen["set_device"].index}, asked
