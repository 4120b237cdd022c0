"""The figures of a game day as text for people."""


def _statuses(failed):
    return ", ".join(f"{label}: {n:,}" for label, n in failed.items()) or "none"


def table(result):
    """Return the human report of a run."""
    setup, machine = result["setup"], result["machine"]
    lines = [f"game day, {result['date']}: {result['command']}"]
    lines.append(
        f"machine   {machine['cpus']} CPUs, {machine['cpu_model']}; Linux {machine['kernel']}; "
        f"Python {machine['python']}; load average {machine['loadavg_before'][0]:.2f} before, "
        f"{machine['loadavg_after'][0]:.2f} after"
    )
    lines.append(
        f"fleet     Redis Cluster {setup['redis']} (3 masters + 3 replicas, cluster-node-timeout "
        f"{setup['cluster_node_timeout_ms']} ms); 2 instances × {setup['workers']} workers × "
        f"{setup['threads']} threads behind HAProxy {setup['haproxy']} (round robin, /readyz every 0.5 s)"
    )
    lines.append(
        f"players   {setup['players']:,} on {setup['users']:,} accounts ({setup['players_per_user']} per "
        f"account, limit {setup['limit']}); session TTL {setup['session_ttl_s']} s, a heartbeat every "
        f"{setup['heartbeat_interval_s']:g} s; plays of ~{setup['mean_play_s']:g} s, "
        f"{setup['crash_share']:.0%} end in a crash"
    )
    lines.append(
        f"duration  {result['duration_s']:g} s ({result['active_s']:g} s active, then "
        f"{result['settle_s']:g} s of heartbeats only, for crashed sessions to expire)"
    )

    lines += ["", "faults (t = seconds since the players started)"]
    for fault in result["faults"]:
        when = (
            f"t={fault['began_s']:6.1f} → {fault['ended_s']:6.1f} s"
            if fault["began_s"] is not None
            else "did not happen"
        )
        beats = fault["heartbeats"]
        lines.append(
            f"  {fault['name']:<28} {when}  {_fault_summary(fault)}"
            + ("" if fault["happened"] else f"  FAILED: {fault['error']}")
        )
        lines.append(
            f"  {'':<28} heartbeats in the window: {beats['sent']:,} sent, {beats['ok']:,} ok, failed: "
            f"{_statuses(beats['failed'])}; p99 {beats['p99_ms']:.0f} ms, max {beats['max_ms']:.0f} ms"
        )
    for change in result["haproxy"]["transitions"]:
        lines.append(f"  HAProxy: instance {change['server']} {change['status']} at t={change['at_s']:.1f} s")

    for server, counts in result["haproxy"]["servers"].items():
        lines.append(
            f"  HAProxy: instance {server} took {counts['sessions']:,} requests; "
            f"retried {counts['retries']}, redispatched {counts['redispatches']}; "
            f"errors: {counts['connect_errors']} connect, "
            f"{counts['response_errors']} response; {counts['answers_5xx']:,} answers 5xx (503 from Redis)"
        )

    lines += ["", "requests        sent        ok  failed (by status)"]
    for op, figures in result["requests"].items():
        refused = (
            f"  (403 at the limit: {figures['refused_at_limit']:,}, not failures)" if op == "start" else ""
        )
        lines.append(
            f"  {op:<10} {figures['sent']:>9,} {figures['ok']:>9,}  {_statuses(figures['failed'])}{refused}"
        )
    lines.append(
        "  heartbeats by window (a request in a fault's window or 1.5 s after it counts there; so does a "
        "failure whose session's run of failures began there):"
    )
    for name, figures in result["heartbeat_windows"].items():
        lines.append(
            f"    {name:<28} {figures['sent']:>8,} sent {figures['ok']:>8,} ok  failed: "
            f"{_statuses(figures['failed'])}  (p50 {figures['p50_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.0f} ms)"
        )

    sessions = result["sessions"]
    lines += ["", "sessions"]
    lines.append(
        f"  admitted {sessions['admitted']:,}; refused at the limit {sessions['refused_at_limit']:,}; "
        f"stopped {sessions['stopped']:,}; crashed {sessions['crashed']:,}; "
        f"stops given up {sessions['stops_abandoned']}"
    )
    lines.append(
        f"  lost (a heartbeat answered 410 or 401): {sessions['lost_total']:,} "
        f"({_statuses(sessions['lost'])}); gone at their stop: {_statuses(sessions['gone_at_stop'])}"
    )
    lines.append(
        f"  resumed (Redis had lost them): {sessions['resumed_metrics']:,} by /metrics, "
        f"{sessions['resumed_logged']:,} in the logs; "
        f"store errors counted: {sessions['store_errors_metrics']:,}"
    )

    over = result["over_admissions"]
    lines += ["", f"over-admissions: {over['total']} (must be 0)"]
    lines.append(
        f"  Redis, sampled: {over['redis_samples']} users over the limit in {over['samples']} samples "
        f"({over['samples_incomplete']} missed a shard); most live sessions of one user "
        f"{over['max_live_per_user_sampled']}; peak live sessions {over['peak_live_sampled']:,}"
    )
    lines.append(f"  Redis, at the end: {over['redis_end']} users over the limit")
    lines.append(
        f"  players' view: {over['players_view']} instants where a user certainly held more than the limit; "
        f"most sessions one user certainly held at once: {over['max_held_at_once']}"
    )
    redis = result["redis"]
    lines += [
        "",
        f"Redis holds exactly the live sessions: {'yes' if redis['matches'] else 'NO'} "
        f"({redis['believed_live']:,} believed live by players, {redis['redis_live']:,} live in Redis; "
        f"{len(redis['missing_from_redis'])} missing, {len(redis['not_believed_by_any_player'])} unknown to "
        f"players, {len(redis['different'])} different; {redis['unconfirmed']} left out as unconfirmed)",
    ]
    kids = result["tokens"]["kids"]
    lines.append(
        "tokens: " + ", ".join(f"{kid[:8]}… {n:,}" for kid, n in kids.items()) + " (answers by signing key)"
    )
    lines += ["", "checks"]
    lines += [f"  {'ok  ' if c['ok'] else 'FAIL'}  {c['name']}" for c in result["checks"]]
    return "\n".join(lines)


def _fault_summary(fault):
    d = fault["details"]
    name = fault["name"]
    if name == "key rotation" and "new_kid" in d:
        forced = " (--force)" if d.get("forced") else ""
        return (
            f"{d['old_kid'][:8]}… → {d['new_kid'][:8]}…{forced}, switch at t={d['switch']:.1f} s; answers "
            f"carried the new key from t={d['new_kid_first_answer_s']} s, the old until "
            f"t={d['old_kid_last_answer_s']} s"
        )
    if name == "key prune" and "retired_kid" in d:
        return f"{d['retired_kid'][:8]}… retired; gone from both JWKS after {d['jwks_without_it_after_s']} s"
    if name.startswith("instance restart") and "exit_status" in d:
        return (
            f"instance {d['instance']} exited {d['exit_status']} after {d['exited_after_s']} s, marked down "
            f"at {d['down_after_s']} s, new one ready at {d['ready_after_s']} s"
        )
    if name == "Redis failover" and "promoted_after_s" in d:
        how = "SIGKILL" if d["mode"] == "kill" else "CLUSTER FAILOVER"
        rejoined = (
            f", old master back as replica at {d['rejoined_after_s']} s" if "rejoined_after_s" in d else ""
        )
        return (
            f"{how} master :{d['master']}, replica :{d['replica']} promoted after "
            f"{d['promoted_after_s']} s{rejoined}"
        )
    if name == "Redis hang" and "master" in d:
        kept = "kept its role" if d.get("still_master") else "LOST its role (a failover followed)"
        return f"SIGSTOP master :{d['master']} for {d['seconds']:g} s, SIGCONT; it {kept}"
    return ""
