"""An in-process stand-in for the actors: HF ``generate`` on its own copy of the policy (base + LoRA).

:class:`HFLocalActor` implements both learner-side protocols of :mod:`sync` at once —
``RolloutTransport`` (``submit``/``receive``/``actors``/``close``) and ``WeightPublisher``
(``publish``/``wait_acks``/``ack_status``/``ack_of``/``latest_version``/``close``) — so the learner can run,
be tested and be resumed on one CPU without vLLM or sockets. It is not the production actor (that is ``actor/`` behind
``sync.Zmq*``); it exists for tests, the resume proof and ``python -m learner --rollouts local``.

Behaviour, mirroring the real pair:

* ``publish`` packs the tensors with :func:`sync.tensors.pack` (wire dtype from the config), checks the
  checksum, loads them into the local PEFT model and records a :class:`sync.WeightAck`; ``wait_acks``
  and ``ack_status`` return it, or raise :class:`sync.SyncError` if the load failed (``fail_versions`` injects
  a failed load for tests). ``lag_versions``: each version after the first loads (and is acked) that many
  publications late (or once it waited ``lag_s``), as an actor whose acks come late.
* ``submit`` generates immediately at the currently loaded version (the group is tagged with it) and
  queues the group; ``receive`` pops groups in submission order. Generation is deterministic: each
  request is sampled with the generators of its device seeded from ``sampling.seed`` (:func:`seeded`), so the
  same weights and request give the same completions (what the resume test relies on); the generators are
  restored afterwards, so the learner's own random stream (its CPU generator, its GPU's) is as if no rollout had
  been drawn. ``torch.manual_seed`` would reseed every GPU's generator and leave them so.
* Where it runs (:func:`local_device_dtype`): on the learner's own device (rank 0's GPU on a GPU node, its
  ``learner.comm.cuda_index``), in the dtype an actor would serve (``actor.dtype``; ``auto`` is bf16 on a GPU,
  float32 on the CPU). Its model copy and ``generate``'s KV cache and scores share that GPU with the learner.
* Logprobs are those of the *processed* distribution (``log_softmax(logits / T)`` of the sampled token,
  from ``generate``'s scores), like vLLM's ``processed_logprobs``; top-p is applied by ``generate``.
* Prompts may be chat messages (tokenised with the chat template, generation prompt added) or token ids.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque

import torch

from configs.device import engine_dtype
from sync import SyncError
from sync.prompts import encode_prompt
from sync.wire import Completion, Heartbeat, PromptResult, RolloutGroup, RolloutRequest, WeightAck


def local_device_dtype(cfg, cuda: bool | None = None, env=None) -> tuple[torch.device, torch.dtype]:
    """Where ``--rollouts local`` generates: the learner's device (:func:`learner.engine.select_device_dtype`, so
    rank 0's GPU when the learner is on one), in ``actor.dtype`` (``auto``: bf16 on a GPU, float32 on the CPU, as
    ``configs.device.engine_dtype`` resolves it). ``cuda``: whether torch sees a GPU (default: ask torch)."""
    from learner.engine import select_device_dtype

    cuda = torch.cuda.is_available() if cuda is None else cuda
    device, _ = select_device_dtype(cfg.learner.precision, cuda, env)
    return device, getattr(torch, engine_dtype(cfg.actor.dtype, device.type == "cuda"))


@contextlib.contextmanager
def seeded(device: torch.device, seed: int | None):
    """Generation under ``seed`` on ``device``: the CPU generator and, on a GPU, that GPU's own generator are seeded,
    and both are put back as they were on leaving. No other GPU's generator is touched (``torch.manual_seed`` would
    reseed every one of them, for good)."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device.index] if cuda else [], device_type="cuda"):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)  # the current device's only
        yield


class HFLocalActor:
    def __init__(
        self,
        model_id: str,
        *,
        lora_r: int,
        lora_alpha: int,
        wire_dtype: str = "fp32",
        actor_id: str = "local-0",
        fail_versions: tuple[int, ...] = (),
        init_adapter=None,
        lag_versions: int = 0,
        lag_s: float = 5.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        from learner.engine import build_peft_model, load_tokenizer

        self.device, self.dtype = torch.device(device), dtype
        self.tokenizer = load_tokenizer(model_id)
        self.model = build_peft_model(
            model_id,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            dtype=dtype,
            init_adapter=init_adapter,
            seed=0,
        )
        self.model.to(device=self.device, dtype=dtype)  # PEFT keeps fresh adapters in fp32 on a bf16 base
        self.model.eval()
        self.actor_id = actor_id
        self.wire_dtype = wire_dtype
        self.fail_versions = set(fail_versions)
        self.lag_versions = lag_versions
        self.lag_s = lag_s
        self.version = 0
        self._published: deque = deque()  # (version, tensors) not yet loaded because of lag
        self._acks: dict[int, WeightAck] = {}
        self._queue: deque[RolloutGroup] = deque()
        self._latest = 0
        self.tokens = 0
        self.gen_s = 0.0

    # -- WeightPublisher ---------------------------------------------------------------------------
    def publish(self, version: int, tensors: dict[str, torch.Tensor], adapter_config: dict) -> str:
        from sync.tensors import checksum, pack, to_torch

        blobs, buf = pack(tensors, self.wire_dtype)
        digest = checksum(blobs, buf)
        self._latest = version
        self._published.append((version, {k: v.clone() for k, v in to_torch(blobs).items()}, digest,
                                time.monotonic()))
        # the first version loads at once (a real actor serves nothing before it: the endpoint's gate), later
        # ones lag_versions publications late
        while len(self._published) > (self.lag_versions if self._acks else 0):
            self._load(*self._published.popleft()[:3])
        return digest

    def _load(self, version: int, tensors: dict[str, torch.Tensor], digest: str) -> None:
        from peft import set_peft_model_state_dict

        t0 = time.perf_counter()
        if version in self.fail_versions:
            self._acks[version] = WeightAck(
                self.actor_id, version, False, 0.0, digest, "injected load failure (test)"
            )
            return
        from peft import get_peft_model_state_dict

        from sync.tensors import DeltaCosine, lora_pairs

        result = set_peft_model_state_dict(self.model, {k: v.float() for k, v in tensors.items()})
        missing = [k for k in getattr(result, "unexpected_keys", [])]
        if missing:
            self._acks[version] = WeightAck(
                self.actor_id, version, False, 0.0, digest, f"unexpected tensors {missing[:2]}"
            )
            return
        # the delta now served, read back from the model (its device, its dtype), against the one received
        served = lora_pairs({k: v.detach().to("cpu") for k, v in get_peft_model_state_dict(self.model).items()})
        sent = lora_pairs(tensors)
        cos = DeltaCosine()
        for mod, (a, b) in sent.items():
            cos.add_lowrank(*served[mod], a, b)
        self.version = version
        self._acks[version] = WeightAck(self.actor_id, version, True, time.perf_counter() - t0, digest, None,
                                        delta_cosine=cos.value)

    def ack_status(self, version: int) -> tuple[dict[str, WeightAck], list[str]]:
        """This actor's ack of ``version`` or a later one (a lagging actor acks late: pending until then, or
        until the version has waited ``lag_s``, as a real actor would load it once the learner stops publishing)."""
        while self._published and time.monotonic() - self._published[0][3] > self.lag_s:
            self._load(*self._published.popleft()[:3])
        newer = [v for v in self._acks if v >= version]
        if not newer:
            return {}, [self.actor_id]
        ack = self._acks[max(newer)]
        if not ack.ok:
            raise SyncError(f"actor {self.actor_id} failed to load v{ack.version}: {ack.error}")
        return {self.actor_id: ack}, []

    def ack_of(self, actor_id: str, version: int) -> WeightAck | None:
        ack = self._acks.get(version) if actor_id == self.actor_id else None
        if ack is not None and not ack.ok:
            raise SyncError(f"actor {actor_id} failed to load v{version}: {ack.error}")
        return ack

    def wait_acks(self, version: int, timeout_s: float, stop=None) -> dict[str, WeightAck]:  # noqa: ARG002
        done, missing = self.ack_status(version)
        if missing:  # nothing arrives while the caller waits: loads happen inside publish()
            raise SyncError(f"timed out after {timeout_s:.1f} s waiting for acks of v{version} from "
                            f"{self.actor_id} (serves {self.version})")
        return done

    def latest_version(self) -> int:
        return self._latest

    # -- RolloutTransport --------------------------------------------------------------------------
    def submit(self, req: RolloutRequest) -> None:
        t0 = time.perf_counter()
        results = [self._generate(p, req.sampling, i) for i, p in enumerate(req.prompts)]
        dt = time.perf_counter() - t0
        ntok = sum(len(c.token_ids) for r in results for c in r.completions)
        self.tokens += ntok
        self.gen_s += dt
        self._queue.append(
            RolloutGroup(
                req.request_id,
                self.actor_id,
                self.version,
                results,
                timings={"generate_s": dt, "tokens": float(ntok)},
                meta=dict(req.meta),
            )
        )

    def receive(self, timeout_s: float) -> RolloutGroup | None:
        return self._queue.popleft() if self._queue else None

    def actors(self) -> dict[str, Heartbeat]:
        tps = self.tokens / self.gen_s if self.gen_s else 0.0
        return {self.actor_id: Heartbeat(self.actor_id, self.version, len(self._queue), 0, tps)}

    def close(self) -> None:
        self._queue.clear()

    # -- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, prompt, sp, index: int) -> PromptResult:
        ids = encode_prompt(self.tokenizer, prompt)
        x = torch.tensor([ids], device=self.device)
        greedy = sp.temperature == 0
        kwargs = dict(
            max_new_tokens=sp.max_tokens,
            num_return_sequences=sp.n,
            do_sample=not greedy,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if not greedy:
            kwargs.update(temperature=sp.temperature, top_p=sp.top_p, top_k=0)
        with seeded(self.device, None if sp.seed is None else sp.seed * 1009 + index):
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
        seqs = out.sequences[:, x.size(1) :]
        # the processed scores of each step (fp32 [n, V]), one step at a time: no [n, steps, V] copy
        logps = torch.stack([torch.log_softmax(s.float(), dim=-1).gather(-1, seqs[:, t : t + 1]).squeeze(-1)
                             for t, s in enumerate(out.scores)], dim=1)
        eos = self.tokenizer.eos_token_id
        comps = []
        for row, lp in zip(seqs.tolist(), logps.tolist(), strict=True):
            n = len(row)
            finish = "length"
            if eos in row:
                n = row.index(eos) + 1
                finish = "stop"
            toks = row[:n]
            comps.append(
                Completion(toks, lp[:n], self.tokenizer.decode(toks, skip_special_tokens=True), finish)
            )
        return PromptResult(ids, comps)
