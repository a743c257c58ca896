"""Multi-process serving (``cellserve serve --frontends N``): one engine-core process owns the
models, the device and every session; N gRPC frontend processes share the port (SO_REUSEPORT)
and reach the core over ZMQ with msgspec messages; the parent supervises both.

- ``messages``: the internal wire (what crosses, type-checked when decoded);
- ``client``: ``ZmqEngineClient``, the ``EngineClient`` of a frontend;
- ``core``: ``CoreServer``, the core's side of the socket;
- ``processes``: the entry points of the core and frontend processes;
- ``supervisor``: the parent (start order, restarts, drain, exit status).
"""
