"""One encryption for every actor across nodes: a weight version sealed once with AES-256-GCM.

Over TCP the weight channel is a CURVE socket, and CURVE encrypts each message once per peer: four actors cost the
learner's I/O thread four encryptions of the 66 MB 3.7B adapter (~0.78 s to four here, BENCHMARKS.md). With
``sync.weight_transfer: sealed`` (what ``auto`` picks over TCP):

* the learner draws a fresh 256-bit key per version and seals the version's :class:`sync.wire.WeightUpdate` once:
  its header frame under nonce 0, its tensor frame under nonce 1. A key seals one version only, so the fixed nonces
  never repeat under a key. GCM's tag authenticates each frame: a changed byte, a frame of another version (another
  key) or two versions' frames mixed fail to open;
* the key, a ticket and the fetch port go to each actor in a :class:`sync.wire.WeightSealed` over the CURVE channel,
  so only holders of an authorised client key learn them;
* each actor fetches the sealed frames from the learner's fetch port (plain TCP: encrypting sealed bytes again per
  actor is exactly the cost avoided), opens them and handles the update inside as if it had come inline (its
  checksum verified, written to its directory, loaded, acked).

Who learns what: a process that connects to the fetch port without this version's ticket gets nothing (its
:class:`sync.wire.Fetch` is refused and counted); one that sniffs a ticket off the network gets sealed bytes it
cannot open or alter undetected. The AES-GCM implementation is the ``cryptography`` package's (OpenSSL, AES-NI):
~7 ms per 66 MB sealed or opened here, into reused buffers.

>>> key = new_key()
>>> head, body = seal(key, b"header", b"tensors")
>>> opened = open_sealed(key, head, body)
>>> bytes(opened[0]), bytes(opened[1])
(b'header', b'tensors')
>>> open_sealed(new_key(), head, body)
Traceback (most recent call last):
ValueError: a sealed frame failed authentication (altered, truncated or of another version)
"""

from __future__ import annotations

import os
from typing import Any

KEY_BYTES = 32
TAG_BYTES = 16
NONCE_HEADER = (0).to_bytes(12, "little")
NONCE_TENSORS = (1).to_bytes(12, "little")


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def sealed_nbytes(nbytes: int) -> int:
    return nbytes + TAG_BYTES


def seal(key: bytes, header: Any, tensors: Any, out: Any = None) -> tuple[bytes, memoryview]:
    """(sealed header, sealed tensors). ``out``: a writable buffer of ``sealed_nbytes(len(tensors))`` bytes to
    reuse for the tensors (fresh memory costs page faults, ~40 ms per 66 MB here)."""
    aead = _aead(key)
    tensors = memoryview(tensors).cast("B")
    if out is None or memoryview(out).nbytes != sealed_nbytes(tensors.nbytes):
        out = bytearray(sealed_nbytes(tensors.nbytes))
    aead.encrypt_into(NONCE_TENSORS, tensors, None, out)
    return aead.encrypt(NONCE_HEADER, bytes(header), None), memoryview(out).cast("B")


def open_sealed(key: bytes, header: Any, tensors: Any, out: Any = None) -> tuple[bytes, memoryview]:
    """The opened (header, tensors), or ``ValueError`` when a frame fails its tag (altered, truncated, sealed under
    another key). ``out``: a writable buffer of the opened tensors' size to reuse."""
    from cryptography.exceptions import InvalidTag

    aead = _aead(key)
    tensors = memoryview(tensors).cast("B")
    if tensors.nbytes < TAG_BYTES:
        raise ValueError("a sealed frame is shorter than its tag")
    n = tensors.nbytes - TAG_BYTES
    if out is None or memoryview(out).nbytes != n:
        out = bytearray(n)
    try:
        head = aead.decrypt(NONCE_HEADER, bytes(header), None)
        aead.decrypt_into(NONCE_TENSORS, tensors, None, out)
    except InvalidTag:
        raise ValueError("a sealed frame failed authentication (altered, truncated or of another version)") from None
    return head, memoryview(out).cast("B")
