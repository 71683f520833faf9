"""Shared fixtures: the tiny Tucano2-shaped model, built offline once per session, and configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every learner a test starts (in this process or a child) refuses a collective our code issues outside
# learner.comm (learner.comm.guard), so a new direct call fails the two-rank CPU tests.
os.environ.setdefault("TUCANO2_COMM_GUARD", "1")


@pytest.fixture(autouse=True)
def _keep_umask():
    """Entry points called in-process (``learner.__main__.main``) set umask 077 for their run; the next test
    gets this session's own back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def single_process():
    """This process as a lone one for a library that builds its own world (accelerate under TRL): no
    torch.distributed group (an earlier in-process learner leaves its one-rank group) and no launcher
    variables (learner.comm.init sets RANK/WORLD_SIZE/LOCAL_RANK; vLLM's CPU platform sets LOCAL_WORLD_SIZE
    to the TP size in the process that builds an engine, which accelerate then reads as a multi-node launch)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    import deepspeed.comm.comm as dcc
    from deepspeed.utils import groups

    dcc.cdb = None
    # DeepSpeed's own references to the destroyed groups (its world and data-parallel groups): a later engine in this
    # process would broadcast over them ("Group ... is not registered"). deepspeed.comm.destroy_process_group drops
    # them the same way; torch's was called here.
    groups._release_process_group_references(None)
    with pytest.MonkeyPatch.context() as mp:
        for k in DIST_ENV:
            mp.delenv(k, raising=False)
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight tiny Qwen3/ChatML model directory (float32, head_dim 64), built in seconds."""
    from zoo import build_model

    return build_model(tmp_path_factory.mktemp("models") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="session")
def commerce_data(tmp_path_factory) -> Path:
    """A small synthetic commerce build: ``commerce.db`` and ``pairs/{train,eval}.jsonl`` (3,000 orders)."""
    from commerce import build

    out = tmp_path_factory.mktemp("data")
    build(out, seed=1, orders=3000)
    return out


@pytest.fixture
def smoke_config(tiny_model, commerce_data, tmp_path):
    """``configs/smoke_cpu.yaml`` pointed at the tiny model, the small data build and a per-test run dir."""
    from configs import load_config

    return load_config(REPO / "configs" / "smoke_cpu.yaml",
                       [f"model_id={tiny_model}", f"run_dir={tmp_path / 'run'}",
                        f"data.db_path={commerce_data / 'commerce.db'}",
                        f"data.train_pairs={commerce_data / 'pairs' / 'train.jsonl'}",
                        f"data.eval_pairs={commerce_data / 'pairs' / 'eval.jsonl'}"])


@pytest.fixture(scope="session", autouse=True)
def _leave_nothing_behind():
    """Tests SIGKILL actors and learners on purpose; what those processes could not clean up (vLLM's socket
    directories and shared-memory queues, OpenMP's registration files, sync directories, ipc socket files)
    is removed when the session ends, the way the next actor or learner would remove it."""
    yield
    import tempfile

    from actor.runtime import sweep_engine_leftovers
    from configs.schema import SyncConfig
    from sync._net import sweep_pid_dirs, sweep_stale_sockets

    sweep_engine_leftovers(min_age_s=0.0)
    sweep_pid_dirs("tucano2-vllm", Path(tempfile.gettempdir()))
    sweep_pid_dirs("tucano2-sync", Path("/dev/shm"))
    sweep_stale_sockets(SyncConfig())



SESSION_VLLM_LOGGING_LEVEL = os.environ.get("VLLM_LOGGING_LEVEL")
"""``VLLM_LOGGING_LEVEL`` as this pytest process started."""


def _restore_vllm_logging_level() -> None:
    if SESSION_VLLM_LOGGING_LEVEL is None:
        os.environ.pop("VLLM_LOGGING_LEVEL", None)
    else:
        os.environ["VLLM_LOGGING_LEVEL"] = SESSION_VLLM_LOGGING_LEVEL


@pytest.fixture(autouse=True)
def _vllm_logging_level_as_the_session_found_it():
    """Importing ``trl`` sets ``VLLM_LOGGING_LEVEL=ERROR`` in this process's environment (``trl/_compat.py``), and
    every process a later test starts would inherit it: an actor's log then holds none of vLLM's INFO lines, which
    ``test_evaluate_cli.py`` checks are kept there (it failed whenever the TRL parity tests ran before it). Every
    test starts and ends with the variable as the session found it (a module-scoped fixture that imports ``trl`` is
    set up before this one, so the start matters too)."""
    _restore_vllm_logging_level()
    yield
    _restore_vllm_logging_level()
