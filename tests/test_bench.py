"""The benchmark's parts that need no timing: wrk output, Redis deltas, the memory models, the report."""

import asyncio
import os
import shutil

import pytest

# `bench` is a tool of this repository, not part of the installed package.
from bench import cli, memory, ourcode, peer, report, roundtrips, wrk
from bench.processes import BenchError, group_cpu_seconds, pinned, server_command
from bench.sessions import SessionPool, read_lines

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8000
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.30ms    2.07ms  34.39ms   65.87%
    Req/Sec     1.20k   152.11     1.45k    63.33%
  Latency Distribution
     50%   12.60ms
     75%   15.03ms
     90%   15.94ms
     99%   17.91ms
  12000 requests in 10.00s, 2.30MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   1200.00
Transfer/sec:    784.34KB
bench-result {"requests": 12000, "duration_us": 10000000, "bytes": 2409898, "p50_us": 12605, \
"p90_us": 15944, "p99_us": 17913, "max_us": 34393, "socket_errors": {"connect": 0, "read": 0, \
"write": 0, "timeout": 0}, "statuses": {"200": 11997, "410": 2, "503": 1}, "reused": 0}
"""


def test_parse_output_reads_the_result_line():
    result = wrk.parse_output(WRK_OUTPUT)
    assert result.requests == 12000
    assert result.rps == pytest.approx(1200.0)
    assert result.p50_ms == pytest.approx(12.605)
    assert result.p99_ms == pytest.approx(17.913)
    assert result.statuses == {200: 11997, 410: 2, 503: 1}
    assert result.non_2xx == 3
    assert result.as_dict()["statuses"] == {"200": 11997, "410": 2, "503": 1}


def test_parse_output_without_result_line_says_what_wrk_printed():
    with pytest.raises(BenchError, match="unable to connect"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_every_op_script_starts_with_the_shared_part():
    for op in wrk.OPS:
        text = wrk.script_text(op)
        assert text.startswith((wrk.LUA_DIR / "common.lua").read_text())
        assert "function request()" in text
    with pytest.raises(ValueError):
        wrk.script_text("nap")


def test_per_request_counts_round_trips_without_its_own_info():
    before = roundtrips.Snapshot(reads=100, calls={"evalsha": 10, "info": 3, "hget": 10})
    after = roundtrips.Snapshot(reads=301, calls={"evalsha": 210, "info": 4, "hget": 210, "hset": 200})
    figures = roundtrips.per_request(before, after, requests=200)
    assert figures["round_trips"] == 1.0
    assert figures["scripts"] == 1.0
    assert figures["commands"] == {"evalsha": 1.0, "hget": 1.0, "hset": 1.0}
    assert roundtrips.per_request(before, after, requests=0)["round_trips"] == 0.0


@pytest.mark.redis
def test_snapshot_reads_a_real_redis(real_redis):
    before = roundtrips.snapshot(real_redis)
    real_redis.eval("return redis.call('PING')", 0)
    after = roundtrips.snapshot(real_redis)
    figures = roundtrips.per_request(before, after, requests=1)
    assert figures["scripts"] == 1.0
    assert figures["commands"]["ping"] == 1.0
    assert figures["round_trips"] == 1.0


@pytest.mark.redis
@pytest.mark.parametrize("model", ["seed", "store"])
def test_memory_models_grow_redis(real_redis, model):
    sessions = 300
    if model == "seed":
        load = memory.load_seed_model
    else:

        def load(client, n, first=0):
            memory.load_store_model(client, n, first)

    assert memory.bytes_per_session(real_redis, load, sessions) > 0
    assert real_redis.dbsize() == sessions + 1  # one per user, the uncounted first one included
    if model == "seed":
        assert real_redis.get("user7_1") == b"laptop_seattleSeahawks"


def test_pinned_and_server_commands():
    assert pinned(["wrk", "-t1"], ()) == ["wrk", "-t1"]
    assert pinned(["wrk"], (3, 1)) == ["taskset", "--cpu-list", "1,3", "wrk"]
    command = server_command("gunicorn", "127.0.0.1:9", 1, 4)
    assert command[1:] == [
        "-m",
        "api.cli",
        "serve",
        "--bind",
        "127.0.0.1:9",
        "--workers",
        "1",
        "--threads",
        "4",
        "--server",
        "gunicorn",
    ]
    assert server_command("granian", "127.0.0.1:9", 1, 1)[-2:] == ["--server", "granian"]


def test_group_cpu_seconds_adds_up_the_group_only(tmp_path):
    def stat(pid, name, pgrp, utime, stime):
        (tmp_path / str(pid)).mkdir()
        fields = ["S", "1", str(pgrp), *["0"] * 8, str(utime), str(stime), "0", "0"]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) {' '.join(fields)}\n")

    stat(10, "python", 10, 100, 50)
    stat(11, "gunicorn: worker (a) b", 10, 200, 25)
    stat(12, "redis-server", 12, 999, 999)
    ticks = 100 + 50 + 200 + 25
    assert group_cpu_seconds(10, proc=tmp_path) == pytest.approx(ticks / os.sysconf("SC_CLK_TCK"))


def test_read_lines_skips_broken_lines():
    assert read_lines("a tok1\n\nbroken\nb tok2\n") == [("a", "tok1"), ("b", "tok2")]


def test_parse_args_pins_two_workers_to_one_core_by_default():
    options, counts, as_json = cli.parse_args([])
    assert options.pin and (options.workers, options.cores) == (2, 1) and not as_json and counts == ()
    assert not cli.parse_args(["--workers", "2", "--no-pin"])[0].pin
    assert cli.parse_args(["--cores", "4", "--json"])[0].cores == 4
    assert cli.parse_args(["--ops", "stop, heartbeat"])[0].ops == ("stop", "heartbeat")
    assert cli.parse_args(["--no-peer"])[0].peer_dir is None
    assert cli.parse_args(["--scaling", "1,2,8"])[1] == (1, 2, 8)
    for wrong in (["--ops", "start,nap"], ["--scaling", "0,2"], ["--cores", "0"]):
        with pytest.raises(SystemExit):
            cli.parse_args(wrong)


def test_peer_runs_only_where_it_can(tmp_path, monkeypatch):
    assert peer.unavailable(None) == "not asked for (--no-peer)"
    assert "no peer.mjs" in peer.unavailable(tmp_path)
    (tmp_path / "peer.mjs").write_text("")
    monkeypatch.setattr(peer.shutil, "which", lambda tool: None if tool == "node" else "/usr/bin/" + tool)
    assert peer.unavailable(tmp_path) == "node not installed"
    monkeypatch.setattr(peer.shutil, "which", lambda tool: None if tool == "npm" else "/usr/bin/" + tool)
    assert peer.unavailable(tmp_path) == "npm not installed"
    (tmp_path / "node_modules").mkdir()  # installed already: npm is not needed
    assert peer.unavailable(tmp_path) is None


def _result():
    op = {
        "rps": 900.0,
        "p50_ms": 1.0,
        "p99_ms": 4.0,
        "non_2xx": 0,
        "statuses": {"200": 9000},
        "reused": 0,
        "floor_ratio": 0.6,
        "server_cpu_us": 600.0,
        "server_sys_us": 150.0,
        "server_busy": 0.9,
        "redis": {"round_trips": 1.0, "scripts": 1.0, "commands": {}},
        "paced": {"rps": 450.0, "p50_ms": 0.5, "p99_ms": 6.0, "non_2xx": 0, "statuses": {}, "reused": 0},
    }
    return {
        "date": "2026-01-01 00:00 UTC",
        "machine": {
            "cpus": 2,
            "cpu_model": "Test CPU",
            "kernel": "6",
            "python": "3.11",
            "loadavg_before": [0.1, 0, 0],
            "loadavg_after": [0.2, 0, 0],
        },
        "setup": {
            "server": "gunicorn",
            "workers": 1,
            "threads": 1,
            "connections": 16,
            "duration_s": 10,
            "paced": 0.5,
            "server_cpus": [0],
            "load_cpus": [1],
            "wrk": "wrk 4",
        },
        "crypto": {"verify_us": 45.0, "sign_us": 19.0, "floor_per_s": 1500.0, "cpus": [0]},
        "ops": {"start": {**op, "rps": 1000.0}, "heartbeat": op},
        "peer": {**{k: v for k, v in op.items() if k != "paced"}, "rps": 700.0, "server_cpu_us": 1400.0},
        "memory": [
            {"sessions": 100, "seed_bytes_per_session": 148.0, "store_bytes_per_session": 140.0},
            {"sessions": 1000, "seed_bytes_per_session": 148.0, "store_bytes_per_session": 200.0},
        ],
    }


def test_targets_judge_what_the_run_measured():
    rows = {name: met for name, _, met in report.targets(_result())}
    assert rows["heartbeat ≥ 50 % of the crypto floor"]
    assert rows["start ≥ heartbeat (req/s)"]
    assert not rows["heartbeat ≥ 1.5 × the Node peer's, same core, same run"]  # 900 against 700
    assert not rows["heartbeat p99 ≤ 5 ms at 16 connections, paced"]
    assert rows["Redis bytes per session ≤ 1.3 × seed model at 100"]
    assert not rows["Redis bytes per session ≤ 1.3 × seed model at 1,000"]


def test_table_shows_every_op_and_the_floor():
    text = report.table(_result())
    assert "floor 1,500 /s" in text
    assert "heartbeat" in text and "60.0%" in text and "600" in text
    assert "148.0 B/session" in text
    assert "MISS" in text
    assert "peer (Node)" in text and " 1400 " in text and "25%" in text  # the kernel's share of 600 µs


def test_a_skipped_peer_says_why():
    result = {**_result(), "peer": {"skipped": "node not installed"}}
    assert "peer (Node): not run, node not installed." in report.table(result)
    assert not any("Node peer" in name for name, _, _ in report.targets(result))


def test_scaling_table_reports_per_worker_efficiency():
    def row(workers, rps):
        return {
            "workers": workers,
            "rps": rps,
            "efficiency": rps / (workers * 1000.0),
            "p99_ms": 3.0,
            "non_2xx": 0,
            "server_cpu_us": 800.0 * workers * 1000.0 / rps,
            "server_sys_us": 200.0,
            "server_busy": 0.9 * workers,
            "redis": {"cpu_us": 20.0, "round_trips": 0.3},
        }

    base = _result()
    result = {
        "date": base["date"],
        "machine": base["machine"],
        "setup": {"server": "granian", "threads": 8, "duration_s": 10, "connections_per_worker": 16},
        "crypto": base["crypto"],
        "scaling": [row(1, 1000.0), row(8, 7200.0)],
    }
    result["setup"].update(redis_cpus=[15], wrk="wrk 4")
    text = report.table(result)
    assert "90%" in text and "7,200" in text and "900" in text  # per worker
    rows = {name: met for name, _, met in report.targets(result)}
    assert rows["per-worker efficiency ≥ 85% at 8 workers"]


@pytest.mark.http
@pytest.mark.redis
def test_lua_scripts_start_heartbeat_and_stop_live_sessions(server, tmp_path):
    """Each script against the real server: starts feed the pool, heartbeats chain tokens, stops end them."""
    assert shutil.which("wrk"), "wrk is not installed; scripts/test installs it"
    pool = SessionPool(tmp_path, env={})
    started = wrk.run("start", server.url, ["t", pool.harvest_path("start")], tmp_path, 4, 1)
    pool.harvest("start")
    assert started.requests > 0 and started.non_2xx == 0
    assert len(pool) == started.requests

    sessions = pool.write("heartbeat", 0, min(len(pool), 50))
    beats = wrk.run("heartbeat", server.url, [sessions, 1], tmp_path, 4, 1)
    assert beats.requests > 0 and beats.statuses.keys() == {200} and beats.reused == 0

    sessions = pool.write("stop", 0, len(pool))
    stops = wrk.run("stop", server.url, [sessions, 1], tmp_path, 4, 1)
    assert stops.requests > 0 and stops.statuses.keys() == {204}
    # `reused` counts requests made, a few more than wrk completes
    assert stops.reused >= max(0, stops.requests - len(pool))


def test_ourcode_times_heartbeats_between_two_workers():
    """Every heartbeat of the in-process measurement is answered, its token from the worker before."""
    figures = asyncio.run(ourcode.measure(rounds=1, calls=6))
    assert set(figures) == {"same worker", "other worker"} and all(us > 0 for us in figures.values())
