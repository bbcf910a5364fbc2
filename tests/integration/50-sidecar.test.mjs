// `agentid sidecar` against a real `agentid issuer`: every route, the Agent ID flows, the
// override gates, inbound token checks, downstream calls through a recording API, failures of
// the identity provider and of the downstream API, single flight under concurrency, logs, and
// start-up errors.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initDirectory, startIssuer, start, run, demo, decodeJwt, postForm, freePort } from './harness.mjs';
import { saveDirectory, signJwt, strangerKey } from './tokens.mjs';
import {
  startRecorder, azureAd, downstreamApis, startSidecarPlain, userToken, get, post, authHeader, problem,
  metrics, facets, stopped,
} from './sidecar.mjs';

const BOB = {
  object_id: randomUUID(), user_principal_name: 'bob@agentid.local', display_name: 'Bob Demo',
  password: 'Bob-s3cret-Passw0rd-4-tests',
};
const WRONG_SECRET = 'wrong-client-secret-0123456789abcdef';
const GATE = {
  header: 'Sidecar__AllowOverrides__GetAuthorizationHeader',
  headerUnauth: 'Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated',
  downstream: 'Sidecar__AllowOverrides__CallDownstreamApi',
  downstreamUnauth: 'Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated',
};
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';

let dir, iss, d, ca, rec, apis, apiScope, alice, bob;
let S;   // overrides allowed on every route
let G;   // Microsoft's default gates (Unauthenticated routes: off)
const started = [];   // every sidecar, for the log check at the end

/** Start a sidecar on the demo blueprint with the test APIs and extra settings. */
async function sidecar(extra = {}, { issuer = iss, secret } = {}) {
  const s = await start(['sidecar'], { env: { ...azureAd(dir, issuer, d, secret), ...downstreamApis(apis), ...extra } });
  started.push(s);
  return s;
}
const allowAll = { [GATE.headerUnauth]: 'true', [GATE.downstreamUnauth]: 'true' };
const q = (o) => `?${new URLSearchParams(o)}`;

before(async () => {
  dir = initDirectory();
  const j = dir.json();
  j.users.push(BOB);
  saveDirectory(dir, j);
  d = demo(dir.json());
  ca = dir.ca;
  iss = await startIssuer(dir);
  rec = await startRecorder();
  const closed = await freePort();   // nothing listens there
  apiScope = `${d.api.identifier_uris[0]}/.default`;
  apis = {
    weather: { BaseUrl: `${rec.url}/weather`, Scopes: [apiScope] },
    weatherApp: { BaseUrl: `${rec.url}/weather-app`, Scopes: [apiScope], RequestAppToken: true },
    echo: { BaseUrl: `${rec.url}/api/`, Scopes: [apiScope], HttpMethod: 'POST', RelativePath: 'echo/path' },
    items: { BaseUrl: `${rec.url}/api`, Scopes: [apiScope], RequestAppToken: true, HttpMethod: 'PUT', RelativePath: 'items/list' },
    broken: { BaseUrl: `${rec.url}/fail`, Scopes: [apiScope], RequestAppToken: true },
    closed: { BaseUrl: `http://127.0.0.1:${closed}/`, Scopes: [apiScope], RequestAppToken: true },
    hang: { BaseUrl: `${rec.url}/hang`, Scopes: [apiScope], RequestAppToken: true },
    binary: { BaseUrl: `${rec.url}/binary`, Scopes: [apiScope], RequestAppToken: true },
    empty: { BaseUrl: `${rec.url}/empty`, Scopes: [apiScope], RequestAppToken: true },
    graph: { BaseUrl: `${rec.url}/graph/`, Scopes: ['https://graph.microsoft.com/.default'], RequestAppToken: true },
  };
  alice = await userToken(iss, ca, d, d.alice);
  bob = await userToken(iss, ca, d, BOB);
  S = await sidecar(allowAll);
  G = await sidecar();
});

after(async () => {
  // Stop everything first, then judge: one failed exit must not leave the rest running.
  const codes = await Promise.all(started.map(async (s) => [await s.stop(), s]));
  await rec?.close();
  const issuerCode = await iss?.stop();
  dir?.cleanup();
  for (const [code, s] of codes) assert.equal(code, 0, `clean exit (no leaks under ASan):\n${s.logs().slice(-6000)}`);
  if (iss) assert.equal(issuerCode, 0);
});

describe('health and metrics', () => {
  test('/healthz answers "Healthy" as plain text', async () => {
    const r = await get(S, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(r.text, 'Healthy');
    assert.match(r.headers['content-type'], /^text\/plain/);
  });

  test('/metrics is Prometheus text with the request, cache and identity-provider counters', async () => {
    authHeader(await get(S, '/AuthorizationHeaderUnauthenticated/weatherApp'));
    const r = await get(S, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
    for (const name of ['agentid_sidecar_requests_total', 'agentid_sidecar_token_cache_hits_total',
      'agentid_sidecar_token_cache_misses_total', 'agentid_sidecar_idp_requests_total',
      'agentid_sidecar_idp_errors_total'])
      assert.match(r.text, new RegExp(`^# TYPE ${name} counter$`, 'm'), name);
    assert.match(r.text, /^# TYPE agentid_sidecar_token_cache_entries gauge$/m);
    const m = await metrics(S);
    assert.ok(m['agentid_sidecar_requests_total{route="AuthorizationHeaderUnauthenticated",code="2xx"}'] >= 1, r.text);
    assert.ok(m.agentid_sidecar_idp_requests_total >= 1);
    assert.ok(m.agentid_sidecar_token_cache_entries >= 1);
    for (const [k, v] of Object.entries(m)) assert.ok(Number.isFinite(v), k);
  });
});

describe('app-only token for the configured app', () => {
  test('RequestAppToken=true: {"authorizationHeader":"Bearer …"}, azp blueprint, idtyp app, no-store', async () => {
    for (const s of [S, G]) {
      const r = await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp');
      const { claims } = authHeader(r);
      assert.equal(claims.azp, d.blueprint.app_id);
      assert.equal(claims.idtyp, 'app');
      assert.equal(claims.aud, d.api.app_id);
      assert.equal(claims.oid, d.blueprint.object_id);
      assert.equal(claims.tid, d.tenant);
      assert.deepEqual(claims.roles, ['Weather.Read.All']);
      assert.equal(claims.scp, undefined);
      assert.equal(claims.xms_act_fct, undefined);
      assert.match(r.headers['cache-control'], /no-store/);
      assert.match(r.headers['cache-control'], /no-cache/);
    }
  });

  test('the same request is served from the cache: the same token', async () => {
    const a = authHeader(await get(S, '/AuthorizationHeaderUnauthenticated/weatherApp'));
    const b = authHeader(await get(S, '/AuthorizationHeaderUnauthenticated/weatherApp'));
    assert.equal(a.token, b.token);
  });

  test('an API that wants a user token, on a route without a user: 400', async () => {
    problem(await get(S, '/AuthorizationHeaderUnauthenticated/weather'), 400, /RequestAppToken/);
  });
});

describe('autonomous agent', () => {
  test('AgentIdentity with the gate on: azp agent, xms_par_app_azp blueprint, xms_act_fct 11', async () => {
    for (const api of ['weatherApp', 'weather']) {
      const { claims } = authHeader(await get(S, `/AuthorizationHeaderUnauthenticated/${api}${q({ AgentIdentity: d.agent.app_id })}`));
      assert.equal(claims.azp, d.agent.app_id);
      assert.equal(claims.xms_par_app_azp, d.blueprint.app_id);
      assert.ok(facets(claims.xms_act_fct).includes(11), claims.xms_act_fct);
      assert.equal(claims.idtyp, 'app');
      assert.equal(claims.aud, d.api.app_id);
      assert.equal(claims.oid, d.agent.app_id);
    }
  });

  test('query names bind case-insensitively (agentidentity=)', async () => {
    const { claims } = authHeader(await get(S, `/AuthorizationHeaderUnauthenticated/weatherApp?agentidentity=${d.agent.app_id}`));
    assert.equal(claims.azp, d.agent.app_id);
  });

  test('gate at its default (off): 403 problem naming the setting, not a blueprint token', async () => {
    for (const query of [{ AgentIdentity: d.agent.app_id }, { 'optionsOverride.RequestAppToken': 'true' },
      { 'optionsOverride.Scopes': apiScope }]) {
      const j = problem(await get(G, `/AuthorizationHeaderUnauthenticated/weatherApp${q(query)}`), 403);
      assert.ok(j.detail.includes(GATE.headerUnauth), j.detail);
    }
  });

  test('authenticated routes\' gates turned off: 403 naming them; plain requests still served', async () => {
    const s = await sidecar({ [GATE.header]: 'false', [GATE.downstream]: 'false' });
    try {
      let j = problem(await get(s, `/AuthorizationHeader/weather${q({ AgentIdentity: d.agent.app_id })}`, { bearer: alice }), 403);
      assert.ok(j.detail.includes(GATE.header), j.detail);
      j = problem(await post(s, `/DownstreamApi/weather${q({ 'optionsOverride.RelativePath': 'x' })}`, { bearer: alice }), 403);
      assert.ok(j.detail.includes(GATE.downstream), j.detail);
      assert.equal(authHeader(await get(s, '/AuthorizationHeader/weather', { bearer: alice })).claims.oid, d.alice.object_id);
      assert.equal((await post(s, '/DownstreamApi/weather', { bearer: alice })).status, 200);
    } finally {
      await stopped(s);
    }
  });

  test('an AgentIdentity that is not a GUID: 400', async () => {
    problem(await get(S, '/AuthorizationHeaderUnauthenticated/weatherApp?AgentIdentity=weather-agent'), 400);
  });
});

describe('agent on behalf of the user', () => {
  test('/AuthorizationHeader with alice\'s token and AgentIdentity: idtyp user, oid alice, azp agent', async () => {
    for (const s of [S, G]) {   // GetAuthorizationHeader overrides are on by default
      const { claims } = authHeader(await get(s, `/AuthorizationHeader/weather${q({ AgentIdentity: d.agent.app_id })}`, { bearer: alice }));
      assert.equal(claims.idtyp, 'user');
      assert.equal(claims.oid, d.alice.object_id);
      assert.equal(claims.azp, d.agent.app_id);
      assert.equal(claims.xms_par_app_azp, d.blueprint.app_id);
      assert.ok(facets(claims.xms_act_fct).includes(11), claims.xms_act_fct);
      assert.equal(claims.aud, d.api.app_id);
      assert.ok(claims.scp.split(' ').includes('Weather.Read'), claims.scp);
    }
  });
});

describe('agent user', () => {
  for (const [name, value] of [['AgentUsername', () => d.agentUser.user_principal_name],
    ['AgentUserId', () => d.agentUser.object_id]]) {
    test(`by ${name}: oid = the agent user, xms_sub_fct contains 13`, async () => {
      const path = `/AuthorizationHeaderUnauthenticated/weather${q({ AgentIdentity: d.agent.app_id, [name]: value() })}`;
      const { claims } = authHeader(await get(S, path));
      assert.equal(claims.oid, d.agentUser.object_id);
      assert.ok(facets(claims.xms_sub_fct).includes(13), claims.xms_sub_fct);
      assert.equal(claims.idtyp, 'user');
      assert.equal(claims.azp, d.agent.app_id);
      assert.equal(claims.aud, d.api.app_id);
    });
  }

  test('on /AuthorizationHeader the agent user wins over the caller: oid agent user, not alice', async () => {
    const path = `/AuthorizationHeader/weather${q({ AgentIdentity: d.agent.app_id, AgentUsername: d.agentUser.user_principal_name })}`;
    const { claims } = authHeader(await get(S, path, { bearer: alice }));
    assert.equal(claims.oid, d.agentUser.object_id);
    assert.ok(facets(claims.xms_sub_fct).includes(13));
  });
});

describe('plain on-behalf-of', () => {
  test('no AgentIdentity: azp blueprint, idtyp user, the caller\'s oid', async () => {
    for (const [tok, oid] of [[alice, d.alice.object_id], [bob, BOB.object_id]]) {
      const { claims } = authHeader(await get(S, '/AuthorizationHeader/weather', { bearer: tok }));
      assert.equal(claims.azp, d.blueprint.app_id);
      assert.equal(claims.idtyp, 'user');
      assert.equal(claims.oid, oid);
      assert.equal(claims.aud, d.api.app_id);
      assert.equal(claims.xms_act_fct, undefined);
    }
  });
});

describe('microsoft-identity-web issue 3643: optionsOverride.RequestAppToken=true', () => {
  const app = { 'optionsOverride.RequestAppToken': 'true' };
  const isAppToken = (claims) => {
    assert.equal(claims.idtyp, 'app');
    assert.equal(claims.azp, d.blueprint.app_id);
    assert.equal(claims.oid, d.blueprint.object_id);
    assert.equal(claims.scp, undefined);
    assert.equal(claims.aud, d.api.app_id);
  };

  test('/AuthorizationHeader with a user token: an app token (gates S and default)', async () => {
    for (const s of [S, G]) isAppToken(authHeader(await get(s, `/AuthorizationHeader/weather${q(app)}`, { bearer: alice })).claims);
  });

  test('/AuthorizationHeaderUnauthenticated with its gate on: an app token; off: 403', async () => {
    isAppToken(authHeader(await get(S, `/AuthorizationHeaderUnauthenticated/weather${q(app)}`)).claims);
    const j = problem(await get(G, `/AuthorizationHeaderUnauthenticated/weather${q(app)}`), 403);
    assert.ok(j.detail.includes(GATE.headerUnauth));
  });

  test('/DownstreamApi with a user token: the downstream API receives an app token', async () => {
    const r = await post(S, `/DownstreamApi/weather${q(app)}`, { bearer: alice });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 201);
    const auth = rec.last().headers.authorization;
    isAppToken(decodeJwt(auth.slice('Bearer '.length)).claims);
  });

  test('/DownstreamApiUnauthenticated with its gate on: app token downstream; off: 403', async () => {
    const r = await post(S, `/DownstreamApiUnauthenticated/weather${q(app)}`);
    assert.equal(r.status, 200, r.text);
    isAppToken(decodeJwt(rec.last().headers.authorization.slice(7)).claims);
    const n = rec.seen.length;
    const j = problem(await post(G, `/DownstreamApiUnauthenticated/weather${q(app)}`), 403);
    assert.ok(j.detail.includes(GATE.downstreamUnauth));
    assert.equal(rec.seen.length, n, 'nothing was sent downstream');
  });

  test('a delegated token always carries its user (oid alice), never the app', async () => {
    for (const query of ['', q({ 'optionsOverride.RequestAppToken': 'false' })]) {
      const { claims } = authHeader(await get(S, `/AuthorizationHeader/weather${query}`, { bearer: alice }));
      assert.equal(claims.idtyp, 'user');
      assert.equal(claims.oid, d.alice.object_id);
      assert.notEqual(claims.oid, d.blueprint.object_id);
    }
    const r = await post(S, '/DownstreamApi/weather', { bearer: alice });
    assert.equal(r.status, 200, r.text);
    const { claims } = decodeJwt(rec.last().headers.authorization.slice(7));
    assert.equal(claims.idtyp, 'user');
    assert.equal(claims.oid, d.alice.object_id);
  });

  test('RequestAppToken with AgentIdentity on /AuthorizationHeader: the agent\'s own app token', async () => {
    const { claims } = authHeader(await get(S, `/AuthorizationHeader/weather${q({ ...app, AgentIdentity: d.agent.app_id })}`, { bearer: alice }));
    assert.equal(claims.idtyp, 'app');
    assert.equal(claims.azp, d.agent.app_id);
    assert.equal(claims.oid, d.agent.app_id);
  });
});

describe('agent parameter checks', () => {
  const A = () => d.agent.app_id;
  const cases = () => [
    [{ AgentIdentity: A(), AgentUsername: d.agentUser.user_principal_name, AgentUserId: d.agentUser.object_id },
      'AgentUsername and AgentUserId are mutually exclusive'],
    [{ AgentUsername: d.agentUser.user_principal_name }, 'AgentUsername requires AgentIdentity to be specified'],
    [{ AgentUserId: d.agentUser.object_id }, 'AgentUserId requires AgentIdentity to be specified'],
    [{ AgentIdentity: A(), AgentUserId: 'not-a-guid' }, 'AgentUserId must be a valid GUID'],
  ];

  test('400 problem details with the messages of Microsoft\'s documentation', async () => {
    for (const [query, detail] of cases()) {
      problem(await get(S, `/AuthorizationHeaderUnauthenticated/weatherApp${q(query)}`), 400, detail);
      problem(await get(S, `/AuthorizationHeader/weather${q(query)}`, { bearer: alice }), 400, detail);
      problem(await post(S, `/DownstreamApiUnauthenticated/weatherApp${q(query)}`), 400, detail);
    }
  });
});

describe('routing', () => {
  test('unknown apiName: 400 "No scopes found for the API …"', async () => {
    let j = problem(await get(S, '/AuthorizationHeaderUnauthenticated/nope'), 400);
    assert.ok(j.detail.startsWith("No scopes found for the API 'nope'"), j.detail);
    j = problem(await get(S, '/AuthorizationHeader/nope', { bearer: alice }), 400);
    assert.ok(j.detail.startsWith('No scopes found for the API'), j.detail);
  });

  test('unknown apiName with optionsOverride.Scopes: the override scopes are used', async () => {
    const { claims } = authHeader(await get(S, `/AuthorizationHeaderUnauthenticated/nope${q({
      'optionsOverride.Scopes': apiScope, 'optionsOverride.RequestAppToken': 'true' })}`));
    assert.equal(claims.aud, d.api.app_id);
  });

  test('route and apiName match case-insensitively, as ASP.NET routing does', async () => {
    const { claims } = authHeader(await get(S, '/authorizationheaderunauthenticated/WEATHERAPP'));
    assert.equal(claims.idtyp, 'app');
  });

  test('wrong method: 405', async () => {
    let r = await post(S, '/AuthorizationHeader/weather', { bearer: alice });
    problem(r, 405);
    assert.equal(r.headers.allow, 'GET');
    r = await get(S, '/DownstreamApi/weather', { bearer: alice });
    problem(r, 405);
    assert.equal(r.headers.allow, 'POST');
    problem(await post(S, '/Validate', { bearer: alice }), 405);
  });

  test('unknown route: 404', async () => {
    for (const path of ['/nope', '/AuthorizationHeader', '/AuthorizationHeader/', '/AuthorizationHeader/a/b', '/health'])
      problem(await get(S, path, { bearer: alice }), 404);
  });
});

describe('inbound token problems', () => {
  let expired, otherAudience, forged;

  before(async () => {
    // The same directory served with the clock two hours back and the main issuer's URL: a
    // token that is genuine in every way except its lifetime.
    const old = await start(['issuer', '--dir', dir.dir, '--public-url', iss.url],
      { tls: true, ca, env: { AGENTID_TIME_OFFSET: '-7200' } });
    const r = await postForm(`${old.url}/${d.tenant}/oauth2/v2.0/token`, {
      grant_type: 'password', client_id: d.cli.app_id, username: d.alice.user_principal_name,
      password: d.alice.password, scope: `api://${d.blueprint.app_id}/access_as_user`,
    }, { ca });
    assert.equal(await old.stop(), 0);
    assert.equal(r.status, 200, r.text);
    expired = r.json.access_token;
    assert.ok(decodeJwt(expired).claims.exp < Date.now() / 1000 - 3000);
    assert.equal(decodeJwt(expired).claims.iss, decodeJwt(alice).claims.iss);
    const o = await postForm(iss.tokenUrl, {
      grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
      scope: apiScope,
    }, { ca });
    assert.equal(o.status, 200, o.text);
    otherAudience = o.json.access_token;
    const a = decodeJwt(alice);
    forged = signJwt(a.header, a.claims, strangerKey());
  });

  const invalid = (r, why) => {
    assert.equal(r.status, 401, r.text);
    const h = r.headers['www-authenticate'];
    assert.ok(h?.startsWith('Bearer'), h);
    assert.ok(h.includes('error="invalid_token"'), h);
    if (why) assert.match(h, why);
    problem(r, 401);
  };

  for (const route of [['GET', '/AuthorizationHeader/weather'], ['GET', '/Validate'], ['POST', '/DownstreamApi/weather']]) {
    const call = (opts) => (route[0] === 'GET' ? get(S, route[1], opts) : post(S, route[1], opts));
    test(`${route[1]}: no token -> 401 WWW-Authenticate: Bearer`, async () => {
      const r = await call({});
      assert.equal(r.status, 401);
      assert.match(r.headers['www-authenticate'], /^Bearer/);
      problem(r, 401);
      const r2 = await call({ headers: { Authorization: 'Basic dXNlcjpwYXNz' } });
      assert.equal(r2.status, 401);
      assert.match(r2.headers['www-authenticate'], /^Bearer/);
    });
    test(`${route[1]}: garbage, another audience, expired, forged -> 401 invalid_token`, async () => {
      const n = rec.seen.length;
      invalid(await call({ bearer: 'not.a-token' }));
      invalid(await call({ bearer: 'garbage' }));
      invalid(await call({ bearer: otherAudience }), /audience/);
      invalid(await call({ bearer: expired }), /expired/);
      invalid(await call({ bearer: forged }));
      assert.equal(rec.seen.length, n, 'nothing was sent downstream');
    });
  }
});

/** An app token whose audience is the blueprint: the Weather API's client credentials. */
async function appTokenForBlueprint() {
  const r = await postForm(iss.tokenUrl, {
    grant_type: 'client_credentials', client_id: d.api.app_id, client_secret: d.api.secrets[0],
    scope: `api://${d.blueprint.app_id}/.default`,
  }, { ca });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

describe('/Validate', () => {
  test('a valid user token: {"protocol":"Bearer","token":…,"claims":{…}}', async () => {
    const r = await get(S, '/Validate', { bearer: alice });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.json), ['protocol', 'token', 'claims']);
    assert.equal(r.json.protocol, 'Bearer');
    assert.equal(r.json.token, alice);
    assert.deepEqual(r.json.claims, decodeJwt(alice).claims);
    assert.equal(r.json.claims.oid, d.alice.object_id);
    assert.equal(r.json.claims.aud, d.blueprint.app_id);
    assert.match(r.headers['cache-control'], /no-store/);
  });

  test('an app token for the configured app (no scp): accepted without AzureAd__Scopes', async () => {
    const r = await get(S, '/Validate', { bearer: await appTokenForBlueprint() });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.claims.idtyp, 'app');
    assert.equal(r.json.claims.scp, undefined);
  });

  test('AzureAd__Scopes: access_as_user passes, Other.Scope is 403, a list needs any one', async () => {
    const appToken = await appTokenForBlueprint();
    for (const [scopes, status] of [['access_as_user', 200], ['Other.Scope', 403], ['Other.Scope access_as_user', 200]]) {
      const s = await sidecar({ AzureAd__Scopes: scopes });
      try {
        const r = await get(s, '/Validate', { bearer: alice });
        if (status === 200) assert.equal(r.status, 200, r.text);
        else problem(r, 403, /Other\.Scope/);
        problem(await get(s, '/Validate', { bearer: appToken }), 403);   // no scp at all
        // The other routes do not check AzureAd__Scopes (as Microsoft's do not).
        authHeader(await get(s, '/AuthorizationHeader/weather', { bearer: alice }));
      } finally {
        await stopped(s);
      }
    }
  });
});

describe('downstream API calls', () => {
  test('/DownstreamApi: token, configured method and path, forwarded body and content type, traceparent', async () => {
    const body = JSON.stringify({ city: 'Dallas', units: 'metric' });
    const r = await post(S, '/DownstreamApi/echo', {
      bearer: alice, body, headers: { 'Content-Type': 'application/json', traceparent: TRACEPARENT },
    });
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.match(r.headers['cache-control'], /no-store/);
    assert.deepEqual(Object.keys(r.json).sort(), ['content', 'headers', 'statusCode']);
    assert.equal(r.json.statusCode, 201);
    assert.deepEqual(r.json.headers['Content-Type'], ['application/json; charset=utf-8']);
    assert.equal(r.json.headers['X-Recorder'], undefined, 'content headers only, as Microsoft\'s sidecar');
    for (const v of Object.values(r.json.headers)) assert.ok(Array.isArray(v));
    assert.deepEqual(JSON.parse(r.json.content), { ok: true, path: '/api/echo/path' });

    const got = rec.last();
    assert.equal(got.method, 'POST');
    assert.equal(got.path, '/api/echo/path');
    assert.equal(got.body, body);
    assert.equal(got.headers['content-type'], 'application/json');
    assert.equal(got.headers.traceparent, TRACEPARENT);
    assert.match(got.headers.authorization, /^Bearer eyJ/);
    const { claims } = decodeJwt(got.headers.authorization.slice(7));
    assert.equal(claims.aud, d.api.app_id);
    assert.equal(claims.idtyp, 'user');
    assert.equal(claims.oid, d.alice.object_id);
    assert.equal(claims.azp, d.blueprint.app_id);
  });

  test('optionsOverride: RelativePath, HttpMethod, extra query and header parameters; BaseUrl ignored', async () => {
    const r = await post(S, `/DownstreamApi/echo${q({
      'optionsOverride.RelativePath': 'other/place', 'optionsOverride.HttpMethod': 'PATCH',
      'optionsOverride.ExtraQueryParameters.city': 'Dallas', 'optionsOverride.ExtraHeaderParameters.X-Tenant-Hint': 'contoso',
      'optionsOverride.BaseUrl': 'http://127.0.0.1:9/steal' })}`, { bearer: alice, body: 'x=1', headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
    assert.equal(r.status, 200, r.text);
    const got = rec.last();
    assert.equal(got.method, 'PATCH');
    assert.equal(got.path, '/api/other/place');
    assert.deepEqual(got.query, { city: 'Dallas' });
    assert.equal(got.headers['x-tenant-hint'], 'contoso');
    assert.equal(got.body, 'x=1');
    assert.equal(got.headers['content-type'], 'application/x-www-form-urlencoded');
  });

  test('/DownstreamApiUnauthenticated: app token, configured PUT items/list, agent token with AgentIdentity', async () => {
    let r = await post(S, '/DownstreamApiUnauthenticated/items', { body: 'hello', headers: { 'Content-Type': 'text/plain' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 201);
    let got = rec.last();
    assert.equal(got.method, 'PUT');
    assert.equal(got.path, '/api/items/list');
    assert.equal(got.body, 'hello');
    assert.equal(got.headers['content-type'], 'text/plain');
    let { claims } = decodeJwt(got.headers.authorization.slice(7));
    assert.equal(claims.idtyp, 'app');
    assert.equal(claims.azp, d.blueprint.app_id);

    r = await post(S, `/DownstreamApiUnauthenticated/items${q({ AgentIdentity: d.agent.app_id, 'optionsOverride.RelativePath': 'items/7' })}`);
    assert.equal(r.status, 200, r.text);
    got = rec.last();
    assert.equal(got.path, '/api/items/7');
    ({ claims } = decodeJwt(got.headers.authorization.slice(7)));
    assert.equal(claims.azp, d.agent.app_id);
    assert.equal(claims.xms_par_app_azp, d.blueprint.app_id);
  });

  test('a downstream 500 comes back as 200 with statusCode 500', async () => {
    const r = await post(S, '/DownstreamApiUnauthenticated/broken');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 500);
    assert.equal(r.json.content, 'downstream broke');
    assert.deepEqual(r.json.headers['Content-Type'], ['text/plain']);
  });

  test('content: null without a body; bytes that are not UTF-8 stay JSON-safe', async () => {
    let r = await post(S, '/DownstreamApiUnauthenticated/empty');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 204);
    assert.equal(r.json.content, null);
    r = await post(S, '/DownstreamApiUnauthenticated/binary');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 200);
    assert.equal(typeof r.json.content, 'string');
    assert.deepEqual(r.json.headers['Content-Type'], ['application/octet-stream']);
  });

  test('a header override with a line break: 400, nothing sent', async () => {
    const n = rec.seen.length;
    problem(await post(S, `/DownstreamApi/echo${q({ 'optionsOverride.ExtraHeaderParameters.X-A': 'a\r\nX-Evil: 1' })}`,
      { bearer: alice }), 400, /line break/);
    assert.equal(rec.seen.length, n);
  });

  test('an unreachable downstream API: 502 problem', async () => {
    problem(await post(S, '/DownstreamApiUnauthenticated/closed'), 502, /closed/);
  });

  test('a downstream API that never answers, Sidecar__TimeoutMilliseconds=500: 504 problem', async () => {
    const s = await sidecar({ Sidecar__TimeoutMilliseconds: '500' });
    try {
      // Warm the token cache first (the identity provider has the same 500 ms).
      let warm;
      for (let i = 0; i < 5 && warm?.status !== 200; i++) warm = await get(s, '/AuthorizationHeaderUnauthenticated/hang');
      authHeader(warm);
      const t0 = Date.now();
      const r = await post(s, '/DownstreamApiUnauthenticated/hang');
      problem(r, 504, /hang/);
      assert.ok(Date.now() - t0 < 5000);
      assert.equal(rec.last().path, '/hang');
    } finally {
      await stopped(s);
    }
  });
});

describe('identity provider refuses', () => {
  test('wrong client secret: 401 problem with AADSTS7000215 in detail', async () => {
    const s = await sidecar({}, { secret: WRONG_SECRET });
    try {
      problem(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp'), 401, /AADSTS7000215/);
      problem(await get(s, '/AuthorizationHeader/weather', { bearer: alice }), 401, /AADSTS7000215/);
      const m = await metrics(s);
      assert.equal(m.agentid_sidecar_idp_errors_total, 2);
      assert.equal(m.agentid_sidecar_token_cache_entries, 0, 'failures are not cached');
    } finally {
      await stopped(s);
    }
  });
});

describe('identity provider refuses a flow', () => {
  test('a scope the API does not expose: 401 problem with the AADSTS code; not cached', async () => {
    const path = `/AuthorizationHeader/weather${q({ 'optionsOverride.Scopes': `${d.api.identifier_uris[0]}/No.Such.Scope` })}`;
    for (let i = 0; i < 2; i++) problem(await get(S, path, { bearer: alice }), 401, /^invalid_scope: AADSTS70011: /);
  });
});

describe('identity provider down', () => {
  test('cached tokens are still served; a request needing a new token is 503', async () => {
    const iss2 = await startIssuer(dir);
    const s = await sidecar(allowAll, { issuer: iss2 });
    try {
      const alice2 = await userToken(iss2, ca, d, d.alice);
      const app = authHeader(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp'));
      const obo = authHeader(await get(s, '/AuthorizationHeader/weather', { bearer: alice2 }));
      assert.equal(await iss2.stop(), 0);
      assert.equal(authHeader(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp')).token, app.token);
      assert.equal(authHeader(await get(s, '/AuthorizationHeader/weather', { bearer: alice2 })).token, obo.token);
      problem(await get(s, '/AuthorizationHeaderUnauthenticated/graph'), 503);
      problem(await get(s, `/AuthorizationHeaderUnauthenticated/weatherApp${q({ AgentIdentity: d.agent.app_id })}`), 503);
      problem(await get(s, '/AuthorizationHeader/weather', { bearer: alice }), 401);   // not this issuer's token
    } finally {
      await iss2.stop();
      await stopped(s);
    }
  });

  test('never reachable: token routes 503, inbound tokens cannot be checked 503', async () => {
    const port = await freePort();
    const s = await sidecar(allowAll, { issuer: { url: `https://127.0.0.1:${port}` } });
    try {
      problem(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp'), 503);
      problem(await get(s, `/AuthorizationHeaderUnauthenticated/weatherApp${q({ AgentIdentity: d.agent.app_id })}`), 503);
      problem(await get(s, '/AuthorizationHeader/weather', { bearer: alice }), 503);
      problem(await get(s, '/Validate', { bearer: alice }), 503);
    } finally {
      await stopped(s);
    }
  });

  test('an identity provider that never answers, Sidecar__TimeoutMilliseconds=500: 504', async () => {
    const s = await sidecar({ Sidecar__TimeoutMilliseconds: '500' }, { issuer: { url: `${rec.url}/hang` } });
    try {
      const t0 = Date.now();
      problem(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp'), 504);
      assert.ok(Date.now() - t0 < 5000);
    } finally {
      await stopped(s);
    }
  });
});

describe('single flight', () => {
  test('100 concurrent identical agent requests on a cold cache: exactly 2 identity-provider calls', async () => {
    const s = await sidecar(allowAll);
    try {
      const before = (await metrics(s)).agentid_sidecar_idp_requests_total;
      assert.equal(before, 0);
      const path = `/AuthorizationHeaderUnauthenticated/weatherApp${q({ AgentIdentity: d.agent.app_id })}`;
      const rs = await Promise.all(Array.from({ length: 100 }, () => get(s, path)));
      const tokens = new Set(rs.map((r) => authHeader(r).token));
      assert.equal(tokens.size, 1, 'everybody got the one token');
      const m = await metrics(s);
      assert.equal(m.agentid_sidecar_idp_requests_total - before, 2, 'T1 + the agent token');
      assert.equal(m.agentid_sidecar_token_cache_misses_total, 2);
    } finally {
      await stopped(s);
    }
  });

  test('alice and bob interleaved (50 each, at once): each answer carries its caller\'s oid', async () => {
    const s = await sidecar(allowAll);
    try {
      for (const [path, expectedCalls] of [[`/AuthorizationHeader/weather${q({ AgentIdentity: d.agent.app_id })}`, 3],
        ['/AuthorizationHeader/weather', 2]]) {
        const before = (await metrics(s)).agentid_sidecar_idp_requests_total;
        const who = Array.from({ length: 100 }, (_, i) => (i % 2 ? 'bob' : 'alice'));
        const rs = await Promise.all(who.map((u) => get(s, path, { bearer: u === 'bob' ? bob : alice })));
        rs.forEach((r, i) => {
          const { claims } = authHeader(r);
          assert.equal(claims.oid, who[i] === 'bob' ? BOB.object_id : d.alice.object_id, `request ${i} (${who[i]})`);
          assert.equal(claims.idtyp, 'user');
        });
        const after = (await metrics(s)).agentid_sidecar_idp_requests_total;
        // Agent OBO: T1 + one OBO per user; plain OBO: one per user.
        assert.equal(after - before, expectedCalls, path);
      }
    } finally {
      await stopped(s);
    }
  });
});

describe('start-up errors', () => {
  let cwd;
  before(() => { cwd = mkdtempSync(join(tmpdir(), 'agentid-sidecar-')); });
  after(() => rmSync(cwd, { recursive: true, force: true }));
  const env = (extra = {}, drop = []) => {
    const e = { ...process.env, ...azureAd(dir, iss, d), ...extra };
    for (const k of drop) delete e[k];
    return e;
  };

  test('missing AzureAd__TenantId: exit 1, names the key', async () => {
    const r = run(['sidecar', '--listen', `127.0.0.1:${await freePort()}`], { env: env({}, ['AzureAd__TenantId']), cwd, timeout: 20000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /AzureAd__TenantId/);
  });

  test('Sidecar__TokenCacheSize=abc: exit 1, names the key', async () => {
    const r = run(['sidecar', '--listen', `127.0.0.1:${await freePort()}`], { env: env({ Sidecar__TokenCacheSize: 'abc' }), cwd, timeout: 20000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /Sidecar__TokenCacheSize/);
  });

  test('a bad boolean gate: exit 1, names the key', async () => {
    const r = run(['sidecar', '--listen', `127.0.0.1:${await freePort()}`], { env: env({ [GATE.headerUnauth]: 'yes please' }), cwd, timeout: 20000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(GATE.headerUnauth));
  });

  test('--listen 0.0.0.0 without Sidecar__AllowNonLoopbackListen: exit 1', async () => {
    const r = run(['sidecar', '--listen', `0.0.0.0:${await freePort()}`], { env: env(), cwd, timeout: 20000 });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /Sidecar__AllowNonLoopbackListen/);
  });

  test('ASPNETCORE_URLS=http://+:PORT listens on 127.0.0.1:PORT, with a warning', async () => {
    const port = await freePort();
    const s = await startSidecarPlain({ ...azureAd(dir, iss, d), ...downstreamApis(apis), ASPNETCORE_URLS: `http://+:${port}` }, port);
    started.push(s);
    try {
      authHeader(await get(s, '/AuthorizationHeaderUnauthenticated/weatherApp'));
      assert.match(s.logs(), /"level":"warn"[^\n]*listen_narrowed/);
      assert.match(s.logs(), new RegExp(`127\\.0\\.0\\.1:${port}`));
    } finally {
      await stopped(s);
    }
  });
});

describe('a token cache of one entry', () => {
  test('Sidecar__TokenCacheSize=1: evictions, and every answer still right under concurrency', async () => {
    const s = await sidecar({ ...allowAll, Sidecar__TokenCacheSize: '1' });
    try {
      const paths = [
        [`/AuthorizationHeader/weather${q({ AgentIdentity: d.agent.app_id })}`, 'user'],
        ['/AuthorizationHeader/weather', 'user'],
        ['/AuthorizationHeaderUnauthenticated/weatherApp', 'app'],
        [`/AuthorizationHeaderUnauthenticated/weatherApp${q({ AgentIdentity: d.agent.app_id })}`, 'app'],
      ];
      const jobs = Array.from({ length: 80 }, (_, i) => ({ path: paths[i % 4], user: i % 8 < 4 ? 'alice' : 'bob' }));
      const rs = await Promise.all(jobs.map((j) => get(s, j.path[0], { bearer: j.user === 'bob' ? bob : alice })));
      rs.forEach((r, i) => {
        const { claims } = authHeader(r);
        assert.equal(claims.idtyp, jobs[i].path[1]);
        if (jobs[i].path[1] === 'user') assert.equal(claims.oid, jobs[i].user === 'bob' ? BOB.object_id : d.alice.object_id);
      });
      const m = await metrics(s);
      assert.equal(m.agentid_sidecar_token_cache_entries, 1, "back within the bound once the burst is over");
      assert.ok(m.agentid_sidecar_token_cache_evictions_total > 0);
    } finally {
      await stopped(s);
    }
  });
});

describe('logs', () => {
  test('no token, client secret or user password in any sidecar\'s logs', async () => {
    assert.ok(started.length >= 8);
    for (const s of started) {
      const logs = s.logs();
      assert.ok(logs.length > 0);
      assert.ok(!logs.includes('eyJ'), 'no JWT');
      for (const secret of [d.blueprint.secrets[0], WRONG_SECRET, d.alice.password, BOB.password])
        assert.ok(!logs.includes(secret), 'no secret or password');
      for (const line of logs.trim().split('\n')) JSON.parse(line);   // JSON lines
    }
  });
});
