"""The figures of a run as a table for people, with the product's targets checked."""

from . import flood

FLOOR_SHARE_TARGET = 0.5
PEER_TARGET = 1.5  # × the Node peer's heartbeat rate on the same core (issue 13)
EFFICIENCY_TARGET = 0.85  # per-worker efficiency at 8 workers, one core each (issue 13)
P99_TARGET_MS = 5.0
MEMORY_TARGET = 1.3  # × the seed model's bytes per session (issue 9)


def targets(result):
    """Return the PRODUCT.md performance targets this run can judge: (name, value text, met)."""
    ops = result.get("ops", {})
    rows = []
    if "heartbeat" in ops:
        share = ops["heartbeat"]["floor_ratio"]
        rows.append(("heartbeat ≥ 50 % of the crypto floor", f"{share:.1%}", share >= FLOOR_SHARE_TARGET))
    peer_rps = result.get("peer", {}).get("rps")
    if "heartbeat" in ops and peer_rps:
        ratio = ops["heartbeat"]["rps"] / peer_rps
        name = f"heartbeat ≥ {PEER_TARGET:g} × the Node peer's, same core, same run"
        rows.append((name, f"{ratio:.2f} ×", ratio >= PEER_TARGET))
    for row in result.get("scaling", ()):
        if row["workers"] > 1 and row.get("efficiency") is not None:
            name = f"per-worker efficiency ≥ {EFFICIENCY_TARGET:.0%} at {row['workers']} workers"
            rows.append((name, f"{row['efficiency']:.0%}", row["efficiency"] >= EFFICIENCY_TARGET))
    if "start" in ops and "heartbeat" in ops and ops["heartbeat"]["rps"]:
        ratio = ops["start"]["rps"] / ops["heartbeat"]["rps"]
        rows.append(("start ≥ heartbeat (req/s)", f"{ratio:.2f} ×", ratio >= 1))
    for op, figures in ops.items():
        if "paced" in figures:
            p99 = figures["paced"]["p99_ms"]
            name = f"{op} p99 ≤ 5 ms at {result['setup']['connections']} connections, paced"
            rows.append((name, f"{p99:.2f} ms", p99 <= P99_TARGET_MS))
    for memory in result.get("memory", ()):
        store, seed = memory["store_bytes_per_session"], memory["seed_bytes_per_session"]
        name = f"Redis bytes per session ≤ {MEMORY_TARGET:g} × seed model at {memory['sessions']:,}"
        rows.append((name, f"{store / seed:.2f} ×", store <= MEMORY_TARGET * seed))
    return rows


def table(result):
    """Return the human report of a run."""
    setup = result["setup"]
    lines = _heading(result)
    if "scaling" in result:
        return "\n".join(lines + _scaling_table(result) + _targets(result))
    server_on = f"on CPU {_cpus(setup['server_cpus'])}" if setup["server_cpus"] else "unpinned"
    load_on = f"on CPU {_cpus(setup['load_cpus'])}" if setup["load_cpus"] else "unpinned"
    lines.append(
        f"setup    {setup['server']}, {setup['workers']} worker(s) × {setup['threads']} thread(s) "
        f"{server_on}; "
        f"wrk -t1 -c{setup['connections']} -d{setup['duration_s']}s and redis-server {load_on}"
    )
    if "crypto" in result:
        crypto = result["crypto"]
        lines.append(
            f"crypto   ES256 verify {crypto['verify_us']:.1f} µs + sign {crypto['sign_us']:.1f} µs "
            f"{'on CPU ' + _cpus(crypto['cpus']) if crypto['cpus'] else 'unpinned'} "
            f"→ floor {crypto['floor_per_s']:,.0f} /s on {max(1, len(setup['server_cpus']))} server CPU(s)"
        )
    if result.get("ops"):
        lines += ["", *_ops_table(result["ops"], setup, result.get("peer", {}), result.get("crypto"))]
    for memory in result.get("memory", ()):
        store, seed = memory["store_bytes_per_session"], memory["seed_bytes_per_session"]
        lines += [
            "",
            f"Redis used_memory growth at {memory['sessions']:,} live sessions (one per user, short ids):",
            f"  seed model, one string key per slot  {seed:7.1f} B/session",
            f"  this service's store (admit script)  {store:7.1f} B/session  ({store / seed:.2f} × seed)",
        ]
    if "flood" in result:
        lines += ["", "one account's start/stop flood against the same churn spread over many accounts:"]
        lines += flood.report(result["flood"])
    return "\n".join(lines + _targets(result))


def _heading(result):
    machine = result["machine"]
    return [
        f"concurrency-service benchmark, {result['date']}: {result.get('command', 'scripts/bench')}",
        f"machine  {machine['cpus']} CPUs, {machine['cpu_model']}; Linux {machine['kernel']}; "
        f"Python {machine['python']}; redis-server {machine.get('redis', '?')}; {result['setup']['wrk']}",
        f"         load average {machine['loadavg_before'][0]:.2f} before, "
        f"{machine.get('loadavg_after', [float('nan')])[0]:.2f} after (other work here skews figures)",
    ]


def _targets(result):
    rows = targets(result)
    if not rows:
        return []
    width = max(len(name) for name, _, _ in rows)
    lines = ["", "targets (PRODUCT.md, issue 13)"]
    return lines + [f"  {'met ' if met else 'MISS'}  {name:<{width}}  {value}" for name, value, met in rows]


def _scaling_table(result):
    setup, crypto = result["setup"], result["crypto"]
    lines = [
        f"setup    {setup['server']}, N workers × {setup['threads']} thread(s), one CPU each; "
        f"redis-server on CPU {_cpus(setup['redis_cpus'])}; wrk on the CPUs between, "
        f"{setup['connections_per_worker']} connections per worker, {setup['duration_s']} s",
        f"crypto   ES256 verify {crypto['verify_us']:.1f} µs + sign {crypto['sign_us']:.1f} µs on one CPU "
        f"→ floor {crypto['floor_per_s']:,.0f} /s per core",
        "",
    ]
    header = ["workers", "req/s", "per worker", "efficiency", "of floor", "CPU µs/op", "kernel µs/op"]
    header += ["busy", "p99 ms", "non-2xx", "Redis µs/op", "RT/op"]
    rows = [header]
    for row in result["scaling"]:
        efficiency = row.get("efficiency")
        rows.append(
            [
                str(row["workers"]),
                f"{row['rps']:,.0f}",
                f"{row['rps'] / row['workers']:,.0f}",
                "-" if efficiency is None else f"{efficiency:.0%}",
                f"{row['rps'] / (row['workers'] * crypto['floor_per_s']):.1%}",
                f"{row['server_cpu_us']:.0f}",
                f"{row['server_sys_us']:.0f}",
                f"{row['server_busy']:.2f}",
                f"{row['p99_ms']:.2f}",
                str(row["non_2xx"]),
                f"{row['redis']['cpu_us']:.1f}",
                f"{row['redis']['round_trips']:.2f}",
            ]
        )
    lines += _aligned(rows)
    lines.append("efficiency: req/s ÷ (workers × req/s of one worker); busy: the server's cores kept busy.")
    return lines


def _aligned(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]


def _ops_table(ops, setup, peer=None, crypto=None):
    header = [
        "op",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-2xx",
        "of floor",
        "CPU µs/op",
        "kernel",
        "busy",
        "RT/op",
        "scripts/op",
    ]
    paced = any("paced" in figures for figures in ops.values())
    if paced:
        header += ["paced req/s", "paced p50", "paced p99", "paced non-2xx"]
    rows = [header]
    notes = []
    for op, figures in ops.items():
        row = [
            op,
            f"{figures['rps']:,.0f}",
            f"{figures['p50_ms']:.2f}",
            f"{figures['p99_ms']:.2f}",
            str(figures["non_2xx"]),
            f"{figures['floor_ratio']:.1%}",
            _number(figures.get("server_cpu_us"), "{:.0f}"),
            _share(figures.get("server_sys_us"), figures.get("server_cpu_us")),
            _number(figures.get("server_busy"), "{:.0%}"),
            f"{figures['redis']['round_trips']:.2f}",
            f"{figures['redis']['scripts']:.2f}",
        ]
        if paced:
            slow = figures.get("paced")
            if slow:
                row += [f"{slow['rps']:,.0f}", f"{slow['p50_ms']:.2f}", f"{slow['p99_ms']:.2f}"]
                row.append(str(slow["non_2xx"]))
            else:
                row += ["-"] * 4
        rows.append(row)
        for name, run in (("saturated", figures), ("paced", figures.get("paced"))):
            if run and run["non_2xx"]:
                notes.append(f"{op} ({name}): statuses {run['statuses']}")
            if run and run["reused"]:
                notes.append(f"{op} ({name}): {run['reused']} requests reused a session (the list ran out)")
    if peer and "rps" in peer:
        floor = f"{peer['rps'] / crypto['floor_per_s']:.1%}" if crypto else "-"
        rows.append(
            [
                "peer (Node)",
                f"{peer['rps']:,.0f}",
                f"{peer['p50_ms']:.2f}",
                f"{peer['p99_ms']:.2f}",
                str(peer["non_2xx"]),
                floor,
                _number(peer.get("server_cpu_us"), "{:.0f}"),
                _share(peer.get("server_sys_us"), peer.get("server_cpu_us")),
                _number(peer.get("server_busy"), "{:.0%}"),
                f"{peer['redis']['round_trips']:.2f}",
                f"{peer['redis']['scripts']:.2f}",
                *(["-"] * 4 if paced else []),
            ]
        )
    lines = _aligned(rows)
    lines.append("req/s and latency under saturation: every wrk connection always has a request out.")
    if paced:
        lines.append(f"paced: each connection pauses, for ~{setup['paced']:.0%} of the saturated rate.")
    lines.append(
        "CPU µs/op: the server's CPU time (all its processes) per request; kernel: the system-time share "
        "of it; busy: that time per second of run, in cores."
    )
    if peer and "rps" in peer:
        lines.append(
            "peer (Node): the same heartbeat on the seed's stack, same CPU, one fixed token, no cache."
        )
    elif peer and "skipped" in peer:
        lines.append(f"peer (Node): not run, {peer['skipped']}.")
    lines.append("RT/op: Redis round trips (read events) per request; scripts/op: EVALSHA, EVAL or FCALL.")
    return lines + notes


def _number(value, form):
    return "-" if value is None else form.format(value)


def _share(part, whole):
    return "-" if part is None or not whole else f"{part / whole:.0%}"


def _cpus(cpus):
    return ",".join(str(cpu) for cpu in cpus)
