// @azure/identity's ManagedIdentityCredential, unchanged, against the managed-identity endpoint
// of agentid issuer (--managed-identity-listen), as an app on Azure compute would use it.
//
// Environment that points it at the issuer (set in the child, see run-client.mjs,
// identity-managed-identity):
//   App Service: IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token
//                IDENTITY_HEADER=<managed_identity_header from directory.json>
//   IMDS:        AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT
// The credential asks for api://AzureADTokenExchange/.default, the token a host's identity
// presents as a federated credential; the test then uses it as the blueprint's credential.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { initDirectory, start, demo, freePort } from '../integration/harness.mjs';
import { requireNodeModules, runClient, mustRun, verifyToken, assertV2Basics } from './client-harness.mjs';

const TOKEN_EXCHANGE_APPID = 'fb60f99c-7a34-4190-8149-302f77469936';
const EXCHANGE_SCOPE = 'api://AzureADTokenExchange/.default';

let ctx, d, host, header, appService, imds;

/** Like client-harness setup(), plus the managed-identity endpoint, with the demo blueprint's
 * federated credential for the host's identity pointed at this issuer's real URL. */
before(async () => {
  requireNodeModules();
  const dir = initDirectory();
  const port = await freePort(), miPort = await freePort();
  const j = dir.json();
  const tenant = j.tenant_id;
  const fic = j.applications.find((a) => a.type === 'agent_blueprint').federated_credentials
    .find((f) => f.name === 'agent-host-managed-identity');
  fic.issuer = `https://127.0.0.1:${port}/${tenant}/v2.0`;
  dir.save(j);
  let iss;
  try {
    iss = await start(['issuer', '--dir', dir.dir, '--managed-identity-listen', `127.0.0.1:${miPort}`],
      { tls: true, ca: dir.ca, port });
  } catch (e) {
    dir.cleanup();
    throw e;
  }
  iss.authority = `${iss.url}/${tenant}`;
  d = demo(dir.json());
  host = dir.json().applications.find((a) => a.name === 'Weather Agent Host');
  header = dir.json().managed_identity_header;
  const miUrl = `http://127.0.0.1:${miPort}`;
  appService = { IDENTITY_ENDPOINT: `${miUrl}/msi/token`, IDENTITY_HEADER: header };
  imds = { AZURE_POD_IDENTITY_AUTHORITY_HOST: miUrl };
  ctx = {
    dir, iss, d,
    caPath: join(dir.dir, 'tls/ca.crt'),
    discoveryUrl: `${iss.authority}/v2.0/.well-known/openid-configuration`,
    issuerV2: `${iss.authority}/v2.0`,
    async stop() {
      try { return await iss.stop(); } finally { dir.cleanup(); }
    },
  };
});
after(async () => {
  if (ctx) assert.equal(await ctx.stop(), 0, 'issuer exits cleanly (no leaks under ASan)');
});

/** Answered managed-identity requests the issuer has logged so far, by path (msal-node asks
 * for the IMDS path with a trailing slash when AZURE_POD_IDENTITY_AUTHORITY_HOST is set). */
function miRequests(path) {
  let n = 0;
  for (const line of ctx.iss.logs().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line);
      if (o.event === 'request' && o.status === 200 && o.path.replace(/\/$/, '') === path) n++;
    } catch { /* not a log line */ }
  }
  return n;
}

/** The host identity's token for the token exchange, verified with jose. */
async function assertHostToken(t) {
  assert.equal(t.tokenType, 'Bearer');
  const { payload } = await verifyToken(ctx, t.token, TOKEN_EXCHANGE_APPID);
  assertV2Basics(assert, ctx, payload, { aud: TOKEN_EXCHANGE_APPID, azp: host.app_id });
  assert.equal(payload.idtyp, 'app');
  assert.equal(payload.oid, host.object_id);
  assert.equal(payload.sub, host.object_id);
  assert.equal(payload.roles, undefined);
  // The credential's expiry comes from expires_on, which is the token's exp (msal-node turns it
  // into expires_in and back, so a second boundary in between may cost it a second).
  assert.ok(Math.abs(t.expiresOnTimestamp - payload.exp * 1000) <= 2000, `${t.expiresOnTimestamp} vs exp ${payload.exp}`);
  return payload;
}

const mi = (env, extra = {}) => ({ op: 'identity-managed-identity', env, scopes: EXCHANGE_SCOPE, ...extra });

test('App Service (IDENTITY_ENDPOINT + IDENTITY_HEADER): the host identity\'s token; the second getToken is cached', async () => {
  const before = miRequests('/msi/token');
  const r = await mustRun(ctx, mi(appService, { times: 2 }));
  const [a, b] = r.tokens;
  await assertHostToken(a);
  assert.equal(b.token, a.token);
  assert.equal(miRequests('/msi/token') - before, 1, 'one endpoint request for two getToken calls');
});

test('App Service, user-assigned: clientId selects the identity; an unknown one fails', async () => {
  await assertHostToken((await mustRun(ctx, mi(appService, { clientId: host.app_id }))).tokens[0]);
  const r = await runClient(ctx, mi(appService, { clientId: randomUUID() }));
  assert.equal(r.ok, false);
  assert.match(JSON.stringify(r.error), /Identity not found|400/);
});

test('IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST): the same token shape', async () => {
  const before = miRequests('/metadata/identity/oauth2/token');
  await assertHostToken((await mustRun(ctx, mi(imds))).tokens[0]);
  assert.ok(miRequests('/metadata/identity/oauth2/token') > before);
});

test('App Service with a wrong IDENTITY_HEADER: getToken fails', async () => {
  const r = await runClient(ctx, mi({ ...appService, IDENTITY_HEADER: 'not-the-header' }));
  assert.equal(r.ok, false);
  assert.match(JSON.stringify(r.error), /X-IDENTITY-HEADER|401/);
});

test('the host token is the blueprint\'s federated credential (ClientAssertionCredential)', async () => {
  const hostToken = (await mustRun(ctx, mi(appService))).tokens[0].token;
  const apiDefault = `${d.api.identifier_uris[0]}/.default`;
  const r = await mustRun(ctx, {
    op: 'identity-get-token', authorityHost: ctx.iss.url, tenantId: d.tenant,
    credential: 'assertion', clientId: d.blueprint.app_id, assertion: hostToken, scopes: apiDefault,
  });
  assert.ok(r.assertionCalls >= 1, 'the assertion callback was used');
  const { payload } = await verifyToken(ctx, r.tokens[0].token, d.api.app_id);
  assertV2Basics(assert, ctx, payload, { aud: d.api.app_id, azp: d.blueprint.app_id });
  assert.equal(payload.azpacr, '2');
  assert.equal(payload.oid, d.blueprint.object_id);
  assert.deepEqual(payload.roles, ['Weather.Read.All']);
});
