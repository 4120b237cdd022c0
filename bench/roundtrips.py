"""Redis work per request, from the difference of two INFO snapshots around a run.

Round trips are the read events Redis processed (`total_reads_processed`): one per request a
client sends and waits for, however many commands it pipelines or a script runs. Commandstats
also counts the commands that scripts call, so it tells what each request costs inside Redis.
"""

import dataclasses

SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
OWN_COMMANDS = frozenset({"info"})  # the snapshots themselves


@dataclasses.dataclass(frozen=True)
class Snapshot:
    reads: int
    calls: dict  # command -> calls
    cpu_s: float = 0.0  # Redis's user + system CPU time, all its threads


def snapshot(client):
    """Take one INFO of stats, commandstats and cpu (itself one read)."""
    info = client.info("stats", "commandstats", "cpu")
    calls = {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in info.items()
        if name.startswith("cmdstat_")
    }
    cpu_s = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return Snapshot(int(info["total_reads_processed"]), calls, cpu_s)


def per_request(before, after, requests):
    """Return round trips, script calls, Redis CPU µs and every command per request between two snapshots."""
    if requests <= 0:
        return {"round_trips": 0.0, "scripts": 0.0, "cpu_us": 0.0, "commands": {}}
    commands = {}
    for name, calls in after.calls.items():
        delta = calls - before.calls.get(name, 0)
        if delta and name not in OWN_COMMANDS:
            commands[name] = delta / requests
    reads = after.reads - before.reads - 1  # the read of the `after` INFO
    return {
        "round_trips": max(0, reads) / requests,
        "scripts": sum(share for name, share in commands.items() if name in SCRIPT_COMMANDS),
        "cpu_us": (after.cpu_s - before.cpu_s) * 1e6 / requests,
        "commands": dict(sorted(commands.items())),
    }
