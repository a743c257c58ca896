"""`cellserve bench`: argument parsing; the work is in ``suite`` and ``report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="benchmark cellserve against a naive server, an echo server and the model ceiling",
        description="Keystroke latency/throughput vs a naive server and the grpc.aio echo limit, completions vs "
        "the model ceiling, memory per idle session; ratios within one run. See benchmarks/README.md.",
    )
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: N=1,16, 2 s windows (under 2 minutes)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="folder for results.json/.md and plots (default: ./bench-results; the committed results are "
        "docs/benchmarks/, written only when named here)",
    )
    p.add_argument(
        "--model", help="model folder or name in models/, or 'random' (default: python-lstm if present, else random)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (servers and ceiling)")
    p.add_argument("--sessions", type=_ints, help="closed-loop session counts (default 1,16,64,256)")
    p.add_argument("--window", type=float, help="measurement window per workload, seconds (default 6)")
    p.add_argument("--warmup", type=float, help="warm-up before each window, seconds (default 1.5)")
    p.add_argument("--peers", type=_names, help="subset of cellserve,naive,echo (default all)")
    p.add_argument("--open-sessions", type=int, help="open-loop sessions (default 256)")
    p.add_argument("--open-rate", type=float, help="open-loop pieces per second per session (default 4)")
    p.add_argument("--paste-prob", type=float, help="share of open-loop pieces that are 100-300 char pastes (0.005)")
    p.add_argument("--completion-batches", type=_ints, help="concurrent completions (default 16,64)")
    p.add_argument("--completion-chars", type=int, help="characters per completion (default 32)")
    p.add_argument("--memory-sessions", type=_ints, help="idle session counts for RSS (default 10000,100000)")
    p.add_argument("--workers", type=int, help="load-generator processes (default 2)")
    p.add_argument("--server-threads", type=int, help="cellserve and ceiling torch threads (0: torch default)")
    p.add_argument(
        "--pairs",
        type=int,
        help="rounds of alternating echo / cellserve windows at the top N for the efficiency ratio (default 3; 0: none)",
    )
    p.add_argument(
        "--skip",
        type=_names,
        default=[],
        help="subset of open,completions,memory,ceiling,headofline,scaling,tenants,speculation",
    )
    p.add_argument(
        "--only",
        choices=["headofline", "scaling", "tenants", "speculation"],
        help="run just this workload (headofline: 16 pipelined 4,096-char pastes and two want_gates appends "
        "on one stream while a bystander types a character every 50 ms; its p99 and max. scaling: cellserve "
        "with 1 and 2 frontends and the echo peer with 1 and 2 processes on one port, CPU per keystroke by "
        "process kind, and the predicted keystrokes/s for F frontends on C cores. tenants: a server "
        "with two tenants, one pasting at full speed on 4 streams while the other types; the typist's p99 "
        "beside it against alone. speculation: a typist at 8 keystrokes/s with jitter on Python source and prose "
        "(the speculation hit rate, its p50) and closed-loop N=1 and N=256, with speculation on and off)",
    )
    p.add_argument("--scaling-sessions", type=_ints, help="closed-loop sessions of the scaling workload (default 256)")
    p.add_argument(
        "--scaling-frontends", type=_ints, help="cellserve frontend counts of the scaling workload (default 1,2)"
    )
    p.add_argument(
        "--scaling-cores",
        type=_ints,
        help="engine-core process counts of the scaling workload, each with every frontend count (default 1)",
    )
    p.add_argument("--scaling-echo", type=_ints, help="echo process counts of the scaling workload (default 1,2)")
    p.add_argument("--no-plots", action="store_true", help="JSON and markdown only (no matplotlib needed)")
    p.add_argument("--note", default="", help="a remark printed under the header of results.md (e.g. the conditions)")
    p.set_defaults(handler=run_bench)


_FIELDS = {
    "sessions": "sessions",
    "window": "window_s",
    "warmup": "warmup_s",
    "peers": "peers",
    "open_sessions": "open_sessions",
    "open_rate": "open_rate",
    "paste_prob": "paste_prob",
    "completion_batches": "completion_batches",
    "completion_chars": "completion_chars",
    "memory_sessions": "memory_sessions",
    "workers": "workers",
    "server_threads": "server_threads",
    "pairs": "pairs",
    "scaling_sessions": "scaling_sessions",
    "scaling_frontends": "scaling_frontends",
    "scaling_cores": "scaling_cores",
    "scaling_echo": "scaling_echo",
}


def run_bench(a: argparse.Namespace) -> int:
    from .report import write_report
    from .suite import PEERS, BenchConfig, run_suite

    cfg = BenchConfig.quick_config() if a.quick else BenchConfig()
    for arg, name in _FIELDS.items():
        v = getattr(a, arg)
        if v is not None:
            setattr(cfg, name, v)
    cfg.device, cfg.model, cfg.skip, cfg.only = a.device, a.model, a.skip, a.only
    bad = [p for p in cfg.peers if p not in PEERS]
    if bad:
        raise SystemExit(f"cellserve bench: unknown peers {bad}; choose from {', '.join(PEERS)}")
    results = run_suite(cfg, sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else None)
    results["meta"]["notes"] = a.note
    paths = write_report(results, a.out, with_plots=not a.no_plots)
    for t in results["targets"]:
        mark = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        v = t["value"]
        print(f"{mark:>6}  {t['target']}: {'n/a' if v is None else f'{v:.3g}'} (goal {t['goal']})")
    print("wrote " + ", ".join(str(p) for p in paths))
    print(
        json.dumps(
            {
                "targets_met": sum(1 for t in results["targets"] if t["met"]),
                "missed": sum(1 for t in results["targets"] if t["met"] is False),
            }
        )
    )
    return 0
