// Fakes for the unit tests: a manual clock with timers, and a scripted fetch.

/** Let pending promise callbacks (and the module's awaits) run. */
export async function settle() {
  for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** A clock whose time moves only when told; timers fire in order as it moves. */
export class FakeClock {
  time = 1_000_000;
  #timers = new Map();
  #nextId = 1;

  now = () => this.time;

  setTimeout = (fn, ms) => {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.time + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** The delays (from now) of the pending timers, soonest first. */
  pending() {
    return [...this.#timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, firing due timers in order and letting their work settle. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await settle();
      const due = [...this.#timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at);
      if (due.length === 0) break;
      const [id, timer] = due[0];
      this.#timers.delete(id);
      this.time = Math.max(this.time, timer.at);
      timer.fn();
    }
    this.time = end;
    await settle();
  }
}

/** A JSON answer. */
export function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}

export function session(sessionId, token, expiresIn = 60, status = "updated") {
  return { sessionId, token, status, expiresIn };
}

/**
 * A fetch that records every call and answers from a script: `reply(fn)` queues one answer, where `fn`
 * gets the call and returns a Response, a promise of one, or throws (a network error).
 */
export class FakeFetch {
  calls = [];
  #script = [];

  fetch = (url, init = {}) => {
    const call = {
      url,
      method: init.method ?? "GET",
      headers: init.headers ?? {},
      body: init.body,
      keepalive: init.keepalive ?? false,
      signal: init.signal,
    };
    this.calls.push(call);
    const next = this.#script.shift();
    if (!next) return Promise.reject(new Error(`unexpected ${call.method} ${url}`));
    return new Promise((resolve, reject) => {
      call.signal?.addEventListener("abort", () => reject(call.signal.reason), { once: true });
      Promise.resolve()
        .then(() => next(call))
        .then(resolve, reject);
    });
  };

  reply(fn) {
    this.#script.push(fn);
    return this;
  }

  /** Queue an answer that never comes (until aborted). */
  hang() {
    return this.reply(() => new Promise(() => {}));
  }

  get remaining() {
    return this.#script.length;
  }
}

/** A stand-in for `window` with a `document`, both event targets. */
export class FakeWindow extends EventTarget {
  document = Object.assign(new EventTarget(), { visibilityState: "visible" });

  hide() {
    this.document.visibilityState = "hidden";
    this.document.dispatchEvent(new Event("visibilitychange"));
  }

  show() {
    this.document.visibilityState = "visible";
    this.document.dispatchEvent(new Event("visibilitychange"));
  }
}
