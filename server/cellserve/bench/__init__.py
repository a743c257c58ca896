"""`cellserve bench`: the benchmark suite (issue 7).

Every figure is a ratio against peers measured in the same run, because the machines it runs
on are shared and noisy. The pieces:

- ``loadgen``: the load generator. Worker processes (multiprocessing, spawn) drive N concurrent
  typing sessions over the raw generated gRPC stubs: closed loop, open loop with think time,
  paste events, completions. Throughput, latency percentiles, errors, starved sessions, client
  and server CPU per request.
- ``peers``: the naive server and the bare echo server, grpc.aio servicers of the same
  ``CellserveService.Session`` stream (run as ``python -m cellserve.bench.peers``).
- ``ceiling``: the model alone, batched, in-process: the compute ceiling.
- ``memory``: server RSS per idle session against the raw state bytes.
- ``suite``: runs it all; ``report``: results.json, results.md and the PNG plots.

Nothing in this package is imported by the server; only ``suite``, ``ceiling`` and ``model``
import torch (the load-generator processes never do).
"""
