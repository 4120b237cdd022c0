// Verify session tokens with `jose` from the service's JWKS, as a CDN or licence server would.
// Usage: node verify.mjs JWKS_URL ISSUER AUDIENCE < tokens (one a line); prints one JSON result a line.
import { createRemoteJWKSet, jwtVerify } from "jose";
import { readFileSync } from "node:fs";

const [jwksUrl, issuer, audience] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksUrl));
const tokens = readFileSync(0, "utf8").split("\n").filter(Boolean);
for (const token of tokens) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      typ: "session+jwt",
      algorithms: ["ES256", "EdDSA", "RS256"],
    });
    console.log(JSON.stringify({ ok: true, alg: protectedHeader.alg, kid: protectedHeader.kid, sub: payload.sub }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: `${error.code}: ${error.message}` }));
  }
}
