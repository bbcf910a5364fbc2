// The device code flow: /devicecode, polling the token endpoint, and the /devicelogin page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { initDirectory, startIssuer, request, postForm, demo, decodeJwt } from './harness.mjs';
import { completeDeviceLogin, hiddenFields } from './devicelogin.mjs';

const GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

let dir, iss, d, short, issShort, fast, issFast, scope;
const issued = [];   // every device_code handed out: none may appear in a log
before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
  // A second directory with the two optional settings: poll every second, codes live 2 s.
  short = initDirectory();
  short.save({ ...short.json(), device_code_interval_seconds: 1, device_code_lifetime_seconds: 2 });
  issShort = await startIssuer(short);
  // A third with interval 1 and the default lifetime: polling tests that must not race expiry
  // on a slow (sanitized, shared) machine.
  fast = initDirectory();
  fast.save({ ...fast.json(), device_code_interval_seconds: 1 });
  issFast = await startIssuer(fast);
  scope = scopeOf(d);
});
after(async () => {
  for (const s of [iss, issShort, issFast]) {
    const logs = s.logs();
    for (const dc of issued) assert.ok(!logs.includes(dc), 'a device_code never reaches the log');
    assert.doesNotMatch(logs, /"passwd"|password=/);
    assert.equal(await s.stop(), 0);
  }
  dir.cleanup();
  short.cleanup();
  fast.cleanup();
});

async function deviceCode(server, ca, fields) {
  const r = await postForm(`${server.authority}/oauth2/v2.0/devicecode`, fields, { ca });
  if (r.json?.device_code) issued.push(r.json.device_code);
  return r;
}
const scopeOf = (dd) => `api://${dd.blueprint.app_id}/access_as_user openid profile offline_access`;
const start = (server = iss, ca = dir.ca, dd = d) => deviceCode(server, ca, { client_id: dd.cli.app_id, scope: scopeOf(dd) });
const poll = (deviceCodeValue, { server = iss, ca = dir.ca, client = d.cli.app_id, grant = GRANT } = {}) =>
  postForm(server.tokenUrl, { grant_type: grant, client_id: client, device_code: deviceCodeValue, client_info: '1' }, { ca });
const alice = () => ({ username: d.alice.user_principal_name, password: d.alice.password });

test('devicecode answers Entra\'s shape; discovery names the endpoint', async () => {
  const r = await start();
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['cache-control'], /no-store/);
  const j = r.json;
  assert.deepEqual(Object.keys(j).sort(), ['device_code', 'expires_in', 'interval', 'message', 'user_code', 'verification_uri']);
  assert.match(j.user_code, /^[A-HJKMNP-Z2-9]{9}$/, 'nine letters and digits, none of 0 O 1 I L');
  assert.ok(j.device_code.length >= 40, 'a long device code');
  assert.equal(j.verification_uri, `${iss.url}/devicelogin`);
  assert.equal(j.expires_in, 900);
  assert.equal(j.interval, 5);
  assert.equal(j.message, `To sign in, use a web browser to open the page ${iss.url}/devicelogin and enter the code ${j.user_code} to authenticate.`);
  const again = await start();
  assert.notEqual(again.json.user_code, j.user_code);
  assert.notEqual(again.json.device_code, j.device_code);

  const disc = await request(`${iss.authority}/v2.0/.well-known/openid-configuration`, { ca: dir.ca });
  assert.equal(disc.json.device_authorization_endpoint, `${iss.authority}/oauth2/v2.0/devicecode`);
  const v1path = await postForm(`${iss.authority}/oauth2/devicecode`, { client_id: d.cli.app_id, scope }, { ca: dir.ca });
  assert.equal(v1path.status, 200, 'the v1 path answers too');
  issued.push(v1path.json.device_code);
});

test('the directory\'s settings set interval and expires_in', async () => {
  const r = await start(issShort, short.ca, demo(short.json()));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.interval, 1);
  assert.equal(r.json.expires_in, 2);
});

test('polling: authorization_pending, then slow_down when polled sooner than the interval', async () => {
  const { json: dc } = await start();
  const p1 = await poll(dc.device_code);
  assert.equal(p1.status, 400);
  assert.equal(p1.json.error, 'authorization_pending');
  assert.deepEqual(p1.json.error_codes, [70016]);
  assert.match(p1.json.error_description, /^AADSTS70016: /);
  const p2 = await poll(dc.device_code, { grant: 'device_code' });   // msal-js's short form
  assert.equal(p2.status, 400);
  assert.equal(p2.json.error, 'slow_down', 'polled again well inside the 5 s interval');
});

test('sign in on the page: a user token for the requested scope, then the code is spent', async () => {
  const { json: dc } = await start();
  assert.equal((await poll(dc.device_code)).json.error, 'authorization_pending');
  const page = await completeDeviceLogin({ baseUrl: dc.verification_uri, userCode: dc.user_code, ca: dir.ca, ...alice() });
  assert.ok(page.ok, page.text);
  assert.match(page.text, /You have signed in to the agentid CLI application on your device\. You may now close this window\./);

  const t = await poll(dc.device_code);
  assert.equal(t.status, 200, t.text);
  for (const k of ['access_token', 'id_token', 'refresh_token', 'client_info', 'scope']) assert.ok(t.json[k], k);
  assert.equal(t.json.token_type, 'Bearer');
  const at = decodeJwt(t.json.access_token).claims;
  assert.equal(at.aud, d.blueprint.app_id);
  assert.equal(at.scp, 'access_as_user');
  assert.equal(at.idtyp, 'user');
  assert.equal(at.preferred_username, d.alice.user_principal_name);
  assert.equal(at.oid, d.alice.object_id);
  assert.equal(at.azp, d.cli.app_id);
  assert.equal(at.azpacr, '0', 'a public client');
  assert.equal(at.iss, `${iss.authority}/v2.0`);
  const id = decodeJwt(t.json.id_token).claims;
  assert.equal(id.aud, d.cli.app_id);
  assert.equal(id.preferred_username, d.alice.user_principal_name);
  assert.deepEqual(JSON.parse(Buffer.from(t.json.client_info, 'base64url')), { uid: d.alice.object_id, utid: d.tenant });

  // The refresh token works like any other.
  const rt = await postForm(iss.tokenUrl, { grant_type: 'refresh_token', client_id: d.cli.app_id, refresh_token: t.json.refresh_token, scope }, { ca: dir.ca });
  assert.equal(rt.status, 200, rt.text);

  const again = await poll(dc.device_code);
  assert.equal(again.status, 400);
  assert.equal(again.json.error, 'invalid_grant', 'single use');
  assert.deepEqual(again.json.error_codes, [70000]);
  const reuse = await completeDeviceLogin({ baseUrl: iss.url, userCode: dc.user_code, ca: dir.ca, ...alice() });
  assert.equal(reuse.ok, false);
  assert.match(reuse.error, /didn't work|already been used/);
});

test('the page accepts the code in lower case with a dash, and shows the sign-in form with #deny', async () => {
  const { json: dc } = await start();
  const typed = `${dc.user_code.slice(0, 4)}-${dc.user_code.slice(4)}`.toLowerCase();
  const first = await request(`${iss.url}/devicelogin`, { ca: dir.ca });
  assert.equal(first.status, 200);
  assert.match(first.headers['content-type'], /text\/html/);
  assert.match(first.headers['content-security-policy'], /default-src 'none'/);
  for (const id of ['otc', 'next']) assert.match(first.text, new RegExp(`id="${id}"`));
  const r = await postForm(`${iss.url}/devicelogin`, { otc: typed }, { ca: dir.ca });
  assert.equal(r.status, 200);
  for (const id of ['login', 'passwd', 'submit', 'deny']) assert.match(r.text, new RegExp(`id="${id}"`));
  assert.match(r.text, /agentid CLI/);
  assert.equal(hiddenFields(r.text).otc, dc.user_code);
});

test('a wrong password shows the form again with an error; the flow stays pending', async () => {
  const { json: dc } = await start();
  const bad = await completeDeviceLogin({ baseUrl: iss.url, userCode: dc.user_code, ca: dir.ca, username: d.alice.user_principal_name, password: 'wrong' });
  assert.equal(bad.ok, false);
  assert.equal(bad.error, 'Your account or password is incorrect.');
  assert.match(bad.text, /id="passwd"/);
  assert.equal((await poll(dc.device_code)).json.error, 'authorization_pending');
  const good = await completeDeviceLogin({ baseUrl: iss.url, userCode: dc.user_code, ca: dir.ca, ...alice() });
  assert.ok(good.ok, good.text);
});

test('a POST without the flow\'s hidden value cannot approve', async () => {
  const { json: dc } = await start();
  const url = `${iss.url}/devicelogin`;
  // A bare cross-site form post: the code and credentials, but not the page's own value.
  const bare = await postForm(url, { otc: dc.user_code, login: d.alice.user_principal_name, passwd: d.alice.password }, { ca: dir.ca });
  assert.equal(bare.status, 200);
  assert.doesNotMatch(bare.text, /You have signed in/);
  const forged = await postForm(url, { otc: dc.user_code, flow: 'x'.repeat(32), login: d.alice.user_principal_name, passwd: d.alice.password }, { ca: dir.ca });
  assert.equal(forged.status, 400);
  assert.doesNotMatch(forged.text, /You have signed in/);
  const deny = await postForm(url, { otc: dc.user_code, flow: 'x'.repeat(32), deny: '1' }, { ca: dir.ca });
  assert.equal(deny.status, 400);
  assert.equal((await poll(dc.device_code)).json.error, 'authorization_pending', 'still pending');
});

test('Cancel on the page: the client gets authorization_declined', async () => {
  const { json: dc } = await start();
  const page = await completeDeviceLogin({ baseUrl: iss.url, userCode: dc.user_code, ca: dir.ca, deny: true });
  assert.ok(page.ok, page.text);
  // Entra's value for a declined flow (RFC 8628 §3.5 calls it access_denied).
  const p = await poll(dc.device_code);
  assert.equal(p.status, 400);
  assert.equal(p.json.error, 'authorization_declined');
  assert.deepEqual(p.json.error_codes, [65004]);
  assert.equal((await poll(dc.device_code)).json.error, 'authorization_declined', 'and stays declined');
  const late = await completeDeviceLogin({ baseUrl: iss.url, userCode: dc.user_code, ca: dir.ca, ...alice() });
  assert.equal(late.ok, false);
  assert.match(late.error, /already been used/);
});

test('an unknown or malformed code on the page is a clear error', async () => {
  for (const code of ['ZZZZZZZZZ', 'abc', '']) {
    const r = await completeDeviceLogin({ baseUrl: iss.url, userCode: code, ca: dir.ca, ...alice() });
    assert.equal(r.ok, false);
    assert.equal(r.status, 200);
    assert.equal(r.error, 'That code didn\'t work. Check the code and try again.');
    assert.match(r.text, /id="otc"/, 'the code form again');
  }
});

test('an expired code: expired_token for the client, and the page says so', async () => {
  const sd = demo(short.json());
  const { json: dc } = await start(issShort, short.ca, sd);
  await new Promise((r) => setTimeout(r, 2500));
  const p = await poll(dc.device_code, { server: issShort, ca: short.ca, client: sd.cli.app_id });
  assert.equal(p.status, 400);
  assert.equal(p.json.error, 'expired_token');
  assert.deepEqual(p.json.error_codes, [70020]);
  const page = await completeDeviceLogin({ baseUrl: issShort.url, userCode: dc.user_code, ca: short.ca, username: sd.alice.user_principal_name, password: sd.alice.password });
  assert.equal(page.ok, false);
  assert.match(page.error, /expired/);
});

test('with interval 1 a client polling every second is never told to slow down', async () => {
  const fd = demo(fast.json());
  const { json: dc } = await start(issFast, fast.ca, fd);
  assert.equal(dc.interval, 1);
  const opts = { server: issFast, ca: fast.ca, client: fd.cli.app_id };
  assert.equal((await poll(dc.device_code, opts)).json.error, 'authorization_pending');
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal((await poll(dc.device_code, opts)).json.error, 'authorization_pending');
  assert.equal((await poll(dc.device_code, opts)).json.error, 'slow_down');
});

test('another client\'s device code, or one never issued, is invalid_grant', async () => {
  const { json: dc } = await start();
  const other = await poll(dc.device_code, { client: d.spa.app_id });   // also a public client
  assert.equal(other.status, 400);
  assert.equal(other.json.error, 'invalid_grant');
  assert.match(other.json.error_description, /another client/);
  assert.equal((await poll(dc.device_code)).json.error, 'authorization_pending', 'the owner\'s flow is untouched');
  const unknown = await poll('A'.repeat(64));
  assert.equal(unknown.json.error, 'invalid_grant');
  assert.deepEqual(unknown.json.error_codes, [70000]);
  const none = await postForm(iss.tokenUrl, { grant_type: GRANT, client_id: d.cli.app_id }, { ca: dir.ca });
  assert.deepEqual(none.json.error_codes, [900144]);
});

test('devicecode refuses a confidential client without credentials, an unknown client, a bad scope', async () => {
  const conf = await deviceCode(iss, dir.ca, { client_id: d.blueprint.app_id, scope: `${d.api.identifier_uris[0]}/Weather.Read` });
  assert.equal(conf.status, 401);
  assert.equal(conf.json.error, 'invalid_client');
  assert.deepEqual(conf.json.error_codes, [7000218]);
  const unknown = await deviceCode(iss, dir.ca, { client_id: '00000000-1111-2222-3333-444444444444', scope });
  assert.equal(unknown.status, 400);
  assert.deepEqual(unknown.json.error_codes, [700016]);
  const noScope = await deviceCode(iss, dir.ca, { client_id: d.cli.app_id });
  assert.deepEqual(noScope.json.error_codes, [900144]);
  const badScope = await deviceCode(iss, dir.ca, { client_id: d.cli.app_id, scope: `api://${d.blueprint.app_id}/nope` });
  assert.deepEqual(badScope.json.error_codes, [70011]);
  // Consent is the directory's: the CLI has none for the Weather API.
  const noConsent = await deviceCode(iss, dir.ca, { client_id: d.cli.app_id, scope: `${d.api.identifier_uris[0]}/Weather.Read` });
  assert.equal(noConsent.status, 400);
  assert.deepEqual(noConsent.json.error_codes, [65001]);
  assert.equal(noConsent.json.suberror, 'consent_required');
  const get = await request(`${iss.authority}/oauth2/v2.0/devicecode`, { ca: dir.ca });
  assert.equal(get.status, 405);
});
