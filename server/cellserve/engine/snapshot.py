"""Snapshot blobs: a session's state, encrypted and authenticated so that any replica with the
key can trust it, and bound to the tenant that took it until it expires.

Layout (all integers big-endian)::

    magic    8 bytes   b"CLSNAP\\r\\n" (the CR LF catches text-mode mangling, as in PNG)
    version  u16       BLOB_VERSION (3; version-2 blobs are still read, as memory-empty)
    nonce    12 bytes  random, per blob
    sealed   ...       AES-256-GCM(key, nonce, plaintext, aad = magic + version); 16-byte tag last

    plaintext:
    hlen     u32       length of the header
    header   hlen      UTF-8 JSON: model, weights_sha256, cell, position, created_at,
                       tenant, expires_at, dtype ("float32"), shapes ([layers, hidden] each),
                       memory (version 3: the byte length of the session memory's kept text,
                       or null for a session without memory)
    state    ...       raw little-endian fp32 bytes of each state tensor, in order
    memory   ...       version 3: the session memory's kept text (vocabulary ids, one byte
                       each; at most MAX_MEMORY_BYTES: the memory window plus the rewind margin)

The AES key is derived from the configured snapshot key with HKDF-SHA256 (a fixed info label
per blob version), so the operator's key is never used raw. A leaked blob reveals nothing:
not the model, the position, the tenant or the state (from which typed text could be guessed).

Resume checks, in this order: size and magic, then authentication (the GCM tag: tampered,
truncated or sealed with another key -> ``InvalidInput``), then version and header, then the
tenant (another tenant's blob -> ``PermissionDenied``) and the expiry (``PreconditionFailed``).
A blob of a model this server does not serve with the same weights is ``PreconditionFailed``
(checked by the engine).

A blob is a fork, not a move: its tenant may resume it any number of times until it expires,
and each resume is a new session. Failover relies on that (a retry resumes the same blob
again after a resume whose answer was lost).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidInput, PermissionDenied, PreconditionFailed

MAGIC = b"CLSNAP\r\n"
BLOB_VERSION = 3
READ_VERSIONS = (2, 3)
MAX_MEMORY_BYTES = (1 << 20) + 100_000  # the largest memory window plus the largest rewind margin
_NONCE_LEN = 12
_TAG_LEN = 16
_VERSION = struct.Struct(">H")
_HLEN = struct.Struct(">I")
_INFO = {2: b"cellserve snapshot blob v2 aes-256-gcm", 3: b"cellserve snapshot blob v3 aes-256-gcm"}


@dataclass(frozen=True)
class SnapshotData:
    model: str
    weights_sha256: str
    cell: str
    position: int
    created_at: float
    shapes: tuple[tuple[int, int], ...]  # [layers, hidden] per state tensor
    tensors: tuple[bytes, ...]  # raw little-endian fp32, one per state tensor
    tenant: str = ""  # the session owner that took it; only it may resume the blob
    expires_at: float = 0.0  # unix time; 0: never (tests of the format only)
    memory: bytes | None = None  # the session memory's kept text; None: the session had none


def derive_key(key: bytes, version: int = BLOB_VERSION) -> bytes:
    """The AES-256 key of a blob version, derived from the configured snapshot key."""
    return _hkdf(key, _INFO[version])


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


_derived: dict[tuple[bytes, bytes], bytes] = {}  # HKDF per call would cost more than the AES itself


def aead_for(key: bytes, info: bytes) -> AESGCM:
    """AES-256-GCM under the key HKDF-SHA256 derives from ``key`` with the label ``info`` (one
    label per kind of sealed object: snapshot blob versions, handoff records)."""
    k = _derived.get((key, info))
    if k is None:
        if len(_derived) > 8:
            _derived.clear()
        k = _derived[(key, info)] = _hkdf(key, info)
    return AESGCM(k)


def _aead(key: bytes, version: int = BLOB_VERSION) -> AESGCM:
    return aead_for(key, _INFO[version])


def header_of(data: SnapshotData) -> dict[str, object]:
    """The blob's JSON header (version 3)."""
    return {
        "model": data.model,
        "weights_sha256": data.weights_sha256,
        "cell": data.cell,
        "position": data.position,
        "created_at": data.created_at,
        "tenant": data.tenant,
        "expires_at": data.expires_at,
        "dtype": "float32",
        "shapes": [list(s) for s in data.shapes],
        "memory": None if data.memory is None else len(data.memory),
    }


def encode(data: SnapshotData, key: bytes) -> bytes:
    header = header_of(data)
    if data.memory is not None and len(data.memory) > MAX_MEMORY_BYTES:
        raise ValueError(f"a session memory of {len(data.memory)} bytes is over {MAX_MEMORY_BYTES}")
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    plain = _HLEN.pack(len(hbytes)) + hbytes + b"".join(data.tensors) + (data.memory or b"")
    aad = MAGIC + _VERSION.pack(BLOB_VERSION)
    nonce = os.urandom(_NONCE_LEN)
    return aad + nonce + _aead(key).encrypt(nonce, plain, aad)


def decode(blob: bytes, key: bytes, *, tenant: str | None = None, now: float | None = None) -> SnapshotData:
    """The blob's contents; ``tenant``/``now`` given: refused unless it is that tenant's and
    not expired at ``now``."""
    bad = InvalidInput("snapshot blob is malformed, or was not sealed by this service's snapshot key")
    fixed = len(MAGIC) + _VERSION.size
    if len(blob) < fixed + _NONCE_LEN + _TAG_LEN + _HLEN.size or not blob.startswith(MAGIC):
        raise bad
    (version,) = _VERSION.unpack_from(blob, len(MAGIC))
    if version not in READ_VERSIONS:
        raise InvalidInput(f"snapshot blob version {version} is not supported (this server reads {READ_VERSIONS})")
    nonce = blob[fixed : fixed + _NONCE_LEN]
    try:
        plain = _aead(key, version).decrypt(nonce, blob[fixed + _NONCE_LEN :], blob[:fixed])
    except InvalidTag:
        raise bad from None
    (hlen,) = _HLEN.unpack_from(plain, 0)
    start = _HLEN.size
    try:
        h = json.loads(plain[start : start + hlen].decode())
        shapes = tuple((int(a), int(b)) for a, b in h["shapes"])
        data = SnapshotData(
            model=str(h["model"]),
            weights_sha256=str(h["weights_sha256"]),
            cell=str(h["cell"]),
            position=int(h["position"]),
            created_at=float(h["created_at"]),
            shapes=shapes,
            tensors=(),
            tenant=str(h["tenant"]),
            expires_at=float(h["expires_at"]),
        )
        if h["dtype"] != "float32" or data.position < 0 or any(a <= 0 or b <= 0 for a, b in shapes):
            raise ValueError("header")
        mem_len = None if version < 3 or h["memory"] is None else int(h["memory"])
        if mem_len is not None and not 0 <= mem_len <= MAX_MEMORY_BYTES:
            raise ValueError("memory")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise bad from None
    raw = plain[start + hlen :]
    sizes = [a * b * 4 for a, b in shapes]
    if sum(sizes) + (mem_len or 0) != len(raw):
        raise bad
    if mem_len is not None:
        data = replace(data, memory=raw[len(raw) - mem_len :])
    elif version < 3:
        data = replace(data, memory=b"")  # before session memories: a memory that read nothing
    if tenant is not None and data.tenant != tenant:
        raise PermissionDenied("this snapshot belongs to another tenant; only the tenant that took it may resume it")
    if now is not None and data.expires_at and now >= data.expires_at:
        raise PreconditionFailed("this snapshot has expired (snapshot_ttl_s); take a new snapshot")
    tensors, at = [], 0
    for n in sizes:
        tensors.append(raw[at : at + n])
        at += n
    return replace(data, tensors=tuple(tensors))
