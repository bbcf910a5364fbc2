// Every credential source of `agentid sidecar`, for real, against a real `agentid issuer`: the
// sidecar gets an autonomous agent token (T1 with the blueprint's credential, then the agent's
// token with T1) and the test checks its claims and the issuer's log line for T1.
//   ClientSecret, Path (certificate PEM), SignedAssertionFilePath (Kubernetes workload identity),
//   SignedAssertionFromManagedIdentity (IMDS and App Service shapes of the issuer's own
//   managed-identity endpoint), and several sources in order.
// Kubernetes cannot run here, so its service-account token issuer is the one test double: a
// small HTTP server on 127.0.0.1 with the discovery document and JWKS a kube-apiserver serves,
// and RS256 tokens shaped like projected service-account tokens, signed with node:crypto.
// Each test starts its own issuer on a fresh directory. Only node built-ins.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import { initDirectory, start, run, demo, request, postForm, freePort, waitFor } from './harness.mjs';
import { saveDirectory, signJwt, now, TOKEN_EXCHANGE_APPID } from './tokens.mjs';
import { authHeader, problem, facets } from './sidecar.mjs';

const SA_SUBJECT = 'system:serviceaccount:agents:weather';
const EXCHANGE = 'api://AzureADTokenExchange';
const GATE = 'Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated';
const q = (o) => `?${new URLSearchParams(o)}`;

// ---- the stand-in Kubernetes service-account token issuer ----------------------------------

/**
 * What kube-apiserver serves for service-account issuer discovery: /.well-known/openid-configuration
 * (issuer, jwks_uri and the three *_supported fields; no token_endpoint, as Kubernetes has
 * none) and the JWKS at /openid/v1/jwks. mint() makes a projected service-account token.
 */
async function startSaIssuer() {
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const kid = randomUUID().replace(/-/g, '');
  const jwk = { ...key.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid };
  for (const f of ['d', 'p', 'q', 'dp', 'dq', 'qi']) delete jwk[f];
  const hits = { discovery: 0, jwks: 0 };
  const self = { jwksDelayMs: 0, jwksWaiting: false };   // a slow key endpoint, when set
  const srv = http.createServer((req, res) => {
    const send = (o) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(o));
    };
    if (req.url === '/.well-known/openid-configuration') {
      hits.discovery++;
      send({
        issuer: url, jwks_uri: `${url}/openid/v1/jwks`, response_types_supported: ['id_token'],
        subject_types_supported: ['public'], id_token_signing_alg_values_supported: ['RS256'],
      });
    } else if (req.url === '/openid/v1/jwks') {
      hits.jwks++;
      self.jwksWaiting = true;
      setTimeout(() => { self.jwksWaiting = false; send({ keys: [jwk] }); }, self.jwksDelayMs);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((ok) => srv.listen(0, '127.0.0.1', ok));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return Object.assign(self, {
    url, hits,
    /** A projected service-account token (audience api://AzureADTokenExchange, 1 h). */
    mint({ sub = SA_SUBJECT, aud = [EXCHANGE], iat = now(), exp = iat + 3600, signWith = key } = {}) {
      const [, ns, sa] = sub.split(':').slice(1);
      return signJwt({ alg: 'RS256', kid }, {
        aud, exp, iat, nbf: iat, iss: url, sub, jti: randomUUID(),
        'kubernetes.io': {
          namespace: ns, serviceaccount: { name: sa, uid: randomUUID() },
          pod: { name: `${sa}-7d9f8b6c5-x2k4q`, uid: randomUUID() },
        },
      }, signWith);
    },
    close: () => new Promise((ok) => { srv.closeAllConnections(); srv.close(() => ok()); }),
  });
}

/** Write the token file the way the kubelet does: a new file renamed over the old one. */
function writeToken(file, token) {
  writeFileSync(`${file}.tmp`, `${token}\n`);
  renameSync(`${file}.tmp`, file);
}

// ---- an issuer (and optionally its managed-identity endpoint) per test ----------------------

/**
 * A fresh directory with a second agent identity, edited by mutate(json, { url, tenant })
 * before the issuer starts on a port chosen up front (so edits can name the issuer's URL).
 * With mi: true the issuer also serves its managed-identity endpoint on another port.
 * Returns { dir, d, iss, agent2, miUrl, apiScope, sidecar(env), events(name), stop() }.
 */
async function stack({ mutate, mi = false } = {}) {
  const dir = initDirectory();
  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  const j = dir.json();
  const bp = j.applications.find((a) => a.type === 'agent_blueprint');
  const agent2 = { name: 'Weather Agent 2', type: 'agent_identity', app_id: randomUUID(), parent: bp.app_id };
  j.applications.push(agent2);
  j.app_role_assignments.push({ client: agent2.app_id, resource: 'Weather API', roles: ['Weather.Read.All'] });
  mutate?.(j, { url, tenant: j.tenant_id, blueprint: bp });
  saveDirectory(dir, j);
  const d = demo(dir.json());
  const args = ['issuer', '--dir', dir.dir];
  let miUrl;
  if (mi) {
    const miPort = await freePort();
    miUrl = `http://127.0.0.1:${miPort}`;
    args.push('--managed-identity-listen', `127.0.0.1:${miPort}`);
  }
  let iss;
  try {
    iss = await start(args, { tls: true, ca: dir.ca, port });
  } catch (e) {
    dir.cleanup();
    throw e;
  }
  iss.tenant = d.tenant;
  const sidecars = [];
  const apiScope = `${d.api.identifier_uris[0]}/.default`;
  return {
    dir, d, iss, agent2, miUrl, apiScope,
    /** Start a sidecar for the blueprint with these credential settings (no secret by default). */
    async sidecar(env) {
      const s = await start(['sidecar'], {
        env: {
          // Nothing from the caller's environment picks a credential for the sidecar.
          AZURE_FEDERATED_TOKEN_FILE: undefined, IDENTITY_ENDPOINT: undefined, IDENTITY_HEADER: undefined,
          AZURE_POD_IDENTITY_AUTHORITY_HOST: undefined, MSI_ENDPOINT: undefined,
          SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt'),
          AzureAd__Instance: `${iss.url}/`,
          AzureAd__TenantId: d.tenant,
          AzureAd__ClientId: d.blueprint.app_id,
          [GATE]: 'true',
          DownstreamApis__weather__BaseUrl: 'http://127.0.0.1:9/',
          DownstreamApis__weather__Scopes__0: apiScope,
          DownstreamApis__weatherApp__BaseUrl: 'http://127.0.0.1:9/',
          DownstreamApis__weatherApp__Scopes__0: apiScope,
          DownstreamApis__weatherApp__RequestAppToken: 'true',
          ...env,
        },
      });
      sidecars.push(s);
      return s;
    },
    /** The issuer's JSON log lines of one event. */
    events: (event) => logEvents(iss, event),
    async stop() {
      // Stop everything first, then check every exit code (0 on SIGTERM, no leaks under ASan).
      const codes = [];
      for (const s of sidecars) codes.push([s, await s.stop(), 'sidecar']);
      codes.push([iss, await iss.stop(), 'issuer']);
      dir.cleanup();
      for (const [p, code, what] of codes) assert.equal(code, 0, `${what} exits 0:\n${p.logs().slice(-2000)}`);
    },
  };
}

function logEvents(proc, event) {
  const out = [];
  for (const line of proc.logs().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line);
      if (o.event === event) out.push(o);
    } catch { /* not a log line */ }
  }
  return out;
}

/** The issuer's log lines for T1 requests of the blueprint (token exchange, fmi_path = agent). */
function t1Lines(st, agent) {
  return issued(st).filter((o) => o.grant === 'client_credentials' &&
    o.client === st.d.blueprint.app_id && o.resource === TOKEN_EXCHANGE_APPID &&
    (!agent || o.fmi_path === agent));
}

/** The issuer's request lines of issued tokens (one line per request, the token's fields on it). */
const issued = (st) => st.events('request').filter((o) => o.token === 'issued');

/** The autonomous agent token of the sidecar for the Weather API. */
const agentToken = (s, agent, extra = {}) =>
  request(`${s.url}/AuthorizationHeaderUnauthenticated/weather${q({ AgentIdentity: agent, ...extra })}`);

/** Assert an autonomous agent token for the Weather API and return its claims. */
function assertAgentToken(st, r, agent) {
  const { claims, header } = authHeader(r);
  assert.equal(header.alg, 'RS256');
  assert.equal(claims.aud, st.d.api.app_id);
  assert.equal(claims.iss, `${st.iss.url}/${st.d.tenant}/v2.0`);
  assert.equal(claims.tid, st.d.tenant);
  assert.equal(claims.azp, agent);
  assert.equal(claims.oid, agent);
  assert.equal(claims.sub, agent);
  assert.equal(claims.azpacr, '2', 'the agent authenticated with T1');
  assert.equal(claims.idtyp, 'app');
  assert.equal(claims.xms_par_app_azp, st.d.blueprint.app_id);
  assert.ok(facets(claims.xms_act_fct).includes(11), claims.xms_act_fct);
  assert.deepEqual(claims.roles, ['Weather.Read.All']);
  assert.ok(claims.exp > now() + 600);
  return claims;
}

/** Assert the issuer logged a T1 for this agent with the blueprint authenticated by `credential`.
 * The line comes through the issuer's stderr pipe, which may be read after the HTTP answer. */
async function assertT1Logged(st, agent, { credential, azpacr }) {
  const lines = await waitFor(() => t1Lines(st, agent).length && t1Lines(st, agent), 5000,
    `a T1 log line for ${agent}`, () => st.iss.logs().slice(-3000)).catch((e) => assert.fail(e.message));
  const last = lines.at(-1);
  assert.equal(last.credential, credential, JSON.stringify(last));
  assert.equal(last.azpacr, azpacr, JSON.stringify(last));
}

/** Add the stand-in Kubernetes issuer as a federated credential of the blueprint. */
const k8sFic = (sa) => (j, { blueprint }) => {
  blueprint.federated_credentials = [
    ...(blueprint.federated_credentials ?? []),
    { name: 'aks-weather', issuer: sa.url, subject: SA_SUBJECT, audiences: [EXCHANGE] },
  ];
};

// ---- 1. ClientSecret --------------------------------------------------------------------------

test('ClientSecret: T1 with the blueprint\'s secret (azpacr 1), then the agent\'s token', async () => {
  const st = await stack();
  try {
    const s = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
      AzureAd__ClientCredentials__0__ClientSecret: st.d.blueprint.secrets[0],
    });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'client_secret', azpacr: '1' });
    // A wrong secret is the identity provider's refusal: 401 with the AADSTS code.
    const bad = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
      AzureAd__ClientCredentials__0__ClientSecret: 'not-the-secret-0123456789',
    });
    problem(await agentToken(bad, st.d.agent.app_id), 401, /AADSTS7000215/);
  } finally {
    await st.stop();
  }
});

// ---- 2. Path ---------------------------------------------------------------------------------

test('Path: CertificateDiskPath = keys/blueprint.pem signs the assertion; T1 carries azpacr 2', async () => {
  const st = await stack();
  try {
    const s = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'Path',
      AzureAd__ClientCredentials__0__CertificateDiskPath: join(st.dir.dir, 'keys/blueprint.pem'),
    });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'certificate', azpacr: '2' });
    // The blueprint's own app token uses the same credential: azpacr 2 on a token we can see.
    const { claims } = authHeader(await request(`${s.url}/AuthorizationHeaderUnauthenticated/weatherApp`));
    assert.equal(claims.azp, st.d.blueprint.app_id);
    assert.equal(claims.azpacr, '2');

    // The certificate first and the key after it works as well.
    const key = readFileSync(join(st.dir.dir, 'keys/blueprint.key'), 'utf8');
    const cert = readFileSync(join(st.dir.dir, 'keys/blueprint.crt'), 'utf8');
    const reversed = join(st.dir.root, 'cert-then-key.pem');
    writeFileSync(reversed, cert + key);
    const r = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'Path',
      AzureAd__ClientCredentials__0__CertificateDiskPath: reversed,
    });
    assertAgentToken(st, await agentToken(r, st.agent2.app_id), st.agent2.app_id);
    await assertT1Logged(st, st.agent2.app_id, { credential: 'certificate', azpacr: '2' });
    // A key that is not the certificate's, or no key at all, stops start-up naming the setting.
    const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
      .export({ type: 'pkcs8', format: 'pem' });
    for (const [name, pem] of [['wrong-key.pem', stranger + cert], ['cert-only.pem', cert]]) {
      const f = join(st.dir.root, name);
      writeFileSync(f, pem);
      const bad = run(['sidecar', '--listen', '127.0.0.1:0'], {
        env: {
          ...process.env, AzureAd__TenantId: st.d.tenant, AzureAd__ClientId: st.d.blueprint.app_id,
          AzureAd__ClientCredentials__0__SourceType: 'Path', AzureAd__ClientCredentials__0__CertificateDiskPath: f,
        },
      });
      assert.notEqual(bad.code, 0, name);
      assert.match(bad.stderr, /AzureAd__ClientCredentials__0__CertificateDiskPath: .* must hold a PEM private key and its certificate/, name);
    }
  } finally {
    await st.stop();
  }
});

// ---- 3. SignedAssertionFilePath (Kubernetes workload identity) --------------------------------

test('SignedAssertionFileDiskPath: a service-account token file is the blueprint\'s federated credential', async () => {
  const sa = await startSaIssuer();
  const st = await stack({ mutate: k8sFic(sa) });
  try {
    const file = join(st.dir.root, 'sa-token');
    writeToken(file, sa.mint());
    const s = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath: file,
    });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'federated', azpacr: '2' });
    assert.ok(sa.hits.discovery >= 1 && sa.hits.jwks >= 1, 'the issuer read the service-account issuer\'s keys');

    // The file is read again for every token request: a bad token written now is what the
    // next T1 (for another agent) is refused with …
    writeToken(file, sa.mint({ sub: 'system:serviceaccount:agents:intruder' }));
    problem(await agentToken(s, st.agent2.app_id), 401, /AADSTS70021/);
    // … and a fresh good one is what it then succeeds with.
    writeToken(file, sa.mint());
    assertAgentToken(st, await agentToken(s, st.agent2.app_id), st.agent2.app_id);
    await assertT1Logged(st, st.agent2.app_id, { credential: 'federated', azpacr: '2' });

    // ForceRefresh on the blueprint's own app token skips the cache and reads the file again.
    const first = authHeader(await request(`${s.url}/AuthorizationHeaderUnauthenticated/weatherApp`));
    const force = `/AuthorizationHeaderUnauthenticated/weatherApp${q({ 'optionsOverride.AcquireTokenOptions.ForceRefresh': 'true' })}`;
    writeToken(file, sa.mint({ aud: ['api://somebody-else'] }));
    problem(await request(`${s.url}${force}`), 401, /AADSTS700212/);
    writeToken(file, sa.mint());
    const again = authHeader(await request(`${s.url}${force}`));
    assert.notEqual(again.token, first.token);
    assert.equal(again.claims.azp, st.d.blueprint.app_id);
    assert.equal(again.claims.azpacr, '2');
    // The agent's token (T1 cached) keeps being served meanwhile.
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
  } finally {
    await st.stop();
    await sa.close();
  }
});

test('a federated credential whose issuer is slow to give its keys does not hold up other token requests', async () => {
  // The issuer serves on event loops; a client assertion's check may fetch the other issuer's
  // keys, so it must run on a deferred worker. While that fetch hangs, client-secret token
  // requests on new connections (which the kernel spreads over every loop) are answered at once.
  const sa = await startSaIssuer();
  const st = await stack({ mutate: k8sFic(sa) });
  try {
    const ca = st.dir.ca, url = `${st.iss.url}/${st.d.tenant}/oauth2/v2.0/token`;
    sa.jwksDelayMs = 2000;
    const t0 = Date.now();
    const fed = postForm(url, {
      client_id: st.d.blueprint.app_id, scope: 'api://AzureADTokenExchange/.default',
      grant_type: 'client_credentials', fmi_path: st.d.agent.app_id,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: sa.mint(),
    }, { ca }).then((r) => ({ r, at: Date.now() - t0 }));
    await waitFor(() => sa.jwksWaiting, 5000, 'the issuer asks the slow issuer for its keys');
    const quick = await Promise.all(Array.from({ length: 16 }, () => postForm(url, {
      client_id: st.d.blueprint.app_id, scope: st.apiScope, grant_type: 'client_credentials',
      client_secret: st.d.blueprint.secrets[0],
    }, { ca }).then((r) => ({ r, at: Date.now() - t0 }))));
    for (const { r } of quick) assert.equal(r.status, 200, r.text);
    const { r, at } = await fed;
    assert.equal(r.status, 200, r.text);
    assert.ok(at >= 2000, `the federated request waited for the keys (${at} ms)`);
    const last = Math.max(...quick.map((q) => q.at));
    assert.ok(last < at - 500, `client-secret tokens answered while the keys were awaited (last at ${last} ms, federated at ${at} ms)`);
  } finally {
    await st.stop();
    await sa.close();
  }
});

test('SignedAssertionFilePath: a token with the wrong subject, audience, lifetime or key is refused with its AADSTS code', async () => {
  const sa = await startSaIssuer();
  const st = await stack({ mutate: k8sFic(sa) });
  try {
    const file = join(st.dir.root, 'sa-token');
    writeToken(file, sa.mint());
    const s = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath: file,
    });
    const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const cases = [
      ['wrong subject', sa.mint({ sub: 'system:serviceaccount:default:default' }), 70021],
      ['wrong audience', sa.mint({ aud: ['https://kubernetes.default.svc'] }), 700212],
      ['expired', sa.mint({ iat: now() - 7200, exp: now() - 3600 }), 700024],
      ['signed by another key', sa.mint({ signWith: stranger }), 700027],
    ];
    for (const [what, token, code] of cases) {
      writeToken(file, token);
      const j = problem(await agentToken(s, st.d.agent.app_id), 401);
      assert.match(j.detail, new RegExp(`AADSTS${code}\\b`), `${what}: ${j.detail}`);
      assert.ok(!j.detail.includes(token), 'the assertion is not echoed');
    }
    assert.equal(t1Lines(st).length, 0, 'no T1 was issued');
    // Refusals are not cached: with a good token the same agent now gets its token.
    writeToken(file, sa.mint());
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    for (const [, token] of cases) assert.ok(!s.logs().includes(token), 'no assertion in the sidecar log');
  } finally {
    await st.stop();
    await sa.close();
  }
});

test('SignedAssertionFilePath from AZURE_FEDERATED_TOKEN_FILE, and the SignedAssertionFilePath key', async () => {
  const sa = await startSaIssuer();
  const st = await stack({ mutate: k8sFic(sa) });
  try {
    const file = join(st.dir.root, 'azure-identity-token');
    writeToken(file, sa.mint());
    // AKS workload identity injects AZURE_FEDERATED_TOKEN_FILE; no path setting at all.
    const a = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AZURE_FEDERATED_TOKEN_FILE: file,
    });
    assertAgentToken(st, await agentToken(a, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'federated', azpacr: '2' });
    // Microsoft's README spells the path key SignedAssertionFilePath.
    const b = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AzureAd__ClientCredentials__0__SignedAssertionFilePath: file,
    });
    assertAgentToken(st, await agentToken(b, st.agent2.app_id), st.agent2.app_id);
    await assertT1Logged(st, st.agent2.app_id, { credential: 'federated', azpacr: '2' });
  } finally {
    await st.stop();
    await sa.close();
  }
});

// ---- 4. SignedAssertionFromManagedIdentity ---------------------------------------------------

/** The demo's federated credential for the host's managed identity, pointed at this issuer. */
const miFic = (j, { url, tenant, blueprint }) => {
  const fic = blueprint.federated_credentials.find((f) => f.name === 'agent-host-managed-identity');
  assert.equal(fic.issuer, `https://127.0.0.1:8443/${tenant}/v2.0`, 'the demo trusts the default issuer URL');
  fic.issuer = `${url}/${tenant}/v2.0`;
};
const hostIdentity = (st) => st.dir.json().applications.find((a) => a.name === 'Weather Agent Host');
const MI_SOURCE = { AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFromManagedIdentity' };

test('SignedAssertionFromManagedIdentity via IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST)', async () => {
  const st = await stack({ mutate: miFic, mi: true });
  try {
    const host = hostIdentity(st);
    const s = await st.sidecar({ ...MI_SOURCE, AZURE_POD_IDENTITY_AUTHORITY_HOST: st.miUrl });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'federated', azpacr: '2' });
    const mi = issued(st).filter((o) => o.grant === 'managed_identity');
    assert.equal(mi.length, 1, 'one managed-identity token');
    assert.ok(mi[0].client === host.app_id && mi[0].resource === TOKEN_EXCHANGE_APPID, JSON.stringify(mi[0]));
    // The managed-identity token is cached: a second agent needs a new T1 but no new MI token.
    assertAgentToken(st, await agentToken(s, st.agent2.app_id), st.agent2.app_id);
    assert.equal(issued(st).filter((o) => o.grant === 'managed_identity').length, 1);

    // User-assigned: ManagedIdentityClientId names the identity (client_id on the request);
    // the host may end in a slash, as MSAL.NET allows.
    const ua = await st.sidecar({
      ...MI_SOURCE, AZURE_POD_IDENTITY_AUTHORITY_HOST: `${st.miUrl}/`,
      AzureAd__ClientCredentials__0__ManagedIdentityClientId: host.app_id,
    });
    assertAgentToken(st, await agentToken(ua, st.d.agent.app_id), st.d.agent.app_id);
    // An identity the host does not have: the endpoint says so and no credential is left.
    const none = await st.sidecar({
      ...MI_SOURCE, AZURE_POD_IDENTITY_AUTHORITY_HOST: st.miUrl,
      AzureAd__ClientCredentials__0__ManagedIdentityClientId: randomUUID(),
    });
    const j = problem(await agentToken(none, st.d.agent.app_id), 500);
    assert.match(j.detail, /no client credential could be used/i);
    assert.match(j.detail, /managed identity endpoint answered HTTP 400/);
  } finally {
    await st.stop();
  }
});

test('SignedAssertionFromManagedIdentity via App Service (IDENTITY_ENDPOINT + IDENTITY_HEADER)', async () => {
  const st = await stack({ mutate: miFic, mi: true });
  try {
    const header = st.dir.json().managed_identity_header;
    assert.match(header, /^\S{16,}$/);
    const s = await st.sidecar({
      ...MI_SOURCE, IDENTITY_ENDPOINT: `${st.miUrl}/msi/token`, IDENTITY_HEADER: header,
    });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'federated', azpacr: '2' });
    const mi = logEvents(st.iss, 'request').filter((o) => o.path === '/msi/token');
    assert.equal(mi.length, 1);
    assert.equal(mi[0].status, 200);

    // A wrong IDENTITY_HEADER: the endpoint refuses, so no credential can be used: 500.
    const wrong = await st.sidecar({
      ...MI_SOURCE, IDENTITY_ENDPOINT: `${st.miUrl}/msi/token`, IDENTITY_HEADER: 'not-the-header',
    });
    const j = problem(await agentToken(wrong, st.d.agent.app_id), 500);
    assert.match(j.detail, /no client credential could be used/i);
    assert.ok(!j.detail.includes(header) && !wrong.logs().includes(header), 'the header value is not echoed');
  } finally {
    await st.stop();
  }
});

test('managed-identity endpoint contract: Metadata header, resource, identity, string fields', async () => {
  const st = await stack({ mi: true });   // the demo's federated credential left as init wrote it
  try {
    const host = hostIdentity(st);
    const header = st.dir.json().managed_identity_header;
    const imds = (query, headers = { Metadata: 'true' }) =>
      request(`${st.miUrl}/metadata/identity/oauth2/token${q(query)}`, { headers });
    const base = { 'api-version': '2018-02-01', resource: EXCHANGE };
    const errorOf = (r, status) => {
      assert.equal(r.status, status, r.text);
      assert.equal(r.json.error, 'invalid_request');
      assert.equal(typeof r.json.error_description, 'string');
      return r.json;
    };
    assert.match(errorOf(await imds(base, {}), 400).error_description, /metadata header/i);
    errorOf(await imds(base, { Metadata: 'false' }), 400);
    assert.match(errorOf(await imds({ 'api-version': '2018-02-01' }), 400).error_description, /resource/);
    errorOf(await imds({ ...base, client_id: randomUUID() }), 400);
    errorOf(await request(`${st.miUrl}/msi/token${q({ 'api-version': '2019-08-01', resource: EXCHANGE })}`,
      { headers: { 'X-IDENTITY-HEADER': 'nope' } }), 401);

    const t0 = now();
    for (const r of [await imds(base), await imds({ ...base, client_id: host.app_id }),
      // msal-node asks for the path with a trailing slash when AZURE_POD_IDENTITY_AUTHORITY_HOST is set.
      await request(`${st.miUrl}/metadata/identity/oauth2/token/${q(base)}`, { headers: { Metadata: 'true' } }),
      await imds({ ...base, object_id: host.object_id }),
      await request(`${st.miUrl}/msi/token${q({ 'api-version': '2019-08-01', resource: EXCHANGE })}`,
        { headers: { 'X-IDENTITY-HEADER': header } })]) {
      assert.equal(r.status, 200, r.text);
      assert.match(r.headers['content-type'], /^application\/json/);
      for (const k of ['access_token', 'expires_in', 'expires_on', 'ext_expires_in', 'not_before', 'resource', 'token_type', 'client_id'])
        assert.equal(typeof r.json[k], 'string', `${k} is a string: ${r.text.slice(0, 200)}`);
      assert.equal(r.json.token_type, 'Bearer');
      assert.equal(r.json.resource, EXCHANGE);
      assert.equal(r.json.client_id, host.app_id);
      const eon = Number(r.json.expires_on), ein = Number(r.json.expires_in);
      assert.ok(Number.isInteger(eon) && Math.abs(eon - (t0 + ein)) <= 5, `expires_on ${eon}, expires_in ${ein}`);
      const [, p] = r.json.access_token.split('.');
      const c = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
      assert.equal(c.aud, TOKEN_EXCHANGE_APPID);
      assert.equal(c.azp ?? c.appid, host.app_id);
      assert.equal(c.oid, host.object_id);
      assert.equal(c.sub, host.object_id);
      assert.equal(c.idtyp, 'app');
      assert.equal(c.exp, eon);
    }

    // With the demo's federated credential still naming https://127.0.0.1:8443, the host's
    // token matches no credential of the blueprint: the sidecar passes Entra's refusal on.
    const s = await st.sidecar({ ...MI_SOURCE, AZURE_POD_IDENTITY_AUTHORITY_HOST: st.miUrl });
    problem(await agentToken(s, st.d.agent.app_id), 401, /AADSTS70021/);
  } finally {
    await st.stop();
  }
});

// ---- 5. several sources ----------------------------------------------------------------------

test('several sources: a missing assertion file is skipped and the client secret after it is used', async () => {
  const st = await stack();
  try {
    const missing = join(st.dir.root, 'no-such-token-file');
    const s = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath: missing,
      AzureAd__ClientCredentials__1__SourceType: 'ClientSecret',
      AzureAd__ClientCredentials__1__ClientSecret: st.d.blueprint.secrets[0],
    });
    assertAgentToken(st, await agentToken(s, st.d.agent.app_id), st.d.agent.app_id);
    await assertT1Logged(st, st.d.agent.app_id, { credential: 'client_secret', azpacr: '1' });
    // With the file as the only source there is nothing to use: 500 naming the file.
    const only = await st.sidecar({
      AzureAd__ClientCredentials__0__SourceType: 'SignedAssertionFilePath',
      AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath: missing,
    });
    const j = problem(await agentToken(only, st.d.agent.app_id), 500);
    assert.match(j.detail, /no client credential could be used/i);
    assert.ok(j.detail.includes(missing), j.detail);
    // An empty file is no credential either.
    writeFileSync(missing, '\n');
    assert.match(problem(await agentToken(only, st.d.agent.app_id), 500).detail, /missing or empty/);
  } finally {
    await st.stop();
  }
});
