"""Every documented status of every operation, provoked against the app; each answer matches the document."""

import functools
import json
import re
import time

import pytest
from contract import (
    ADMIN_SECRET,
    DOC,
    START,
    Api,
    at,
    check_component,
    check_response,
    check_session_token,
    deref,
    documented_statuses,
    operations,
    pointer,
    token_parts,
)
from cryptography.hazmat.primitives.asymmetric import ec

from api import lua
from api.store import _REFUSALS
from keys.keyring import Keyring
from keys.store import KeyStore


@pytest.fixture
def api(client, config, keyring, fake_redis, tmp_path):
    return Api(client, config, keyring, fake_redis, tmp_path)


# -- scenarios: each provokes one documented status of one operation --------------------------------

CASES = []


def provokes(method, path, status):
    """Register a scenario that must answer `status` to `method path`."""

    def register(scenario):
        name = f"{method} {path} {status} {scenario.__name__}"
        CASES.append(pytest.param(method, path, status, scenario, id=name))
        return scenario

    return register


def legacy_start(api, client=None, headers=None, **fields):
    return (client or api.client).simulate_post("/concurrency", json={**START, **fields}, headers=headers)


def v1_start(api, client=None, headers=None, **fields):
    return (client or api.client).simulate_post("/v1/sessions", json={**START, **fields}, headers=headers)


def fill_to_limit(api, start, client=None):
    """Start as many sessions as allowed on distinct devices; return their ids, in start order."""
    sids = []
    for i in range(api.config.max_streams):
        answer = start(api, client, deviceId=f"device-{i}")
        assert answer.status_code in (200, 201), answer.text
        sids.append(answer.json.get("sessionKey") or answer.json.get("sessionId"))
    return sids


def heartbeat_gone(api, sid, token, reason):
    """Heartbeat an ended session through /v1; assert it is gone for `reason`."""
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert (answer.status_code, answer.json.get("reason")) == (410, reason), answer.text
    return answer


# /concurrency: start


@provokes("post", "/concurrency", 200)
def legacy_start_initiates(api):
    answer = legacy_start(api)
    assert answer.json["status"] == "initiated"
    assert "degraded" not in check_session_token(answer.json)
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_again_updates_the_same_session(api):
    first = legacy_start(api).json
    answer = legacy_start(api, token=first["token"])
    assert (answer.json["status"], answer.json["sessionKey"]) == ("updated", first["sessionKey"])
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_with_a_user_token_and_no_user_id(api):
    client = api.with_user_tokens()
    body = {"deviceId": "tv", "streamId": "film"}
    answer = client.simulate_post("/concurrency", json=body, headers=api.bearer(api.user_token("zoe")))
    assert token_parts(answer.json["token"])[1]["sub"] == "zoe"
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_degraded_with_redis_down_in_open_mode(api):
    answer = api.store_down(on_store_error="open").simulate_post("/concurrency", json=START)
    assert answer.json["status"] == "initiated"
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_a_number_for_an_id(api):
    answer = legacy_start(api, userId=7)
    assert answer.json.get("field") == "userId"
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_no_body(api):
    return api.client.simulate_post("/concurrency")


@provokes("post", "/concurrency", 400)
def legacy_start_without_user_id_or_user_tokens(api):
    answer = api.client.simulate_post("/concurrency", json={"deviceId": "tv", "streamId": "film"})
    assert answer.json.get("field") == "userId"
    return answer


@provokes("post", "/concurrency", 401)
def legacy_start_without_the_required_user_token(api):
    answer = legacy_start(api, api.with_user_tokens())
    assert "user access token" in answer.json["message"]
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit(api):
    holders = fill_to_limit(api, legacy_start)
    answer = legacy_start(api, deviceId="one-too-many")
    assert answer.json["error"] == "limit_reached"
    assert (answer.json["limit"], answer.json["scope"]) == (api.config.max_streams, "account")
    assert answer.json["active"] == len(holders) and "sessions" not in answer.json  # anonymous: no keys
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit_by_a_trusted_caller(api):
    client, auth = api.with_callers(), api.caller()
    holders = fill_to_limit(api, functools.partial(legacy_start, headers=auth), client)
    answer = legacy_start(api, client, headers=auth, deviceId="one-too-many")
    assert {s["sessionKey"] for s in answer.json["sessions"]} == set(holders)
    assert all(abs(s["started"] - time.time()) < 60 for s in answer.json["sessions"])
    return answer


@provokes("post", "/concurrency", 401)
def legacy_start_with_a_wrong_caller_credential(api):
    answer = legacy_start(api, api.with_callers(), headers=api.caller(secret="wrong-" * 4))
    assert answer.json["error"] == "invalid_credentials"
    assert answer.headers["www-authenticate"].startswith("Basic ")
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit_of_the_user_tokens_plan(api):
    client = api.with_user_tokens(plan_limits={"basic": 1, "premium": 4})
    headers = api.bearer(api.user_token(plan="basic"))
    legacy_start(api, client, headers, deviceId="a")
    answer = legacy_start(api, client, headers, deviceId="b")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "account")
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_for_another_user_than_the_token(api):
    answer = legacy_start(api, api.with_user_tokens(), api.bearer(api.user_token("zoe")))
    assert (answer.json["error"], answer.json.get("field")) == ("forbidden", "userId")
    return answer


@provokes("post", "/concurrency", 413)
def legacy_start_with_a_huge_body(api):
    return legacy_start(api, userId="u" * (api.config.max_body_bytes + 1))


def with_content_type(content_type):
    """Return a scenario sending a valid body of the given `method path` as `content_type`."""

    def send(api, method, path, body):
        headers = {"Content-Type": content_type}
        answer = api.client.simulate_request(method.upper(), path, body=json.dumps(body), headers=headers)
        assert answer.json["error"] == "unsupported_media_type"
        return answer

    return send


@provokes("post", "/concurrency", 415)
def legacy_start_as_form_data(api):
    return with_content_type("application/x-www-form-urlencoded")(api, "post", "/concurrency", START)


@provokes("put", "/concurrency", 415)
def legacy_heartbeat_as_text(api):
    sid, token = api.start()
    return with_content_type("text/plain")(api, "put", "/concurrency", {"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 415)
def legacy_stop_as_text(api):
    sid, token = api.start()
    return with_content_type("text/plain")(api, "delete", "/concurrency", {"sessionKey": sid, "token": token})


@provokes("post", "/v1/sessions", 415)
def start_as_yaml(api):
    return with_content_type("application/yaml")(api, "post", "/v1/sessions", START)


@provokes("post", "/concurrency", 503)
def legacy_start_with_redis_down(api):
    return api.store_down().simulate_post("/concurrency", json=START)


# /concurrency: heartbeat


@provokes("put", "/concurrency", 200)
def legacy_heartbeat(api):
    started = legacy_start(api).json
    answer = api.client.simulate_put(
        "/concurrency", json={"sessionKey": started["sessionKey"], "token": started["token"]}
    )
    assert answer.json["token"] != started["token"]
    return answer


@provokes("put", "/concurrency", 200)
def legacy_heartbeat_of_a_degraded_session_with_redis_down(api):
    down = api.store_down(on_store_error="open")
    started = down.simulate_post("/concurrency", json=START).json
    answer = down.simulate_put(
        "/concurrency", json={"sessionKey": started["sessionKey"], "token": started["token"]}
    )
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("put", "/concurrency", 400)
def legacy_heartbeat_without_token(api):
    answer = api.client.simulate_put("/concurrency", json={"sessionKey": "abc"})
    assert answer.json.get("field") == "token"
    return answer


@provokes("put", "/concurrency", 401)
def legacy_heartbeat_with_a_bad_token(api):
    sid, _ = api.start()
    return api.client.simulate_put("/concurrency", json={"sessionKey": sid, "token": "not-a-jwt"})


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_stop(api):
    sid, token = api.start()
    body = {"sessionKey": sid, "token": token}
    assert api.client.simulate_delete("/concurrency", json=body).status_code == 204
    answer = api.client.simulate_put("/concurrency", json=body)
    assert answer.json["reason"] == "stopped"
    return answer


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_expiry(api):
    short = api.with_config(session_ttl_s=1, token_leeway_s=5)
    started = short.simulate_post("/concurrency", json=START).json
    time.sleep(1.1)  # past the session's expiry, within the token's leeway
    body = {"sessionKey": started["sessionKey"], "token": started["token"]}
    answer = short.simulate_put("/concurrency", json=body)
    assert answer.json["reason"] == "expired"
    assert short.simulate_put("/concurrency", json=body).status_code == 410, "a gone session came back"
    return answer


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_a_kick(api):
    sid, token = api.start()
    admin = api.admin()
    assert (
        admin.simulate_delete("/v1/users/ann/sessions", headers=api.bearer(ADMIN_SECRET)).status_code == 204
    )
    answer = api.client.simulate_put("/concurrency", json={"sessionKey": sid, "token": token})
    assert answer.json["reason"] == "kicked"
    return answer


@provokes("put", "/concurrency", 413)
def legacy_heartbeat_with_a_huge_body(api):
    return api.client.simulate_put(
        "/concurrency", json={"sessionKey": "abc", "token": "t" * (api.config.max_body_bytes + 1)}
    )


@provokes("put", "/concurrency", 503)
def legacy_heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put("/concurrency", json={"sessionKey": sid, "token": token})


# /concurrency: stop


@provokes("delete", "/concurrency", 204)
def legacy_stop(api):
    sid, token = api.start()
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 204)
def legacy_stop_twice(api):
    sid, token = api.start()
    api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 400)
def legacy_stop_with_an_unknown_field(api):
    answer = api.client.simulate_delete(
        "/concurrency", json={"sessionKey": "a", "token": "b", "userId": "ann"}
    )
    assert answer.json.get("field") == "userId"
    return answer


@provokes("delete", "/concurrency", 401)
def legacy_stop_with_the_token_of_another_session(api):
    _, token = api.start(deviceId="a")
    sid, _ = api.start(deviceId="b")
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 413)
def legacy_stop_with_a_huge_body(api):
    return api.client.simulate_delete(
        "/concurrency",
        body=b" " * (api.config.max_body_bytes + 1),
        headers={"Content-Type": "application/json"},
    )


@provokes("delete", "/concurrency", 503)
def legacy_stop_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


# /v1/sessions: start


@provokes("post", "/v1/sessions", 201)
def start_creates(api):
    answer = v1_start(api)
    assert answer.headers["location"] == f"/v1/sessions/{answer.json['sessionId']}"
    assert answer.json["expiresIn"] == api.config.session_ttl_s
    assert check_session_token(answer.json)["lim"] == api.config.max_streams
    return answer


@provokes("post", "/v1/sessions", 201)
def start_with_a_user_token_takes_its_limit(api):
    client = api.with_user_tokens()
    answer = v1_start(api, client, api.bearer(api.user_token(climit=5)))
    assert check_session_token(answer.json)["lim"] == 5
    return answer


@provokes("post", "/v1/sessions", 201)
def start_with_a_device_limit_puts_it_in_the_token(api):
    client = api.with_user_tokens(device_limit=2)
    answer = v1_start(api, client, api.bearer(api.user_token(dlimit=3)))
    assert (check_session_token(answer.json)["dlim"], check_session_token(answer.json)["lim"]) == (3, 3)
    return answer


@provokes("post", "/v1/sessions", 201)
def start_at_the_limit_evicts_the_oldest(api):
    client = api.with_config(at_limit="evict-oldest")
    tokens = {}
    for i in range(api.config.max_streams):
        sid, token = api.start(client, deviceId=f"device-{i}")
        tokens[sid] = token
    answer = v1_start(api, client, deviceId="newest")
    beats = {
        sid: client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(t)) for sid, t in tokens.items()
    }
    gone = [b.json["reason"] for b in beats.values() if b.status_code == 410]
    assert gone == ["evicted"], [b.text for b in beats.values()]
    return answer


@provokes("post", "/v1/sessions", 201)
def start_degraded_with_redis_down_in_open_mode(api):
    answer = api.store_down(on_store_error="open").simulate_post("/v1/sessions", json=START)
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("post", "/v1/sessions", 200)
def start_again_renews(api):
    sid, token = api.start()
    answer = v1_start(api, token=token)
    assert answer.json["sessionId"] == sid
    return answer


@provokes("post", "/v1/sessions", 400)
def start_with_an_empty_id(api):
    answer = v1_start(api, deviceId="")
    assert answer.json.get("field") == "deviceId"
    return answer


@provokes("post", "/v1/sessions", 400)
def start_with_a_json_array(api):
    return api.client.simulate_post("/v1/sessions", body=b"[]", headers={"Content-Type": "application/json"})


@provokes("post", "/v1/sessions", 401)
def start_with_a_user_token_of_another_issuer(api):
    client = api.with_user_tokens()
    answer = v1_start(api, client, api.bearer(api.user_token(iss="https://elsewhere.example")))
    assert "issuer" in answer.json["message"].lower()
    return answer


@provokes("post", "/v1/sessions", 401)
def start_with_a_user_token_signed_by_a_stranger(api):
    client = api.with_user_tokens()
    stranger = ec.generate_private_key(ec.SECP256R1())
    return v1_start(api, client, api.bearer(api.user_token(key=stranger)))


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_limit(api):
    holders = fill_to_limit(api, v1_start)
    answer = v1_start(api, deviceId="one-too-many")
    assert (answer.json["limit"], answer.json["scope"]) == (api.config.max_streams, "account")
    assert answer.json["active"] == len(holders)
    return answer


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_per_stream_limit(api):
    client = api.with_config(stream_limit=1)
    sid, _ = api.start(client, deviceId="a")
    api.start(client, deviceId="b", streamId="other film")
    answer = v1_start(api, client, deviceId="c")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "stream")
    assert answer.json["active"] == 1 and sid not in answer.text
    return answer


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_device_limit(api):
    client = api.with_config(device_limit=1)
    on_tv = [api.start(client, deviceId="tv", streamId=stream)[0] for stream in ("film", "news")]
    answer = v1_start(api, client, deviceId="phone")
    assert (answer.json["limit"], answer.json["scope"], answer.json["active"]) == (1, "device", 1)
    assert not any(sid in answer.text for sid in on_tv)  # an anonymous caller learns no keys
    return answer


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_device_limit_of_the_user_token(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token(dlimit=1))
    on_tv = [v1_start(api, client, headers, deviceId="tv", streamId=s).json["sessionId"] for s in ("a", "b")]
    answer = v1_start(api, client, headers, deviceId="phone")
    assert (answer.json["limit"], answer.json["scope"], answer.json["active"]) == (1, "device", 1)
    assert sorted(s["sessionKey"] for s in answer.json["sessions"]) == sorted(on_tv)
    return answer


# Each scope of a 403 limit_reached, with a registered scenario that asserts it.
SCOPE_SCENARIOS = {
    "account": start_beyond_the_limit,
    "stream": start_beyond_the_per_stream_limit,
    "device": start_beyond_the_device_limit,
}


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_limit_of_the_user_token(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token(climit=1))
    v1_start(api, client, headers, deviceId="a")
    answer = v1_start(api, client, headers, deviceId="b")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "account")
    return answer


@provokes("post", "/v1/sessions", 403)
def start_for_another_user_than_the_token(api):
    answer = v1_start(api, api.with_user_tokens(), api.bearer(api.user_token("zoe")))
    assert (answer.json["error"], answer.json.get("field")) == ("forbidden", "userId")
    return answer


@provokes("post", "/v1/sessions", 413)
def start_with_a_huge_body(api):
    return v1_start(api, streamId="s" * (api.config.max_body_bytes + 1))


@provokes("post", "/v1/sessions", 503)
def start_with_redis_down(api):
    return api.store_down().simulate_post("/v1/sessions", json=START)


# /v1/sessions/{sessionId}: heartbeat


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat(api):
    sid, token = api.start()
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert answer.json["sessionId"] == sid
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_resumes_a_lost_session(api):
    sid, token = api.start()
    api.lose(sid)
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    listed = api.admin().simulate_get("/v1/users/ann/sessions", headers=api.bearer(ADMIN_SECRET)).json
    assert [s["sessionId"] for s in listed["sessions"]] == [sid]
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_of_a_degraded_session_with_redis_down(api):
    down = api.store_down(on_store_error="open")
    sid, token = api.start(down)
    answer = down.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 400)
def heartbeat_of_an_overlong_id(api):
    _, token = api.start()
    answer = api.client.simulate_put(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_without_authorization(api):
    sid, _ = api.start()
    return api.client.simulate_put(f"/v1/sessions/{sid}")


@provokes("put", "/v1/sessions/{sessionId}", 413)
def heartbeat_with_a_huge_body(api):
    sid, token = api.start()
    huge = b" " * (api.config.max_body_bytes + 1)
    return api.client.simulate_put(f"/v1/sessions/{sid}", body=huge, headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 413)
def stop_with_a_huge_body(api):
    sid, token = api.start()
    huge = b" " * (api.config.max_body_bytes + 1)
    return api.client.simulate_delete(f"/v1/sessions/{sid}", body=huge, headers=api.bearer(token))


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_with_an_expired_token(api):
    sid, _ = api.start()
    stale = api.token(sid, int(time.time()) - 3600)
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(stale))
    assert answer.json["reason"] == "expired"
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_with_a_token_from_a_foreign_key(api):
    KeyStore(str(api.tmp_path)).generate("ES256")
    sid, _ = api.start()
    forged = api.token(sid, int(time.time()), keyring=Keyring.open(str(api.tmp_path)))
    return api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(forged))


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_stop(api):
    sid, token = api.start()
    assert api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token)).status_code == 204
    return heartbeat_gone(api, sid, token, "stopped")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_a_kick(api):
    sid, token = api.start()
    admin = api.admin()
    assert (
        admin.simulate_delete(f"/v1/users/ann/sessions/{sid}", headers=api.bearer(ADMIN_SECRET)).status_code
        == 204
    )
    return heartbeat_gone(api, sid, token, "kicked")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_eviction(api):
    client = api.with_config(at_limit="evict-oldest", max_streams=1)
    sid, token = api.start(client, deviceId="first")
    api.start(client, deviceId="second")
    return heartbeat_gone(api, sid, token, "evicted")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_of_a_lost_session_whose_token_ran_out(api):
    sid, _ = api.start()
    api.lose(sid)
    ttl_s = api.config.session_ttl_s
    stale = api.token(sid, int(time.time()) - ttl_s - 2)  # past exp, within the verifier's leeway
    return heartbeat_gone(api, sid, stale, "expired")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_of_a_lost_session_at_the_limit(api):
    sid, token = api.start()
    api.lose(sid)
    fill_to_limit(api, v1_start)
    return heartbeat_gone(api, sid, token, "limit")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_of_a_lost_session_beyond_the_device_limit(api):
    client = api.with_config(device_limit=1)
    sid, token = api.start(client, deviceId="tv")
    api.lose(sid)
    api.start(client, deviceId="phone")
    answer = client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert (answer.status_code, answer.json.get("reason")) == (410, "limit"), answer.text
    return answer


# Each reason of a 410, with a registered scenario that asserts it.
GONE_SCENARIOS = {
    "stopped": heartbeat_after_stop,
    "kicked": heartbeat_after_a_kick,
    "evicted": heartbeat_after_eviction,
    "expired": heartbeat_of_a_lost_session_whose_token_ran_out,
    "limit": heartbeat_of_a_lost_session_at_the_limit,
}


@provokes("put", "/v1/sessions/{sessionId}", 503)
def heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_of_a_normal_session_goes_on_degraded_in_open_mode(api):
    sid, token = api.start()
    return api.store_down(on_store_error="open").simulate_put(
        f"/v1/sessions/{sid}", headers=api.bearer(token)
    )


# /v1/sessions/{sessionId}: stop


@provokes("delete", "/v1/sessions/{sessionId}", 204)
def stop(api):
    sid, token = api.start()
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 400)
def stop_of_an_overlong_id(api):
    _, token = api.start()
    answer = api.client.simulate_delete(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("delete", "/v1/sessions/{sessionId}", 401)
def stop_with_the_token_of_another_session(api):
    _, token = api.start(deviceId="a")
    sid, _ = api.start(deviceId="b")
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 503)
def stop_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


# /v1/users/{userId}/sessions: list

USER_SESSIONS = "/v1/users/ann/sessions"


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_as_the_operator(api):
    first, _ = api.start(deviceId="a")
    second, _ = api.start(deviceId="b", streamId="other film")
    api.start(userId="bob")
    answer = api.admin().simulate_get(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    sessions = answer.json["sessions"]
    assert answer.json["userId"] == "ann"
    assert sorted((s["sessionId"], s["deviceId"], s["streamId"]) for s in sessions) == sorted(
        [(first, "a", "film"), (second, "b", "other film")]
    )
    assert [s["started"] for s in sessions] == sorted(s["started"] for s in sessions), "oldest first"
    for s in sessions:
        assert s["started"] <= s["lastHeartbeat"] <= answer.json["now"] < s["expires"]
        assert s["expires"] - s["lastHeartbeat"] == api.config.session_ttl_s
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_as_the_user_themself(api):
    client = api.with_user_tokens()
    v1_start(api, client, api.bearer(api.user_token("zoe")), userId="zoe")
    answer = client.simulate_get("/v1/users/zoe/sessions", headers=api.bearer(api.user_token("zoe")))
    assert len(answer.json["sessions"]) == 1
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_of_a_user_with_no_sessions(api):
    answer = api.admin().simulate_get("/v1/users/nobody/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json["sessions"] == []
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 400)
def list_of_an_overlong_user_id(api):
    answer = api.admin().simulate_get(f"/v1/users/{'u' * 257}/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "userId"
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_without_authorization(api):
    return api.admin().simulate_get(USER_SESSIONS)


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_with_a_wrong_admin_secret(api):
    return api.admin().simulate_get(USER_SESSIONS, headers=api.bearer("guess"))


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_with_an_expired_user_token(api):
    client = api.with_user_tokens(admin_token=ADMIN_SECRET)
    expired = api.user_token(exp=int(time.time()) - 3600)
    return client.simulate_get(USER_SESSIONS, headers=api.bearer(expired))


@provokes("get", "/v1/users/{userId}/sessions", 403)
def list_when_management_is_not_configured(api):
    answer = api.client.simulate_get(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    assert "not enabled" in answer.json["message"]
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 403)
def list_of_another_user_with_a_user_token(api):
    client = api.with_user_tokens()
    return client.simulate_get(USER_SESSIONS, headers=api.bearer(api.user_token("zoe")))


@provokes("get", "/v1/users/{userId}/sessions", 503)
def list_with_redis_down(api):
    return api.store_down(admin_token=ADMIN_SECRET).simulate_get(
        USER_SESSIONS, headers=api.bearer(ADMIN_SECRET)
    )


# /v1/users/{userId}/sessions: kick all


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_as_the_operator(api):
    started = [api.start(deviceId=f"device-{i}") for i in range(2)]
    answer = api.admin().simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    for sid, token in started:
        heartbeat_gone(api, sid, token, "kicked")
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_as_the_user_themself(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token())
    started = v1_start(api, client, headers).json
    answer = client.simulate_delete(USER_SESSIONS, headers=headers)
    heartbeat_gone(api, started["sessionId"], started["token"], "kicked")
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_of_a_user_with_no_sessions(api):
    return api.admin().simulate_delete("/v1/users/nobody/sessions", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions", 400)
def kick_all_of_an_overlong_user_id(api):
    answer = api.admin().simulate_delete(f"/v1/users/{'u' * 257}/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "userId"
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 401)
def kick_all_with_a_wrong_admin_secret(api):
    sid, token = api.start()
    answer = api.admin().simulate_delete(USER_SESSIONS, headers=api.bearer("guess"))
    assert api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token)).status_code == 200
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 403)
def kick_all_when_management_is_not_configured(api):
    return api.client.simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions", 403)
def kick_all_of_another_user_with_a_user_token(api):
    client = api.with_user_tokens(admin_token=ADMIN_SECRET)
    return client.simulate_delete(USER_SESSIONS, headers=api.bearer(api.user_token("zoe")))


@provokes("delete", "/v1/users/{userId}/sessions", 503)
def kick_all_with_redis_down(api):
    down = api.store_down(admin_token=ADMIN_SECRET)
    return down.simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))


# /v1/users/{userId}/sessions/{sessionId}: kick one


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 204)
def kick_one_frees_its_slot_at_once(api):
    holders = fill_to_limit(api, v1_start)
    answer = api.admin().simulate_delete(f"{USER_SESSIONS}/{holders[0]}", headers=api.bearer(ADMIN_SECRET))
    assert v1_start(api, deviceId="next").status_code == 201
    return answer


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 204)
def kick_one_as_the_user_themself(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token())
    sid = v1_start(api, client, headers).json["sessionId"]
    return client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=headers)


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 400)
def kick_one_of_an_overlong_session_id(api):
    answer = api.admin().simulate_delete(f"{USER_SESSIONS}/{'s' * 257}", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 401)
def kick_one_without_authorization(api):
    sid, _ = api.start()
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}")


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 403)
def kick_one_when_management_is_not_configured(api):
    sid, _ = api.start()
    return api.client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 403)
def kick_one_of_another_user_with_a_user_token(api):
    sid, _ = api.start()
    client = api.with_user_tokens()
    return client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(api.user_token("zoe")))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_that_does_not_exist(api):
    return api.admin().simulate_delete(f"{USER_SESSIONS}/AAAAAAAAAAAAAAAA", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_that_was_stopped(api):
    sid, token = api.start()
    api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_of_another_user(api):
    sid, _ = api.start(userId="bob")
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 503)
def kick_one_with_redis_down(api):
    down = api.store_down(admin_token=ADMIN_SECRET)
    return down.simulate_delete(f"{USER_SESSIONS}/AAAAAAAAAAAAAAAA", headers=api.bearer(ADMIN_SECRET))


# keys and operations


@provokes("get", "/.well-known/jwks.json", 200)
def jwks(api):
    answer = api.client.simulate_get("/.well-known/jwks.json")
    assert [k["kid"] for k in answer.json["keys"]] == [api.keyring.current.signing.kid]
    return answer


@provokes("get", "/.well-known/jwks.json", 200)
def jwks_with_a_stale_etag(api):
    return api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": '"0123456789abcdef"'})


@provokes("get", "/.well-known/jwks.json", 304)
def jwks_with_its_etag(api):
    etag = api.client.simulate_get("/.well-known/jwks.json").headers["etag"]
    answer = api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert answer.headers["etag"] == etag
    return answer


@provokes("get", "/.well-known/jwks.json", 304)
def jwks_with_any_etag(api):
    return api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": "*"})


@provokes("get", "/health", 200)
def health(api):
    return api.client.simulate_get("/health")


@provokes("get", "/healthz", 200)
def healthz(api):
    return api.store_down().simulate_get("/healthz")


@provokes("get", "/readyz", 200)
def ready(api):
    return api.client.simulate_get("/readyz")


@provokes("get", "/readyz", 503)
def not_ready_with_redis_down(api):
    answer = api.store_down().simulate_get("/readyz")
    assert answer.json["checks"] == {"redis": False, "keys": True, "serving": True}
    return answer


@provokes("get", "/metrics", 200)
def metrics(api):
    fill_to_limit(api, v1_start)
    v1_start(api, deviceId="one-too-many")
    answer = api.client.simulate_get("/metrics")
    samples = dict(line.rsplit(" ", 1) for line in answer.text.splitlines() if not line.startswith("#"))
    assert samples['concurrency_operations_total{operation="start",outcome="initiated"}'] == "3.0"
    assert samples['concurrency_operations_total{operation="start",outcome="limit_reached"}'] == "1.0"
    assert samples['concurrency_events_total{event="limit_hit"}'] == "1.0"
    assert 'concurrency_request_seconds_count{method="POST",route="/v1/sessions"}' in samples
    return answer


@provokes("get", "/metrics", 200)
def metrics_with_redis_down(api):
    down = api.store_down()
    down.simulate_post("/v1/sessions", json=START)
    answer = down.simulate_get("/metrics")
    assert 'concurrency_events_total{event="store_error"} 1.0' in answer.text
    return answer


@provokes("get", "/openapi.yaml", 200)
def openapi(api):
    return api.client.simulate_get("/openapi.yaml")


@pytest.mark.parametrize(("method", "path", "status", "scenario"), CASES)
def test_answer_matches_the_document(api, method, path, status, scenario):
    answer = scenario(api)
    assert answer.status_code == status, answer.text
    check_response(method, path, answer)
    if answer.headers.get("content-type", "").startswith("application/json") and "token" in answer.json:
        check_session_token(answer.json)


def test_every_documented_status_has_a_scenario():
    provoked = {(p.values[0], p.values[1], p.values[2]) for p in CASES}
    assert provoked == documented_statuses()


def test_every_gone_reason_is_documented_and_provoked():
    """The reasons the Lua scripts can answer are the documented ones, and a scenario shows each."""
    given = set(re.findall(r"'gone', now, '(\w+)'", lua.REFRESH.source))
    given |= set(re.findall(r"bury\([^,]+, '(\w+)'", lua.ADMIT.source + lua.RELEASE.source + lua.KICK.source))
    documented = DOC["components"]["schemas"]["SessionGoneError"]["properties"]["reason"]["enum"]
    assert given == set(documented)
    assert set(GONE_SCENARIOS) == set(documented)
    registered = {p.values[3] for p in CASES if p.values[2] == 410}
    assert set(GONE_SCENARIOS.values()) <= registered


def test_every_limit_scope_is_documented_and_provoked():
    """The scopes the store can refuse with are the documented ones, and a scenario shows each."""
    documented = DOC["components"]["schemas"]["LimitReachedError"]["properties"]["scope"]["enum"]
    assert set(_REFUSALS.values()) == set(documented) == set(SCOPE_SCENARIOS)
    registered = {p.values[3] for p in CASES if p.values[2] == 403}
    assert set(SCOPE_SCENARIOS.values()) <= registered


def test_degraded_expires_in_is_the_lifetime_of_its_token(api):
    down = api.store_down(on_store_error="open", degraded_ttl_s=20)
    answer = down.simulate_post("/v1/sessions", json=START)
    assert answer.status_code == 201, answer.text
    check_session_token(answer.json)


def test_every_response_carries_the_request_id_header():
    """Every documented response, shared ones included, names the X-Request-Id header."""
    responses = {
        pointer("paths", path, method, "responses", status): response
        for path, method, operation in operations()
        for status, response in operation["responses"].items()
    }
    responses.update(
        (pointer("components", "responses", name), response)
        for name, response in DOC["components"]["responses"].items()
    )
    for fragment, response in responses.items():
        response, _ = deref(response, fragment)
        header, _ = deref(response.get("headers", {}).get("X-Request-Id", {}), fragment)
        assert header == at(pointer("components", "headers", "X-Request-Id")), fragment


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("req-42", True), ("a.b_c:d/e+f=g-1", True), ("x" * 128, True), ("x" * 129, False), ("bad id", False)],
)
def test_request_id_is_echoed_when_acceptable(client, sent, echoed):
    answer = client.simulate_get("/nope", headers={"X-Request-Id": sent})
    check_component("NotFound", answer)
    if echoed:
        assert answer.headers["x-request-id"] == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", answer.headers["x-request-id"])
