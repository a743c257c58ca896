"""Credentials of a client: the bearer token and the TLS channel credentials."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

TOKEN_ENV = "CELLSERVE_TOKEN"

TlsArg = bool | str | os.PathLike[str]
PemArg = str | os.PathLike[str] | bytes | None


def resolve_token(token: str | None) -> str | None:
    """``token``, or else ``$CELLSERVE_TOKEN`` (None: no authorization header)."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or any(c in token for c in "\r\n")):
        raise ValueError("token must be a non-empty single line")
    return token.strip() if token else None


def _pem(value: PemArg, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise ValueError(f"{what}: cannot read {value}: {e.strerror}") from None


def channel_credentials(
    tls: TlsArg, client_cert: PemArg = None, client_key: PemArg = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials: ``tls=True`` trusts the system roots, a path trusts that CA bundle;
    ``client_cert``/``client_key`` (paths or PEM bytes) present a client certificate (mTLS).
    ``tls=False`` and no client certificate: None (plaintext)."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    if tls is False and client_cert is None:
        return None
    roots = None if tls is True or tls is False else _pem(tls, "tls")
    return grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=_pem(client_key, "client_key"),
        certificate_chain=_pem(client_cert, "client_cert"),
    )
