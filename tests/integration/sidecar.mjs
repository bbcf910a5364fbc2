// Helpers for the sidecar tests: a recording downstream API, the sidecar's environment for an
// issuer directory, starting the sidecar the way containers do (ASPNETCORE_URLS, no --listen),
// user tokens from the issuer, and reading /metrics. Only node built-ins.
import { createPublicKey, verify as cryptoVerify } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { start, request, postForm, decodeJwt } from './harness.mjs';

/**
 * A tiny downstream API on 127.0.0.1 that records every request it gets (method, path, query,
 * headers, body) and answers by path:
 *   .../fail   500 text/plain "downstream broke"
 *   .../binary 200 application/octet-stream, bytes that are not UTF-8
 *   .../empty  204, no body
 *   .../hang, /hang/...  never answers (until close())
 *   otherwise  201 application/json {"ok":true,"path":...} with an X-Recorder header
 */
export async function startRecorder() {
  const seen = [];
  const hanging = new Set();
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url, 'http://recorder');
      seen.push({
        method: req.method, path: u.pathname, query: Object.fromEntries(u.searchParams),
        headers: req.headers, body: Buffer.concat(chunks).toString('utf8'),
      });
      if (u.pathname.endsWith('/hang') || u.pathname.startsWith('/hang/')) { hanging.add(res); return; }
      if (u.pathname.endsWith('/fail')) {
        res.writeHead(500, { 'Content-Type': 'text/plain' });
        res.end('downstream broke');
        return;
      }
      if (u.pathname.endsWith('/binary')) {
        res.writeHead(200, { 'Content-Type': 'application/octet-stream' });
        res.end(Buffer.from([0xff, 0xfe, 0x00, 0x41, 0xc3]));
        return;
      }
      if (u.pathname.endsWith('/empty')) { res.writeHead(204); res.end(); return; }
      res.writeHead(201, { 'Content-Type': 'application/json; charset=utf-8', 'X-Recorder': 'yes' });
      res.end(JSON.stringify({ ok: true, path: u.pathname }));
    });
  });
  await new Promise((ok) => srv.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return {
    url, seen,
    last: () => seen.at(-1),
    close: () => new Promise((ok) => {
      for (const r of hanging) r.destroy();
      srv.closeAllConnections();
      srv.close(() => ok());
    }),
  };
}

/** The sidecar's AzureAd__* settings for the demo blueprint of issuer iss (directory dir). */
export function azureAd(dir, iss, d, secret = d.blueprint.secrets[0]) {
  return {
    SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt'),
    AzureAd__Instance: `${iss.url}/`,
    AzureAd__TenantId: d.tenant,
    AzureAd__ClientId: d.blueprint.app_id,
    AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
    AzureAd__ClientCredentials__0__ClientSecret: secret,
  };
}

/** DownstreamApis__{name}__* settings from { name: { BaseUrl, Scopes: [...], ... } }. */
export function downstreamApis(apis) {
  const env = {};
  for (const [name, o] of Object.entries(apis))
    for (const [k, v] of Object.entries(o)) {
      if (Array.isArray(v)) v.forEach((x, i) => { env[`DownstreamApis__${name}__${k}__${i}`] = x; });
      else env[`DownstreamApis__${name}__${k}`] = String(v);
    }
  return env;
}

/**
 * Start `agentid sidecar` with no --listen, as the container image runs it (the address comes
 * from ASPNETCORE_URLS in env), and wait for http://127.0.0.1:port/healthz.
 * Returns { url, port, proc, logs(), stop() } like harness start().
 */
export function startSidecarPlain(env, port) {
  return start(['sidecar'], { env, port, listen: false });
}

/** A user token (ROPC from the public "agentid CLI" app) for the blueprint's access_as_user. */
export async function userToken(iss, ca, d, user, scope = `api://${d.blueprint.app_id}/access_as_user`) {
  const r = await postForm(iss.tokenUrl, {
    grant_type: 'password', client_id: d.cli.app_id, username: user.user_principal_name,
    password: user.password, scope,
  }, { ca });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

/** GET a sidecar route; headers: Authorization given as the bare token in `bearer`. */
export function get(s, path, { bearer, headers = {} } = {}) {
  return request(`${s.url}${path}`, {
    headers: { ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...headers },
  });
}

/** POST to a sidecar route. */
export function post(s, path, { bearer, headers = {}, body } = {}) {
  return request(`${s.url}${path}`, {
    method: 'POST', body,
    headers: { ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...headers },
  });
}

/** Assert a 200 {"authorizationHeader":"Bearer <jwt>"} answer; returns { token, header, claims }. */
export function authHeader(r) {
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['content-type'], /^application\/json/);
  assert.deepEqual(Object.keys(r.json), ['authorizationHeader']);
  const [scheme, token] = r.json.authorizationHeader.split(' ');
  assert.equal(scheme, 'Bearer');
  assert.equal(token.split('.').length, 3);
  return { token, ...decodeJwt(token) };
}

/** Assert an RFC 7807 problem answer with this status; returns the body. */
export function problem(r, status, detail) {
  assert.equal(r.status, status, r.text);
  assert.match(r.headers['content-type'], /^application\/problem\+json/, r.text);
  const j = r.json;
  assert.equal(j.status, status);
  assert.equal(typeof j.title, 'string');
  assert.match(j.type, /^https:\/\//);
  assert.equal(typeof j.detail, 'string');
  if (typeof detail === 'string') assert.equal(j.detail, detail);
  else if (detail) assert.match(j.detail, detail);
  return j;
}

/** /metrics as { 'name{labels}': value }. */
export async function metrics(s) {
  const r = await request(`${s.url}/metrics`);
  assert.equal(r.status, 200);
  const m = {};
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

/** Facet list claims ("11 13") as arrays of numbers, whatever their JSON form. */
export const facets = (v) => (Array.isArray(v) ? v : String(v ?? '').split(' ')).filter((x) => x !== '').map(Number);

/**
 * Validate an access token as a downstream API does (the weather API of Microsoft's sidecar
 * sample): RS256 signature against the issuer's JWKS, issuer, expiry, audience.
 * Returns the claims.
 */
export async function validateAsApi(token, iss, ca, { aud, v1 = false }) {
  const { header, claims } = decodeJwt(token);
  assert.equal(header.alg, 'RS256');
  const meta = await request(`${iss.authority}/${v1 ? '' : 'v2.0/'}.well-known/openid-configuration`, { ca });
  assert.equal(meta.status, 200, meta.text);
  const jwks = await request(meta.json.jwks_uri, { ca });
  const jwk = jwks.json.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `kid ${header.kid} is in the JWKS`);
  const [h, p, s] = token.split('.');
  const ok = cryptoVerify('sha256', Buffer.from(`${h}.${p}`), createPublicKey({ key: jwk, format: 'jwk' }),
    Buffer.from(s, 'base64url'));
  assert.ok(ok, 'signature verifies with the JWKS key');
  assert.equal(claims.iss, v1 ? `${iss.authority}/` : `${iss.authority}/v2.0`);
  assert.equal(claims.iss, meta.json.issuer.replace('{tenantid}', iss.tenant));
  const now = Date.now() / 1000;
  assert.ok(claims.exp > now && claims.nbf <= now + 300, 'within its lifetime');
  assert.equal(claims.aud, aud);
  return claims;
}

/** Stop a started process and assert a clean exit (0: under ASan, no leaks), showing its log tail. */
export async function stopped(s) {
  const code = await s.stop();
  assert.equal(code, 0, `exit ${code}:\n${s.logs().slice(-6000)}`);
}
