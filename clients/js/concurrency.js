/**
 * Player module of the stream concurrency service: start a session when playback starts, keep it alive
 * with heartbeats (each answers a fresh session token), stop it when playback stops.
 *
 * Dependency-free ES module for browsers and Node.js 18+. Uses the native API of the service:
 * `POST /v1/sessions`, `PUT /v1/sessions/{sessionId}` and `DELETE /v1/sessions/{sessionId}`.
 *
 * @example
 * import { ConcurrencyClient, LimitReachedError } from "./concurrency.js";
 * const client = new ConcurrencyClient({ baseUrl: "https://concurrency.example.com" });
 * const session = await client.start({ deviceId: "tv-1", streamId: "match-42", userId: "ann" });
 * session.addEventListener("token", (e) => useToken(e.detail.token));
 * session.addEventListener("ended", (e) => stopPlayback(e.detail.reason));
 * await session.stop();
 *
 * @module concurrency
 */

/** Schedule and retry settings used when the options do not say otherwise. */
export const DEFAULTS = Object.freeze({
  /** Heartbeat after this fraction of the token lifetime (`expiresIn`). */
  heartbeatRatio: 0.5,
  /** ...and never later than this long before the token expires (capped at a quarter of its lifetime). */
  expiryMarginMs: 5000,
  /** Heartbeats are moved earlier by up to this fraction (< 1), so that players do not beat in lockstep. */
  jitterRatio: 0.1,
  /** First retry delay after a 503, 429, other 5xx or a network error; doubles on every failure... */
  backoffInitialMs: 500,
  /** ...up to this cap. A `Retry-After` longer than the backoff wins. */
  backoffMaxMs: 8000,
  /** The last retry is sent this long (< expiryMarginMs) before the token expires; if it fails, it ends `expired`. */
  finalAttemptMarginMs: 500,
  /** A request with no answer after this long counts as a network error. */
  requestTimeoutMs: 10000,
});

const INTERNAL = Symbol("concurrency.internal");

/**
 * An answer of the service that is not a success, or a request that got no answer.
 *
 * `status` is the HTTP status (0 when there was no answer), `code` the service's `error` code
 * (`store_unavailable`, `invalid_token`, `session_gone`, ...; `network_error` or `timeout` when there was
 * no answer; `http_<status>` when the body named none) and `body` the parsed JSON body, if any.
 */
export class ConcurrencyError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, body?: any, retryAfterMs?: number | null, cause?: unknown}} [init]
   */
  constructor(message, { status = 0, code = "unknown", body = null, retryAfterMs = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ConcurrencyError";
    /** @type {number} HTTP status; 0 when no answer came. */
    this.status = status;
    /** @type {string} The service's error code, or `network_error` / `timeout`. */
    this.code = code;
    /** @type {any} The parsed JSON error body, or null. */
    this.body = body;
    /** @type {number | null} The answer's `Retry-After`, in milliseconds, when it had one. */
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * `start` was refused because the account (or the stream, or the devices) reached its limit:
 * 403 `limit_reached`. Carries what the service said: `limit`, `scope` and, when the caller may see them,
 * the `sessions` holding the limit (absent otherwise; never rely on it being there).
 */
export class LimitReachedError extends ConcurrencyError {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, body?: any, retryAfterMs?: number | null}} [init]
   */
  constructor(message, init = {}) {
    super(message, { status: 403, code: "limit_reached", ...init });
    this.name = "LimitReachedError";
    const body = this.body && typeof this.body === "object" ? this.body : {};
    /** @type {number | undefined} The limit reached. */
    this.limit = typeof body.limit === "number" ? body.limit : undefined;
    /** @type {string | undefined} `account`, `stream` or `device`. */
    this.scope = typeof body.scope === "string" ? body.scope : undefined;
    /** @type {object[] | undefined} The live sessions holding the limit, when the service listed them. */
    this.sessions = Array.isArray(body.sessions) ? body.sessions : undefined;
  }
}

/** An event of a session; `detail` carries its data (like `CustomEvent`, which Node 18 lacks). */
class ConcurrencyEvent extends Event {
  /** @param {string} type @param {object} detail */
  constructor(type, detail) {
    super(type);
    /** @type {object} */
    this.detail = detail;
  }
}

/**
 * Talks to one concurrency service. Make one per player (or per page) and call `start` for each playback.
 */
export class ConcurrencyClient {
  #ctx;

  /**
   * @param {object} options
   * @param {string} options.baseUrl The service's base URL (`""` or `"/"`: the page's own origin).
   * @param {string | (() => string | null | undefined | Promise<string | null | undefined>)} [options.accessToken]
   *   The user's access token, or a function that returns a fresh one; sent as `Authorization: Bearer` on
   *   starts (user-token mode). Leave out in anonymous and trusted-caller setups.
   * @param {typeof fetch} [options.fetch] Defaults to the global `fetch`.
   * @param {(fn: () => void, ms: number) => any} [options.setTimeout] Defaults to the global one.
   * @param {(handle: any) => void} [options.clearTimeout] Defaults to the global one.
   * @param {() => number} [options.now] A monotonic clock in milliseconds, for elapsed time (the schedule, the
   *   token's remaining life); defaults to `performance.now`. Not the wall clock: setting that must not move it.
   * @param {() => number} [options.random] Jitter source in [0, 1); defaults to `Math.random`.
   * @param {any} [options.window] Where page lifecycle events come from: defaults to the global `window` in
   *   a browser, none in Node. `null`: no lifecycle handling.
   * @param {boolean} [options.stopOnPageHide=true] Stop the session (with `keepalive`) on `pagehide`.
   * @param {boolean} [options.stopOnHidden=false] Also stop it when the page becomes hidden. Off by default:
   *   a hidden tab may still be playing (background audio, picture-in-picture, another window on top).
   * @param {number} [options.heartbeatRatio]
   * @param {number} [options.expiryMarginMs]
   * @param {number} [options.jitterRatio]
   * @param {number} [options.backoffInitialMs]
   * @param {number} [options.backoffMaxMs]
   * @param {number} [options.finalAttemptMarginMs]
   * @param {number} [options.requestTimeoutMs]
   */
  constructor(options) {
    if (!options || typeof options.baseUrl !== "string") {
      throw new TypeError("ConcurrencyClient needs options.baseUrl (a string)");
    }
    const settings = { ...DEFAULTS };
    for (const name of Object.keys(DEFAULTS)) {
      const value = options[name];
      if (value === undefined) continue;
      if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
        throw new TypeError(`options.${name} must be a finite number >= 0`);
      }
      settings[name] = value;
    }
    if (!(settings.heartbeatRatio > 0 && settings.heartbeatRatio < 1)) {
      throw new TypeError("options.heartbeatRatio must be between 0 and 1");
    }
    // Each of these would make a delay zero or negative: heartbeats or retries back to back.
    if (!(settings.jitterRatio < 1)) {
      throw new TypeError("options.jitterRatio must be >= 0 and < 1");
    }
    if (!(settings.backoffInitialMs > 0 && settings.backoffMaxMs >= settings.backoffInitialMs)) {
      throw new TypeError("options.backoffInitialMs must be > 0 and no more than options.backoffMaxMs");
    }
    // A last retry due no later than the latest heartbeat would leave a failed heartbeat no retry at all.
    if (!(settings.finalAttemptMarginMs < settings.expiryMarginMs)) {
      throw new TypeError("options.finalAttemptMarginMs must be less than options.expiryMarginMs");
    }
    const fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    const win = options.window === undefined ? globalThis.window : options.window;
    this.#ctx = {
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      accessToken: options.accessToken,
      fetch: fetchImpl,
      setTimeout: options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: options.clearTimeout ?? ((handle) => globalThis.clearTimeout(handle)),
      now: options.now ?? (() => performance.now()),
      random: options.random ?? Math.random,
      window: win && typeof win.addEventListener === "function" ? win : null,
      stopOnPageHide: options.stopOnPageHide ?? true,
      stopOnHidden: options.stopOnHidden ?? false,
      settings,
    };
  }

  /**
   * Start a session for one playback: `POST /v1/sessions`.
   *
   * Does not retry: a failed start rejects, and the player decides (retry after `error.retryAfterMs` on a
   * 503, show the sessions of a `LimitReachedError`, ...).
   *
   * @param {object} request
   * @param {string} request.deviceId
   * @param {string} request.streamId
   * @param {string} [request.userId] Anonymous and trusted-caller modes; in user-token mode the user is the
   *   access token's subject (and `userId`, when given, must match it).
   * @param {AbortSignal} [request.signal] Cancels the start: it rejects at once with the signal's reason. A
   *   request already sent is left to finish, and a session it created is stopped at once.
   * @returns {Promise<ConcurrencySession>} The admitted session, already heartbeating.
   * @throws {LimitReachedError} At the limit (403 `limit_reached`).
   * @throws {ConcurrencyError} Any other refusal, or no answer (`status` 0).
   */
  async start({ deviceId, streamId, userId, signal } = /** @type {any} */ ({})) {
    for (const [name, value] of [["deviceId", deviceId], ["streamId", streamId]]) {
      if (typeof value !== "string" || value === "") throw new TypeError(`start() needs ${name} (a string)`);
    }
    if (userId !== undefined && typeof userId !== "string") throw new TypeError("userId must be a string");
    const ctx = this.#ctx;
    const accessToken =
      typeof ctx.accessToken === "function" ? await ctx.accessToken() : ctx.accessToken;
    const body = { deviceId, streamId };
    if (userId !== undefined) body.userId = userId;
    signal?.throwIfAborted?.();
    const sentAt = ctx.now();
    // The signal does not cancel the request itself: the service may have admitted the session already,
    // and only the answer's token can free that slot before it expires.
    const request = send(ctx, "POST", "/v1/sessions", {
      bearer: accessToken || undefined,
      json: body,
      timeoutMs: ctx.settings.requestTimeoutMs,
    });
    const admit = (answer) =>
      (answer.status === 200 || answer.status === 201) && validSession(answer.body)
        ? new ConcurrencySession(INTERNAL, ctx, { ...body, ...answer.body }, sentAt)
        : null;
    let answer;
    try {
      answer = await untilAborted(request, signal);
      signal?.throwIfAborted?.(); // aborted as the answer came: the caller has let go all the same
    } catch (error) {
      // A session this start created is released; one it renewed (`updated`) was live before and is not ours.
      const release = (late) => late.body?.status !== "updated" && admit(late)?.stop();
      if (signal?.aborted) request.then(release, () => {});
      throw error;
    }
    const session = admit(answer);
    if (session) return session;
    throw errorFrom(answer);
  }
}

/**
 * One admitted playback. Heartbeats by itself until it ends; listen for its events:
 * - `token`: a heartbeat answered a fresh token, `detail: {token, expiresIn, sessionId}`;
 * - `ended`: the session is over, `detail: {reason, error?}`: `stopped` (by `stop()` or the page going
 *   away), or the service's 410 reason (`kicked`, `evicted`, `expired`, `limit`, ...), or `expired` when no
 *   heartbeat could get through before the token expired, or `invalid_token` / `error`;
 * - `retry`: a heartbeat failed and will be retried, `detail: {attempt, delayMs, error}`.
 *
 * Made by `ConcurrencyClient.start`; not constructed directly.
 */
export class ConcurrencySession extends EventTarget {
  #ctx;
  #id;
  #token;
  #expiresIn;
  #deadline; // when the token expires, on ctx.now's (monotonic) clock
  #expiresAt; // the same, as a wall-clock time stamp for the caller
  #status;
  #timer = null;
  #nextAt = 0;
  #inFlight = null;
  #attempt = 0;
  #endReason = null;
  #stopPromise = null;
  #serverEnded = false; // the service itself said the session is over (410)
  #resolveClosed;
  #closed;
  #listeners = [];

  /** @internal */
  constructor(key, ctx, answer, sentAt) {
    if (key !== INTERNAL) throw new TypeError("sessions are made by ConcurrencyClient.start()");
    super();
    this.#ctx = ctx;
    this.#id = answer.sessionId;
    this.#status = answer.status;
    /** @type {string} */
    this.deviceId = answer.deviceId;
    /** @type {string} */
    this.streamId = answer.streamId;
    /** @type {string | undefined} */
    this.userId = answer.userId;
    this.#closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#accept(answer, sentAt);
    this.#watchPage();
    this.#scheduleHeartbeat(sentAt);
  }

  /** The session id (`sessionId`). */
  get id() {
    return this.#id;
  }

  /** The current session token: hand it to the CDN / licence requests. Changes after every heartbeat. */
  get token() {
    return this.#token;
  }

  /** `initiated` (a new session) or `updated` (the live session of this device and stream, renewed). */
  get status() {
    return this.#status;
  }

  /** Lifetime of the current token, in seconds, as the service said. */
  get expiresIn() {
    return this.#expiresIn;
  }

  /**
   * When the current token expires, as a wall-clock time stamp (ms since the epoch, like `Date.now()`), counted
   * from when its request was sent. For display and logs: the module's own timing does not use it.
   */
  get expiresAt() {
    return this.#expiresAt;
  }

  /** True until the session ends. */
  get active() {
    return this.#endReason === null;
  }

  /** Why the session ended, or null while it is active. */
  get endReason() {
    return this.#endReason;
  }

  /** Resolves with the `ended` event's detail once the session is over. */
  get closed() {
    return this.#closed;
  }

  /**
   * Stop the session: no more heartbeats, `ended` fires with reason `stopped`, and
   * `DELETE /v1/sessions/{id}` frees the slot (retried on 503 and network errors while the token is valid).
   * Idempotent: every call returns the same promise. Never rejects.
   *
   * @returns {Promise<boolean>} true once the service confirmed that the session is over (now or before);
   *   false if it could not be told (the session then expires on its own after `expiresIn` seconds).
   */
  stop() {
    if (this.#stopPromise) return this.#stopPromise;
    if (!this.active) {
      // Ended before: by the service (410: it knows), or here, with no valid token left to send.
      this.#stopPromise = Promise.resolve(this.#serverEnded);
      return this.#stopPromise;
    }
    this.#end("stopped");
    this.#stopPromise = this.#sendStop(false);
    return this.#stopPromise;
  }

  /** Take a successful answer's token and lifetime. */
  #accept(answer, sentAt) {
    this.#token = answer.token;
    this.#expiresIn = answer.expiresIn;
    // The service's clock started the token no earlier than we sent the request: count from then.
    this.#deadline = sentAt + answer.expiresIn * 1000;
    this.#expiresAt = Math.round(Date.now() + (this.#deadline - this.#ctx.now()));
  }

  /** Plan the next heartbeat after an answer to a request sent at `sentAt`. */
  #scheduleHeartbeat(sentAt) {
    const { heartbeatRatio, expiryMarginMs, jitterRatio } = this.#ctx.settings;
    const ttl = this.#expiresIn * 1000;
    const margin = Math.min(expiryMarginMs, ttl / 4);
    const interval = Math.min(ttl * heartbeatRatio, ttl - margin);
    const at = sentAt + interval * (1 - jitterRatio * this.#ctx.random());
    this.#schedule(Math.max(0, at - this.#ctx.now()));
  }

  #schedule(delayMs) {
    this.#clearTimer();
    this.#nextAt = this.#ctx.now() + delayMs;
    this.#timer = this.#ctx.setTimeout(() => {
      this.#timer = null;
      this.#heartbeat();
    }, delayMs);
  }

  #clearTimer() {
    if (this.#timer !== null) {
      this.#ctx.clearTimeout(this.#timer);
      this.#timer = null;
    }
  }

  /** One heartbeat; at most one is in flight, and it always carries the newest token. */
  async #heartbeat() {
    if (!this.active || this.#inFlight) return;
    const ctx = this.#ctx;
    const controller = new AbortController();
    this.#inFlight = controller;
    const sentAt = ctx.now();
    let answer;
    try {
      answer = await send(ctx, "PUT", this.#path(), {
        bearer: this.#token,
        signal: controller.signal,
        // Waiting past the token's expiry is pointless; but give a late answer a second at least.
        timeoutMs: Math.min(ctx.settings.requestTimeoutMs, Math.max(1000, this.#deadline - sentAt)),
      });
    } catch (error) {
      if (this.#inFlight === controller) this.#inFlight = null;
      if (!this.active) return; // stopped meanwhile: the abort is ours
      this.#retry(error);
      return;
    }
    if (this.#inFlight === controller) this.#inFlight = null;
    if (!this.active) return;
    const { status, body } = answer;
    if (status === 200 && validSession(body)) {
      this.#attempt = 0;
      this.#status = body.status;
      this.#accept(body, sentAt);
      this.#scheduleHeartbeat(sentAt);
      this.#dispatch("token", { token: body.token, expiresIn: body.expiresIn, sessionId: this.#id });
      return;
    }
    const error = errorFrom(answer);
    if (status === 410) {
      this.#serverEnded = true;
      this.#end(typeof body?.reason === "string" ? body.reason : "gone", error);
    } else if (retriable(status) || status === 200) {
      this.#retry(error); // 200 with a body that is not a session: a proxy's page, say
    } else if (status === 401) {
      this.#end(ctx.now() >= this.#deadline ? "expired" : "invalid_token", error);
    } else {
      this.#end("error", error);
    }
  }

  /** Back off after a failed heartbeat; end the session once its token would expire before the next try. */
  #retry(error) {
    const ctx = this.#ctx;
    const { backoffInitialMs, backoffMaxMs, jitterRatio, finalAttemptMarginMs } = ctx.settings;
    this.#attempt += 1;
    const backoff = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (this.#attempt - 1));
    let delayMs = backoff / 2 + (ctx.random() * backoff) / 2; // "equal jitter"
    if (error?.retryAfterMs != null) {
      delayMs = Math.max(delayMs, error.retryAfterMs * (1 + jitterRatio * ctx.random()));
    }
    const lastChance = this.#deadline - finalAttemptMarginMs;
    const now = ctx.now();
    if (now >= lastChance) {
      this.#end("expired", error);
      return;
    }
    delayMs = Math.min(delayMs, lastChance - now);
    this.#schedule(delayMs);
    this.#dispatch("retry", { attempt: this.#attempt, delayMs, error });
  }

  /**
   * Send the stop (the first try with `keepalive` when the page is going away), retrying 503s and network
   * errors while the token is valid. Until the service confirms it, a `pagehide` sends it again with
   * `keepalive`: a request in flight or a retry waiting for its timer would die with the page.
   */
  async #sendStop(keepalive) {
    const ctx = this.#ctx;
    const { backoffInitialMs, backoffMaxMs, requestTimeoutMs, finalAttemptMarginMs } = ctx.settings;
    const sendDelete = (keepalive) =>
      send(ctx, "DELETE", this.#path(), { bearer: this.#token, timeoutMs: requestTimeoutMs, keepalive });
    let confirmed = false;
    const onPageHide = () =>
      sendDelete(true).then((answer) => (confirmed ||= stopConfirmed(answer)), () => {});
    ctx.window?.addEventListener("pagehide", onPageHide);
    try {
      for (let attempt = 1; !confirmed; attempt += 1) {
        let error;
        try {
          const answer = await sendDelete(keepalive && attempt === 1);
          if (stopConfirmed(answer)) return true;
          error = errorFrom(answer);
          if (!retriable(answer.status)) return confirmed;
        } catch (caught) {
          error = caught;
        }
        const backoff = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (attempt - 1));
        const delayMs = Math.max(backoff / 2 + (ctx.random() * backoff) / 2, error?.retryAfterMs ?? 0);
        if (ctx.now() + delayMs >= this.#deadline - finalAttemptMarginMs) return confirmed;
        await new Promise((resolve) => ctx.setTimeout(resolve, delayMs));
      }
      return true;
    } finally {
      ctx.window?.removeEventListener("pagehide", onPageHide);
    }
  }

  /** The page is going away (or hidden, if so asked): stop with a request that outlives it. */
  #stopKeepalive(trigger) {
    if (!this.active) return;
    this.#end("stopped", undefined, trigger);
    this.#stopPromise = this.#sendStop(true);
  }

  #end(reason, error, trigger) {
    if (!this.active) return;
    this.#endReason = reason;
    this.#clearTimer();
    if (this.#inFlight) {
      this.#inFlight.abort();
      this.#inFlight = null;
    }
    for (const [target, type, listener] of this.#listeners) target.removeEventListener(type, listener);
    this.#listeners = [];
    const detail = { reason };
    if (error !== undefined) detail.error = error;
    if (trigger !== undefined) detail.trigger = trigger;
    this.#resolveClosed(detail);
    this.#dispatch("ended", detail);
  }

  /**
   * Page lifecycle (browsers): stop on `pagehide` (and, if asked, when hidden); heartbeat at once when the
   * page comes back or the network returns and a heartbeat is overdue (hidden tabs' timers are throttled).
   */
  #watchPage() {
    const win = this.#ctx.window;
    if (!win) return;
    const doc = win.document && typeof win.document.addEventListener === "function" ? win.document : null;
    const listen = (target, type, listener) => {
      target.addEventListener(type, listener);
      this.#listeners.push([target, type, listener]);
    };
    if (this.#ctx.stopOnPageHide) listen(win, "pagehide", () => this.#stopKeepalive("pagehide"));
    listen(win, "online", () => this.#wake(true));
    if (doc) {
      listen(doc, "visibilitychange", () => {
        if (doc.visibilityState === "hidden") {
          if (this.#ctx.stopOnHidden) this.#stopKeepalive("hidden");
        } else {
          this.#wake(false);
        }
      });
      listen(doc, "resume", () => this.#wake(false)); // after a frozen page thaws
    }
  }

  /** Send the pending heartbeat now if it is overdue (or, `retrying`, if it is a retry). */
  #wake(retrying) {
    if (!this.active || this.#inFlight || this.#timer === null) return;
    if (this.#ctx.now() >= this.#nextAt || (retrying && this.#attempt > 0)) {
      this.#clearTimer();
      this.#heartbeat();
    }
  }

  #path() {
    return `/v1/sessions/${encodeURIComponent(this.#id)}`;
  }

  #dispatch(type, detail) {
    this.dispatchEvent(new ConcurrencyEvent(type, detail));
  }
}

// --- HTTP -----------------------------------------------------------------------------------------------

/** The service says the session is over: stopped now (204) or before (410). */
function stopConfirmed(answer) {
  return answer.status === 204 || answer.status === 410;
}

/** A status worth retrying: the store or a proxy is down for now, or we are asked to slow down. */
function retriable(status) {
  return status === 408 || status === 429 || status >= 500;
}

function validSession(body) {
  return (
    body !== null &&
    typeof body === "object" &&
    typeof body.sessionId === "string" &&
    typeof body.token === "string" &&
    body.token !== "" &&
    typeof body.expiresIn === "number" &&
    body.expiresIn > 0
  );
}

/** Turn an answer that is not a success into the error it means. */
function errorFrom({ status, body, retryAfterMs }) {
  const json = body !== null && typeof body === "object" ? body : null;
  const code = typeof json?.error === "string" ? json.error : status === 200 ? "bad_response" : `http_${status}`;
  const message = typeof json?.message === "string" ? json.message : `HTTP ${status} (${code})`;
  const init = { status, code, body: json, retryAfterMs };
  if (status === 403 && code === "limit_reached") return new LimitReachedError(message, init);
  return new ConcurrencyError(message, init);
}

/** Settle as `promise` does, or reject with the signal's reason as soon as it aborts. */
function untilAborted(promise, signal) {
  if (!signal) return promise;
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason ?? new DOMException("The start was aborted", "AbortError"));
    if (signal.aborted) onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** `Retry-After` in milliseconds: delta-seconds or an HTTP date; null when absent or unreadable. */
function parseRetryAfter(value) {
  if (value === null || value === undefined || value === "") return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

/**
 * Send one request; resolve with `{status, body, retryAfterMs}` for any HTTP answer, reject with a
 * ConcurrencyError (`network_error`, `timeout`) when none came, or with the signal's reason when aborted.
 *
 * @param {any} ctx
 * @param {string} method
 * @param {string} path
 * @param {{bearer?: string, json?: object, signal?: AbortSignal, timeoutMs?: number, keepalive?: boolean}} options
 * @returns {Promise<{status: number, body: any, retryAfterMs: number | null}>}
 */
async function send(ctx, method, path, { bearer, json, signal, timeoutMs, keepalive = false }) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  if (keepalive) init.keepalive = true;
  signal?.throwIfAborted?.();
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  let timedOut = false;
  const timer =
    timeoutMs && !keepalive
      ? ctx.setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, timeoutMs)
      : null;
  init.signal = controller.signal;
  try {
    const response = await ctx.fetch(ctx.baseUrl + path, init);
    const text = response.status === 204 ? "" : await response.text();
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    return { status: response.status, body, retryAfterMs: parseRetryAfter(response.headers.get("Retry-After")) };
  } catch (error) {
    if (signal?.aborted) throw signal.reason ?? error;
    if (timedOut) {
      throw new ConcurrencyError(`no answer to ${method} ${path} within ${timeoutMs} ms`, { code: "timeout" });
    }
    throw new ConcurrencyError(`${method} ${path} failed: ${error?.message ?? error}`, {
      code: "network_error",
      cause: error,
    });
  } finally {
    if (timer !== null) ctx.clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}
