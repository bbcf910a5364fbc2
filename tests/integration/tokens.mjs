// Helpers for the token-endpoint tests: client assertions built with node:crypto, the grants'
// requests, Entra's error shape, and live edits of directory.json. Only node built-ins.
import {
  constants, createHash, createHmac, generateKeyPairSync, randomUUID, sign as rsaSign, X509Certificate,
} from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { postForm } from './harness.mjs';

export const TOKEN_EXCHANGE_SCOPE = 'api://AzureADTokenExchange/.default';
export const TOKEN_EXCHANGE_APPID = 'fb60f99c-7a34-4190-8149-302f77469936';
export const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
export const GRANT_JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const b64u = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
export const now = () => Math.floor(Date.now() / 1000);

/** The blueprint's certificate credential written by `issuer init`. */
export function blueprintCredential(dir) {
  const key = readFileSync(join(dir.dir, 'keys/blueprint.key'), 'utf8');
  const cert = readFileSync(join(dir.dir, 'keys/blueprint.crt'), 'utf8');
  const der = new X509Certificate(cert).raw;
  return {
    key, cert,
    x5t: createHash('sha1').update(der).digest('base64url'),
    x5tS256: createHash('sha256').update(der).digest('base64url'),
    publicPem: new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'pem' }),
  };
}

/** A throwaway RSA key no app has registered. */
export function strangerKey() {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
}

/** Compact JWT. alg RS256/PS256 sign with an RSA key; HS256 uses key as the HMAC secret;
 *  none leaves the signature empty. */
export function signJwt(header, claims, key) {
  const input = `${b64u(header)}.${b64u(claims)}`;
  let sig;
  if (header.alg === 'RS256') sig = rsaSign('sha256', Buffer.from(input), key);
  else if (header.alg === 'PS256')
    sig = rsaSign('sha256', Buffer.from(input),
      { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  else if (header.alg === 'HS256') sig = createHmac('sha256', key).update(input).digest();
  else sig = Buffer.alloc(0);
  return `${input}.${sig.toString('base64url')}`;
}

/** A private_key_jwt client assertion as msal-node builds it (RS256 + x5t, or PS256 +
 *  x5t#S256), for clientId at aud; header and claims override the defaults. */
export function certAssertion({ clientId, aud, key, cred, alg = 'RS256', header = {}, claims = {} }) {
  const t = now();
  const h = alg === 'PS256' ? { alg, typ: 'JWT', 'x5t#S256': cred.x5tS256 } : { alg, typ: 'JWT', x5t: cred.x5t };
  const c = { aud, iss: clientId, sub: clientId, jti: randomUUID(), nbf: t, iat: t, exp: t + 600 };
  return signJwt({ ...h, ...header }, { ...c, ...claims }, key ?? cred.key);
}

/** The form fields of a client assertion. */
export const assertionFields = (assertion) =>
  ({ client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: assertion });

/** POST a token request to the issuer. */
export const token = (iss, ca, fields, headers) => postForm(iss.tokenUrl, fields, { ca, headers });

/** Assert a 200 token response and return it with its decoded access token. */
export function ok(r) {
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.token_type, 'Bearer');
  assert.equal(r.json.error, undefined);
  const [h, p] = r.json.access_token.split('.');
  const dec = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
  return { ...r.json, header: dec(h), claims: dec(p) };
}

/**
 * Assert an Entra error: status, error, error_codes [code], error_description "AADSTS<code>: ",
 * timestamp "YYYY-MM-DD HH:MM:SSZ", trace_id and correlation_id GUIDs, error_uri, suberror.
 */
export function refused(r, status, error, code, { suberror, correlationId, match } = {}) {
  assert.equal(r.status, status, r.text);
  const j = r.json;
  assert.ok(j, `JSON body expected: ${r.text}`);
  assert.equal(j.error, error, r.text);
  assert.deepEqual(j.error_codes, [code], r.text);
  assert.ok(j.error_description.startsWith(`AADSTS${code}: `), j.error_description);
  assert.match(j.timestamp, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z$/);
  assert.match(j.trace_id, GUID);
  assert.match(j.correlation_id, GUID);
  assert.ok(j.error_description.includes(`Trace ID: ${j.trace_id}`));
  assert.ok(j.error_description.includes(`Correlation ID: ${j.correlation_id}`));
  assert.ok(j.error_description.endsWith(`Timestamp: ${j.timestamp}`));
  assert.ok(j.error_uri.endsWith(`/error?code=${code}`), j.error_uri);
  assert.equal(j.access_token, undefined);
  if (suberror !== undefined) assert.equal(j.suberror, suberror);
  if (correlationId !== undefined) assert.equal(j.correlation_id, correlationId);
  if (match) assert.match(j.error_description, match);
  return j;
}

/** Replace directory.json atomically (write + rename), so a reload never sees half a file. */
export function saveDirectory(dir, obj) {
  const tmp = `${dir.file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(obj, null, 2), { mode: 0o600 });
  renameSync(tmp, dir.file);
}

/** Poll fn until it returns truthy, up to ms; returns its last value. */
export async function waitFor(fn, ms = 3000, step = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, step));
  }
}

/** GUID -> base64url of its .NET (little-endian) byte order, as in T1's FMI subject. */
export function guidB64LE(guid) {
  const h = guid.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  const le = Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(),
    Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
  return le.toString('base64url');
}
