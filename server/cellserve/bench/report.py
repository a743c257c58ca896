"""results.json, results.md (tables + ratios + the command) and PNG plots (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PEER_ORDER = ("cellserve", "naive", "echo")
COLORS = {"cellserve": "tab:blue", "naive": "tab:red", "echo": "tab:gray", "ceiling": "tab:green"}


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    cfg = m["config"]
    ks = res["keystrokes_closed"]
    lines = [
        "# cellserve benchmark results",
        "",
        f"Produced by `{m['command']}` on {m['date_utc']} ({m['seconds']:.0f} s).",
        f"Model: {m['model']}. Device: {cfg['device']}. Machine: {m['machine']['cpus']} CPUs, "
        f"torch {m['machine']['torch']}, grpcio {m['machine']['grpcio']}, Python {m['machine']['python']}"
        + (f", GPU {m['machine']['cuda']}" if m["machine"].get("cuda") else "")
        + ".",
        f"Load: {cfg['workers']} load-generator processes on the same machine; {cfg['warmup_s']:g} s warm-up, "
        f"{cfg['window_s']:g} s measured per workload. How to read this: benchmarks/README.md.",
        "",
    ]
    if m.get("notes"):
        lines += [m["notes"], ""]
    lines += ["## Targets", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        v = t["value"]
        lines.append(
            f"| {t['target']} | {'–' if v is None else f'{v:.3g}'} | {t['goal']} | "
            f"{ {True: 'yes', False: '**no**', None: '–'}[t['met']] } |"
        )
    pairs = res.get("efficiency_pairs")
    if pairs:
        lines += [
            "",
            f"## Efficiency in alternating windows: echo and cellserve at N={pairs['n']}, both up, the order "
            "alternating each round",
            "",
            "| round | echo server CPU ms/msg | cellserve server CPU ms/keystroke |",
            "|---|---|---|",
        ]
        lines += [
            f"| {i + 1} | {_f(r['echo_ms'], '{:.3f}')} | {_f(r['cellserve_ms'], '{:.3f}')} |"
            for i, r in enumerate(pairs["rounds"])
        ]
    hol = res.get("head_of_line")
    if hol:
        w, b, f = hol["workload"], hol["bystander"], hol["flood"]
        lat, quiet = b["latency_ms"], b["quiet_latency_ms"]
        lines += [
            "",
            f"## Head-of-line: {w['pastes']} pipelined {w['paste_chars']:,}-char pastes and {w['gate_pastes']} "
            f"want_gates appends on one stream; a bystander types a character every {w['interval_s'] * 1e3:g} ms",
            "",
            "| bystander keystrokes | p50 ms | p99 ms | max ms | quiet p50 ms | flood chars | flood s "
            "| server CPU s | errors |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {b['keystrokes']} | {_f(lat.get('p50'), '{:.1f}')} | {_f(lat.get('p99'), '{:.1f}')} | "
            f"{_f(lat.get('max'), '{:.1f}')} | {_f(quiet.get('p50'), '{:.1f}')} | {f['chars']:,} | "
            f"{f['seconds']:.1f} | {hol['server_cpu_s']:.1f} | {b['errors'] + f['errors']} |",
        ]
    ten = res.get("tenants")
    if ten:
        w, a, ld = ten["workload"], ten["typist_alone_ms"], ten["typist_loaded_ms"]
        lines += [
            "",
            f"## Tenants: a greedy tenant keeps {w['greedy_streams']} streams x {w['depth']} pastes of "
            f"{w['paste_chars']:,} chars in flight; another tenant types a character every {w['interval_s'] * 1e3:g} ms",
            "",
            "| typist | keystrokes | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|",
            f"| alone | {ten['keystrokes']['alone']} | {_f(a.get('p50'), '{:.1f}')} | {_f(a.get('p99'), '{:.1f}')} "
            f"| {_f(a.get('max'), '{:.1f}')} |",
            f"| beside the greedy tenant ({_f(ten['greedy_chars_per_s'], '{:,.0f}')} chars/s) | "
            f"{ten['keystrokes']['loaded']} | {_f(ld.get('p50'), '{:.1f}')} | {_f(ld.get('p99'), '{:.1f}')} "
            f"| {_f(ld.get('max'), '{:.1f}')} |",
        ]
    ceil = (res.get("ceiling") or {}).get("keystrokes", {})
    lines += [
        "",
        "## Keystrokes, closed loop (each session sends one character and awaits its prediction)",
        "",
        "| N | peer | keystrokes/s | p50 ms | p90 ms | p99 ms | p99.9 ms | starved | errors | server CPU ms/req "
        "| client CPU ms/req | vs echo | vs naive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ns = sorted({int(n) for p in ks.values() for n in p})
    for n in ns:
        echo = (ks.get("echo") or {}).get(str(n), {}).get("throughput_rps")
        naive = (ks.get("naive") or {}).get(str(n), {}).get("throughput_rps")
        for peer in PEER_ORDER:
            r = (ks.get(peer) or {}).get(str(n))
            if r is None:
                continue
            lat = r["latency_ms"]
            lines.append(
                f"| {n} | {peer} | {r['throughput_rps']:.0f} | {_f(lat.get('p50'), '{:.2f}')} | "
                f"{_f(lat.get('p90'), '{:.2f}')} | {_f(lat.get('p99'), '{:.2f}')} | {_f(lat.get('p99.9'), '{:.2f}')} | "
                f"{r['sessions_starved']} | {r['errors']} | {_f(r['server_cpu_ms_per_request'], '{:.3f}')} | "
                f"{_f(r['client_cpu_ms_per_request'], '{:.3f}')} | {_ratio(r['throughput_rps'], echo)} | "
                f"{_ratio(r['throughput_rps'], naive)} |"
            )
        c = ceil.get(str(n))
        if c:
            lines.append(
                f"| {n} | model ceiling (in-process, {c['kernel']}) | {c['throughput_rps']:.0f} | "
                f"{c['step_s'] * 1e3:.2f} (step) | | | | | | | | {_ratio(c['throughput_rps'], echo)} | "
                f"{_ratio(c['throughput_rps'], naive)} |"
            )
    op = res.get("keystrokes_open") or {}
    if op:
        any_r = next(iter(op.values()))["workload"]
        lines += [
            "",
            f"## Keystrokes, open loop ({any_r['sessions']} sessions, each {any_r['rate']:g} pieces/s on average "
            f"with exponential think time; {any_r['paste_prob'] * 100:g}% of pieces are pastes of "
            f"{any_r['paste_min']}-{any_r['paste_max']} characters; latency from the scheduled send time)",
            "",
            "| peer | answered/s | chars/s | key p50 ms | key p99 ms | paste p50 ms | paste p99 ms | starved "
            "| longest wait s | unanswered at end | errors | server CPU ms/req |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for peer in PEER_ORDER:
            r = op.get(peer)
            if r is None:
                continue
            k, pa = r["latency_ms_by_kind"].get("key", {}), r["latency_ms_by_kind"].get("paste", {})
            lines.append(
                f"| {peer} | {r['throughput_rps']:.0f} | {r['chars_per_s']:.0f} | {_f(k.get('p50'), '{:.2f}')} | "
                f"{_f(k.get('p99'), '{:.2f}')} | {_f(pa.get('p50'), '{:.2f}')} | {_f(pa.get('p99'), '{:.2f}')} | "
                f"{r['sessions_starved']} | {r['max_gap_s']:.2f} | {r['unanswered_at_end']} | {r['errors']} | "
                f"{_f(r['server_cpu_ms_per_request'], '{:.3f}')} |"
            )
    cs = res.get("completions") or {}
    if cs:
        cc = (res.get("ceiling") or {}).get("completions", {})
        lines += [
            "",
            f"## Completions (B sessions each asking for a greedy {cfg['completion_chars']}-character completion, "
            "reading it to the end, asking again)",
            "",
            "| B | peer | generated chars/s | completion p50 ms | completion p99 ms | first char p50 ms | starved "
            "| errors | vs model ceiling |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        bs = sorted({int(b) for p in cs.values() for b in p})
        for b in bs:
            ceil_cps = cc.get(str(b), {}).get("chars_per_s")
            for peer in PEER_ORDER:
                r = (cs.get(peer) or {}).get(str(b))
                if r is None:
                    continue
                lk = r["latency_ms_by_kind"]
                lines.append(
                    f"| {b} | {peer} | {r['chars_per_s']:.0f} | {_f(lk.get('completion', {}).get('p50'), '{:.1f}')} | "
                    f"{_f(lk.get('completion', {}).get('p99'), '{:.1f}')} | "
                    f"{_f(lk.get('first_char', {}).get('p50'), '{:.2f}')} | {r['sessions_starved']} | {r['errors']} | "
                    f"{_ratio(r['chars_per_s'], ceil_cps)} |"
                )
            if ceil_cps:
                lines.append(
                    f"| {b} | model ceiling (in-process, {cc[str(b)]['kernel']}) | {ceil_cps:.0f} | "
                    f"{cc[str(b)]['decode_s'] * 1e3:.1f} | | | | | 1.00× |"
                )
    mem = res.get("memory")
    if mem:
        lines += [
            "",
            "## Memory per idle session (cellserve server RSS, sessions opened with OpenSession and left idle)",
            "",
            f"Baseline RSS (server started, one session opened and closed): {mem['baseline_rss_bytes'] / 2**20:.0f} MiB. "
            f"Raw state per session: {mem['raw_state_bytes_per_session']} bytes (layers × hidden × (h, c) × fp32).",
            "",
            "| sessions | RSS MiB | RSS growth MiB | RSS per session KiB | raw state KiB | ratio | open failures |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in mem["points"]:
            lines.append(
                f"| {p['sessions']} | {p['rss_bytes'] / 2**20:.0f} | {p['rss_delta_bytes'] / 2**20:.0f} | "
                f"{p['rss_per_session_bytes'] / 1024:.2f} | {p['raw_state_bytes'] / 1024:.2f} | "
                f"{p['overhead_ratio']:.2f}× | {p['open_failures']} |"
            )
    lines += _scaling_section(res.get("scaling"))
    lines += _speculation_section(res.get("speculation"))
    lines += ["", "Plots: ![throughput](throughput.png) ![latency](latency.png)", ""]
    return "\n".join(lines)


def _scaling_section(sc: dict[str, Any] | None) -> list[str]:
    if not sc:
        return []
    lines = [
        "",
        "## Multi-process: CPU per keystroke by process kind (closed loop, same load for every layout)",
        "",
        "cellserve-Ff: one engine core and F gRPC frontends on one port; echo-Pp: P echo processes on one port.",
        "",
        "| layout | N | keystrokes/s | p50 ms | p99 ms | frontend ms | core ms | supervisor ms | echo ms | errors "
        "| starved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_n in sc["runs"].items():
        for n, r in by_n.items():
            cpu, lat = r.get("cpu_ms_per_keystroke") or {}, r["latency_ms"]
            lines.append(
                f"| {name} | {n} | {r['throughput_rps']:.0f} | {_f(lat.get('p50'), '{:.2f}')} | "
                f"{_f(lat.get('p99'), '{:.2f}')} | "
                + " | ".join(_f(cpu.get(k), "{:.3f}") for k in ("frontend", "core", "supervisor", "echo"))
                + f" | {r['errors']} | {r['sessions_starved']} |"
            )
    cap = sc.get("core_capacity")
    if cap:
        lines.append(
            f"| core alone at capacity ({_f(cap.get('rows_per_step'), '{:.0f}')} rows per step, "
            f"{cap['cores']:.2f} cores) | {cap['sessions']} | {cap['keystrokes_per_s']:.0f} | | | | "
            f"{_f(cap.get('cpu_ms_per_keystroke'), '{:.3f}')} | | | | |"
        )
    for n, ms in (sc.get("ceiling_ms_per_row") or {}).items():
        lines.append(f"| model ceiling (in-process step per row) | {n} | | | | | {ms:.3f} | | | | |")
    model = sc.get("model")
    if model:
        cores = list(model["keystrokes_per_s"])
        frontends = sorted({f for row in model["keystrokes_per_s"].values() for f in row}, key=int)
        head = ["| C \\ F | " + " | ".join(frontends) + " |", "|---|" + "---|" * len(frontends)]
        lines += [
            "",
            f"### Scaling model: predicted keystrokes/s for F frontends on C cores (N={model['sessions']})",
            "",
            f"From this run's figures: a frontend spends f = {model['frontend_ms']:.3f} ms CPU per keystroke, the core "
            f"k = {model['core_ms']:.3f} ms ({model.get('core_from', 'the core in the frontends run')}: where "
            "1 / k binds the core is the bottleneck and its batches full; in the layouts above it steps smaller "
            "ones, each keystroke costing more). Each process uses at most one core, so "
            "X(F, C) = min(F / f, 1 / k, C / (f + k)), with the load generator on other machines. "
            "A machine whose load generator shares its 2 cores cannot show scaling: read the model, not "
            "the measured throughput, there.",
            "",
            *head,
        ]
        for c in cores:
            row = model["keystrokes_per_s"][c]
            lines.append(f"| {c} | " + " | ".join(_f(row.get(f)) for f in frontends) + " |")
        several = model.get("with_cores")
        if several:
            lines += [
                "",
                "With several core processes (`--cores K`), X(F, K, C) = min(F / f, K / k, C / (f + k)); each "
                "cell: the predicted keystrokes/s with the fewest K that keep up with F frontends, F + K <= C "
                "(the shared admission ledger's lock not counted: docs/design-notes.md).",
                "",
                *head,
            ]
            for c in cores:
                cells = several.get(c, {})
                lines.append(
                    f"| {c} | "
                    + " | ".join(f"{_f(cells[f][0])} (K={cells[f][1]:.0f})" if f in cells else "" for f in frontends)
                    + " |"
                )
    return lines


def plots(res: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = res["keystrokes_closed"]
    ceil = (res.get("ceiling") or {}).get("keystrokes", {})
    title = f"{res['meta']['model']} — {res['meta']['config']['device']}, {res['meta']['date_utc']}"
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for peer in PEER_ORDER:
        pts = sorted((int(n), r["throughput_rps"]) for n, r in (ks.get(peer) or {}).items())
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=peer, color=COLORS[peer])
    if ceil:
        pts = sorted((int(n), c["throughput_rps"]) for n, c in ceil.items())
        ax.plot(
            *zip(*pts, strict=True), marker="s", ls="--", label="model ceiling (in-process)", color=COLORS["ceiling"]
        )
    ax.set(xscale="log", yscale="log", xlabel="concurrent sessions (closed loop)", ylabel="keystrokes/s")
    ax.set_title("Throughput vs sessions\n" + title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(out / "throughput.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for peer in PEER_ORDER:
        lat_pts: list[tuple[int, float, float]] = sorted(
            (int(n), r["latency_ms"].get("p50"), r["latency_ms"].get("p99"))
            for n, r in (ks.get(peer) or {}).items()
            if r["latency_ms"]
        )
        if lat_pts:
            ns, p50, p99 = zip(*lat_pts, strict=True)
            ax.plot(ns, p50, marker="o", label=f"{peer} p50", color=COLORS[peer])
            ax.plot(ns, p99, marker="^", ls=":", label=f"{peer} p99", color=COLORS[peer])
    ax.set(xscale="log", yscale="log", xlabel="concurrent sessions (closed loop)", ylabel="keystroke latency, ms")
    ax.set_title("Latency vs sessions\n" + title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "latency.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_report(res: dict[str, Any], out: Path, *, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    paths[1].write_text(markdown(res))
    if with_plots and res["keystrokes_closed"]:
        paths += plots(res, out)
    return paths


def _speculation_section(sp: dict[str, Any] | None) -> list[str]:
    """The human-paced typist with speculation on and off, and the closed loop beside it."""
    if not sp:
        return []
    w = sp["on"]["workload"]
    lines = [
        "",
        f"## Speculation: one session types {w['keystrokes']} keystrokes per text at {w['rate']:g}/s "
        f"(gaps +-{w['jitter']:.0%}); closed loop beside it",
        "",
        "| speculation | text | hit rate | hits | misses | unguessed | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("on", "off", "echo"):
        if mode not in sp:
            continue
        for text in ("python", "prose"):
            r = sp[mode][text]
            c, lat = r["counts"], r["latency_ms"]
            lines.append(
                f"| {mode} | {text} | {_f(r['hit_rate'], '{:.1%}')} | {c['hit']:.0f} | {c['miss']:.0f} | "
                f"{c['unguessed']:.0f} | {_f(lat.get('p50'), '{:.2f}')} | {_f(lat.get('p99'), '{:.2f}')} |"
            )
    lines += ["", "(echo: the same typist against the echo peer, the transport alone at this pace.)"]
    lines += ["", "| speculation | N | keystrokes/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for mode in ("on", "off"):
        for n, r in sp[mode]["closed"].items():
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {mode} | {n} | {r['throughput_rps']:.0f} | {_f(lat.get('p50'), '{:.2f}')} | "
                f"{_f(lat.get('p99'), '{:.2f}')} |"
            )
    return lines
