// Verify a concurrency-service session token in nginx, with njs (Debian bookworm: nginx 1.22, njs 0.7.9).
//
// Called by `auth_request` (see nginx.conf beside this file): answers 204 to let the media request through,
// 401 for a token that is missing or fails verification, 403 for a valid token of another stream or session.
// What it checks is listed in docs/integration.md, "Verifying session tokens".
//
// Inputs, nginx variables set by the configuration (an auth subrequest shares its main request's variables):
//   $session_issuer, $session_audience   the expected `iss` and `aud`
//   $session_leeway                      seconds of clock leeway on `exp`, `iat`, `nbf`
//   $session_stream                      the stream the request is for (from the normalized path); required
// From the request itself: the token from `Authorization: Bearer`, else the `token` query parameter; the
// session it names, if any, from the `sid` query parameter, else the `sid` cookie (checked against `sid`).
// The query comes from $request_uri: the auth subrequest's own arguments are empty.
//
// The JWKS comes from two internal locations that proxy the service's /.well-known/jwks.json through the
// nginx cache: /_session_jwks keeps it as long as its Cache-Control says and revalidates it with its ETag;
// /_session_jwks_refresh bypasses the cache (and refills it) when a token names an unknown kid, rate-limited
// by limit_req (it answers 429 when over the limit). njs 0.7.9 keeps no state between requests, so the nginx
// cache and limit_req zones (shared by all workers) are the state.
//
// njs 0.7.9 limits: its WebCrypto has ECDSA P-256 and RSASSA-PKCS1-v1_5 but no Ed25519, so EdDSA keys are
// refused (fail closed); it cannot import JWKs, so the SPKI DER of each key is built here.

import qs from "querystring";

const ALGORITHMS = {
    ES256: { kty: "EC", import: { name: "ECDSA", namedCurve: "P-256" }, verify: { name: "ECDSA", hash: "SHA-256" } },
    RS256: {
        kty: "RSA",
        import: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
        verify: { name: "RSASSA-PKCS1-v1_5" },
    },
};
const TOKEN_TYPE = "session+jwt";
const MAX_TOKEN_CHARS = 6144; // the service's own limit (api/config.py)
const COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MIN_RSA_BITS = 2048;

function Refusal(status, reason) {
    this.status = status;
    this.reason = reason;
}

function refuse(status, reason) {
    throw new Refusal(status, reason);
}

function b64urlJson(segment, part) {
    let value;
    try {
        value = JSON.parse(Buffer.from(segment, "base64url").toString());
    } catch (e) {
        refuse(401, `token ${part} is not JSON`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
        refuse(401, `token ${part} is not a JSON object`);
    }
    return value;
}

function queryArg(r, name) {
    const uri = r.variables.request_uri || "";
    const at = uri.indexOf("?");
    const value = at < 0 ? undefined : qs.parse(uri.slice(at + 1))[name];
    return typeof value === "string" ? value : undefined; // a repeated parameter is an array: ignored
}

function bearerToken(r) {
    const header = r.headersIn.Authorization;
    if (header) {
        const match = /^Bearer +([^ ]+) *$/i.exec(header);
        return match ? match[1] : refuse(401, "Authorization is not a Bearer token");
    }
    const arg = queryArg(r, "token");
    return arg ? arg : refuse(401, "no token");
}

// --- keys: the JWKS through the nginx cache, SPKI DER from JWK members --------------------------------

async function jwks(r, refresh) {
    const reply = await r.subrequest(refresh ? "/_session_jwks_refresh" : "/_session_jwks", { method: "GET" });
    if (reply.status === 429) {
        return null; // a refresh was made a moment ago: use what the cache has
    }
    if (reply.status !== 200) {
        refuse(503, `JWKS answered ${reply.status}`);
    }
    let set;
    try {
        set = JSON.parse(reply.responseText);
    } catch (e) {
        refuse(503, "JWKS is not JSON");
    }
    if (!set || !Array.isArray(set.keys)) {
        refuse(503, "JWKS has no keys list");
    }
    return set.keys;
}

function findKey(keys, kid) {
    for (let i = 0; keys && i < keys.length; i++) {
        if (keys[i] && keys[i].kid === kid) {
            return keys[i];
        }
    }
    return null;
}

function derLength(length) {
    if (length < 0x80) {
        return Buffer.from([length]);
    }
    const bytes = [];
    for (let n = length; n > 0; n = Math.floor(n / 256)) {
        bytes.unshift(n % 256);
    }
    bytes.unshift(0x80 | bytes.length);
    return Buffer.from(bytes);
}

function der(tag, content) {
    return Buffer.concat([Buffer.from([tag]), derLength(content.length), content]);
}

function derUnsigned(bytes) {
    let start = 0;
    while (start < bytes.length - 1 && bytes[start] === 0) {
        start++;
    }
    const trimmed = bytes.slice(start);
    return der(0x02, trimmed[0] & 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

function b64urlBytes(value, what) {
    if (typeof value !== "string" || !/^[A-Za-z0-9_-]+$/.test(value)) {
        refuse(401, `key ${what} is not base64url`);
    }
    return Buffer.from(value, "base64url");
}

function spki(jwk) {
    if (jwk.alg === "ES256") {
        const x = b64urlBytes(jwk.x, "x");
        const y = b64urlBytes(jwk.y, "y");
        if (jwk.crv !== "P-256" || x.length !== 32 || y.length !== 32) {
            refuse(401, "ES256 key is not a P-256 point");
        }
        const prefix = Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex");
        return Buffer.concat([prefix, Buffer.from([4]), x, y]);
    }
    const n = b64urlBytes(jwk.n, "n");
    const e = b64urlBytes(jwk.e, "e");
    if (n.length * 8 < MIN_RSA_BITS) {
        refuse(401, "RSA key is too short");
    }
    const rsaEncryption = Buffer.from("300d06092a864886f70d0101010500", "hex");
    const publicKey = der(0x30, Buffer.concat([derUnsigned(n), derUnsigned(e)]));
    return der(0x30, Buffer.concat([rsaEncryption, der(0x03, Buffer.concat([Buffer.from([0]), publicKey]))]));
}

// --- the checks -----------------------------------------------------------------------------------------

function checkClaims(r, claims) {
    const now = Date.now() / 1000;
    const leeway = Number(r.variables.session_leeway || 5);
    if (claims.iss !== r.variables.session_issuer) {
        refuse(401, "wrong issuer");
    }
    if (claims.aud !== r.variables.session_audience) {
        refuse(401, "wrong audience"); // string equality: the service writes one string, never a list
    }
    const strings = ["sub", "sid", "stream", "device", "jti"];
    for (let i = 0; i < strings.length; i++) {
        if (typeof claims[strings[i]] !== "string") {
            refuse(401, `claim ${strings[i]} missing or not a string`);
        }
    }
    const times = ["exp", "iat"];
    for (let i = 0; i < times.length; i++) {
        if (typeof claims[times[i]] !== "number" || !isFinite(claims[times[i]])) {
            refuse(401, `claim ${times[i]} missing or not a number`);
        }
    }
    if (claims.exp <= now - leeway) {
        refuse(401, "token expired");
    }
    if (claims.iat > now + leeway) {
        refuse(401, "token issued in the future");
    }
    if (claims.nbf !== undefined && !(typeof claims.nbf === "number" && claims.nbf <= now + leeway)) {
        refuse(401, "token not yet valid");
    }
}

function checkResource(r, claims) {
    const stream = r.variables.session_stream;
    if (!stream) {
        refuse(403, "no stream in the request path");
    }
    if (claims.stream !== stream) {
        refuse(403, "token is for another stream");
    }
    const sid = queryArg(r, "sid") || r.variables.cookie_sid;
    if (sid && claims.sid !== sid) {
        refuse(403, "token is for another session");
    }
}

async function check(r) {
    const token = bearerToken(r);
    if (token.length > MAX_TOKEN_CHARS || !COMPACT.test(token)) {
        refuse(401, "token is not a compact JWS");
    }
    const parts = token.split(".");
    const header = b64urlJson(parts[0], "header");
    if (header.typ !== TOKEN_TYPE) {
        refuse(401, "wrong token type");
    }
    if (header.crit !== undefined) {
        refuse(401, "unsupported critical header");
    }
    if (typeof header.kid !== "string") {
        refuse(401, "no kid");
    }
    // njs 0.7.9 allows no `await` inside a call's arguments, hence the temporaries
    const cached = await jwks(r, false);
    let jwk = findKey(cached, header.kid);
    if (!jwk) {
        const refreshed = await jwks(r, true); // a key published since the cache filled, or a forged kid
        jwk = findKey(refreshed, header.kid);
    }
    if (!jwk) {
        refuse(401, "unknown kid");
    }
    if (jwk.use !== undefined && jwk.use !== "sig") {
        refuse(401, "key is not a signing key");
    }
    const alg = ALGORITHMS[jwk.alg];
    if (!alg) {
        refuse(401, `key algorithm ${jwk.alg} is not supported here (njs ${njs.version} has no Ed25519)`);
    }
    if (jwk.kty !== alg.kty || header.alg !== jwk.alg) {
        refuse(401, "token algorithm does not match its key");
    }
    const key = await crypto.subtle.importKey("spki", spki(jwk), alg.import, false, ["verify"]);
    const signature = Buffer.from(parts[2], "base64url");
    const valid = await crypto.subtle.verify(alg.verify, key, signature, Buffer.from(`${parts[0]}.${parts[1]}`));
    if (!valid) {
        refuse(401, "bad signature");
    }
    const claims = b64urlJson(parts[1], "payload");
    checkClaims(r, claims);
    checkResource(r, claims);
    return claims;
}

async function verify(r) {
    try {
        const claims = await check(r);
        r.headersOut["X-Session-Sub"] = claims.sub;
        r.headersOut["X-Session-Sid"] = claims.sid;
        r.return(204);
    } catch (e) {
        const refusal = e instanceof Refusal ? e : new Refusal(401, `verification failed: ${e.message}`);
        r.warn(`session token refused (${refusal.status}): ${refusal.reason}`);
        if (refusal.status === 401) {
            r.headersOut["WWW-Authenticate"] = `Bearer error="invalid_token", error_description="${refusal.reason}"`;
        }
        r.return(refusal.status);
    }
}

export default { verify };
