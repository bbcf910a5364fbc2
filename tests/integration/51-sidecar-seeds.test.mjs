// The sidecar driven exactly as two public walkthroughs drive Microsoft's sidecar, with their
// settings and requests, and their answers consumed the way those clients consume them
// (parse authorizationHeader, split off "Bearer ", call the API with it):
//  - seed 000, Microsoft's "Run the sidecar for local development" sample: autonomous
//    /AuthorizationHeaderUnauthenticated/graph-app?AgentIdentity=… and OBO
//    /AuthorizationHeader/graph?AgentIdentity=… with the SPA user's token; the weather API
//    validates TR (JWKS RS256 signature, issuer, expiry, audience).
//  - seed 001, "Microsoft Entra Agent ID on Kubernetes": the ConfigMap (Graph with
//    RequestAppToken=true, ASPNETCORE_URLS=http://+:5000) and its curl commands.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { initDirectory, startIssuer, demo, decodeJwt, freePort, request } from './harness.mjs';
import {
  startRecorder, startSidecarPlain, userToken, validateAsApi, facets,
} from './sidecar.mjs';
import { join } from 'node:path';

let dir, iss, d, ca, rec;
const sidecars = [];

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  ca = dir.ca;
  iss = await startIssuer(dir);
  rec = await startRecorder();
});
after(async () => {
  // Stop everything first, then judge: one failed exit must not leave the rest running.
  const codes = await Promise.all(sidecars.map(async (s) => [await s.stop(), s]));
  await rec?.close();
  const issuerCode = await iss?.stop();
  dir?.cleanup();
  for (const [code, s] of codes) assert.equal(code, 0, `clean exit (no leaks under ASan):\n${s.logs().slice(-6000)}`);
  if (iss) assert.equal(issuerCode, 0);
});

/** A sidecar as a container runs it: environment only, ASPNETCORE_URLS=http://+:PORT. */
async function container(env) {
  const port = await freePort();
  const s = await startSidecarPlain({ ...env, ASPNETCORE_URLS: `http://+:${port}` }, port);
  sidecars.push(s);
  return s;
}

/** What the walkthrough's clients do with an answer: JSON, authorizationHeader, split "Bearer ". */
async function bearerFrom(res) {
  assert.equal(res.status, 200, res.text);
  const body = JSON.parse(res.text);
  assert.ok(body.authorizationHeader, "Sidecar response missing 'authorizationHeader' field.");
  const token = body.authorizationHeader.split('Bearer ')[1];
  assert.ok(token && token.split('.').length === 3, body.authorizationHeader);
  return token;
}

/** curl "localhost:PORT/…" (-X POST -H …) */
const curl = (s, path, { method = 'GET', headers = {} } = {}) =>
  request(`${s.url}${path}`, { method, headers: { 'User-Agent': 'curl/8.5.0', Accept: '*/*', ...headers } });

describe('seed 001: Microsoft Entra Agent ID on Kubernetes (sidecar ConfigMap + curl)', () => {
  let configMap, secret;
  before(() => {
    // The ConfigMap and Secret of the walkthrough, pointed at the local issuer, with Graph's
    // base URL on the recorder; SSL_CERT_FILE trusts the local CA.
    configMap = {
      AzureAd__Instance: `${iss.url}/`,
      AzureAd__TenantId: d.tenant,
      AzureAd__ClientId: d.blueprint.app_id,
      AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
      DownstreamApis__graph__BaseUrl: `${rec.url}/v1.0/`,
      DownstreamApis__graph__Scopes__0: 'https://graph.microsoft.com/.default',
      DownstreamApis__graph__RequestAppToken: 'true',
      ASPNETCORE_ENVIRONMENT: 'Production',
      SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt'),
    };
    secret = { AzureAd__ClientCredentials__0__ClientSecret: d.blueprint.secrets[0] };
  });

  test('as configured: health, the blueprint\'s Graph token, agent requests refused naming the gate', async () => {
    const s = await container({ ...configMap, ...secret });
    // curl localhost:5000/healthz -> "Healthy"
    let r = await curl(s, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(r.text, 'Healthy');

    // "Get the blueprint's access token": a v1 Graph token for the blueprint.
    const t = await bearerFrom(await curl(s, '/AuthorizationHeaderUnauthenticated/graph'));
    const c = await validateAsApi(t, iss, ca, { aud: 'https://graph.microsoft.com', v1: true });
    assert.equal(c.ver, '1.0');
    assert.equal(c.appid, d.blueprint.app_id);
    assert.equal(c.idtyp, 'app');
    assert.equal(c.xms_act_fct, undefined);

    // The walkthrough ran sidecar 1.0.0, which had no override gates. agentid keeps
    // Microsoft's 1.1 defaults and says which setting to turn on instead of quietly
    // returning the blueprint's token.
    r = await curl(s, `/AuthorizationHeaderUnauthenticated/graph?AgentIdentity=${d.agent.app_id}`);
    assert.equal(r.status, 403, r.text);
    assert.equal(r.headers['content-type'], 'application/problem+json');
    assert.ok(r.json.detail.includes('Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated=true'), r.json.detail);
    r = await curl(s, `/DownstreamApiUnauthenticated/graph?AgentIdentity=${d.agent.app_id}`,
      { method: 'POST', headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 403, r.text);
    assert.ok(r.json.detail.includes('Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated=true'), r.json.detail);
  });

  test('with the fleet gates on: the agent\'s token, a Graph call through the sidecar, the agent OBO command', async () => {
    const s = await container({
      ...configMap, ...secret,
      Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated: 'true',
      Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated: 'true',
    });

    // "Get the token for the agent's identity"
    const t = await bearerFrom(await curl(s, `/AuthorizationHeaderUnauthenticated/graph?AgentIdentity=${d.agent.app_id}`));
    const c = await validateAsApi(t, iss, ca, { aud: 'https://graph.microsoft.com', v1: true });
    assert.equal(c.appid, d.agent.app_id);
    assert.equal(c.xms_par_app_azp, d.blueprint.app_id);
    assert.ok(facets(c.xms_act_fct).includes(11));
    assert.equal(c.idtyp, 'app');

    // "Make a call to the downstream Graph API without messing around with tokens at all":
    // curl -X POST ".../DownstreamApiUnauthenticated/graph?AgentIdentity=…" -H "Content-Type: application/json"
    const n = rec.seen.length;
    const r = await curl(s, `/DownstreamApiUnauthenticated/graph?AgentIdentity=${d.agent.app_id}`,
      { method: 'POST', headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.statusCode, 201);
    assert.deepEqual(r.json.headers['Content-Type'], ['application/json; charset=utf-8']);
    assert.deepEqual(JSON.parse(r.json.content), { ok: true, path: '/v1.0/' });
    assert.equal(rec.seen.length, n + 1);
    const got = rec.last();
    assert.equal(got.method, 'GET', 'the downstream verb is the configured HttpMethod (default GET)');
    assert.equal(got.path, '/v1.0/');
    assert.equal(got.body, '');
    const down = decodeJwt(got.headers.authorization.split('Bearer ')[1]).claims;
    assert.equal(down.appid, d.agent.app_id);
    assert.equal(down.aud, 'https://graph.microsoft.com');

    // The agent OBO command of the walkthrough, with the user's token for api://<blueprint>:
    // curl ".../AuthorizationHeader/graph?optionsOverride.RequestAppToken=false&AgentIdentity=…"
    //      -H "Authorization: Bearer $USER_TOKEN"
    // DownstreamApis__graph__RequestAppToken=true is configured; the walkthrough's explicit
    // optionsOverride.RequestAppToken=false asks for the user's token, and agentid honours it
    // (Microsoft's merge rule can only turn RequestAppToken on; docs/sidecar.md lists this).
    const user = await userToken(iss, ca, d, d.alice);
    const o = await bearerFrom(await curl(s,
      `/AuthorizationHeader/graph?optionsOverride.RequestAppToken=false&AgentIdentity=${d.agent.app_id}`,
      { headers: { Authorization: `Bearer ${user}` } }));
    const oc = await validateAsApi(o, iss, ca, { aud: 'https://graph.microsoft.com', v1: true });
    assert.equal(oc.appid, d.agent.app_id);
    assert.equal(oc.idtyp, 'user');
    assert.equal(oc.oid, d.alice.object_id);

    // The same command against an API configured for user tokens gives the agent OBO token.
    const s2 = await container({
      ...configMap, ...secret, DownstreamApis__graph__RequestAppToken: 'false',
    });
    const u = await bearerFrom(await curl(s2,
      `/AuthorizationHeader/graph?optionsOverride.RequestAppToken=false&AgentIdentity=${d.agent.app_id}`,
      { headers: { Authorization: `Bearer ${user}` } }));
    const uc = await validateAsApi(u, iss, ca, { aud: 'https://graph.microsoft.com', v1: true });
    assert.equal(uc.appid, d.agent.app_id);
    assert.equal(uc.idtyp, 'user');
    assert.equal(uc.oid, d.alice.object_id);
    assert.equal(uc.upn, d.alice.user_principal_name);
    assert.ok(facets(uc.xms_act_fct).includes(11));
  });
});

describe('seed 000: Run the sidecar for local development (autonomous and OBO flows)', () => {
  let s, apiScope;
  before(async () => {
    apiScope = `${d.api.identifier_uris[0]}/.default`;
    s = await container({
      AzureAd__Instance: `${iss.url}/`,
      AzureAd__TenantId: d.tenant,
      AzureAd__ClientId: d.blueprint.app_id,                       // BLUEPRINT_APP_ID
      AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
      AzureAd__ClientCredentials__0__ClientSecret: d.blueprint.secrets[0],   // BLUEPRINT_CLIENT_SECRET
      'DownstreamApis__graph-app__BaseUrl': `${rec.url}/weather/`,
      'DownstreamApis__graph-app__Scopes__0': apiScope,
      'DownstreamApis__graph-app__RequestAppToken': 'true',
      DownstreamApis__graph__BaseUrl: `${rec.url}/weather/`,
      DownstreamApis__graph__Scopes__0: apiScope,
      Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated: 'true',
      SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt'),
    });
  });

  test('autonomous: /AuthorizationHeaderUnauthenticated/graph-app?AgentIdentity= -> TR (app-only), valid at the weather API', async () => {
    const tr = await bearerFrom(await curl(s, `/AuthorizationHeaderUnauthenticated/graph-app?AgentIdentity=${d.agent.app_id}`));
    const c = await validateAsApi(tr, iss, ca, { aud: d.api.app_id });
    assert.equal(c.idtyp, 'app');
    assert.equal(c.azp, d.agent.app_id);
    assert.equal(c.xms_par_app_azp, d.blueprint.app_id);
    assert.deepEqual(c.roles, ['Weather.Read.All']);
  });

  test('OBO: Tc from the SPA (aud api://<blueprint>) -> /AuthorizationHeader/graph?AgentIdentity= -> TR (delegated)', async () => {
    // Tc: the user's token from the Chat SPA for the blueprint's access_as_user scope.
    const tc = await userToken(iss, ca, { ...d, cli: d.spa }, d.alice);
    const tcClaims = decodeJwt(tc).claims;
    assert.equal(tcClaims.aud, d.blueprint.app_id);
    assert.equal(tcClaims.azp, d.spa.app_id);
    const tr = await bearerFrom(await curl(s, `/AuthorizationHeader/graph?AgentIdentity=${d.agent.app_id}`,
      { headers: { Authorization: `Bearer ${tc}` } }));
    const c = await validateAsApi(tr, iss, ca, { aud: d.api.app_id });
    assert.equal(c.idtyp, 'user');
    assert.equal(c.oid, d.alice.object_id);
    assert.equal(c.azp, d.agent.app_id);
    assert.equal(c.xms_par_app_azp, d.blueprint.app_id);
    assert.ok(facets(c.xms_act_fct).includes(11));
    assert.ok(c.scp.split(' ').includes('Weather.Read'), c.scp);
  });

  test('the troubleshooting table\'s 4xx: OBO without the user token is 401 with WWW-Authenticate', async () => {
    const r = await curl(s, `/AuthorizationHeader/graph?AgentIdentity=${d.agent.app_id}`);
    assert.equal(r.status, 401);
    assert.match(r.headers['www-authenticate'], /^Bearer/);
  });
});

test('no token, client secret or password in the sidecars\' logs', () => {
  assert.ok(sidecars.length >= 3);
  for (const s of sidecars) {
    const logs = s.logs();
    assert.ok(!logs.includes('eyJ'));
    assert.ok(!logs.includes(d.blueprint.secrets[0]));
    assert.ok(!logs.includes(d.alice.password));
  }
});
