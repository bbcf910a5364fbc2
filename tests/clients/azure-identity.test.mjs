// @azure/identity, unchanged, against agentid issuer over HTTPS on 127.0.0.1.
//
// Credential options that work (see run-client.mjs, identity-get-token):
//   { authorityHost: 'https://127.0.0.1:PORT', disableInstanceDiscovery: true }
// with the tenant id as the credential's tenantId, and NODE_EXTRA_CA_CERTS=<dir>/tls/ca.crt in
// the environment of the process running the credential. Every token is verified with jose.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  setup, runClient, mustRun, verifyToken, blueprintCert, tokenRequests, assertV2Basics, assertBlueprintAppToken as assertAppToken,
} from './client-harness.mjs';

const TOKEN_EXCHANGE_APPID = 'fb60f99c-7a34-4190-8149-302f77469936';

let ctx, d, identity, msal, apiDefault;
before(async () => {
  ctx = await setup();
  d = ctx.d;
  identity = { op: 'identity-get-token', authorityHost: ctx.iss.url, tenantId: d.tenant };
  msal = { authority: ctx.iss.authority, knownAuthorities: [ctx.host] };
  apiDefault = `${d.api.identifier_uris[0]}/.default`;
});
after(async () => {
  if (ctx) assert.equal(await ctx.stop(), 0, 'issuer exits cleanly (no leaks under ASan)');
});

const assertBlueprintAppToken = (payload, acr) => assertAppToken(assert, ctx, payload, acr);

/** Leg 1, T1: the blueprint's token for api://AzureADTokenExchange with fmi_path = the agent.
 * Azure Identity has no fmi_path option, so this step uses @azure/msal-node's
 * acquireTokenByClientCredential({ fmiPath }) (msal-node >= 5 sends it as the fmi_path body
 * parameter), authenticated with the blueprint's secret. */
async function getT1(fmiPath = d.agent.app_id) {
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: ['api://AzureADTokenExchange/.default'], fmiPath,
  });
  return r.results[0].accessToken;
}

test('ClientSecretCredential: app token; a second getToken is served from the cache', async () => {
  const before = tokenRequests(ctx);
  const r = await mustRun(ctx, {
    ...identity, credential: 'secret', clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: apiDefault, times: 2,
  });
  const [a, b] = r.tokens;
  assert.equal(a.tokenType, 'Bearer');
  assert.ok(a.expiresOnTimestamp > Date.now() + 30 * 60 * 1000);
  assert.equal(b.token, a.token);
  assert.equal(tokenRequests(ctx) - before, 1, 'one token request for two getToken calls');
  assertBlueprintAppToken((await verifyToken(ctx, a.token, d.api.app_id)).payload, '1');
});

test('ClientCertificateCredential with certificatePath = keys/blueprint.pem', async () => {
  const c = blueprintCert(ctx);
  const r = await mustRun(ctx, {
    ...identity, credential: 'certificate', clientId: d.blueprint.app_id,
    certificatePath: c.pemPath, scopes: apiDefault,
  });
  assertBlueprintAppToken((await verifyToken(ctx, r.tokens[0].token, d.api.app_id)).payload, '2');
});

test('ClientSecretCredential with a wrong secret fails with AADSTS7000215', async () => {
  const r = await runClient(ctx, {
    ...identity, credential: 'secret', clientId: d.blueprint.app_id, secret: 'wrong', scopes: apiDefault,
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  // Azure Identity turns MSAL's ServerError into AuthenticationRequiredError, keeping the message.
  assert.equal(r.error.name, 'AuthenticationRequiredError');
  assert.match(r.error.message, /invalid_client/);
  assert.match(r.error.message, /AADSTS7000215/);
});

test('without NODE_EXTRA_CA_CERTS the credential is unavailable and nothing reaches the token endpoint', async () => {
  const before = tokenRequests(ctx);
  const r = await runClient(ctx, {
    ...identity, credential: 'secret', clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: apiDefault,
  }, { ca: null });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.equal(r.error.name, 'CredentialUnavailableError');
  assert.match(r.error.message, /endpoints_resolution_error/);
  assert.match(r.probe?.cause ?? '', /SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/);
  assert.equal(tokenRequests(ctx), before);
});

test('Agent ID: T1 from the blueprint, then ClientAssertionCredential(agent, () => T1)', async () => {
  const t1tok = await getT1();
  const t1 = (await verifyToken(ctx, t1tok, TOKEN_EXCHANGE_APPID)).payload;
  assertV2Basics(assert, ctx, t1, { aud: TOKEN_EXCHANGE_APPID, azp: d.blueprint.app_id });
  assert.equal(t1.idtyp, 'app');
  assert.ok(t1.sub.endsWith(`/${d.agent.app_id}`), 'fmi_path subject names the agent');

  const r = await mustRun(ctx, {
    ...identity, credential: 'assertion', clientId: d.agent.app_id, assertion: t1tok, scopes: apiDefault,
  });
  assert.ok(r.assertionCalls >= 1, 'the credential asked for the assertion');
  const t2 = (await verifyToken(ctx, r.tokens[0].token, d.api.app_id)).payload;
  assertV2Basics(assert, ctx, t2, { aud: d.api.app_id, azp: d.agent.app_id });
  assert.equal(t2.idtyp, 'app');
  assert.equal(t2.azpacr, '2');
  assert.equal(t2.oid, d.agent.app_id, 'the agent identity\'s service principal');
  assert.equal(t2.xms_par_app_azp, d.blueprint.app_id);
  assert.ok(t2.xms_act_fct.split(' ').includes('11'), `xms_act_fct ${t2.xms_act_fct} has 11`);
  assert.deepEqual(t2.roles, ['Weather.Read.All']);
  assert.equal(t2.scp, undefined);
});

test('Agent ID: a blueprint token without fmi_path is not a credential for the agent', async () => {
  // Same blueprint, same audience, but no fmi_path: the issuer must see it does not name the agent.
  const plain = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: ['api://AzureADTokenExchange/.default'],
  });
  const r = await runClient(ctx, {
    ...identity, credential: 'assertion', clientId: d.agent.app_id,
    assertion: plain.results[0].accessToken, scopes: apiDefault,
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.match(r.error.message, /AADSTS70021/);
});

test('Agent ID: an app token for the API (wrong audience) is not a credential either', async () => {
  const api = await mustRun(ctx, {
    ...identity, credential: 'secret', clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: apiDefault,
  });
  const r = await runClient(ctx, {
    ...identity, credential: 'assertion', clientId: d.agent.app_id,
    assertion: api.tokens[0].token, scopes: apiDefault,
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.match(r.error.message, /AADSTS50013/);
});
