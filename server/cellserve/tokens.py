"""The tokens file: tenants, the SHA-256 hashes of their tokens, and quota overrides.

Format (YAML, or the same structure as JSON)::

    tenants:
      - name: alice                       # the tenant: owner of its sessions and snapshots
        tokens:                           # one or more; several allow rotation without downtime
          - sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        quota:                            # optional; any field left out keeps the Settings default
          max_sessions: 100
          max_streams: 20
          max_completions: 8
          chars_per_s: 5000
          chars_burst: 8192

Only hashes are stored: tokens are random (``cellserve token new``), so a plain SHA-256 is
enough, and a leaked file does not let anyone call. A presented token is hashed and compared
with every stored hash with ``hmac.compare_digest`` (no early exit), so the time taken says
nothing about which bytes matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .engine.admission import Limits

TOKEN_PREFIX = "cs_"  # recognisable in a secret scanner
HASH_PREFIX = "sha256:"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class QuotaOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_sessions: int | None = Field(default=None, ge=1, le=10_000_000)
    max_streams: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completions: int | None = Field(default=None, ge=1, le=100_000)
    chars_per_s: float | None = Field(default=None, gt=0, le=1e9)
    chars_burst: int | None = Field(default=None, ge=1, le=1_000_000_000)


class TenantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=TENANT_PATTERN)
    tokens: list[str] = Field(default_factory=list)
    quota: QuotaOverrides = Field(default_factory=QuotaOverrides)

    @field_validator("tokens")
    @classmethod
    def _hashes(cls, v: list[str]) -> list[str]:
        for t in v:
            digest = t.removeprefix(HASH_PREFIX)
            if not t.startswith(HASH_PREFIX) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    "each token must be 'sha256:' followed by 64 lowercase hex digits (the hash, not the token)"
                )
        return v


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: list[TenantEntry]

    @field_validator("tenants")
    @classmethod
    def _unique(cls, v: list[TenantEntry]) -> list[TenantEntry]:
        names = [t.name for t in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(sorted(dup))}")
        return v


class TokensFileError(Exception):
    """The tokens file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Tenant:
    name: str
    limits: Limits


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> tuple[str, str]:
    """A fresh random token and its stored form (``sha256:<hex>``)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, HASH_PREFIX + hash_token(token).hex()


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is written or replaced (None: it cannot be read now)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def parse(path: Path) -> TokensFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokensFileError(f"{path}: cannot read: {e}") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise TokensFileError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    try:
        return TokensFile.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in e.errors())
        raise TokensFileError(f"{path}: {problems}") from None


class TokenTable:
    """The tenants of one parsed file, looked up by token in constant time per entry."""

    def __init__(self, parsed: TokensFile, defaults: Limits) -> None:
        self._entries: list[tuple[bytes, Tenant]] = []
        self.tenants: dict[str, Tenant] = {}
        for t in parsed.tenants:
            over = t.quota.model_dump(exclude_none=True)
            tenant = Tenant(t.name, Limits(**{**defaults.__dict__, **over}))
            self.tenants[t.name] = tenant
            for h in t.tokens:
                self._entries.append((bytes.fromhex(h.removeprefix(HASH_PREFIX)), tenant))

    def lookup(self, token: str) -> Tenant | None:
        digest = hash_token(token)
        found: Tenant | None = None
        for stored, tenant in self._entries:  # every entry, match or not: no timing signal
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found

    def __len__(self) -> int:
        return len(self._entries)
