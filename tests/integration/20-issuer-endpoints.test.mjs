// Discovery, keys and the basic client-credentials grant over HTTPS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { initDirectory, startIssuer, request, postForm, demo, decodeJwt } from './harness.mjs';

let dir, iss, d;
before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
});
after(async () => {
  assert.equal(await iss.stop(), 0, 'clean exit (no leaks under ASan)');
  dir.cleanup();
});

test('openid-configuration for the tenant names this issuer and its endpoints', async () => {
  const r = await request(`${iss.authority}/v2.0/.well-known/openid-configuration`, { ca: dir.ca });
  assert.equal(r.status, 200);
  assert.equal(r.json.issuer, `${iss.url}/${d.tenant}/v2.0`);
  assert.equal(r.json.token_endpoint, `${iss.url}/${d.tenant}/oauth2/v2.0/token`);
  assert.equal(r.json.jwks_uri, `${iss.url}/${d.tenant}/discovery/v2.0/keys`);
  for (const f of ['authorization_endpoint', 'token_endpoint', 'issuer', 'jwks_uri'])
    assert.ok(r.json[f], f);
});

test('common and organizations metadata carry the {tenantid} template', async () => {
  for (const t of ['common', 'organizations']) {
    const r = await request(`${iss.url}/${t}/v2.0/.well-known/openid-configuration`, { ca: dir.ca });
    assert.equal(r.status, 200);
    assert.equal(r.json.issuer, `${iss.url}/{tenantid}/v2.0`);
  }
});

test('unknown tenant is AADSTS90002', async () => {
  const r = await request(`${iss.url}/nope/v2.0/.well-known/openid-configuration`, { ca: dir.ca });
  assert.equal(r.status, 400);
  assert.deepEqual(r.json.error_codes, [90002]);
  assert.match(r.json.error_description, /^AADSTS90002: Tenant 'nope' not found/);
});

test('JWKS on the v2 and v1 paths: RSA keys with kid = x5t and an x5c', async () => {
  for (const p of ['discovery/v2.0/keys', 'discovery/keys']) {
    const r = await request(`${iss.authority}/${p}`, { ca: dir.ca });
    assert.equal(r.status, 200);
    assert.ok(r.json.keys.length >= 1);
    const k = r.json.keys[0];
    assert.equal(k.kty, 'RSA');
    assert.equal(k.use, 'sig');
    assert.equal(k.kid, k.x5t);
    assert.ok(k.n && k.e && k.x5c?.length === 1);
  }
});

test('client_credentials with a secret gives an app token with Entra v2 claims', async () => {
  const r = await postForm(iss.tokenUrl, {
    grant_type: 'client_credentials', client_id: d.blueprint.app_id,
    client_secret: d.blueprint.secrets[0], scope: `${d.api.identifier_uris[0]}/.default`,
  }, { ca: dir.ca });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.token_type, 'Bearer');
  assert.ok(r.json.expires_in > 0 && r.json.ext_expires_in > 0 && r.json.refresh_in > 0);
  assert.equal(r.json.scope, undefined, 'client credentials responses carry no scope');
  const { header, claims } = decodeJwt(r.json.access_token);
  assert.equal(header.alg, 'RS256');
  assert.equal(header.typ, 'JWT');
  assert.ok(header.kid);
  assert.equal(claims.aud, d.api.app_id);
  assert.equal(claims.iss, `${iss.url}/${d.tenant}/v2.0`);
  assert.equal(claims.azp, d.blueprint.app_id);
  assert.equal(claims.azpacr, '1');
  assert.equal(claims.idtyp, 'app');
  assert.equal(claims.tid, d.tenant);
  assert.equal(claims.ver, '2.0');
  assert.deepEqual(claims.roles, ['Weather.Read.All']);
  assert.ok(claims.exp > claims.iat && claims.nbf <= claims.iat);
  assert.ok(claims.uti && claims.oid && claims.sub);
});

test('healthz answers Healthy', async () => {
  const r = await request(`${iss.url}/healthz`, { ca: dir.ca });
  assert.equal(r.status, 200);
  assert.equal(r.text, 'Healthy');
});
