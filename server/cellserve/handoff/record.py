"""A handoff record: one session as a replica leaves it in the store.

It carries what another replica needs to continue the session *as the same session*: the
snapshot blob (state, model, position, tenant, expiry; already sealed by
``engine/snapshot.py``), the session id, and the exactly-once bookkeeping (the last applied
piece and its encoded answer, so that a retry of that piece across the move is answered again,
not applied twice). The whole record is sealed once more with AES-256-GCM under a key derived
from the snapshot key with its own HKDF label, and bound (as associated data) to the store key
it is written under: a record copied to another session's or tenant's key does not open.

Layout: ``b"CLHOFF1\\n" | nonce (12) | AES-GCM(plaintext, aad = magic + store key)``, the
plaintext a msgpack map (``msgspec``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidTag

from ..engine.snapshot import aead_for
from ..engine.types import Prediction

MAGIC = b"CLHOFF1\n"
_NONCE_LEN = 12
_INFO = b"cellserve handoff record v1 aes-256-gcm"


@dataclass(frozen=True)
class HandoffRecord:
    session_id: str
    tenant: str
    blob: bytes  # the session's sealed snapshot (engine/snapshot.py)
    expires_at: float  # unix seconds: the blob's expiry; the store entry expires with it
    last_offset: int = -1  # offset of the last applied piece; -1: none
    last_text: str = ""  # that piece (only inside the sealed record)
    last_answer: bytes = b""  # its answer, encoded by the engine
    sequences: tuple[tuple[str, str], ...] = ()  # KServe sequence ids bound to it: (model, sequence id)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(HandoffRecord)


def seal_record(record: HandoffRecord, key: bytes, store_key: str) -> bytes:
    """``record`` encrypted and authenticated under ``key``, bound to ``store_key``."""
    plain = _encoder.encode(record)
    nonce = os.urandom(_NONCE_LEN)
    return MAGIC + nonce + aead_for(key, _INFO).encrypt(nonce, plain, MAGIC + store_key.encode())


def open_record(sealed: bytes, key: bytes, store_key: str) -> HandoffRecord | None:
    """The record, or None when ``sealed`` is not a record sealed under ``key`` for
    ``store_key`` (another deployment's key, tampered, truncated, moved to another key)."""
    if len(sealed) < len(MAGIC) + _NONCE_LEN + 16 or not sealed.startswith(MAGIC):
        return None
    nonce = sealed[len(MAGIC) : len(MAGIC) + _NONCE_LEN]
    try:
        plain = aead_for(key, _INFO).decrypt(nonce, sealed[len(MAGIC) + _NONCE_LEN :], MAGIC + store_key.encode())
        return _decoder.decode(plain)
    except (InvalidTag, msgspec.DecodeError, msgspec.ValidationError):
        return None


def encode_prediction(pred: Prediction) -> bytes:
    """An answer for ``HandoffRecord.last_answer``."""
    return _encoder.encode(pred)


def decode_prediction(data: bytes) -> Prediction:
    return msgspec.msgpack.decode(data, type=Prediction)
