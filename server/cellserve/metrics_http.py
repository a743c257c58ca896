"""The metrics HTTP endpoint with a bounded number of threads.

prometheus_client's ``start_http_server`` starts one thread per connection, so idle or
half-sent requests can pile threads up without limit. Here at most ``max_threads`` requests
are served at once; a connection that finds every slot busy for ``timeout_s`` is closed, and
a request that does not arrive whole within ``timeout_s`` is dropped (socket timeout).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

DEFAULT_TIMEOUT_S = 10.0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # scrapes are not news


class BoundedWSGIServer(ThreadingWSGIServer):
    daemon_threads = True
    max_threads = 8
    timeout_s = DEFAULT_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.timeout_s):
            self.shutdown_request(request)  # every slot busy: this client tries again later
            return
        if isinstance(request, socket.socket):
            request.settimeout(self.timeout_s)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(
    host: str, port: int, registry: CollectorRegistry, max_threads: int, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[BoundedWSGIServer, threading.Thread]:
    """Starts ``/metrics`` on host:port in a daemon thread (port 0: a free one). Raises OSError."""
    attrs: dict[str, Any] = {"max_threads": max_threads, "timeout_s": timeout_s}
    if ":" in host:
        attrs["address_family"] = socket.AF_INET6
    server_class: type[BoundedWSGIServer] = type("MetricsServer", (BoundedWSGIServer,), attrs)
    httpd: BoundedWSGIServer = make_server(
        host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=httpd.serve_forever, name="cellserve-metrics", daemon=True)
    thread.start()
    return httpd, thread
