"""The wire schema shared by learner and actors: typed, tagged messages, msgpack fields, raw tensor frames.

One message is a list of ZeroMQ frames. Frame 0 is a msgpack array ``["t2", WIRE_VERSION, tag, body]``
where ``body`` maps field names to plain values (nested messages become maps). Only a
:class:`WeightUpdate` has more frames: its tensor bytes, referenced from the body by
``[name, dtype, shape, frame, offset, nbytes]`` rows, so tensors cross the wire as raw buffers
(zero-copy on both ends with pyzmq ``copy=False``) and never through msgpack or pickle. On one node a version
may travel by reference instead: :class:`WeightFile` names a file the learner wrote once in its private
directory; across nodes a :class:`WeightSealed` carries the key of a version sealed once for every actor
(:mod:`sync.seal`), which each actor fetches from the learner's fetch port with a :class:`Fetch` and receives as a
:class:`Sealed` frame followed by the two sealed frames of the :class:`WeightUpdate` (``sync.weight_transfer``).

:func:`decode` checks everything it reads against the dataclass field types (``int`` fields must be
ints, lists must hold the declared element type, unknown tags and versions are refused, tensor rows
must fit their frames, a completion's ``version_runs`` must describe its tokens) and raises
:class:`WireError` with a one-line reason; a random byte string can make it raise nothing else.
Unknown body keys are ignored, so fields can be added later without breaking older peers; missing fields
take their defaults or are refused.

This module imports neither torch nor zmq: tensor conversion lives in :mod:`sync.tensors`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sync.runs import runs_problem, spans
from sync.wire_check import SEMANTIC, WireError, _build, _check  # noqa: F401 - WireError is re-exported

WIRE_MAGIC = "t2"
WIRE_VERSION = 2
DEFAULT_MAX_BYTES = 1024 * 2**20

# safetensors dtype names -> bytes per element
DTYPE_SIZES = {"BF16": 2, "F16": 2, "F32": 4}


# ---------------------------------------------------------------------------------------------- messages


@dataclass(slots=True)
class SamplingSpec:
    n: int
    """Completions per prompt (G)."""
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None
    """Base seed; the actor derives per-prompt seeds from it (None: unseeded)."""


@dataclass(slots=True)
class RolloutRequest:
    request_id: str
    prompts: list[list[dict]] | list[list[int]]
    """Chat messages (``[{"role": ..., "content": ...}, ...]``) or prompt token ids, one per prompt."""
    sampling: SamplingSpec
    min_version: int = -1
    """The actor must serve at least this adapter version before generating (-1: the base weights will do;
    the learner's first published version is 0)."""
    meta: dict = field(default_factory=dict)
    """Free-form, e.g. ``{"kind": "train"|"eval"|"probe", "step": 12}``; echoed in the group."""
    learner: str = ""
    """Incarnation of the learner that sent it (set by the transport); echoed in the group. An actor drops
    requests of a learner that has been replaced, and a learner drops groups answering another one's."""


@dataclass(slots=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    """Sampling logprobs of the processed distribution (temperature/top-p applied), one per token."""
    text: str
    finish_reason: str
    version_runs: list[int] = field(default_factory=list)
    """The policy version that sampled each token, run-length coded and flattened: ``[i0, v0, i1, v1, ...]``
    says tokens ``[i_k, i_{k+1})`` were sampled by version ``v_k`` (the last run to the end). ``i0`` is 0, the
    starts rise strictly and stay inside the completion, and neighbouring runs differ in version. An actor
    that loads a version while the sequence runs (``actor.load_mode: inflight``, merged serving) sends two runs
    or more; empty means every token was sampled by the group's ``version``."""

    loss_mask: list[int] = field(default_factory=list)
    """Which tokens the policy sampled, run-length coded like ``version_runs``: ``[i0, m0, i1, m1, ...]``, ``m`` 1
    for tokens the engine sampled (trained), 0 for a tool's observation the actor appended (forwarded by the
    learner, never trained). The first token is always sampled. Empty: every token was sampled (no tools)."""
    episode: Episode | None = None
    """What happened in a tool episode (``actor.episodes``); None for a single-turn completion."""

    def runs(self, default: int) -> list[tuple[int, int, int]]:
        """``(start, end, version)`` of every run (``default``: the group's version, when none were sent)."""
        return spans(self.version_runs, len(self.token_ids), default)

    @property
    def sampled(self) -> int:
        """Tokens the policy sampled (``loss_mask`` 1): the completion's length without tool observations."""
        if not self.loss_mask:
            return len(self.token_ids)
        return sum(e - s for s, e, m in spans(self.loss_mask, len(self.token_ids), 1) if m)

    def columns(self) -> dict:
        """The episode's extra reward columns (``turns``, ``tool_calls``, ``tool_errors``, ``finish_reason``); {}
        for a single-turn completion."""
        e = self.episode
        if e is None:
            return {}
        return {"turns": e.turns, "tool_calls": e.tool_calls, "tool_errors": e.tool_errors + e.tool_timeouts,
                "finish_reason": e.finish}

    @property
    def answer(self) -> str:
        """What the reward scores: the episode's final answer (its last turn's text; "" when it ended on a tool
        call), or the whole text of a single-turn completion."""
        return self.text if self.episode is None else self.text[self.episode.answer_at:]


@dataclass(slots=True)
class Episode:
    """One tool episode's account (``Completion.episode``); it reaches the reward as extra columns."""

    turns: int
    """Turns the model wrote (1 + the calls that got an observation)."""
    tool_calls: int = 0
    """Calls made (each with an observation, or ending the episode)."""
    tool_errors: int = 0
    """Calls whose observation is an error (a failed query, arguments that do not fit, a call over the limit) or
    whose tool raised."""
    tool_timeouts: int = 0
    """Calls their tool did not answer within its ``timeout_s``."""
    truncated_observations: int = 0
    """Observations cut to the tool's row or character budget."""
    finish: str = "stop"
    """``stop`` (the model ended its answer), ``length`` (a turn or the episode ran out of tokens while sampling),
    ``max_turns`` (a call on the last turn), ``budget`` (an observation that did not fit, or the wall-clock limit),
    ``tool_error`` (a tool raised or timed out: no observation)."""
    answer_at: int = 0
    """Where the final answer starts in the completion's ``text`` (its length when there is none)."""
    tool_s: float = 0.0
    """Seconds its calls took, queued to answered."""


@dataclass(slots=True)
class PromptResult:
    prompt_token_ids: list[int]
    completions: list[Completion]


@dataclass(slots=True)
class RolloutGroup:
    request_id: str
    actor_id: str
    version: int
    """Adapter version that generated every completion of the group."""
    results: list[PromptResult]
    timings: dict[str, float] = field(default_factory=dict)
    rewards: list[list[float]] | None = None
    """Per prompt, per completion, when the actor scores (``actor.score_rewards``)."""
    meta: dict = field(default_factory=dict)
    learner: str = ""
    """The request's ``learner``."""


@dataclass(slots=True)
class TensorBlob:
    """One tensor's raw bytes (C order, little-endian) with its safetensors dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]
    data: Any
    """bytes, bytearray or memoryview of exactly ``prod(shape) * itemsize`` bytes."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(slots=True)
class WeightUpdate:
    version: int
    adapter_config: dict
    """PEFT adapter_config.json content: at least r, lora_alpha, target_modules."""
    tensors: dict[str, TensorBlob]
    """PEFT state-dict names (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``)."""
    checksum: str
    """``xxh3_128:<hex>`` over the tensor table and bytes in name order (:func:`sync.tensors.checksum`)."""
    buffer: Any = None
    """Optional contiguous buffer holding every tensor in name order with no gaps (what
    :func:`sync.tensors.pack` makes): sent as one frame and written to disk with one write."""
    learner: str = ""
    """Incarnation of the publishing learner: versions are ordered within one learner; a new one (resumed from
    an older checkpoint) restarts the order, and the actor takes its version whatever it served before."""


@dataclass(slots=True)
class WeightFile:
    """Learner -> actor on one node, instead of a :class:`WeightUpdate`: the version was written once, as a
    safetensors file, to ``path`` in the learner's private directory (never rewritten: a new version is a new file).
    The actor links it (or copies it) into its own directory, checks that file's ``checksum`` and loads it."""

    version: int
    adapter_config: dict
    checksum: str
    """``xxh3_128:<hex>`` of the tensors in the file (:func:`sync.tensors.checksum`)."""
    path: str
    nbytes: int
    """The file's size: a file of another size, or over the actor's cap, is refused before it is read."""
    learner: str = ""


@dataclass(slots=True)
class WeightSealed:
    """Learner -> actor across nodes, over the CURVE weight channel, instead of a :class:`WeightUpdate`: the version
    was sealed once for every actor (AES-256-GCM under ``key``, a fresh key per version) and waits on the learner's
    fetch port (plain TCP: the bytes are sealed already). The actor asks for it with a :class:`Fetch` showing
    ``ticket``, opens it with ``key`` and handles the :class:`WeightUpdate` inside as if it had come inline."""

    version: int
    checksum: str
    key: str
    """The version's 256-bit key, hex. It crosses the network only inside CURVE."""
    ticket: str
    """What a :class:`Fetch` must show: the fetch port serves nobody who did not receive this over CURVE."""
    port: int
    nbytes: int
    """Bytes of the sealed tensor frame: more than the actor accepts is refused before it is fetched."""
    learner: str = ""


@dataclass(slots=True)
class Fetch:
    """Actor -> the learner's fetch port: the sealed frames of ``version``."""

    version: int
    ticket: str
    learner: str = ""


@dataclass(slots=True)
class Sealed:
    """The fetch port's answer, first frame; the sealed header and tensor frames of ``version`` follow."""

    version: int
    learner: str = ""


@dataclass(slots=True)
class WeightAck:
    actor_id: str
    version: int
    ok: bool
    load_s: float
    checksum: str
    """Checksum of what was loaded (``ok``) or received (refused)."""
    error: str | None = None
    learner: str = ""
    """The acknowledged update's ``learner``: acks of another learner's versions are ignored."""
    delta_cosine: float | None = None
    """Cosine between the LoRA delta the actor's engine serves, read back from every worker (``actor.readback``),
    and the published one: 1.0 when exact; merged serving in bf16 rounds small deltas away."""
    served_detail: str = ""
    """What differs most in that readback (``"v_proj served at cosine 0.0000"``), for the learner's stop line."""
    in_flight: int = 0
    """Requests the engine was generating when it loaded the version (0 after a drain): busy through the sync."""
    held_s: float = 0.0
    """Seconds from the version's arrival to its load: with ``actor.load_mode: drain`` the drain, during which
    no new request was admitted."""


@dataclass(slots=True)
class Heartbeat:
    actor_id: str
    version: int
    """Adapter version the actor serves."""
    queue_depth: int
    in_flight: int
    tokens_per_s: float
    incarnation: str = ""
    """Random id of the actor process; a new one means the actor restarted."""
    learner: str = ""
    """Incarnation of the learner whose ``version`` the actor serves ("" for the base weights)."""


@dataclass(slots=True)
class Hello:
    """Actor -> learner on connect (both channels): who it is and what it serves."""

    actor_id: str
    incarnation: str
    version: int


@dataclass(slots=True)
class Welcome:
    """Learner -> actor on the weight channel: the latest published version (-1: none yet)."""

    version: int
    incarnation: str = ""
    """Random id of the learner process. A new one (a restarted or resumed learner) starts a new version
    order: the actor serves nothing more until it has loaded that learner's version."""


@dataclass(slots=True)
class Shutdown:
    reason: str


TAGS: dict[str, type] = {
    "req": RolloutRequest,
    "grp": RolloutGroup,
    "wu": WeightUpdate,
    "ack": WeightAck,
    "hb": Heartbeat,
    "hello": Hello,
    "welcome": Welcome,
    "bye": Shutdown,
    "wf": WeightFile,
    "ws": WeightSealed,
    "fetch": Fetch,
    "sealed": Sealed,
}
_TAG_OF = {cls: tag for tag, cls in TAGS.items()}
Message = (RolloutRequest | RolloutGroup | WeightUpdate | WeightAck | Heartbeat | Hello | Welcome | Shutdown
           | WeightFile | WeightSealed | Fetch | Sealed)

# ---------------------------------------------------------------------------------------------- encode


def _plain(obj: Any) -> Any:
    """Dataclass -> dict recursively (lists and dicts walked only where they may hold dataclasses)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list) and obj and dataclasses.is_dataclass(obj[0]):
        return [_plain(x) for x in obj]
    return obj


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"cannot encode: {e}") from None


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> frames. Tensor bytes are passed through as memoryviews (no copy)."""
    tag = _TAG_OF.get(type(msg))
    if tag is None:
        raise WireError(f"cannot encode {type(msg).__name__}: not a wire message")
    if isinstance(msg, WeightUpdate):
        return _encode_weights(msg)
    return [_pack([WIRE_MAGIC, WIRE_VERSION, tag, _plain(msg)])]


def _encode_weights(msg: WeightUpdate) -> list[bytes | memoryview]:
    names = sorted(msg.tensors)
    rows, frames = [], []
    if msg.buffer is not None:
        buf = memoryview(msg.buffer).cast("B")
        off = 0
        for name in names:
            t = msg.tensors[name]
            rows.append([name, t.dtype, list(t.shape), 1, off, t.nbytes])
            off += t.nbytes
        if off != buf.nbytes:
            raise WireError(f"packed buffer holds {buf.nbytes} bytes, tensors {off}")
        frames.append(buf)
    else:
        for i, name in enumerate(names, start=1):
            t = msg.tensors[name]
            data = memoryview(t.data).cast("B")
            if data.nbytes != t.nbytes:
                raise WireError(f"tensor {name}: {data.nbytes} bytes for {t.dtype}{list(t.shape)}")
            rows.append([name, t.dtype, list(t.shape), i, 0, t.nbytes])
            frames.append(data)
    body = {"version": msg.version, "adapter_config": msg.adapter_config, "checksum": msg.checksum, "tensors": rows,
            "learner": msg.learner}
    return [_pack([WIRE_MAGIC, WIRE_VERSION, "wu", body]), *frames]


# ---------------------------------------------------------------------------------------------- decode


def _as_buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame -> its memoryview; bytes/memoryview as is
    try:
        return memoryview(buf).cast("B")
    except TypeError:
        raise WireError(f"frame of type {type(frame).__name__} is not a buffer") from None


def _refuse_ext(code, data):
    raise WireError(f"msgpack extension type {code} is not allowed")


def decode(frames: list, max_bytes: int | None = DEFAULT_MAX_BYTES, max_array_len: int = 1 << 16,
           max_map_len: int = 4096) -> Message:
    """Frames -> message, or :class:`WireError` (one line) if they are not a valid message.

    ``max_bytes`` caps all frames together; ``max_array_len``/``max_map_len`` cap every msgpack array/map
    header before anything is allocated (see :mod:`sync.limits`)."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise WireError("no frames")
    bufs = [_as_buffer(f) for f in frames]
    total = sum(b.nbytes for b in bufs)
    if max_bytes is not None and total > max_bytes:
        raise WireError(f"message of {total / 2**20:.1f} MiB exceeds the {max_bytes / 2**20:.0f} MiB limit")
    try:
        head = msgpack.unpackb(
            bufs[0], raw=False, use_list=True, strict_map_key=True, ext_hook=_refuse_ext, timestamp=0,
            max_array_len=max_array_len, max_map_len=max_map_len,
        )
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise WireError(f"header is not msgpack: {type(e).__name__}: {e}"[:200]) from None
    if not (isinstance(head, list) and len(head) == 4):
        raise WireError("header is not a [magic, version, tag, body] array")
    magic, version, tag, body = head
    if magic != WIRE_MAGIC:
        raise WireError(f"bad magic {magic!r}"[:100])
    if version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} (this side speaks {WIRE_VERSION})"[:100])
    cls = TAGS.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise WireError(f"unknown tag {tag!r}"[:100])
    if not isinstance(body, dict):
        raise WireError(f"{tag}: body is not a map")
    if cls is WeightUpdate:
        return _decode_weights(body, bufs)
    if len(bufs) != 1:
        raise WireError(f"{tag}: expected 1 frame, got {len(bufs)}")
    return _build(cls, body, tag)


def _decode_weights(body: dict, bufs: list[memoryview]) -> WeightUpdate:
    version = _check(body.get("version"), int, "wu.version")
    adapter_config = _check(body.get("adapter_config"), dict, "wu.adapter_config")
    checksum = _check(body.get("checksum"), str, "wu.checksum")
    learner = _check(body.get("learner", ""), str, "wu.learner")
    rows = body.get("tensors")
    if not isinstance(rows, list):
        raise WireError("wu.tensors is not a list")
    tensors: dict[str, TensorBlob] = {}
    used = [0] * len(bufs)
    for row in rows:
        if not (isinstance(row, list) and len(row) == 6):
            raise WireError("wu.tensors row is not [name, dtype, shape, frame, offset, nbytes]")
        name, dtype, shape, fi, off, nbytes = row
        if not isinstance(name, str) or name in tensors:
            raise WireError(f"wu: bad or repeated tensor name {name!r}"[:150])
        if dtype not in DTYPE_SIZES:
            raise WireError(f"wu: tensor {name}: unknown dtype {dtype!r}"[:150])
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise WireError(f"wu: tensor {name}: bad shape"[:150])
        if not all(type(x) is int for x in (fi, off, nbytes)) or not 1 <= fi < len(bufs) or off < 0:
            raise WireError(f"wu: tensor {name}: bad frame reference"[:150])
        if nbytes != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise WireError(f"wu: tensor {name}: {nbytes} bytes do not match {dtype}{shape}"[:150])
        if off + nbytes > bufs[fi].nbytes:
            raise WireError(f"wu: tensor {name} runs past the end of frame {fi} (truncated?)"[:150])
        tensors[name] = TensorBlob(dtype, tuple(shape), bufs[fi][off : off + nbytes])
        used[fi] += nbytes
    for fi in range(1, len(bufs)):
        if used[fi] != bufs[fi].nbytes:
            raise WireError(f"wu: frame {fi} holds {bufs[fi].nbytes} bytes, tensors use {used[fi]}")
    buffer = None
    if (
        len(bufs) == 2
        and rows
        and [r[0] for r in rows] == sorted(tensors)
        and all(r[3] == 1 for r in rows)
        and _contiguous(rows)
    ):
        buffer = bufs[1]
    return WeightUpdate(version, adapter_config, tensors, checksum, buffer, learner)


def _contiguous(rows: list) -> bool:
    off = 0
    for r in rows:
        if r[4] != off:
            return False
        off += r[5]
    return True


# ---------------------------------------------------------------------------------------------- checking


def _check_completion(c: Completion, where: str) -> None:
    """``version_runs`` and ``loss_mask`` describe the completion's tokens (:mod:`sync.runs`: pairs, starting at
    token 0, starts rising strictly inside the completion, values changing from run to run; versions >= -1, mask
    values 0 or 1). Bounded by the completion: at most one run per token."""
    why = runs_problem(c.version_runs, len(c.token_ids), min_value=-1, what="version")
    if why is not None:
        raise WireError(f"{where}.version_runs: {why}")
    why = runs_problem(c.loss_mask, len(c.token_ids), values=(0, 1))
    if why is not None:
        raise WireError(f"{where}.loss_mask: {why}")


SEMANTIC[Completion] = _check_completion
