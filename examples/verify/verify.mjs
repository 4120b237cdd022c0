// Verify concurrency-service session tokens offline with `jose` (Node >= 18), as a licence server or a
// playback backend would.
//
// `createVerifier({jwksUrl, issuer, audience})` returns `verify(token, {stream, sid})`, which does every check
// of docs/integration.md ("Verifying session tokens"). Run as a program, this file is a small HTTP server
// guarding GET /media/STREAM/... (tests/test_verifiers.py runs it against the real service):
//
//   npm ci && node verify.mjs --jwks-url http://127.0.0.1:8000/.well-known/jwks.json --port 8082
//
// It answers 200 with the token's claims for a valid token of that stream (and of the session named by ?sid= or
// the `sid` cookie, if any), 401 for a missing or invalid token, 403 for a valid token of another stream or
// session, 503 when the JWKS cannot be had.
//
// jose's own createRemoteJWKSet keeps a JWKS for a fixed time (cacheMaxAge); CachedJwks below keeps it for the
// Cache-Control max-age the service sends and revalidates it with its ETag.
import { createServer } from "node:http";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { errors, importJWK, jwtVerify } from "jose";

export const ALGORITHMS = ["ES256", "EdDSA", "RS256"]; // what the service signs with; never HS*, never none
const TOKEN_TYPE = "session+jwt";
const REQUIRED = ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "stream", "device"];
const MAX_TOKEN_CHARS = 6144; // the service's own limit (api/config.py)
const MIN_CACHE_S = 1;
const MAX_CACHE_S = 3600;

export class Refused extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status; // 401 invalid token, 403 valid but not for this resource, 503 no JWKS
  }
}

/** The service's JWKS, kept for its Cache-Control max-age; refetched (rate-limited) for an unknown kid. */
export class CachedJwks {
  constructor(url, { refreshIntervalS = 10, timeoutS = 5 } = {}) {
    this.url = url;
    this.refreshIntervalMs = refreshIntervalS * 1000;
    this.timeoutMs = timeoutS * 1000;
    this.keys = null; // kid -> {alg, jwk, key: Promise of the imported key, made on first use}
    this.etag = null;
    this.expiresAt = 0;
    this.attemptedAt = -Infinity; // when the last fetch started, failed or not: the refetch interval counts it
    this.inflight = null;
    this.fetches = 0;
  }

  async get(kid) {
    if (this.keys === null || Date.now() >= this.expiresAt) {
      await this.refresh();
    }
    let entry = this.keys.get(kid);
    if (!entry && Date.now() - this.attemptedAt >= this.refreshIntervalMs) {
      await this.refresh(); // a key published since we fetched, or a forged kid: rate-limited either way
      entry = this.keys.get(kid);
    }
    if (!entry) {
      throw new Refused(401, "unknown kid");
    }
    if (!entry.key) {
      entry.key = importJWK(entry.jwk, entry.alg); // the key is bound to the algorithm the JWKS gives it
    }
    return entry;
  }

  refresh() {
    this.inflight ??= this.fetch().finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  async fetch() {
    const headers = { accept: "application/json" };
    if (this.etag && this.keys !== null) {
      headers["if-none-match"] = this.etag;
    }
    this.fetches += 1;
    this.attemptedAt = Date.now(); // so that a JWKS outage does not turn each forged kid into a request
    let answer;
    try {
      answer = await fetch(this.url, { headers, redirect: "error", signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (error) {
      throw new Refused(503, `JWKS unavailable: ${error.message}`);
    }
    if (answer.status === 200) {
      let body;
      try {
        body = await answer.json();
      } catch {
        throw new Refused(503, "JWKS is not JSON");
      }
      if (!body || !Array.isArray(body.keys)) {
        throw new Refused(503, "JWKS has no keys list");
      }
      const keys = new Map();
      for (const jwk of body.keys) {
        if (typeof jwk?.kid === "string" && ALGORITHMS.includes(jwk.alg) && (jwk.use ?? "sig") === "sig") {
          keys.set(jwk.kid, { alg: jwk.alg, jwk, key: null });
        }
      }
      this.keys = keys;
      this.etag = answer.headers.get("etag");
    } else if (answer.status !== 304 || this.keys === null) {
      throw new Refused(503, `JWKS answered ${answer.status}`);
    }
    const cacheControl = answer.headers.get("cache-control") ?? "";
    const maxAge = /no-store/i.test(cacheControl) ? 0 : Number(/(?:^|,)\s*max-age\s*=\s*(\d+)/i.exec(cacheControl)?.[1] ?? 0);
    this.expiresAt = Date.now() + Math.min(Math.max(maxAge, MIN_CACHE_S), MAX_CACHE_S) * 1000;
  }
}

export function createVerifier({
  jwksUrl,
  issuer = "concurrency-service",
  audience = "playback",
  leewayS = 5,
  refreshIntervalS = 10,
}) {
  const jwks = new CachedJwks(jwksUrl, { refreshIntervalS });

  async function key(header) {
    if (typeof header.kid !== "string") {
      throw new Refused(401, "no kid");
    }
    const entry = await jwks.get(header.kid); // only from the JWKS, never from the token
    if (header.alg !== entry.alg) {
      throw new Refused(401, "token algorithm does not match its key");
    }
    return entry.key;
  }

  async function verify(token, { stream, sid = null }) {
    if (typeof token !== "string" || token.length > MAX_TOKEN_CHARS) {
      throw new Refused(401, "no token, or too long");
    }
    let claims;
    let header;
    try {
      ({ payload: claims, protectedHeader: header } = await jwtVerify(token, key, {
        issuer,
        audience,
        algorithms: ALGORITHMS,
        clockTolerance: leewayS,
        requiredClaims: REQUIRED,
      }));
    } catch (error) {
      if (error instanceof Refused) {
        throw error;
      }
      if (error instanceof errors.JOSEError) {
        throw new Refused(401, `${error.code}: ${error.message}`);
      }
      throw error;
    }
    if (header.typ !== TOKEN_TYPE) {
      throw new Refused(401, "wrong token type"); // exactly: jose's `typ` option also takes "application/SESSION+JWT"
    }
    if (claims.aud !== audience) {
      throw new Refused(401, "audience is not ours alone"); // jose accepts a list containing it; we write one
    }
    for (const name of ["sub", "sid", "stream", "device", "jti"]) {
      if (typeof claims[name] !== "string") {
        throw new Refused(401, `claim ${name} is not a string`);
      }
    }
    if (claims.iat > Date.now() / 1000 + leewayS) {
      throw new Refused(401, "token issued in the future");
    }
    if (claims.stream !== stream) {
      throw new Refused(403, "token is for another stream");
    }
    if (sid !== null && claims.sid !== sid) {
      throw new Refused(403, "token is for another session");
    }
    return claims;
  }

  verify.jwks = jwks;
  return verify;
}

// --- the media server -----------------------------------------------------------------------------------

function tokenOf(request, url) {
  const header = request.headers.authorization;
  if (header) {
    const match = /^Bearer +(\S+) *$/i.exec(header);
    if (!match) {
      throw new Refused(401, "Authorization is not a Bearer token");
    }
    return match[1];
  }
  return url.searchParams.get("token") || null;
}

function cookie(request, name) {
  for (const part of (request.headers.cookie ?? "").split(";")) {
    const at = part.indexOf("=");
    if (at > 0 && part.slice(0, at).trim() === name) {
      return part.slice(at + 1).trim();
    }
  }
  return null;
}

export function mediaServer(verify) {
  return createServer(async (request, response) => {
    const send = (status, body, headers = {}) => {
      response.writeHead(status, { ...headers, "content-type": "application/json" });
      response.end(JSON.stringify(body));
    };
    const url = new URL(request.url, "http://media.invalid"); // resolves dot segments
    const segments = url.pathname.split("/");
    let stream;
    try {
      stream = segments.length >= 4 && segments[1] === "media" ? decodeURIComponent(segments[2]) : null;
    } catch {
      stream = null;
    }
    if (request.method !== "GET" || !stream) {
      return send(404, { error: "not found" });
    }
    try {
      const sid = url.searchParams.get("sid") || cookie(request, "sid");
      const claims = await verify(tokenOf(request, url), { stream, sid });
      return send(200, { ok: true, claims });
    } catch (error) {
      if (!(error instanceof Refused)) {
        console.error(error);
        return send(500, { error: "internal error" });
      }
      const challenge = error.status === 401 ? { "www-authenticate": 'Bearer error="invalid_token"' } : {};
      return send(error.status, { error: error.message }, challenge);
    }
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      "jwks-url": { type: "string" },
      issuer: { type: "string", default: "concurrency-service" },
      audience: { type: "string", default: "playback" },
      leeway: { type: "string", default: "5" },
      "refresh-interval": { type: "string", default: "10" },
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8082" },
    },
  });
  if (!values["jwks-url"]) {
    console.error("usage: node verify.mjs --jwks-url URL [--issuer I] [--audience A] [--port P]");
    process.exit(2);
  }
  const verify = createVerifier({
    jwksUrl: values["jwks-url"],
    issuer: values.issuer,
    audience: values.audience,
    leewayS: Number(values.leeway),
    refreshIntervalS: Number(values["refresh-interval"]),
  });
  const server = mediaServer(verify);
  server.listen(Number(values.port), values.host, () => {
    console.log(`verifying session tokens on http://${values.host}:${server.address().port}/media/`);
  });
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
}
