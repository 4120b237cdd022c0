/**
 * Player module of the stream concurrency service (browsers and Node.js 18+).
 * @module concurrency
 */

/** Schedule and retry settings; each may be overridden in {@link ConcurrencyClientOptions}. */
export interface ScheduleSettings {
  /** Heartbeat after this fraction of the token lifetime (`expiresIn`). Default 0.5. */
  heartbeatRatio: number;
  /** Never heartbeat later than this long before the token expires (at most a quarter of its lifetime). Default 5000. */
  expiryMarginMs: number;
  /** Heartbeats are moved earlier by up to this fraction; also the extra spread above a `Retry-After`. At least 0, under 1. Default 0.1. */
  jitterRatio: number;
  /** First retry delay after a 503, 429, other 5xx or network error; doubles per failure. Over 0. Default 500. */
  backoffInitialMs: number;
  /** Cap of the retry delay (a longer `Retry-After` wins); at least `backoffInitialMs`. Default 8000. */
  backoffMaxMs: number;
  /** The last retry goes out this long before the token expires; under `expiryMarginMs`. Default 500. */
  finalAttemptMarginMs: number;
  /** A request unanswered after this long is a network error (`timeout`). Default 10000. */
  requestTimeoutMs: number;
}

/** The defaults of {@link ScheduleSettings}. */
export const DEFAULTS: Readonly<ScheduleSettings>;

/** The part of `window` the module listens to (page lifecycle). */
export interface LifecycleTarget {
  addEventListener(type: string, listener: (event: Event) => void): void;
  removeEventListener(type: string, listener: (event: Event) => void): void;
  document?: {
    visibilityState?: string;
    addEventListener(type: string, listener: (event: Event) => void): void;
    removeEventListener(type: string, listener: (event: Event) => void): void;
  };
}

export interface ConcurrencyClientOptions extends Partial<ScheduleSettings> {
  /** The service's base URL; `""` or `"/"` for the page's own origin. */
  baseUrl: string;
  /** The user's access token (or a function returning a fresh one), sent as Bearer on starts. */
  accessToken?: string | (() => string | null | undefined | Promise<string | null | undefined>);
  /** Defaults to the global `fetch`. */
  fetch?: typeof fetch;
  /** Defaults to the global `setTimeout`. */
  setTimeout?: (callback: () => void, ms: number) => unknown;
  /** Defaults to the global `clearTimeout`. */
  clearTimeout?: (handle: any) => void;
  /**
   * A monotonic clock in milliseconds, for elapsed time (the schedule, the token's remaining life); defaults to
   * `performance.now`. Not the wall clock: setting the system's time must not move it.
   */
  now?: () => number;
  /** Jitter source in [0, 1); defaults to `Math.random`. */
  random?: () => number;
  /** Page lifecycle source; defaults to the global `window` (none in Node). `null` turns it off. */
  window?: LifecycleTarget | null;
  /** Stop the session with a `keepalive` request on `pagehide`. Default true. */
  stopOnPageHide?: boolean;
  /** Also stop it when the page becomes hidden. Default false: hidden tabs may still be playing. */
  stopOnHidden?: boolean;
}

export interface StartRequest {
  deviceId: string;
  streamId: string;
  /** Anonymous and trusted-caller modes; in user-token mode the user is the access token's `sub`. */
  userId?: string;
  /**
   * Cancels the start: it rejects at once with the signal's reason. A request already sent is left to finish,
   * and a session it created is stopped at once (one it only renewed, `updated`, is left alone).
   */
  signal?: AbortSignal;
}

/** The body of an error answer: `{error, message, ...}`. */
export interface ErrorBody {
  error: string;
  message: string;
  [member: string]: unknown;
}

/** A refusal of the service, or no answer at all (`status` 0, `code` `network_error` or `timeout`). */
export class ConcurrencyError extends Error {
  constructor(
    message: string,
    init?: { status?: number; code?: string; body?: ErrorBody | null; retryAfterMs?: number | null; cause?: unknown },
  );
  readonly name: string;
  /** HTTP status; 0 when no answer came. */
  status: number;
  /** The service's `error` code (`store_unavailable`, `invalid_token`, ...), `network_error`, `timeout`, or `http_<status>`. */
  code: string;
  /** The parsed JSON error body, or null. */
  body: ErrorBody | null;
  /** The answer's `Retry-After` in milliseconds, or null. */
  retryAfterMs: number | null;
}

/** A live session holding a limit, as listed by the service (when the caller may see them). */
export interface ActiveSession {
  sessionKey?: string;
  sessionId?: string;
  deviceId?: string;
  streamId?: string;
  started?: number;
  [member: string]: unknown;
}

/** `start` at the limit: 403 `limit_reached`. */
export class LimitReachedError extends ConcurrencyError {
  constructor(message: string, init?: { status?: number; code?: string; body?: ErrorBody | null; retryAfterMs?: number | null });
  /** The limit reached. */
  limit: number | undefined;
  /** What the limit counts: `account`, `stream` or `device`. */
  scope: "account" | "stream" | "device" | (string & {}) | undefined;
  /** The sessions holding the limit; absent when the service does not show them to this caller. */
  sessions: ActiveSession[] | undefined;
}

/** Why a session ended. */
export type EndReason =
  | "stopped"
  | "kicked"
  | "evicted"
  | "expired"
  | "limit"
  | "invalid_token"
  | "error"
  | "gone"
  | (string & {});

export interface TokenEventDetail {
  token: string;
  /** Lifetime of this token in seconds. */
  expiresIn: number;
  sessionId: string;
}

export interface EndedEventDetail {
  reason: EndReason;
  /** What the service answered (410, 401, ...) or the last failure before the token expired. */
  error?: ConcurrencyError | Error;
  /** `pagehide` or `hidden` when the page lifecycle stopped the session. */
  trigger?: "pagehide" | "hidden";
}

export interface RetryEventDetail {
  /** 1 for the first retry after a success. */
  attempt: number;
  /** When the retry goes out. */
  delayMs: number;
  error: ConcurrencyError | Error;
}

/** A listener as EventTarget takes it (spelled out so that Node-only projects need no DOM typings). */
export type Listener = ((event: Event) => void) | { handleEvent(event: Event): void };
export interface ListenerOptions {
  capture?: boolean;
  once?: boolean;
  passive?: boolean;
  signal?: AbortSignal;
}

/** An event of a session, `detail` carrying its data. */
export interface ConcurrencyEvent<T> extends Event {
  readonly detail: T;
}

export interface ConcurrencySessionEventMap {
  token: ConcurrencyEvent<TokenEventDetail>;
  ended: ConcurrencyEvent<EndedEventDetail>;
  retry: ConcurrencyEvent<RetryEventDetail>;
}

/** One admitted playback; heartbeats by itself until it ends. Made by {@link ConcurrencyClient.start}. */
export class ConcurrencySession extends EventTarget {
  private constructor();
  /** The session id. */
  readonly id: string;
  /** The current session token; changes after every heartbeat. */
  readonly token: string;
  /** `initiated` or `updated` (a live session of this device and stream renewed). */
  readonly status: "initiated" | "updated";
  /** Lifetime of the current token in seconds. */
  readonly expiresIn: number;
  /** When the current token expires: a wall-clock time stamp (ms since the epoch, like `Date.now()`). */
  readonly expiresAt: number;
  /** True until the session ends. */
  readonly active: boolean;
  /** Why it ended; null while active. */
  readonly endReason: EndReason | null;
  /** Resolves with the `ended` detail once the session is over. */
  readonly closed: Promise<EndedEventDetail>;
  readonly deviceId: string;
  readonly streamId: string;
  readonly userId: string | undefined;
  /**
   * Stop the session (idempotent, never rejects): true once the service confirmed it is over, false if it
   * could not be told (it then expires on its own). A `pagehide` while it is unconfirmed sends it with `keepalive`.
   */
  stop(): Promise<boolean>;

  addEventListener<K extends keyof ConcurrencySessionEventMap>(
    type: K,
    listener: (event: ConcurrencySessionEventMap[K]) => void,
    options?: boolean | ListenerOptions,
  ): void;
  addEventListener(type: string, listener: Listener | null, options?: boolean | ListenerOptions): void;
  removeEventListener<K extends keyof ConcurrencySessionEventMap>(
    type: K,
    listener: (event: ConcurrencySessionEventMap[K]) => void,
    options?: boolean | ListenerOptions,
  ): void;
  removeEventListener(type: string, listener: Listener | null, options?: boolean | ListenerOptions): void;
}

/** Talks to one concurrency service. */
export class ConcurrencyClient {
  /** @throws TypeError for a missing `baseUrl` or a schedule setting out of its range. */
  constructor(options: ConcurrencyClientOptions);
  /**
   * Start a session (`POST /v1/sessions`); resolves with the admitted session, already heartbeating.
   * Rejects with {@link LimitReachedError} at the limit, {@link ConcurrencyError} otherwise. Never retries.
   */
  start(request: StartRequest): Promise<ConcurrencySession>;
}
