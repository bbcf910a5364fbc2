// `agentid weather-api`, the demo's downstream API, against real `agentid issuer`s: app, agent and
// user (OBO) tokens pass with a deterministic forecast and the caller's identity; each validation
// check fails once (token_present, signature, issuer, audience, lifetime, scope_or_role) with
// exactly that check named; 503 when the identity provider is down; city, method and start-up
// errors; logs without tokens; clean exits.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { initDirectory, startIssuer, start, run, demo, decodeJwt, request, freePort } from './harness.mjs';
import { token, ok, saveDirectory, waitFor, signJwt, strangerKey, TOKEN_EXCHANGE_SCOPE, CLIENT_ASSERTION_TYPE,
  GRANT_JWT_BEARER } from './tokens.mjs';
import { userToken, facets } from './sidecar.mjs';

const CHECKS = ['token_present', 'signature', 'issuer', 'audience', 'lifetime', 'scope_or_role'];
const caFile = (dir) => join(dir.dir, 'tls/ca.crt');

let dirA, dirB, issA, issB, issOld, dA, dB, W, WB, WOpen, WDown;
const tok = {};   // the tokens every test uses, fetched once

/** client_credentials by the demo blueprint of directory dir (its secret) for scope. */
async function appToken(iss, dir, scope, extra = {}) {
  const d = demo(dir.json());
  return ok(await token(iss, dir.ca, {
    grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    scope, ...extra,
  })).access_token;
}

/** GET a weather-api path with an optional bearer token. */
const get = (w, path, bearer, headers = {}) =>
  request(`${w.url}${path}`, { headers: { ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...headers } });

/** Assert a 200 answer with every check passing; returns the body. */
function passed(r, city) {
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['content-type'], /^application\/json/);
  const j = r.json;
  assert.equal(j.city, city);
  assert.deepEqual(j.validation.map((c) => c.check), CHECKS);
  for (const c of j.validation) assert.equal(c.ok, true, JSON.stringify(c));
  return j;
}

/** Assert a refusal naming exactly one failed check, the last of the validation list. */
function refused(r, status, check, detail) {
  assert.equal(r.status, status, r.text);
  const j = r.json;
  assert.ok(j, r.text);
  assert.equal(j.failed_check, check);
  const n = CHECKS.indexOf(check);
  assert.deepEqual(j.validation.map((c) => c.check), CHECKS.slice(0, n + 1));
  assert.deepEqual(j.validation.map((c) => c.ok), [...Array(n).fill(true), false]);
  if (detail) assert.match(j.validation[n].detail, detail);
  assert.ok(j.message.startsWith(`${check}: `), j.message);
  const h = r.headers['www-authenticate'];
  if (status === 401 && check !== 'token_present') {
    assert.equal(j.error, 'invalid_token');
    assert.ok(h.startsWith('Bearer error="invalid_token", error_description="'), h);
    assert.ok(h.includes(`error_description="${check}: `), h);
  } else if (status === 403) {
    assert.equal(j.error, 'insufficient_scope');
    assert.ok(h.startsWith('Bearer error="insufficient_scope", error_description="scope_or_role: '), h);
  }
  return j;
}

before(async () => {
  dirA = initDirectory();
  dirB = initDirectory();
  // Directory B: the blueprint has no app role on B's Weather API, so its app token has no roles.
  const b = dirB.json();
  const api = b.applications.find((a) => a.name === 'Weather API');
  b.app_role_assignments = b.app_role_assignments.filter((x) => !(x.client === 'Weather Agent Blueprint' &&
    [api.name, api.app_id].includes(x.resource)));
  saveDirectory(dirB, b);
  dA = demo(dirA.json());
  dB = demo(dirB.json());
  issA = await startIssuer(dirA);
  issB = await startIssuer(dirB);
  // A's keys and issuer URL, its clock two hours behind: its tokens expired an hour ago.
  issOld = await start(['issuer', '--dir', dirA.dir, '--public-url', issA.url],
    { tls: true, ca: dirA.ca, env: { AGENTID_TIME_OFFSET: '-7200' } });
  issOld.tokenUrl = `${issOld.url}/${dA.tenant}/oauth2/v2.0/token`;

  W = await start(['weather-api', '--authority', `${issA.url}/${dA.tenant}/v2.0`, '--audience', dA.api.app_id,
    '--scope', 'Weather.Read', '--role', 'Weather.Read.All'], { env: { SSL_CERT_FILE: caFile(dirA) } });
  // Configured from the environment only.
  WB = await start(['weather-api'], { env: {
    SSL_CERT_FILE: caFile(dirB), WEATHER_AUTHORITY: `${issB.url}/${dB.tenant}/v2.0/`,
    WEATHER_AUDIENCE: `${dB.api.identifier_uris[0]}, ${dB.api.app_id}`, WEATHER_SCOPE: 'Weather.Read',
    WEATHER_ROLE: 'Weather.Read.All',
  } });
  WOpen = await start(['weather-api', `--authority=${issB.url}/${dB.tenant}/v2.0`, '--audience', dB.api.app_id],
    { env: { SSL_CERT_FILE: caFile(dirB) } });
  const closed = await freePort();
  WDown = await start(['weather-api', '--authority', `https://127.0.0.1:${closed}/${dA.tenant}/v2.0`,
    '--audience', dA.api.app_id], { env: { SSL_CERT_FILE: caFile(dirA) } });

  const weatherUri = dA.api.identifier_uris[0];
  tok.app = await appToken(issA, dirA, `${weatherUri}/.default`);
  // Agent: T1 (blueprint, fmi_path = agent), then the agent's client credentials with T1.
  const t1 = await appToken(issA, dirA, TOKEN_EXCHANGE_SCOPE, { fmi_path: dA.agent.app_id });
  tok.agent = ok(await token(issA, dirA.ca, {
    grant_type: 'client_credentials', client_id: dA.agent.app_id, client_assertion_type: CLIENT_ASSERTION_TYPE,
    client_assertion: t1, scope: `${weatherUri}/.default`,
  })).access_token;
  // User: alice signs in to the blueprint (ROPC, agentid CLI), the blueprint does OBO for Weather.Read.
  tok.aliceForBlueprint = await userToken(issA, dirA.ca, dA, dA.alice);
  tok.user = ok(await token(issA, dirA.ca, {
    grant_type: GRANT_JWT_BEARER, requested_token_use: 'on_behalf_of', client_id: dA.blueprint.app_id,
    client_secret: dA.blueprint.secrets[0], assertion: tok.aliceForBlueprint, scope: `${weatherUri}/Weather.Read`,
  })).access_token;
  tok.graph = await appToken(issA, dirA, 'https://graph.microsoft.com/.default');
  tok.expired = await appToken(issOld, dirA, `${weatherUri}/.default`);
  tok.fromB = await appToken(issB, dirB, `${dB.api.identifier_uris[0]}/.default`);
});

after(async () => {
  for (const s of [W, WB, WOpen, WDown]) assert.equal(await s?.stop(), 0, 'clean exit (no leaks under ASan)');
  for (const s of [issOld, issA, issB]) assert.equal(await s?.stop(), 0);
  dirA?.cleanup();
  dirB?.cleanup();
});

describe('valid tokens', () => {
  test('/healthz answers "Healthy" without a token', async () => {
    const r = await get(W, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(r.text, 'Healthy');
  });

  test('app token: 200, caller idtyp app with the role, every check ok with its detail', async () => {
    const r = await get(W, '/weather/Seattle', tok.app);
    const j = passed(r, 'Seattle');
    assert.match(r.headers['cache-control'], /no-store/);
    assert.equal(j.caller.idtyp, 'app');
    assert.equal(j.caller.azp, dA.blueprint.app_id);
    assert.equal(j.caller.oid, dA.blueprint.object_id);
    assert.equal(j.caller.sub, dA.blueprint.object_id);
    assert.equal(j.caller.tid, dA.tenant);
    assert.deepEqual(j.caller.roles, ['Weather.Read.All']);
    assert.equal(j.caller.scp, undefined);
    assert.equal(j.caller.agent, undefined);
    const detail = Object.fromEntries(j.validation.map((c) => [c.check, c.detail]));
    assert.equal(detail.signature, `RS256, kid ${decodeJwt(tok.app).header.kid}`);
    assert.equal(detail.issuer, `${issA.authority}/v2.0`);
    assert.equal(detail.audience, dA.api.app_id);
    assert.match(detail.lifetime, /^expires in \d+ s$/);
    assert.equal(detail.scope_or_role, 'role Weather.Read.All');
    assert.match(j.generated_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/);
  });

  test('the forecast is deterministic per city (case-insensitive) and the same on both routes', async () => {
    const f = async (path) => passed(await get(W, path, tok.app), decodeURIComponent(path.split(/[/=]/).pop())).forecast;
    const one = await f('/weather/Seattle');
    assert.deepEqual(await f('/weather/Seattle'), one);
    assert.deepEqual(await f('/weather?city=Seattle'), one);
    assert.deepEqual(await f('/weather/seattle'), one);
    assert.notDeepEqual(await f('/weather/Dallas'), one);
    assert.ok(Number.isInteger(one.temperature_c) && one.temperature_c >= -5 && one.temperature_c <= 35);
    assert.equal(one.temperature_f, Math.round(one.temperature_c * 1.8 + 32));
    assert.equal(typeof one.condition, 'string');
    assert.ok(one.humidity >= 20 && one.humidity <= 100);
    assert.ok(one.wind_kph >= 0 && one.wind_kph <= 60);
    const ny = passed(await get(W, '/weather/New%20York', tok.app), 'New York');
    assert.equal(ny.city, 'New York');
    passed(await get(W, `/weather?city=${encodeURIComponent('São Paulo')}`, tok.app), 'São Paulo');
    passed(await get(W, `/weather/${'a'.repeat(64)}`, tok.app), 'a'.repeat(64));
  });

  test('agent token: caller.agent carries the agent facets and the parent blueprint', async () => {
    const j = passed(await get(W, '/weather/Dallas', tok.agent), 'Dallas');
    assert.equal(j.caller.idtyp, 'app');
    assert.equal(j.caller.azp, dA.agent.app_id);
    assert.deepEqual(j.caller.roles, ['Weather.Read.All']);
    assert.equal(j.caller.agent.xms_par_app_azp, dA.blueprint.app_id);
    assert.ok(facets(j.caller.agent.xms_act_fct).includes(11), JSON.stringify(j.caller.agent));
  });

  test('user token (OBO by the blueprint): idtyp user, the user\'s oid and scp', async () => {
    const j = passed(await get(W, '/weather?city=Seattle', tok.user), 'Seattle');
    assert.equal(j.caller.idtyp, 'user');
    assert.equal(j.caller.oid, dA.alice.object_id);
    assert.equal(j.caller.scp, 'Weather.Read');
    assert.equal(j.caller.preferred_username, dA.alice.user_principal_name);
    assert.equal(j.caller.azp, dA.blueprint.app_id);
    assert.equal(j.validation.at(-1).detail, 'scp Weather.Read');
  });

  test('with neither --scope nor --role any valid token passes', async () => {
    const j = passed(await get(WOpen, '/weather/Oslo', tok.fromB), 'Oslo');
    assert.equal(j.validation.at(-1).detail, 'none required');
    assert.equal(j.caller.roles, undefined);
  });
});

describe('each check fails once, and only that one is named', () => {
  test('token_present: no token, or not a Bearer token → 401, WWW-Authenticate: Bearer', async () => {
    for (const headers of [{}, { Authorization: 'Basic dXNlcjpwYXNz' }, { Authorization: 'Bearer ' }]) {
      const r = await get(W, '/weather/Seattle', undefined, headers);
      refused(r, 401, 'token_present');
      assert.equal(r.headers['www-authenticate'], 'Bearer');
      assert.equal(r.json.error, 'invalid_token');
    }
  });

  test('signature: a malformed token → 401 naming the malformation', async () => {
    refused(await get(W, '/weather/Seattle', 'not-a-jwt'), 401, 'signature', /^malformed token: /);
    refused(await get(W, '/weather/Seattle', 'eyJhbGciOiJSUzI1NiJ9.e30'), 401, 'signature', /^malformed token: /);
  });

  test('signature: the issuer\'s kid with another key\'s signature → 401', async () => {
    const { header, claims } = decodeJwt(tok.app);
    const forged = signJwt(header, { ...claims, roles: ['Weather.Admin'] }, strangerKey());
    refused(await get(W, '/weather/Seattle', forged), 401, 'signature', /signature does not verify/);
  });

  test('signature: alg none and HS256 are refused before any key is used', async () => {
    const { header, claims } = decodeJwt(tok.app);
    for (const alg of ['none', 'HS256'])
      refused(await get(W, '/weather/Seattle', signJwt({ ...header, alg }, claims, 'secret')), 401, 'signature',
        /alg not allowed/);
  });

  test('signature: a token of another issuer (its key is not in the JWKS) → 401', async () => {
    refused(await get(W, '/weather/Seattle', tok.fromB), 401, 'signature', /no key/);
  });

  test('issuer: a v1 token (Microsoft Graph) of the same issuer → 401 naming both issuers', async () => {
    const iss = decodeJwt(tok.graph).claims.iss;
    assert.equal(iss, `${issA.authority}/`);
    const j = refused(await get(W, '/weather/Seattle', tok.graph), 401, 'issuer');
    assert.ok(j.validation[2].detail.includes(iss), j.validation[2].detail);
    assert.ok(j.validation[2].detail.includes(`${issA.authority}/v2.0`), j.validation[2].detail);
  });

  test('audience: a token for the blueprint → 401 naming the audience', async () => {
    const j = refused(await get(W, '/weather/Seattle', tok.aliceForBlueprint), 401, 'audience');
    assert.ok(j.validation[3].detail.includes(dA.blueprint.app_id), j.validation[3].detail);
    assert.ok(j.message.startsWith('audience: aud '), j.message);
  });

  test('lifetime: an expired token → 401 "expired N s ago"', async () => {
    const { claims } = decodeJwt(tok.expired);
    assert.equal(claims.iss, `${issA.authority}/v2.0`);
    assert.ok(claims.exp < Date.now() / 1000 - 3000);
    refused(await get(W, '/weather/Seattle', tok.expired), 401, 'lifetime', /^expired \d+ s ago/);
  });

  test('scope_or_role: a token with neither the scope nor the role → 403 insufficient_scope', async () => {
    const { claims } = decodeJwt(tok.fromB);
    assert.equal(claims.roles, undefined);
    const r = await get(WB, '/weather/Seattle', tok.fromB);
    const j = refused(r, 403, 'scope_or_role', /needs scp Weather\.Read or role Weather\.Read\.All/);
    assert.match(r.headers['www-authenticate'], /, scope="Weather\.Read"$/);
    assert.equal(j.validation[3].detail, dB.api.app_id);
  });

  test('the identity provider is unreachable → 503 JSON, no WWW-Authenticate', async () => {
    const r = await get(WDown, '/weather/Seattle', tok.app);
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.error, 'temporarily_unavailable');
    assert.equal(r.json.failed_check, 'signature');
    assert.equal(r.headers['www-authenticate'], undefined);
  });
});

describe('requests', () => {
  test('a bad city → 400 JSON', async () => {
    for (const path of ['/weather', '/weather?city=', '/weather/', '/weather/Sea1', '/weather/a%2Fb',
      `/weather/${'a'.repeat(65)}`, '/weather/%20%20', '/weather?city=%3Cscript%3E']) {
      const r = await get(W, path, tok.app);
      assert.equal(r.status, 400, `${path}: ${r.text}`);
      assert.equal(r.json.error, 'invalid_request');
    }
  });

  test('the token is checked before the city', async () => {
    refused(await get(W, '/weather/Sea1'), 401, 'token_present');
  });

  test('POST → 405 with Allow: GET; unknown path → 404', async () => {
    const r = await request(`${W.url}/weather/Seattle`, { method: 'POST', body: '{}',
      headers: { Authorization: `Bearer ${tok.app}` } });
    assert.equal(r.status, 405);
    assert.equal(r.headers.allow, 'GET');
    assert.equal((await get(W, '/forecast', tok.app)).status, 404);
  });

  test('one log line per request, never a token', async () => {
    const id = '0b9d8f3c-6f0e-4a4e-9a51-3c1d2f4e5a6b';
    await get(W, '/weather/Seattle', tok.app, { 'client-request-id': id });
    const mine = () => W.logs().split('\n').filter((l) => l.includes(id));
    await waitFor(() => mine().length > 0);
    await new Promise((ok) => setTimeout(ok, 100));
    assert.equal(mine().length, 1);
    const line = JSON.parse(mine()[0]);
    assert.equal(line.event, 'request');
    assert.equal(line.status, 200);
    assert.equal(line.path, '/weather/Seattle');
    for (const s of [W, WB, WOpen, WDown]) assert.ok(!s.logs().includes('eyJ'), 'no token in the logs');
  });
});

describe('start-up errors: exit 2 with one line', () => {
  const env = { PATH: process.env.PATH };
  const cases = [
    [[], /--authority \(or WEATHER_AUTHORITY\) is required/],
    [['--authority', 'https://127.0.0.1:1/t/v2.0'], /--audience \(or WEATHER_AUDIENCE\) is required/],
    [['--authority', 'http://example.com/t/v2.0', '--audience', 'x'], /must be an https:\/\/ URL/],
    [['--authority', 'https://127.0.0.1:1/t/v2.0', '--audience', 'x', '--listen', 'nowhere'], /expected ADDR:PORT/],
    [['--authority', 'https://127.0.0.1:1/t/v2.0', '--audience'], /--audience needs a value/],
    [['--bogus'], /unknown option --bogus/],
  ];
  for (const [args, msg] of cases)
    test(`weather-api ${args.join(' ') || '(no options)'}`, () => {
      const r = run(['weather-api', ...args], { env });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /^agentid weather-api: /);
    });

  test('--help prints the usage and exits 0', () => {
    const r = run(['weather-api', '--help'], { env });
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--authority URL/);
  });
});
