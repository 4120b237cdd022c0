// The module's schedule, retries and errors against a scripted fetch and a manual clock (no server).
import assert from "node:assert/strict";
import { test } from "node:test";

import { ConcurrencyClient, ConcurrencyError, DEFAULTS, LimitReachedError } from "../concurrency.js";
import { FakeClock, FakeFetch, FakeWindow, json, session } from "./fakes.mjs";

const BASE = "http://concurrency.test";

function setup({ random = () => 0, window = null, ...options } = {}) {
  const clock = new FakeClock();
  const net = new FakeFetch();
  const client = new ConcurrencyClient({
    baseUrl: `${BASE}/`,
    fetch: net.fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random,
    window,
    ...options,
  });
  return { clock, net, client };
}

async function started(env, expiresIn = 60) {
  env.net.reply(() => json(201, session("s1", "t0", expiresIn, "initiated")));
  const s = await env.client.start({ deviceId: "tv", streamId: "match", userId: "ann" });
  const events = [];
  for (const type of ["token", "ended", "retry"]) s.addEventListener(type, (e) => events.push([type, e.detail]));
  return { s, events };
}

const bearerOf = (call) => call.headers.Authorization;

test("start posts the ids as JSON with the access token and answers a session", async () => {
  const env = setup({ accessToken: async () => "user-at" });
  env.net.reply(() => json(201, session("s1", "t0", 60, "initiated")));
  const s = await env.client.start({ deviceId: "tv", streamId: "match", userId: "ann" });
  const [call] = env.net.calls;
  assert.equal(call.method, "POST");
  assert.equal(call.url, `${BASE}/v1/sessions`);
  assert.deepEqual(JSON.parse(call.body), { deviceId: "tv", streamId: "match", userId: "ann" });
  assert.equal(call.headers["Content-Type"], "application/json");
  assert.equal(bearerOf(call), "Bearer user-at");
  assert.equal(s.id, "s1");
  assert.equal(s.token, "t0");
  assert.equal(s.status, "initiated");
  assert.equal(s.expiresIn, 60);
  assert.equal(s.active, true);
  assert.deepEqual(env.clock.pending(), [30000]);
});

test("start without access token sends no Authorization and leaves out a missing userId", async () => {
  const env = setup();
  env.net.reply(() => json(200, session("s1", "t0")));
  await env.client.start({ deviceId: "tv", streamId: "match" });
  assert.equal(bearerOf(env.net.calls[0]), undefined);
  assert.deepEqual(JSON.parse(env.net.calls[0].body), { deviceId: "tv", streamId: "match" });
});

test("start checks its arguments", async () => {
  const env = setup();
  await assert.rejects(env.client.start({ streamId: "x" }), TypeError);
  await assert.rejects(env.client.start({ deviceId: "tv", streamId: "" }), TypeError);
  assert.throws(() => new ConcurrencyClient({}), TypeError);
  assert.throws(() => new ConcurrencyClient({ baseUrl: "", heartbeatRatio: 1 }), TypeError);
});

test("schedule options that would make delays zero or negative are refused", () => {
  for (const bad of [
    { jitterRatio: 1 },
    { jitterRatio: 1.5 },
    { jitterRatio: -0.1 },
    { backoffInitialMs: 0 },
    { backoffMaxMs: 0 },
    { backoffInitialMs: 9000, backoffMaxMs: 8000 },
    { finalAttemptMarginMs: 5000 },
    { finalAttemptMarginMs: 1000, expiryMarginMs: 500 },
  ]) {
    assert.throws(() => new ConcurrencyClient({ baseUrl: "", ...bad }), TypeError, JSON.stringify(bad));
  }
  assert.doesNotThrow(
    () => new ConcurrencyClient({ baseUrl: "", jitterRatio: 0.99, backoffInitialMs: 1, finalAttemptMarginMs: 4999 }),
  );
});

test("heartbeats at half the lifetime, always with the newest token, each answer a token event", async () => {
  const env = setup();
  const { s, events } = await started(env);
  for (let i = 1; i <= 3; i += 1) {
    env.net.reply(() => json(200, session("s1", `t${i}`)));
    await env.clock.advance(29999);
    assert.equal(env.net.calls.length, i, "not before half the lifetime");
    await env.clock.advance(1);
    assert.equal(env.net.calls.length, i + 1);
    const call = env.net.calls[i];
    assert.equal(call.method, "PUT");
    assert.equal(call.url, `${BASE}/v1/sessions/s1`);
    assert.equal(bearerOf(call), `Bearer t${i - 1}`);
    assert.equal(s.token, `t${i}`);
  }
  assert.deepEqual(
    events.map(([type, d]) => [type, d.token]),
    [["token", "t1"], ["token", "t2"], ["token", "t3"]],
  );
  assert.deepEqual(events[0][1], { token: "t1", expiresIn: 60, sessionId: "s1" });
});

test("the schedule follows the server's expiresIn, with jitter only ever earlier", async () => {
  const env = setup({ random: () => 0.999 });
  await started(env, 60);
  const [delay] = env.clock.pending();
  assert.ok(delay > 30000 * (1 - DEFAULTS.jitterRatio) && delay < 30000 * (1 - DEFAULTS.jitterRatio) + 10, delay);
  env.net.reply(() => json(200, session("s1", "t1", 8)));
  await env.clock.advance(delay);
  const [next] = env.clock.pending();
  assert.ok(next <= 4000 && next >= 3600, next); // 8 s lifetime: half of it, jittered
});

test("a large heartbeatRatio still leaves the margin before expiry", async () => {
  const env = setup({ heartbeatRatio: 0.95 });
  await started(env, 60);
  assert.deepEqual(env.clock.pending(), [60000 - DEFAULTS.expiryMarginMs]);
  const short = setup({ heartbeatRatio: 0.95 });
  await started(short, 4);
  assert.deepEqual(short.clock.pending(), [3000]); // margin capped at a quarter of the lifetime
});

test("one heartbeat at a time: a slow answer delays the next one instead of overlapping", async () => {
  const env = setup();
  const { s } = await started(env, 60);
  let answer;
  env.net.reply(() => new Promise((resolve) => (answer = resolve)));
  await env.clock.advance(30000);
  assert.equal(env.net.calls.length, 2);
  await env.clock.advance(9000); // still waiting (timeout is 10 s)
  assert.equal(env.net.calls.length, 2);
  env.net.reply(() => json(200, session("s1", "t2")));
  answer(json(200, session("s1", "t1")));
  await env.clock.advance(0);
  assert.equal(s.token, "t1");
  // The next beat is counted from when the request was sent: 30 s after t=30 s.
  assert.deepEqual(env.clock.pending(), [30000 - 9000]);
});

test("410 ends the session with the service's reason; no more heartbeats; stop sends nothing", async () => {
  const env = setup();
  const { s, events } = await started(env);
  env.net.reply(() => json(410, { error: "session_gone", message: "kicked", reason: "kicked" }));
  await env.clock.advance(30000);
  assert.equal(s.active, false);
  assert.equal(s.endReason, "kicked");
  assert.equal(events.length, 1);
  const [type, detail] = events[0];
  assert.equal(type, "ended");
  assert.equal(detail.reason, "kicked");
  assert.ok(detail.error instanceof ConcurrencyError);
  assert.equal(detail.error.status, 410);
  assert.deepEqual(await s.closed, detail);
  assert.deepEqual(env.clock.pending(), []);
  assert.equal(await s.stop(), true);
  assert.equal(env.net.calls.length, 2);
});

test("503 retries no sooner than Retry-After, then carries on; the retry event tells", async () => {
  const env = setup();
  const { s, events } = await started(env);
  const unavailable = () => json(503, { error: "store_unavailable", message: "down" }, { "Retry-After": "3" });
  env.net.reply(unavailable);
  await env.clock.advance(30000);
  assert.deepEqual(env.clock.pending(), [3000]);
  assert.equal(events[0][0], "retry");
  assert.equal(events[0][1].attempt, 1);
  assert.equal(events[0][1].error.code, "store_unavailable");
  assert.equal(events[0][1].error.retryAfterMs, 3000);
  env.net.reply(() => json(200, session("s1", "t1")));
  await env.clock.advance(3000);
  assert.equal(bearerOf(env.net.calls[2]), "Bearer t0");
  assert.equal(s.token, "t1");
  assert.equal(s.active, true);
  assert.deepEqual(env.clock.pending(), [30000]);
});

test("network errors back off exponentially; the session expires when its token would", async () => {
  const env = setup({ random: () => 1 - Number.EPSILON });
  const { s, events } = await started(env, 60);
  const offline = () => {
    throw new TypeError("fetch failed");
  };
  for (let i = 0; i < 20; i += 1) env.net.reply(offline);
  await env.clock.advance(27000); // first beat (jittered to 27 s)
  const delays = [];
  while (s.active) {
    const [delay] = env.clock.pending();
    delays.push(Math.round(delay));
    await env.clock.advance(delay);
  }
  // 500 ms doubling to the 8 s cap, then a last try 500 ms before the token's expiry at 60 s.
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000, 1000]);
  const [type, detail] = events.at(-1);
  assert.equal(type, "ended");
  assert.equal(detail.reason, "expired");
  assert.equal(detail.error.code, "network_error");
  assert.equal(env.clock.time - 1_000_000, 59500);
  assert.equal(events.filter(([t]) => t === "retry").length, 8);
  assert.equal(await s.stop(), false); // nothing valid left to send
  assert.equal(env.net.calls.length, 1 + 9);
});

test("an unanswered heartbeat times out and is retried", async () => {
  const env = setup({ requestTimeoutMs: 2000 });
  const { s, events } = await started(env, 60);
  env.net.hang();
  await env.clock.advance(30000 + 2000);
  assert.equal(events[0][0], "retry");
  assert.equal(events[0][1].error.code, "timeout");
  env.net.reply(() => json(200, session("s1", "t1")));
  await env.clock.advance(1000);
  assert.equal(s.token, "t1");
});

test("401 ends the session: invalid_token while the token should be valid", async () => {
  const env = setup();
  const { s } = await started(env);
  env.net.reply(() => json(401, { error: "invalid_token", message: "no" }));
  await env.clock.advance(30000);
  assert.equal(s.endReason, "invalid_token");
});

test("a 400 ends the session with reason error", async () => {
  const env = setup();
  const { s, events } = await started(env);
  env.net.reply(() => json(400, { error: "bad_request", message: "no", field: "sessionId" }));
  await env.clock.advance(30000);
  assert.equal(s.endReason, "error");
  assert.equal(events[0][1].error.body.field, "sessionId");
});

test("start at the limit rejects with LimitReachedError carrying limit, scope and sessions", async () => {
  const env = setup();
  const listed = [{ sessionKey: "k", deviceId: "tv", streamId: "s", started: 1 }];
  env.net.reply(() => json(403, { error: "limit_reached", message: "3 of 3", limit: 3, scope: "account", sessions: listed }));
  env.net.reply(() => json(403, { error: "limit_reached", message: "1 of 1", limit: 1, scope: "stream", active: 1 }));
  const first = await env.client.start({ deviceId: "tv", streamId: "s", userId: "u" }).catch((e) => e);
  assert.ok(first instanceof LimitReachedError);
  assert.ok(first instanceof ConcurrencyError);
  assert.equal(first.name, "LimitReachedError");
  assert.equal(first.status, 403);
  assert.equal(first.code, "limit_reached");
  assert.equal(first.limit, 3);
  assert.equal(first.scope, "account");
  assert.deepEqual(first.sessions, listed);
  const second = await env.client.start({ deviceId: "tv", streamId: "s", userId: "u" }).catch((e) => e);
  assert.equal(second.scope, "stream");
  assert.equal(second.sessions, undefined);
  assert.equal(second.body.active, 1);
});

test("other refusals and failures of start are ConcurrencyErrors", async () => {
  const env = setup();
  env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }, { "Retry-After": "2" }));
  env.net.reply(() => json(401, { error: "invalid_token", message: "bad user token" }));
  env.net.reply(() => new Response("<html>", { status: 502 }));
  env.net.reply(() => {
    throw new TypeError("fetch failed");
  });
  const start = () => env.client.start({ deviceId: "tv", streamId: "s" }).catch((e) => e);
  const unavailable = await start();
  assert.equal(unavailable.constructor, ConcurrencyError);
  assert.equal(unavailable.status, 503);
  assert.equal(unavailable.code, "store_unavailable");
  assert.equal(unavailable.retryAfterMs, 2000);
  assert.equal((await start()).code, "invalid_token");
  const proxy = await start();
  assert.equal(proxy.code, "http_502");
  assert.equal(proxy.body, null);
  const offline = await start();
  assert.equal(offline.status, 0);
  assert.equal(offline.code, "network_error");
  assert.ok(offline.cause instanceof TypeError);
});

test("start can be aborted", async () => {
  const env = setup();
  env.net.hang();
  const controller = new AbortController();
  const pending = env.client.start({ deviceId: "tv", streamId: "s", signal: controller.signal });
  controller.abort();
  await assert.rejects(pending, { name: "AbortError" });
});

test("stop is idempotent: one DELETE with the current token, one ended event", async () => {
  const env = setup();
  const { s, events } = await started(env);
  env.net.reply(() => new Response(null, { status: 204 }));
  const first = s.stop();
  const second = s.stop();
  assert.equal(first, second);
  assert.equal(await first, true);
  assert.equal(await s.stop(), true);
  const deletes = env.net.calls.filter((c) => c.method === "DELETE");
  assert.equal(deletes.length, 1);
  assert.equal(deletes[0].url, `${BASE}/v1/sessions/s1`);
  assert.equal(bearerOf(deletes[0]), "Bearer t0");
  assert.deepEqual(events, [["ended", { reason: "stopped" }]]);
  assert.deepEqual(env.clock.pending(), []);
});

test("stop during a heartbeat aborts it and sends the stop at once", async () => {
  const env = setup();
  const { s, events } = await started(env);
  env.net.hang();
  await env.clock.advance(30000);
  const beat = env.net.calls[1];
  env.net.reply(() => new Response(null, { status: 204 }));
  assert.equal(await s.stop(), true);
  assert.equal(beat.signal.aborted, true);
  assert.deepEqual(events, [["ended", { reason: "stopped" }]]);
});

test("stop retries a 503 and reports false when the service could not be told", async () => {
  const env = setup();
  const { s } = await started(env, 4);
  env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }, { "Retry-After": "1" }));
  env.net.reply(() => new Response(null, { status: 204 }));
  const stopping = s.stop();
  await env.clock.advance(1000);
  assert.equal(await stopping, true);
  const env2 = setup();
  const { s: s2 } = await started(env2, 4);
  for (let i = 0; i < 10; i += 1) env2.net.reply(() => json(503, { error: "store_unavailable", message: "x" }));
  const failing = s2.stop();
  await env2.clock.advance(5000);
  assert.equal(await failing, false);
});

test("pagehide stops the session with a keepalive DELETE", async () => {
  const window = new FakeWindow();
  const env = setup({ window });
  const { s, events } = await started(env);
  env.net.reply(() => new Response(null, { status: 204 }));
  window.dispatchEvent(new Event("pagehide"));
  assert.equal(s.active, false);
  assert.deepEqual(events, [["ended", { reason: "stopped", trigger: "pagehide" }]]);
  const [, stop] = env.net.calls;
  assert.equal(stop.method, "DELETE");
  assert.equal(stop.keepalive, true);
  assert.equal(bearerOf(stop), "Bearer t0");
  assert.equal(await s.stop(), true);
  assert.equal(env.net.calls.length, 2);
});

test("a hidden page keeps its session unless stopOnHidden; visible again beats at once when overdue", async () => {
  const window = new FakeWindow();
  const env = setup({ window });
  const { s } = await started(env);
  window.hide();
  assert.equal(s.active, true);
  // A throttled background timer: time passes without it firing; showing the page catches up.
  env.clock.time += 31000;
  env.net.reply(() => json(200, session("s1", "t1")));
  window.show();
  await env.clock.advance(0);
  assert.equal(env.net.calls.length, 2);
  assert.equal(s.token, "t1");

  const other = new FakeWindow();
  const strict = setup({ window: other, stopOnHidden: true });
  const { s: s2, events } = await started(strict);
  strict.net.reply(() => new Response(null, { status: 204 }));
  other.hide();
  assert.equal(s2.active, false);
  assert.deepEqual(events, [["ended", { reason: "stopped", trigger: "hidden" }]]);
  assert.equal(strict.net.calls[1].keepalive, true);
});

test("an ended session lets go of the page's events", async () => {
  const window = new FakeWindow();
  const env = setup({ window });
  const { s } = await started(env);
  env.net.reply(() => new Response(null, { status: 204 }));
  await s.stop();
  window.dispatchEvent(new Event("pagehide"));
  assert.equal(env.net.calls.length, 2);
});

test("coming back online retries at once instead of waiting out the backoff", async () => {
  const window = new FakeWindow();
  const env = setup({ window, random: () => 0.5 });
  const { s } = await started(env);
  env.net.reply(() => {
    throw new TypeError("offline");
  });
  await env.clock.advance(30000);
  assert.equal(env.clock.pending().length, 1);
  env.net.reply(() => json(200, session("s1", "t1")));
  window.dispatchEvent(new Event("online"));
  await env.clock.advance(0);
  assert.equal(s.token, "t1");
});

test("an aborted start rejects at once; a session the service admitted meanwhile is stopped", async () => {
  const env = setup();
  let answer;
  env.net.reply(() => new Promise((resolve) => (answer = resolve)));
  env.net.reply(() => new Response(null, { status: 204 }));
  const controller = new AbortController();
  const pending = env.client.start({ deviceId: "tv", streamId: "s", userId: "ann", signal: controller.signal });
  await env.clock.advance(0);
  controller.abort();
  await assert.rejects(pending, { name: "AbortError" }); // before any answer came
  answer(json(201, session("s1", "t0", 60, "initiated")));
  await env.clock.advance(0);
  const [, stop] = env.net.calls;
  assert.equal(stop?.method, "DELETE", "the admitted session holds no slot");
  assert.equal(stop.url, `${BASE}/v1/sessions/s1`);
  assert.equal(bearerOf(stop), "Bearer t0");
  assert.deepEqual(env.clock.pending(), []); // and it never heartbeats

  // A start that only renewed the live session of this device and stream leaves it alone: it was not ours.
  const renewing = new AbortController();
  env.net.reply(() => new Promise((resolve) => (answer = resolve)));
  const renewal = env.client.start({ deviceId: "tv", streamId: "s", userId: "ann", signal: renewing.signal });
  await env.clock.advance(0);
  renewing.abort();
  await assert.rejects(renewal, { name: "AbortError" });
  answer(json(200, session("s1", "t1", 60, "updated")));
  await env.clock.advance(0);
  assert.equal(env.net.calls.length, 3);
});

test("a pagehide while stop() is still retrying sends the stop with keepalive", async () => {
  const window = new FakeWindow();
  const env = setup({ window });
  const { s } = await started(env);
  env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }, { "Retry-After": "2" }));
  const stopping = s.stop();
  await env.clock.advance(0);
  env.net.reply(() => new Response(null, { status: 204 }));
  window.dispatchEvent(new Event("pagehide"));
  const [, , last] = env.net.calls;
  assert.equal(last?.method, "DELETE");
  assert.equal(last.keepalive, true);
  assert.equal(bearerOf(last), "Bearer t0");
  await env.clock.advance(2000); // a page that lives on (back/forward cache) sends nothing more
  assert.equal(await stopping, true);
  assert.equal(env.net.calls.length, 3);
});

test("a stop on hidden that meets a 503 is retried, and sent again with keepalive on pagehide", async () => {
  const window = new FakeWindow();
  const env = setup({ window, stopOnHidden: true });
  const { s } = await started(env);
  env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }, { "Retry-After": "2" }));
  window.hide();
  await env.clock.advance(0);
  assert.equal(env.net.calls[1].keepalive, true);
  env.net.reply(() => new Response(null, { status: 204 }));
  window.dispatchEvent(new Event("pagehide"));
  assert.equal(env.net.calls[2]?.keepalive, true);
  await env.clock.advance(2000);
  assert.equal(await s.stop(), true);
  assert.equal(env.net.calls.length, 3);
});

test("elapsed time is counted on a monotonic clock: a wall-clock jump neither ends nor stretches a session", async (t) => {
  const wall = Date.now();
  let jump = 0;
  t.mock.method(Date, "now", () => wall + jump);
  const env = setup({ now: undefined });
  t.mock.method(performance, "now", env.clock.now);
  const { s, events } = await started(env);
  assert.equal(s.expiresAt, wall + 60000, "expiresAt stays a wall-clock time stamp");
  jump = 3600_000; // the system clock is set an hour ahead
  env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }));
  await env.clock.advance(30000);
  assert.equal(s.active, true, "a failed heartbeat is retried, not ended as expired");
  env.net.reply(() => json(200, session("s1", "t1")));
  await env.clock.advance(env.clock.pending()[0]);
  assert.equal(s.token, "t1");

  jump = -3600_000; // ...and then an hour behind: failures still end when the token really expires
  for (let i = 0; i < 20; i += 1) env.net.reply(() => json(503, { error: "store_unavailable", message: "down" }));
  const renewed = env.clock.time;
  for (let i = 0; i < 20 && s.active; i += 1) await env.clock.advance(env.clock.pending()[0]);
  assert.equal(s.endReason, "expired");
  assert.ok(env.clock.time - renewed <= 60000, "no retry past the token's real expiry");
  assert.equal(events.filter(([type]) => type === "token").length, 1);
});
