// The interactive sign-in: /authorize page, authorization code + PKCE, SSO session, logout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { initDirectory, startIssuer, request, postForm, demo, decodeJwt } from './harness.mjs';

let dir, iss, d;
before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
});
after(async () => {
  assert.equal(await iss.stop(), 0);
  dir.cleanup();
});

const REDIRECT = 'http://localhost:3003';
function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}
function authorizeUrl(extra = {}) {
  const p = new URLSearchParams({
    client_id: d.spa.app_id, scope: `api://${d.blueprint.app_id}/access_as_user openid profile offline_access`,
    redirect_uri: REDIRECT, response_mode: 'fragment', response_type: 'code', state: 'opaque-state-1',
    nonce: 'nonce-123', client_info: '1', ...extra,
  });
  return `${iss.authority}/oauth2/v2.0/authorize?${p}`;
}
async function signIn(url, login, passwd, cookie) {
  const body = new URLSearchParams({ login, passwd }).toString();
  return request(url, {
    method: 'POST', ca: dir.ca, body,
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...(cookie ? { Cookie: cookie } : {}) },
  });
}
const fragment = (loc) => new URLSearchParams(new URL(loc).hash.slice(1));

test('GET authorize shows the sign-in form with stable ids', async () => {
  const { challenge } = pkce();
  const r = await request(authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256' }), { ca: dir.ca });
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /text\/html/);
  for (const id of ['login', 'passwd', 'submit']) assert.match(r.text, new RegExp(`id="${id}"`));
  assert.match(r.text, /Chat SPA/);
});

test('a wrong password shows the error on the page and issues no code', async () => {
  const { challenge } = pkce();
  const r = await signIn(authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256' }), d.alice.user_principal_name, 'wrong');
  assert.equal(r.status, 200);
  assert.match(r.text, /account or password is incorrect/);
  assert.equal(r.headers.location, undefined);
});

test('sign in, redeem the code with PKCE, SSO with the session, then log out', async () => {
  const { verifier, challenge } = pkce();
  const url = authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256' });
  const r = await signIn(url, d.alice.user_principal_name, d.alice.password);
  assert.equal(r.status, 302);
  assert.ok(r.headers.location.startsWith(`${REDIRECT}#`));
  const f = fragment(r.headers.location);
  assert.equal(f.get('state'), 'opaque-state-1', 'state echoed unchanged');
  const ci = JSON.parse(Buffer.from(f.get('client_info'), 'base64url').toString());
  assert.deepEqual(ci, { uid: d.alice.object_id, utid: d.tenant });
  const cookie = r.headers['set-cookie'][0].split(';')[0];
  assert.match(r.headers['set-cookie'][0], /HttpOnly/);

  const form = {
    client_id: d.spa.app_id, grant_type: 'authorization_code', code: f.get('code'), redirect_uri: REDIRECT,
    code_verifier: verifier, scope: `api://${d.blueprint.app_id}/access_as_user openid profile offline_access`,
    client_info: '1',
  };
  const t = await postForm(iss.tokenUrl, form, { ca: dir.ca, headers: { Origin: REDIRECT } });
  assert.equal(t.status, 200, t.text);
  assert.equal(t.headers['access-control-allow-origin'], '*');
  for (const k of ['access_token', 'id_token', 'refresh_token', 'client_info', 'scope']) assert.ok(t.json[k], k);
  const at = decodeJwt(t.json.access_token).claims;
  assert.equal(at.aud, d.blueprint.app_id);
  assert.equal(at.oid, d.alice.object_id);
  assert.equal(at.scp, 'access_as_user');
  assert.equal(at.azp, d.spa.app_id);
  const id = decodeJwt(t.json.id_token).claims;
  assert.equal(id.nonce, 'nonce-123');
  assert.equal(id.aud, d.spa.app_id);
  assert.ok(id.sid);

  const again = await postForm(iss.tokenUrl, form, { ca: dir.ca });
  assert.equal(again.status, 400);
  assert.deepEqual(again.json.error_codes, [70008], 'a code is single-use');

  // The session signs the same browser in without the form, also with prompt=none.
  const sso = await request(authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256', prompt: 'none' }),
    { ca: dir.ca, headers: { Cookie: cookie } });
  assert.equal(sso.status, 302);
  assert.ok(fragment(sso.headers.location).get('code'));

  const out = await request(`${iss.authority}/oauth2/v2.0/logout?post_logout_redirect_uri=${encodeURIComponent(REDIRECT)}&state=bye`,
    { ca: dir.ca, headers: { Cookie: cookie } });
  assert.equal(out.status, 302);
  assert.equal(out.headers.location, `${REDIRECT}?state=bye`);
  const after = await request(authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256', prompt: 'none' }),
    { ca: dir.ca, headers: { Cookie: cookie } });
  assert.equal(after.status, 302);
  assert.equal(fragment(after.headers.location).get('error'), 'login_required');
});

test('a wrong code_verifier is AADSTS501481', async () => {
  const { challenge } = pkce();
  const r = await signIn(authorizeUrl({ code_challenge: challenge, code_challenge_method: 'S256' }), d.alice.user_principal_name, d.alice.password);
  const code = fragment(r.headers.location).get('code');
  const t = await postForm(iss.tokenUrl, {
    client_id: d.spa.app_id, grant_type: 'authorization_code', code, redirect_uri: REDIRECT,
    code_verifier: pkce().verifier,
  }, { ca: dir.ca });
  assert.equal(t.status, 400);
  assert.deepEqual(t.json.error_codes, [501481]);
});

test('redirect_uri must be registered; public clients must use PKCE', async () => {
  const bad = await request(authorizeUrl({ redirect_uri: 'http://evil.example/cb', code_challenge: pkce().challenge, code_challenge_method: 'S256' }), { ca: dir.ca });
  assert.equal(bad.status, 400);
  assert.match(bad.text, /AADSTS50011/);
  assert.equal(bad.headers.location, undefined, 'never redirects to an unregistered URI');
  const nopkce = await request(authorizeUrl(), { ca: dir.ca });
  assert.equal(nopkce.status, 302);
  const f = fragment(nopkce.headers.location);
  assert.equal(f.get('error'), 'invalid_request');
  assert.match(f.get('error_description'), /AADSTS9002325/);
});

test('prompt=none without a session is login_required', async () => {
  const r = await request(authorizeUrl({ prompt: 'none', code_challenge: pkce().challenge, code_challenge_method: 'S256' }), { ca: dir.ca });
  assert.equal(r.status, 302);
  assert.equal(fragment(r.headers.location).get('error'), 'login_required');
});
