// `agentid gateway`'s cache of verified tokens (src/gateway/tokcache.h): a token that passed
// jwtAuth once is let through again with its claims (claimsToHeaders still sees them), but only
// on the route and configuration it passed — the same token is still refused where its
// audience is not accepted, after a reload that stops accepting it, and any change to its bytes
// (an altered signature) is checked in full and refused.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { initDirectory, startIssuer, start, demo, decodeJwt, request } from './harness.mjs';
import { token, ok, waitFor } from './tokens.mjs';
import { startRecorder } from './sidecar.mjs';

let dir, iss, d, rec, G, cfgFile, tok;

function configYaml(audA) {
  const jwks = `${iss.url}/${d.tenant}/discovery/v2.0/keys`;
  const auth = (aud) => `jwtAuth: {issuer: "${iss.authority}/v2.0", audiences: ["${aud}"], jwks: {url: "${jwks}"}}`;
  return `binds:
- port: 0
  listeners:
  - routes:
    - name: a
      matches: [{path: {pathPrefix: /a}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth(audA)}
        claimsToHeaders: {x-oid: oid}
    - name: b
      matches: [{path: {pathPrefix: /b}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth('api://somebody-else')}
`;
}

function writeConfig(text) {
  writeFileSync(`${cfgFile}.tmp`, text);
  renameSync(`${cfgFile}.tmp`, cfgFile);
}

const get = (path, t) => request(`${G.url}${path}`, { headers: t ? { Authorization: `Bearer ${t}` } : {} });
const lastSeen = () => rec.seen[rec.seen.length - 1];

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
  tok = ok(await token(iss, dir.ca, { grant_type: 'client_credentials', client_id: d.blueprint.app_id,
    client_secret: d.blueprint.secrets[0], scope: `${d.api.identifier_uris[0]}/.default` })).access_token;
  rec = await startRecorder();
  cfgFile = join(dir.root, 'gateway.yaml');
  writeConfig(configYaml(d.api.app_id));
  G = await start(['gateway', '--config', cfgFile], { env: { SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt') } });
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  assert.equal(await iss?.stop(), 0);
  await rec?.close();
  dir?.cleanup();
});

describe('verified tokens', () => {
  test('the same token again passes with its claims, from the cache as the first time in full', async () => {
    const oid = decodeJwt(tok).claims.oid;
    for (let i = 0; i < 3; i++) {
      const r = await get(`/a/again-${i}`, tok);
      assert.equal(r.status, 201, r.text);
      assert.equal(lastSeen().path, `/a/again-${i}`);
      assert.equal(lastSeen().headers['x-oid'], oid, 'claimsToHeaders sees the claims on every request');
      assert.equal(lastSeen().headers.authorization, undefined, 'the token is not passed on');
    }
  });

  test('a token that passed one route is still refused by another whose audience it lacks', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    const r = await get('/b/x', tok);
    assert.equal(r.status, 401);
    assert.equal(r.json.failed_check, 'audience');
  });

  test('its bytes changed, the token is checked in full and refused', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    const last = tok.at(-1) === 'A' ? 'B' : 'A';
    for (const bad of [tok.slice(0, -1) + last, tok + 'A', tok.slice(0, -1)]) {
      const r = await get('/a/x', bad);
      assert.equal(r.status, 401, 'altered token');
      assert.ok(['signature', 'malformed'].includes(r.json.failed_check), r.json.failed_check);
    }
    assert.equal((await get('/a/x')).status, 401, 'no token');
  });

  test('after a reload that no longer accepts its audience, the token is refused; back, it passes', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    writeConfig(configYaml('api://not-the-weather-api'));
    G.proc.kill('SIGHUP');
    await waitFor(async () => (await get('/a/x', tok)).status === 401);
    const r = await get('/a/x', tok);
    assert.equal(r.status, 401);
    assert.equal(r.json.failed_check, 'audience');
    writeConfig(configYaml(d.api.app_id));
    G.proc.kill('SIGHUP');
    await waitFor(async () => (await get('/a/x', tok)).status === 201);
    assert.equal((await get('/a/x', tok)).status, 201);
  });

  test('many requests at once with the same token all pass', async () => {
    const all = await Promise.all(Array.from({ length: 40 }, (_, i) => get(`/a/par-${i}`, tok)));
    assert.deepEqual(all.map((r) => r.status), Array(40).fill(201));
  });
});
