"""How the gRPC server listens: TLS credentials (optionally mTLS) and the connection options
(keepalive enforcement, connection age, HTTP/2 limits), all from Settings."""

from __future__ import annotations

from typing import Any

import grpc

from ..config import Settings


class TlsFileError(Exception):
    """A TLS file cannot be read; the message names the setting and the file."""


def _read(path: Any, setting: str) -> bytes:
    try:
        data: bytes = path.read_bytes()
    except OSError as e:
        raise TlsFileError(f"{setting}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TlsFileError(f"{setting}: {path} is not PEM")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (and tls_client_ca: client certificates required);
    None: plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = (_read(settings.tls_key, "tls_key"), _read(settings.tls_cert, "tls_cert"))
    if settings.tls_client_ca is None:
        return grpc.ssl_server_credentials([pair])
    ca = _read(settings.tls_client_ca, "tls_client_ca")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """``reuse_port``: several frontend processes share the port (multi-process serving)."""
    s = settings
    opts: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        # One process: port 0 must yield a port nobody else holds. Frontends share theirs.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Keepalive: the server pings idle connections, so a dead client's streams (and their
        # quota slots) come back within keepalive_time + keepalive_timeout ...
        ("grpc.keepalive_time_ms", _ms(s.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(s.keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        # ... and refuses clients that ping too often (GOAWAY "too_many_pings").
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(s.keepalive_min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", s.http2_max_streams_per_connection),
        # The soft limit alone refuses a header between it and the hard limit (default: twice
        # the soft one) only at random; with both equal, a header over the limit is refused always.
        ("grpc.max_metadata_size", s.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", s.max_metadata_bytes),
    ]
    if s.max_connection_age_s > 0:
        opts += [
            ("grpc.max_connection_age_ms", _ms(s.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(s.max_connection_age_grace_s)),
        ]
    return opts
