"""Multi-process serving (``cellserve serve --frontends N``): one engine-core process owns the
models, the device and every session; N gRPC frontend processes share the port (SO_REUSEPORT)
and reach the core over ZMQ with msgspec messages; the parent supervises both.

- ``messages``: the internal wire (what crosses, type-checked when decoded);
- ``client``: ``ZmqEngineClient``, the ``EngineClient`` of a frontend;
- ``core_server``: ``CoreServer``, the engine core process (input, core and output threads);
- ``gate_thread``: InspectGates in the core process;
- ``processes``: the entry points of the core and frontend processes;
- ``supervisor``: the parent (start order, restarts, drain, exit status).
"""
