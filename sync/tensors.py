"""Tensors at the edges of the wire: packing torch tensors, the checksum, safetensors files on /dev/shm.

* :func:`pack` converts a state dict to the wire dtype straight into one contiguous buffer, in name
  order (one pass: convert and copy together), which is then sent as a single zero-copy frame.
* :func:`checksum` is xxh3-128 over a canonical table (names, dtypes, shapes as JSON) followed by the
  tensor bytes in name order; over a packed buffer that is two ``update`` calls. DESIGN.md timed 66 MB
  at ~4 ms here against ~44 ms for sha256.
* :func:`write_adapter_dir` writes ``adapter_model.safetensors`` with a header built here and one
  ``os.writev`` of header + tensor buffers (no serialisation copy), plus ``adapter_config.json``,
  into a temporary directory renamed into place.

torch is imported only inside :func:`pack` and :func:`to_torch`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xxhash

from sync.wire import DTYPE_SIZES, TensorBlob

WIRE_DTYPES = {"bf16": "BF16", "fp32": "F32", "fp16": "F16"}
_TORCH_DTYPES = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
IOV_MAX = 1024


def checksum(tensors: Mapping[str, TensorBlob], buffer: Any = None) -> str:
    """``xxh3_128:<hex>`` of the tensor table and bytes in name order.

    ``buffer``: the packed buffer holding every tensor in name order (hashed in one call)."""
    names = sorted(tensors)
    h = xxhash.xxh3_128()
    h.update(json.dumps([[n, tensors[n].dtype, list(tensors[n].shape)] for n in names], separators=(",", ":")).encode())
    if buffer is not None:
        h.update(buffer)
    else:
        for n in names:
            h.update(tensors[n].data)
    return "xxh3_128:" + h.hexdigest()


def pack(
    tensors: Mapping[str, Any], wire_dtype: str = "bf16", out: Any = None
) -> tuple[dict[str, TensorBlob], memoryview]:
    """torch state dict -> (blobs viewing one buffer, the buffer), converted to ``wire_dtype``.

    ``out``: a writable buffer of exactly the packed size to reuse (fresh memory costs page faults,
    ~20 ms per 66 MB here); see :func:`packed_nbytes`."""
    import torch

    st_dtype = WIRE_DTYPES[wire_dtype]
    tdtype = getattr(torch, _TORCH_DTYPES[st_dtype])
    item = DTYPE_SIZES[st_dtype]
    names = sorted(tensors)
    total = sum(tensors[n].numel() for n in names) * item
    if out is not None and memoryview(out).nbytes == total and total:
        flat = torch.frombuffer(out, dtype=torch.uint8).view(tdtype)
    else:
        flat = torch.empty(total // item, dtype=tdtype)
    blobs: dict[str, TensorBlob] = {}
    raw = flat.view(torch.uint8).numpy()  # shares memory with flat
    buf = memoryview(raw).cast("B") if total else memoryview(b"")
    off = 0
    for n in names:
        t = tensors[n].detach()
        k = t.numel()
        flat[off // item : off // item + k].view(t.shape).copy_(t)  # converts on copy, any device
        blobs[n] = TensorBlob(st_dtype, tuple(t.shape), buf[off : off + k * item])
        off += k * item
    return blobs, buf


def packed_nbytes(tensors: Mapping[str, Any], wire_dtype: str = "bf16") -> int:
    return sum(t.numel() for t in tensors.values()) * DTYPE_SIZES[WIRE_DTYPES[wire_dtype]]


def to_torch(blobs: Mapping[str, TensorBlob]) -> dict[str, Any]:
    """Blobs -> torch tensors sharing their memory (read-only buffers are copied)."""
    import torch

    out = {}
    for n, b in blobs.items():
        mv = memoryview(b.data)
        if mv.readonly:
            mv = memoryview(bytearray(mv))
        dt = getattr(torch, _TORCH_DTYPES[b.dtype])
        out[n] = (
            torch.frombuffer(mv, dtype=torch.uint8).view(dt).view(b.shape)
            if b.nbytes
            else torch.empty(b.shape, dtype=dt)
        )
    return out


def safetensors_header(tensors: Mapping[str, TensorBlob], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length + JSON header for tensors laid out in name order, padded to 8 bytes."""
    hdr: dict[str, Any] = {}
    if metadata:
        hdr["__metadata__"] = metadata
    off = 0
    for n in sorted(tensors):
        t = tensors[n]
        hdr[n] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js


def _writev_all(fd: int, bufs: list[memoryview]) -> None:
    bufs = [b for b in bufs if b.nbytes]
    while bufs:
        chunk = bufs[:IOV_MAX]
        n = os.writev(fd, chunk)
        # drop what was written; a short write leaves a partial buffer at the front
        while n and bufs:
            if n >= bufs[0].nbytes:
                n -= bufs[0].nbytes
                bufs.pop(0)
            else:
                bufs[0] = bufs[0][n:]
                n = 0


def write_safetensors(
    path: Path, tensors: Mapping[str, TensorBlob], buffer: Any = None, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file with one writev (``buffer``: the packed name-order buffer, if any)."""
    head = memoryview(safetensors_header(tensors, metadata))
    if buffer is not None:
        bufs = [head, memoryview(buffer).cast("B")]
    else:
        bufs = [head] + [memoryview(tensors[n].data).cast("B") for n in sorted(tensors)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _writev_all(fd, bufs)
    finally:
        os.close(fd)


def write_adapter_dir(
    out: Path,
    tensors: Mapping[str, TensorBlob],
    adapter_config: dict,
    buffer: Any = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a PEFT adapter directory atomically (temp dir renamed to ``out``)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, mode=0o700)
    try:
        write_safetensors(tmp / "adapter_model.safetensors", tensors, buffer, metadata)
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def map_file(path: Path) -> memoryview:
    """The file's bytes as a copy-on-write mapping (``mmap.ACCESS_COPY``): nothing is read or copied until used,
    pages are shared with the page cache (on /dev/shm: with the file itself), and a write changes only this
    process's copy. Files of the weight channel are written once and renamed into place, never truncated, so the
    mapping cannot lose its pages."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return memoryview(bytearray())
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))


def write_file_once(path: Path, tensors: Mapping[str, TensorBlob], buffer: Any = None,
                    metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file under a temporary name and rename it to ``path`` (readers see all of it or
    nothing). Returns its size. Files are written once: a reader that mapped or linked one keeps exactly the
    bytes it checked."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write_safetensors(tmp, tensors, buffer, metadata)
        size = os.stat(tmp).st_size
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def read_safetensors(path: Path) -> tuple[dict[str, TensorBlob], dict[str, str]]:
    """Blobs viewing the file's bytes (mapped, :func:`map_file`), and the metadata; ValueError if malformed."""
    raw = map_file(Path(path))
    if raw.nbytes < 8:
        raise ValueError(f"{path}: too short for safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > raw.nbytes:
        raise ValueError(f"{path}: header runs past the end")
    hdr = json.loads(bytes(raw[8 : 8 + n]))
    meta = hdr.pop("__metadata__", None) or {}
    data = raw[8 + n :]
    blobs = {}
    for name, d in hdr.items():
        a, b = d["data_offsets"]
        blobs[name] = TensorBlob(d["dtype"], tuple(d["shape"]), data[a:b])
    return blobs, meta


def checksum_file(path: Path) -> str:
    """The wire checksum of a safetensors file's tensors (what an actor loaded)."""
    blobs, _ = read_safetensors(path)
    return checksum(blobs)


def lora_pairs(tensors: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """PEFT state dict -> ``{module: (A, B)}`` (names up to ``.lora_A.`` / ``.lora_B.``)."""
    pairs: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        for part in ("A", "B"):
            key = f".lora_{part}."
            if key in name:
                pairs.setdefault(name.split(key)[0], {})[part] = t
    return {m: (ab["A"], ab["B"]) for m, ab in pairs.items() if set(ab) == {"A", "B"}}


class DeltaCosine:
    """Accumulates the cosine between two LoRA deltas over many matrices: ``sum <D1, D2>`` over
    ``sqrt(sum |D1|^2 * sum |D2|^2)`` (float64). 1.0 when both are zero (nothing to serve, nothing served),
    0.0 when exactly one is."""

    def __init__(self):
        self.dot = self.n1 = self.n2 = 0.0

    def add_dense(self, d1, d2) -> None:
        """Two full delta matrices."""
        a, b = d1.double(), d2.double()
        self.dot += float((a * b).sum())
        self.n1 += float((a * a).sum())
        self.n2 += float((b * b).sum())

    def add_lowrank(self, a1, b1, a2, b2) -> None:
        """``D1 = B1 @ A1`` and ``D2 = B2 @ A2`` without forming them: ``<B1 A1, B2 A2> = sum((B1^T B2) *
        (A1 A2^T))``, r x r products."""
        a1, b1, a2, b2 = (t.double() for t in (a1, b1, a2, b2))
        self.dot += float(((b1.T @ b2) * (a1 @ a2.T)).sum())
        self.n1 += float(((b1.T @ b1) * (a1 @ a1.T)).sum())
        self.n2 += float(((b2.T @ b2) * (a2 @ a2.T)).sum())

    @staticmethod
    def lowrank_norm2(a, b) -> float:
        """``|B @ A|^2`` without forming it."""
        a, b = a.double(), b.double()
        return float(((b.T @ b) * (a @ a.T)).sum())

    def merge(self, other: dict) -> None:
        self.dot += other["dot"]
        self.n1 += other["n1"]
        self.n2 += other["n2"]

    def as_dict(self) -> dict:
        return {"dot": self.dot, "n1": self.n1, "n2": self.n2}

    @property
    def value(self) -> float:
        if self.n1 <= 0.0 and self.n2 <= 0.0:
            return 1.0
        if self.n1 <= 0.0 or self.n2 <= 0.0:
            return 0.0
        return max(-1.0, min(1.0, self.dot / (self.n1 * self.n2) ** 0.5))


def lora_delta_cosine(tensors: Mapping[str, Any], wire_dtype: str) -> float:
    """Cosine between the LoRA delta of ``tensors`` (the learner's, any dtype) and the same adapter after the
    cast to ``wire_dtype``: what the wire itself costs the trained delta (r x r products, cheap)."""
    import torch

    dt = getattr(torch, _TORCH_DTYPES[WIRE_DTYPES[wire_dtype]])
    cos = DeltaCosine()
    for a, b in lora_pairs(tensors).values():
        cos.add_lowrank(a.to(dt), b.to(dt), a, b)
    return cos.value
