"""The N=1 profile: a `cellserve serve` on the shipped models, one session typing one character
at a time on a stream for 12 s, and py-spy (``pip install py-spy``) sampling the server for 8 s
of it. Prints the keystroke p50/p90 and the share of samples per thread and per leaf frame.

    .venv/bin/python scripts/profile_n1.py [OUT.txt]
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections import Counter

import grpc
from cellserve_client._proto.cellserve.v1 import service_pb2 as svc
from cellserve_client._proto.cellserve.v1 import service_pb2_grpc as rpc
from cellserve_client._proto.cellserve.v1 import types_pb2 as types

Req = svc.SessionRequest


async def type_for(target: str, seconds: float, server_pid: int, out: str) -> list[float]:
    spy = shutil.which("py-spy") or sys.exit("py-spy not found: pip install py-spy")
    async with grpc.aio.insecure_channel(target) as ch:
        call = rpc.CellserveServiceStub(ch).Session()
        await call.write(Req(request_id=1, open=Req.Open()))
        await call.read()
        lat: list[float] = []
        prof: subprocess.Popen[bytes] | None = None
        end = time.monotonic() + seconds
        offset = 0
        while time.monotonic() < end:
            if prof is None and time.monotonic() > end - seconds + 2:  # after a warm-up
                cmd = [spy, "record", "-p", str(server_pid), "-d", "8", "-r", "200", "-f", "raw", "-o", out]
                prof = subprocess.Popen(
                    [*cmd, "--threads", "--idle"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            t0 = time.perf_counter()
            await call.write(Req(request_id=offset + 2, append=Req.Append(offset=offset, input=types.Input(text="a"))))
            await call.read()
            lat.append(time.perf_counter() - t0)
            offset += 1
        await call.done_writing()
        if prof is not None:
            prof.wait(timeout=60)
    return sorted(lat)


def summarize(path: str) -> None:
    leaf: Counter[str] = Counter()
    thread: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            total += int(n)
            thread[frames[0]] += int(n)
            leaf[frames[-1]] += int(n)
    print(f"{total} samples")
    for name, count in thread.most_common(8):
        print(f"{count / total:6.1%}  {name}")
    for name, count in leaf.most_common(15):
        print(f"{count / total:6.1%}  {name}")


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "profile_n1.txt"
    args = ["--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "cellserve.cli", "serve", *args, "--cpu-threads", "1"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        target = ""
        for line in server.stdout:
            if m := re.search(r"listening on (\S+):(\d+)", line):
                target = f"{m.group(1)}:{m.group(2)}"
                break
        lat = asyncio.run(type_for(target, 12.0, server.pid, out))
        print(
            f"{len(lat)} keystrokes: p50 {lat[len(lat) // 2] * 1e3:.2f} ms, p90 {lat[int(len(lat) * 0.9)] * 1e3:.2f} ms"
        )
        summarize(out)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
