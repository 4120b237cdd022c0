// The module against the real service, in Node. tests/test_client_js.py starts the servers and runs this
// file with their addresses in the environment; without them these tests are skipped.
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { test } from "node:test";

import { ConcurrencyClient, ConcurrencyError, LimitReachedError } from "../concurrency.js";

const env = process.env;
const BASE = env.CONCURRENCY_TEST_BASE_URL;
const ADMIN = env.CONCURRENCY_TEST_ADMIN_TOKEN;
const TTL_S = Number(env.CONCURRENCY_TEST_TTL_S ?? 4);
const FRAGILE = env.CONCURRENCY_TEST_FRAGILE_URL;
const FRAGILE_TTL_S = Number(env.CONCURRENCY_TEST_FRAGILE_TTL_S ?? 10);
const FRAGILE_REDIS_PID = Number(env.CONCURRENCY_TEST_FRAGILE_REDIS_PID);
const skip = BASE ? false : "set CONCURRENCY_TEST_BASE_URL (tests/test_client_js.py does)";
const skipFragile = FRAGILE && FRAGILE_REDIS_PID ? false : "set CONCURRENCY_TEST_FRAGILE_URL and _REDIS_PID";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const newUser = () => `node-${webcrypto.randomUUID().slice(0, 12)}`;

/** A fetch that records each call to the service: method, path, Authorization, status, answered token. */
function recordingFetch(calls) {
  return async (url, init = {}) => {
    const call = { method: init.method, path: new URL(url).pathname, authorization: init.headers?.Authorization };
    calls.push(call);
    call.keepalive = init.keepalive ?? false;
    const response = await fetch(url, init);
    call.status = response.status;
    call.at = Date.now();
    if (response.status === 200 || response.status === 201) call.token = (await response.clone().json()).token;
    return response;
  };
}

function setup(baseUrl = BASE, options = {}) {
  const calls = [];
  const client = new ConcurrencyClient({ baseUrl, fetch: recordingFetch(calls), ...options });
  return { client, calls };
}

/** Start a session and log its events. */
async function started(client, userId = newUser(), deviceId = "tv") {
  const session = await client.start({ userId, deviceId, streamId: "match-42" });
  const log = [];
  for (const type of ["token", "ended", "retry"]) {
    session.addEventListener(type, (event) => log.push({ type, detail: event.detail, current: session.token }));
  }
  return { session, log, userId };
}

/** Resolve once `count` events of `type` are in `log`; reject after `timeoutMs`. */
async function eventsOf(log, type, count, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = log.filter((e) => e.type === type);
    if (found.length >= count) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} ${type} events: ${JSON.stringify(log)}`);
    await sleep(20);
  }
}

async function call(baseUrl, method, path, token) {
  const response = await fetch(baseUrl + path, { method, headers: { Authorization: `Bearer ${token}` } });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const b64url = (text) => Buffer.from(text, "base64url");

/** Verify an ES256 session token with the service's JWKS, as a CDN would; answer its claims. */
async function verifiedClaims(token) {
  const [header, payload, signature] = token.split(".");
  const { kid, alg, typ } = JSON.parse(b64url(header));
  assert.equal(typ, "session+jwt");
  assert.equal(alg, "ES256");
  const { keys } = await (await fetch(`${BASE}/.well-known/jwks.json`)).json();
  const jwk = keys.find((k) => k.kid === kid);
  const key = await webcrypto.subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: "P-256" }, false, [
    "verify",
  ]);
  const ok = await webcrypto.subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    key,
    b64url(signature),
    Buffer.from(`${header}.${payload}`),
  );
  assert.ok(ok, "signature verifies with the published key");
  return JSON.parse(b64url(payload));
}

test("start answers a session whose token verifies; stop ends it on the service", { skip }, async () => {
  const { client } = setup();
  const { session, log, userId } = await started(client);
  assert.equal(session.status, "initiated");
  assert.equal(session.expiresIn, TTL_S);
  const claims = await verifiedClaims(session.token);
  assert.deepEqual([claims.sid, claims.sub, claims.device, claims.stream], [session.id, userId, "tv", "match-42"]);
  const token = session.token;
  assert.equal(await session.stop(), true);
  assert.equal(await session.stop(), true);
  const gone = await call(BASE, "PUT", `/v1/sessions/${session.id}`, token);
  assert.equal(gone.status, 410);
  assert.equal(gone.body.reason, "stopped");
  assert.deepEqual(log.map((e) => [e.type, e.detail.reason]), [["ended", "stopped"]]);
});

test("heartbeats chain the tokens: each one carries the newest, each answer a token event", { skip }, async () => {
  const { client, calls } = setup();
  const { session, log } = await started(client);
  const issued = [session.token];
  const tokens = await eventsOf(log, "token", 3, 4 * TTL_S * 1000);
  for (const event of tokens) {
    assert.equal(event.current, event.detail.token);
    assert.equal(event.detail.sessionId, session.id);
    assert.equal(event.detail.expiresIn, TTL_S);
    assert.equal((await verifiedClaims(event.detail.token)).sid, session.id);
    issued.push(event.detail.token);
  }
  assert.equal(new Set(issued).size, issued.length, "every heartbeat answers a fresh token");
  const beats = calls.filter((c) => c.method === "PUT").slice(0, 3);
  assert.deepEqual(
    beats.map((c) => c.authorization),
    issued.slice(0, 3).map((t) => `Bearer ${t}`),
  );
  assert.deepEqual(
    beats.map((c) => [c.status, c.token]),
    issued.slice(1, 4).map((t) => [200, t]),
  );
  const times = [calls[0].at, ...beats.map((c) => c.at)];
  for (let i = 1; i < times.length; i += 1) {
    const gap = times[i] - times[i - 1];
    assert.ok(gap > 300 * TTL_S && gap < 1000 * TTL_S, `heartbeat gap ${gap} ms`);
  }
  assert.equal(log.filter((e) => e.type === "ended").length, 0);
  await session.stop();
});

test("a kick by the account owner ends the session with reason kicked", { skip }, async () => {
  const { client, calls } = setup();
  const { session, log, userId } = await started(client);
  const kicked = await call(BASE, "DELETE", `/v1/users/${userId}/sessions/${session.id}`, ADMIN);
  assert.equal(kicked.status, 204);
  const [ended] = await eventsOf(log, "ended", 1, 2 * TTL_S * 1000);
  assert.equal(ended.detail.reason, "kicked");
  assert.ok(ended.detail.error instanceof ConcurrencyError);
  assert.equal(ended.detail.error.status, 410);
  assert.equal(session.active, false);
  assert.deepEqual(await session.closed, ended.detail);
  const sent = calls.length;
  await sleep((TTL_S / 2) * 1000 + 500);
  assert.equal(calls.length, sent, "no heartbeat after the end");
  assert.equal(await session.stop(), true);
  assert.equal(calls.length, sent, "stop of a session the service ended sends nothing");
});

test("a second start at the limit rejects with LimitReachedError (limit, scope)", { skip }, async () => {
  const { client } = setup();
  const { session, userId } = await started(client);
  const refused = await client.start({ userId, deviceId: "phone", streamId: "match-42" }).catch((e) => e);
  assert.ok(refused instanceof LimitReachedError, refused);
  assert.ok(refused instanceof ConcurrencyError);
  assert.equal(refused.status, 403);
  assert.equal(refused.code, "limit_reached");
  assert.equal(refused.limit, 1);
  assert.equal(refused.scope, "account");
  assert.ok(refused.sessions === undefined || Array.isArray(refused.sessions));
  await session.stop();
});

test("a Redis hang shorter than the token's lifetime is survived through backoff", { skip: skipFragile }, async () => {
  const { client, calls } = setup(FRAGILE);
  const { session, log } = await started(client);
  process.kill(FRAGILE_REDIS_PID, "SIGSTOP"); // hung until the player has met it: however slow the machine
  try {
    await eventsOf(log, "retry", 1, FRAGILE_TTL_S * 1000);
    await sleep(1000); // it backs off, and may retry into the hang again
  } finally {
    process.kill(FRAGILE_REDIS_PID, "SIGCONT");
  }
  const [after] = await eventsOf(log, "token", 1, FRAGILE_TTL_S * 1000);
  const retries = log.filter((e) => e.type === "retry");
  for (const retry of retries) assert.ok(["store_unavailable", "timeout"].includes(retry.detail.error.code));
  assert.ok(retries.some((r) => r.detail.error.retryAfterMs === 1000));
  assert.equal(log.filter((e) => e.type === "ended").length, 0);
  assert.equal(session.active, true);
  assert.equal(session.token, after.detail.token);
  const statuses = calls.filter((c) => c.method === "PUT").map((c) => c.status);
  assert.ok(statuses.includes(503) && statuses.at(-1) === 200, statuses);
  await session.stop();
});

test("the page going away (pagehide) stops the session with a keepalive request", { skip }, async () => {
  const page = new EventTarget(); // what a browser's window does, for Node
  const { client, calls } = setup(BASE, { window: page });
  const { session, log } = await started(client);
  const token = session.token;
  page.dispatchEvent(new Event("pagehide"));
  assert.deepEqual(log.map((e) => [e.type, e.detail.reason, e.detail.trigger]), [["ended", "stopped", "pagehide"]]);
  assert.equal(await session.stop(), true);
  const [stop] = calls.filter((c) => c.method === "DELETE");
  assert.deepEqual([stop.status, stop.keepalive], [204, true]);
  const gone = await call(BASE, "PUT", `/v1/sessions/${session.id}`, token);
  assert.deepEqual([gone.status, gone.body.reason], [410, "stopped"]);
});
