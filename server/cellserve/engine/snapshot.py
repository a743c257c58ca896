"""Snapshot blobs: a session's state, signed so that any replica with the key can trust it.

Layout (all integers big-endian)::

    magic    8 bytes   b"CLSNAP\\r\\n" (the CR LF catches text-mode mangling, as in PNG)
    version  u16       BLOB_VERSION
    hlen     u32       length of the header
    header   hlen      UTF-8 JSON: model, weights_sha256, cell, position, created_at,
                       dtype ("float32"), shapes (one [layers, hidden] per state tensor)
    state    ...       raw little-endian fp32 bytes of each state tensor, in order
    mac      32 bytes  HMAC-SHA256(key, everything above)

Resume checks, in this order: size and magic, then the signature (``hmac.compare_digest``),
then version and header. A blob that is malformed or whose signature does not verify (tampered,
truncated, or signed with another key) is ``InvalidInput``: the request carries bytes this
server cannot trust. A valid blob of a model this server does not serve with the same weights
is ``PreconditionFailed`` (checked by the engine). The user's text is not in the blob: the
blob is signed, not encrypted, and a resumed session can rewind only to its resume point.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

from ..errors import InvalidInput

MAGIC = b"CLSNAP\r\n"
BLOB_VERSION = 1
_MAC_LEN = 32
_FIXED = struct.Struct(">HI")  # version, header length


@dataclass(frozen=True)
class SnapshotData:
    model: str
    weights_sha256: str
    cell: str
    position: int
    created_at: float
    shapes: tuple[tuple[int, int], ...]  # [layers, hidden] per state tensor
    tensors: tuple[bytes, ...]  # raw little-endian fp32, one per state tensor


def encode(data: SnapshotData, key: bytes) -> bytes:
    header = {
        "model": data.model,
        "weights_sha256": data.weights_sha256,
        "cell": data.cell,
        "position": data.position,
        "created_at": data.created_at,
        "dtype": "float32",
        "shapes": [list(s) for s in data.shapes],
    }
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    body = MAGIC + _FIXED.pack(BLOB_VERSION, len(hbytes)) + hbytes + b"".join(data.tensors)
    return body + hmac.new(key, body, hashlib.sha256).digest()


def decode(blob: bytes, key: bytes) -> SnapshotData:
    bad = InvalidInput("snapshot blob is malformed or its signature does not verify")
    if len(blob) < len(MAGIC) + _FIXED.size + _MAC_LEN or not blob.startswith(MAGIC):
        raise bad
    body, mac = blob[:-_MAC_LEN], blob[-_MAC_LEN:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise bad
    version, hlen = _FIXED.unpack_from(body, len(MAGIC))
    if version != BLOB_VERSION:
        raise InvalidInput(f"snapshot blob version {version} is not supported (this server reads {BLOB_VERSION})")
    start = len(MAGIC) + _FIXED.size
    try:
        h = json.loads(body[start : start + hlen].decode())
        shapes = tuple((int(a), int(b)) for a, b in h["shapes"])
        data = SnapshotData(
            model=str(h["model"]),
            weights_sha256=str(h["weights_sha256"]),
            cell=str(h["cell"]),
            position=int(h["position"]),
            created_at=float(h["created_at"]),
            shapes=shapes,
            tensors=(),
        )
        if h["dtype"] != "float32" or data.position < 0 or any(a <= 0 or b <= 0 for a, b in shapes):
            raise ValueError("header")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise bad from None
    raw = body[start + hlen :]
    sizes = [a * b * 4 for a, b in shapes]
    if sum(sizes) != len(raw):
        raise bad
    tensors, at = [], 0
    for n in sizes:
        tensors.append(raw[at : at + n])
        at += n
    return SnapshotData(
        data.model, data.weights_sha256, data.cell, data.position, data.created_at, shapes, tuple(tensors)
    )
