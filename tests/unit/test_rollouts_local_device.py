"""``--rollouts local`` on a GPU node (#33): it generates on the learner's own GPU in the dtype an actor would serve,
and it seeds only the generators it samples with, putting them back afterwards. The GPU side is faked where only
CUDA has it (torch's CUDA generators, ``torch.cuda.is_available``); the CPU side runs the real tiny model."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from configs import load_config
from learner.rollouts_local import HFLocalActor, local_device_dtype, seeded

REPO = Path(__file__).resolve().parents[2]


def cfg_with(*over: str):
    return load_config(REPO / "configs" / "v4_1.yaml", list(over))


def test_local_rollouts_run_on_the_learners_gpu_in_the_actors_dtype():
    bound = {"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "3"}  # srun --gpus-per-task=1: its one GPU is cuda:0
    plain = {"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert local_device_dtype(cfg_with(), cuda=True, env=bound) == (torch.device("cuda", 0), torch.bfloat16)
    assert local_device_dtype(cfg_with(), cuda=True, env=plain) == (torch.device("cuda", 3), torch.bfloat16)
    assert local_device_dtype(cfg_with("actor.dtype=float32"), cuda=True, env=plain)[1] == torch.float32
    assert local_device_dtype(cfg_with(), cuda=False) == (torch.device("cpu"), torch.float32)  # auto on CPU
    assert local_device_dtype(cfg_with("actor.dtype=bfloat16"), cuda=False)[1] == torch.bfloat16


def test_the_learner_hands_the_local_actor_its_gpu(monkeypatch, tmp_path):
    """``python -m learner --rollouts local`` builds its stand-in actor where :func:`local_device_dtype` says, with
    torch seeing a GPU (faked: CUDA is what this box lacks; the actor's constructor records where it was asked to
    run instead of moving a model to a device that is not here)."""
    import learner.__main__ as entry
    import learner.rollouts_local as rl

    asked = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6")

    class Recorder:
        def __init__(self, model_id, **kw):
            asked.update(kw)

    monkeypatch.setattr(rl, "HFLocalActor", Recorder)
    entry._transports(cfg_with(f"run_dir={tmp_path}"), "local")
    assert (asked["device"], asked["dtype"]) == (torch.device("cuda", 0), torch.bfloat16)


class FakeCudaGenerators:
    """torch.cuda's per-device generators, as plain numbers: what seeding and fork_rng read and write."""

    def __init__(self, monkeypatch, n: int = 4):
        self.state = {i: torch.tensor([100 + i]) for i in range(n)}
        self.current = 0
        self.seeded: list[tuple[int, int]] = []
        mp = monkeypatch
        mp.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.state[self._index(device)].clone())
        mp.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": self.state.__setitem__(self._index(device), s))
        mp.setattr(torch.cuda, "manual_seed", self._seed)
        mp.setattr(torch.cuda, "device", self._device)

        def every(seed):
            raise AssertionError("every GPU's generator reseeded")

        mp.setattr(torch.cuda, "manual_seed_all", every)

    def _index(self, device) -> int:
        if isinstance(device, int):
            return device
        d = torch.device(device)
        return self.current if d.index is None else d.index

    def _seed(self, seed: int) -> None:
        self.seeded.append((self.current, seed))
        self.state[self.current] = torch.tensor([seed])

    @contextlib.contextmanager
    def _device(self, device):
        old, self.current = self.current, self._index(device)
        try:
            yield
        finally:
            self.current = old


def test_seeded_on_a_gpu_seeds_only_its_generator_and_puts_it_back(monkeypatch):
    gens = FakeCudaGenerators(monkeypatch)
    before = {i: s.clone() for i, s in gens.state.items()}
    cpu_before = torch.get_rng_state()
    with seeded(torch.device("cuda", 2), 1234):
        assert gens.state[2].item() == 1234  # generation on cuda:2 draws from its own generator, seeded
        inside = torch.rand(3)
        assert gens.current == 0  # the device context was left
    assert gens.seeded == [(2, 1234)]
    assert all(torch.equal(gens.state[i], before[i]) for i in before)  # every GPU's generator as it was
    assert torch.equal(torch.get_rng_state(), cpu_before)  # and the CPU's
    with seeded(torch.device("cuda", 2), 1234):
        assert torch.equal(torch.rand(3), inside)  # the same seed, the same draws
    with seeded(torch.device("cuda", 1), None):  # no seed: nothing seeded, nothing changed
        pass
    assert len(gens.seeded) == 2


def test_cpu_generation_leaves_every_generator_as_it_was(tiny_model, monkeypatch):
    """A real generation on the CPU (tiny model): deterministic by seed, the CPU generator restored, and no CUDA
    generator reseeded (``torch.manual_seed``, which the stand-in called before, reseeds them all)."""
    from sync.wire import SamplingSpec

    FakeCudaGenerators(monkeypatch)  # manual_seed_all raises
    actor = HFLocalActor(str(tiny_model), lora_r=4, lora_alpha=8)
    assert actor.device == torch.device("cpu") and next(actor.model.parameters()).dtype == torch.float32
    sp = SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=6, seed=7)
    state = torch.get_rng_state()
    first = actor._generate([5, 6, 7, 8], sp, 0)
    assert torch.equal(torch.get_rng_state(), state)
    again = actor._generate([5, 6, 7, 8], sp, 0)
    assert [c.token_ids for c in first.completions] == [c.token_ids for c in again.completions]
    assert all(len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs) for c in first.completions)
