"""The game day's short form end to end (`scripts/gameday --short`), and the audit's reasoning on its own.

The short form starts a Redis Cluster, two instances and HAProxy, drives 200 players for 50 s through a
key rotation, a SIGTERM restart, a failover, a 2 s hang and a prune; it must find no over-admission and
Redis holding exactly the sessions the players believe live. Run with -s to see its report."""

import json
import pathlib
import shutil
import subprocess
import time

import pytest

from api.store import user_key

# `gameday` is a tool of this repository, not part of the installed package.
from gameday import audit
from gameday.faults import Fault
from gameday.players import Confirmation, Record
from gameday.report import table
from gameday.run import blamed_windows

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAULTS = ["key rotation", "instance restart (SIGTERM)", "Redis failover", "Redis hang", "key prune"]


# --- the audit, on made-up answers ----------------------------------------------------------------


def confirmation(sid, sent, received, kind="beat", rid=None):
    return Confirmation(sid, sent, received, kind, rid or f"{sid}@{sent}")


def test_players_view_finds_a_user_certainly_over_the_limit():
    # Two sessions confirmed live over [1.1, 2.0] and [1.2, 2.1]; a third over [1.5, 2.5]: three at 1.5.
    answers = {
        "ann": [
            confirmation("a", 1.0, 1.1, "start"),
            confirmation("a", 2.0, 2.05),
            confirmation("b", 1.1, 1.2, "start"),
            confirmation("b", 2.1, 2.15),
            confirmation("c", 1.4, 1.5, "start"),
            confirmation("c", 2.5, 2.55),
        ]
    }
    violations, most = audit.proven_overlaps(answers, set(), limit=2)
    assert most == 3
    assert [(at, user, sids) for at, user, sids in violations] == [(1.5, "ann", ["a", "b", "c"])]
    assert audit.proven_overlaps(answers, set(), limit=3) == ([], 3)


def test_players_view_proves_nothing_across_a_resumption_or_between_sessions_one_after_another():
    answers = {
        "bob": [
            confirmation("a", 1.0, 1.1, "start"),
            confirmation("a", 2.0, 2.05, rid="resumed-one"),  # Redis had lost it: it re-checked the limit
            confirmation("b", 1.1, 1.2, "start"),
            confirmation("b", 2.1, 2.15),
            confirmation("c", 1.4, 1.5, "start"),
            confirmation("c", 2.5, 2.55),
            confirmation("d", 2.6, 2.7, "start"),  # proven from 2.7, after the others' proofs end
            confirmation("d", 3.0, 3.05),
        ]
    }
    violations, most = audit.proven_overlaps(answers, {"resumed-one"}, limit=2)
    assert violations == [] and most == 2


def test_compare_names_sessions_missing_from_redis_unknown_ones_and_leaves_out_unconfirmed():
    believed = {
        "s1": ("ann", "tv", "film", 10.0),
        "s2": ("ann", "phone", "film", 10.0),
        "s3": ("bob", "tv", "news", 2.0),  # last confirmed long ago: may have expired on its own
    }
    entries = {
        "s1": audit.Entry(user_key("ann"), "tv", "film", 0),
        "s4": audit.Entry(user_key("bob"), "tv", "news", 0),
        "s3": audit.Entry(user_key("bob"), "tv", "news", 0),
    }
    outcome = audit.compare(believed, entries, confirmed_since=5.0)
    assert outcome["missing_from_redis"] == ["s2"]
    assert outcome["not_believed_by_any_player"] == ["s4"]
    assert outcome["unconfirmed"] == 1 and not outcome["matches"]
    del believed["s2"], entries["s4"]
    assert audit.compare(believed, entries, confirmed_since=5.0)["matches"]


def test_a_failure_streak_counts_in_the_window_it_began_in():
    failover = Fault("Redis failover", 0, began=10.0, ended=14.0)

    def beat(sid, at, label):
        return Record("heartbeat", at, at + 0.01, label, f"{sid}@{at}", sid, "a")

    beats = [
        beat("x", 9.0, "200"),
        beat("x", 11.0, "503"),
        beat("x", 13.0, "503"),
        beat("x", 17.0, "410 expired"),  # after the window and its grace, but its streak began inside
        beat("y", 17.5, "503"),  # a streak of its own, outside every window
    ]
    assert blamed_windows(beats, [failover]) == {
        "x@9.0": "steady",
        "x@11.0": "Redis failover",
        "x@13.0": "Redis failover",
        "x@17.0": "Redis failover",
        "y@17.5": "steady",
    }


def test_resumptions_are_read_from_the_json_log_lines(tmp_path):
    log = tmp_path / "service.log"
    log.write_text(
        "[INFO] Started worker-1\n"
        '{"level": "info", "message": "resumed session AbC of user u1", "request_id": "r.1.2"}\n'
        '{"level": "info", "message": "evicted session XyZ of user u2", "request_id": "r.1.3"}\n'
    )
    assert audit.resumed_from_logs([log]) == {"r.1.2": "AbC"}


# --- the short form, end to end ---------------------------------------------------------------------


@pytest.mark.http
@pytest.mark.redis
def test_the_short_game_day_admits_no_one_over_the_limit_and_redis_holds_exactly_the_live_sessions():
    for tool in ("redis-server", "redis-cli", "haproxy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run scripts/test, which installs it")
    began = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "gameday"), "--short", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    took = time.monotonic() - began
    assert done.stdout, done.stderr
    result = json.loads(done.stdout)
    print(f"\n[game day, short form: {took:.0f} s wall]\n{table(result)}")
    assert done.returncode == 0, (done.stderr[-3000:], result["checks"])
    assert result["ok"]

    over = result["over_admissions"]
    assert over["total"] == over["redis_samples"] == over["redis_end"] == over["players_view"] == 0
    assert over["samples"] >= 20  # Redis was read through the run, not once
    assert over["max_held_at_once"] == result["setup"]["limit"]  # the limit was reached, and held
    redis = result["redis"]
    assert redis["matches"] and redis["believed_live"] > 0 and redis["unconfirmed"] == 0

    faults = {fault["name"]: fault for fault in result["faults"]}
    assert list(faults) == FAULTS
    previous_end = 0.0
    for name in FAULTS:
        fault = faults[name]
        assert fault["happened"], (name, fault["error"])
        assert previous_end < fault["began_s"] < fault["ended_s"], (name, fault)
        previous_end = fault["ended_s"]
        beats = fault["heartbeats"]
        assert beats["sent"] > 0 and beats["ok"] > 0, (name, beats)  # heartbeats ran in every window

    rotation, prune = faults["key rotation"]["details"], faults["key prune"]["details"]
    assert rotation["old_kid"] != rotation["new_kid"]
    kids = result["tokens"]["kids"]
    assert kids.get(rotation["old_kid"], 0) > 0 and kids.get(rotation["new_kid"], 0) > 0
    assert prune["retired_kid"] == rotation["old_kid"]
    # Every instance switched at the switch time (Redis time): no new-key token before it, no old one after.
    assert rotation["switch"] - 0.5 <= rotation["new_kid_first_answer_s"] <= rotation["switch"] + 2
    assert rotation["switch"] - 0.5 <= rotation["old_kid_last_answer_s"] <= rotation["switch"] + 2
    assert result["requests"]["heartbeat"]["failed"].get("401", 0) == 0

    restart = faults["instance restart (SIGTERM)"]
    assert restart["details"]["exit_status"] == 0
    instance = restart["details"]["instance"]
    changes = [(c["at_s"], c["status"]) for c in result["haproxy"]["transitions"] if c["server"] == instance]
    assert any(status == "DOWN" and restart["began_s"] <= at <= restart["ended_s"] for at, status in changes)
    assert changes and changes[-1][1] == "UP"

    failover, hang = faults["Redis failover"], faults["Redis hang"]
    assert failover["details"]["promoted_after_s"] > 0
    assert hang["details"]["still_master"]
    for fault in (failover, hang):  # the players noticed both: their shard answered 503 meanwhile
        assert fault["heartbeats"]["failed"].get("503", 0) > 0, fault["heartbeats"]
    print(f"[game day] short form took {took:.0f} s (target < 90 s)")
