// @azure/msal-node, unchanged, against agentid issuer over HTTPS on 127.0.0.1.
//
// MSAL options that work (see run-client.mjs, msalAuth):
//   auth.authority        = `https://127.0.0.1:${port}/${tenantId}`
//   auth.knownAuthorities = ['127.0.0.1:PORT']   (so MSAL skips instance discovery, which it
//                                                 would send to login.microsoftonline.com)
// and NODE_EXTRA_CA_CERTS=<dir>/tls/ca.crt in the environment of the process running MSAL.
// Every token is verified with jose against the issuer's published keys.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  setup, runClient, mustRun, verifyToken, blueprintCert, tokenRequests, assertV2Basics, assertBlueprintAppToken as assertAppToken,
} from './client-harness.mjs';

const TOKEN_EXCHANGE_APPID = 'fb60f99c-7a34-4190-8149-302f77469936';

let ctx, d, msal, apiDefault;
before(async () => {
  ctx = await setup();
  d = ctx.d;
  msal = { authority: ctx.iss.authority, knownAuthorities: [ctx.host] };
  apiDefault = `${d.api.identifier_uris[0]}/.default`;
});
after(async () => {
  if (ctx) assert.equal(await ctx.stop(), 0, 'issuer exits cleanly (no leaks under ASan)');
});

const assertBlueprintAppToken = (payload, acr) => assertAppToken(assert, ctx, payload, acr);

test('client credentials with a secret; the identical second call is served from MSAL\'s cache', async () => {
  const before = tokenRequests(ctx);
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: [apiDefault], times: 2,
  });
  const [first, second] = r.results;
  assert.equal(first.fromCache, false);
  assert.equal(first.tokenType, 'Bearer');
  assert.deepEqual(first.scopes, [apiDefault]);
  assert.ok(Date.parse(first.expiresOn) > Date.now() + 30 * 60 * 1000, 'expires_in honoured');
  assert.equal(second.fromCache, true, 'second call from the cache');
  assert.equal(second.accessToken, first.accessToken, 'same access token');
  assert.equal(tokenRequests(ctx) - before, 1, 'only one token request reached the issuer');
  const { payload, protectedHeader } = await verifyToken(ctx, first.accessToken, d.api.app_id);
  assert.equal(protectedHeader.alg, 'RS256');
  assert.equal(protectedHeader.typ, 'JWT');
  assertBlueprintAppToken(payload, '1');
});

test('client credentials with a certificate, SHA-1 thumbprint (x5t, RS256)', async () => {
  const c = blueprintCert(ctx);
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    certificate: { thumbprint: c.thumbprint, privateKeyPath: c.privateKeyPath }, scopes: [apiDefault],
  });
  assert.equal(r.results[0].fromCache, false);
  const { payload } = await verifyToken(ctx, r.results[0].accessToken, d.api.app_id);
  assertBlueprintAppToken(payload, '2');
});

test('client credentials with a certificate, SHA-256 thumbprint (x5t#S256, PS256) and x5c', async () => {
  const c = blueprintCert(ctx);
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    certificate: { thumbprintSha256: c.thumbprintSha256, privateKeyPath: c.privateKeyPath, x5cPath: c.certPath },
    scopes: [apiDefault],
  });
  const { payload } = await verifyToken(ctx, r.results[0].accessToken, d.api.app_id);
  assertBlueprintAppToken(payload, '2');
});

test('a wrong secret is MSAL ServerError invalid_client AADSTS7000215', async () => {
  const r = await runClient(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: 'not-the-secret', scopes: [apiDefault],
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.equal(r.error.name, 'ServerError');
  assert.equal(r.error.errorCode, 'invalid_client');
  assert.equal(String(r.error.errorNo), '7000215');
  assert.match(r.error.message, /AADSTS7000215/);
});

test('a certificate the app does not have is refused (AADSTS700027)', async () => {
  const c = blueprintCert(ctx);
  const r = await runClient(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.api.app_id,   // the API has no certificate
    certificate: { thumbprint: c.thumbprint, privateKeyPath: c.privateKeyPath }, scopes: [apiDefault],
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.equal(r.error.errorCode, 'invalid_client');
  assert.equal(String(r.error.errorNo), '700027');
});

test('without NODE_EXTRA_CA_CERTS the issuer\'s certificate is not trusted', async () => {
  const before = tokenRequests(ctx);
  const r = await runClient(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: [apiDefault],
  }, { ca: null });
  // MSAL reports the failed metadata fetch (the TLS handshake was refused) as this error.
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.equal(r.error.errorCode, 'endpoints_resolution_error');
  assert.equal(tokenRequests(ctx), before, 'no token request got through');
  // Node's fetch, in the same situation, names the reason.
  const f = await runClient(ctx, {
    op: 'jose-verify', discoveryUrl: ctx.discoveryUrl, token: 'x.y.z', issuer: ctx.issuerV2, audience: 'x',
  }, { ca: null });
  assert.equal(f.ok, false, JSON.stringify(f));
  assert.match(f.error.cause?.code ?? '', /SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT/);
});

test('on-behalf-of: alice signs in with ROPC on the CLI app, the blueprint exchanges her token', async () => {
  const blueprintScope = `${d.blueprint.identifier_uris[0]}/access_as_user`;
  const u = await mustRun(ctx, {
    op: 'msal-username-password', ...msal, clientId: d.cli.app_id,
    username: d.alice.user_principal_name, password: ctx.alicePassword, scopes: [blueprintScope],
  });
  // MSAL built an account from id_token and client_info.
  assert.equal(u.result.account.username, d.alice.user_principal_name);
  assert.equal(u.result.account.homeAccountId, `${d.alice.object_id}.${d.tenant}`);
  assert.equal(u.result.tenantId, d.tenant);
  assert.equal(u.result.uniqueId, d.alice.object_id);
  assert.ok(u.result.scopes.includes(blueprintScope));
  const user = (await verifyToken(ctx, u.result.accessToken, d.blueprint.app_id)).payload;
  assertV2Basics(assert, ctx, user, { aud: d.blueprint.app_id, azp: d.cli.app_id });
  assert.equal(user.idtyp, 'user');
  assert.equal(user.azpacr, '0', 'public client');
  assert.equal(user.oid, d.alice.object_id);
  assert.equal(user.scp, 'access_as_user');
  assert.equal(user.preferred_username, d.alice.user_principal_name);
  assert.equal(user.roles, undefined);
  // The id_token MSAL parsed is for the CLI app.
  const idt = (await verifyToken(ctx, u.result.idToken, d.cli.app_id)).payload;
  assert.equal(idt.oid, d.alice.object_id);

  const weatherRead = `${d.api.identifier_uris[0]}/Weather.Read`;
  const o = await mustRun(ctx, {
    op: 'msal-on-behalf-of', ...msal, clientId: d.blueprint.app_id, secret: d.blueprint.secrets[0],
    oboAssertion: u.result.accessToken, scopes: [weatherRead],
  });
  assert.equal(o.result.fromCache, false);
  assert.ok(o.result.scopes.includes(weatherRead));
  const obo = (await verifyToken(ctx, o.result.accessToken, d.api.app_id)).payload;
  assertV2Basics(assert, ctx, obo, { aud: d.api.app_id, azp: d.blueprint.app_id });
  assert.equal(obo.idtyp, 'user');
  assert.equal(obo.oid, d.alice.object_id);
  assert.equal(obo.scp, 'Weather.Read');
  assert.equal(obo.azpacr, '1');
  assert.notEqual(obo.sub, user.sub, 'sub is pairwise per client app');
});

test('on-behalf-of with a token meant for another app is invalid_grant', async () => {
  // An app token for the Weather API is neither a user token nor addressed to the blueprint.
  const app = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: [apiDefault],
  });
  const r = await runClient(ctx, {
    op: 'msal-on-behalf-of', ...msal, clientId: d.blueprint.app_id, secret: d.blueprint.secrets[0],
    oboAssertion: app.results[0].accessToken, scopes: [`${d.api.identifier_uris[0]}/Weather.Read`],
  });
  assert.equal(r.ok, false, JSON.stringify(r));
  assert.equal(r.error.errorCode, 'invalid_grant');
});

test('Agent ID leg 1 with MSAL\'s fmiPath: T1 for the agent, cached per fmi_path', async () => {
  const c = blueprintCert(ctx);
  const before = tokenRequests(ctx);
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    certificate: { thumbprintSha256: c.thumbprintSha256, privateKeyPath: c.privateKeyPath, x5cPath: c.certPath },
    scopes: ['api://AzureADTokenExchange/.default'], fmiPath: d.agent.app_id, times: 2,
  });
  assert.equal(r.results[1].fromCache, true);
  assert.equal(r.results[1].accessToken, r.results[0].accessToken);
  assert.equal(tokenRequests(ctx) - before, 1);
  const t1 = (await verifyToken(ctx, r.results[0].accessToken, TOKEN_EXCHANGE_APPID)).payload;
  assertV2Basics(assert, ctx, t1, { aud: TOKEN_EXCHANGE_APPID, azp: d.blueprint.app_id });
  assert.equal(t1.idtyp, 'app');
  assert.match(t1.sub, new RegExp(`^/eid1/c/pub/t/[A-Za-z0-9_-]{22}/a/[A-Za-z0-9_-]{22}/${d.agent.app_id}$`));
});

test('jose rejects a token for another audience and a token with a changed payload', async () => {
  const r = await mustRun(ctx, {
    op: 'msal-client-credential', ...msal, clientId: d.blueprint.app_id,
    secret: d.blueprint.secrets[0], scopes: [apiDefault],
  });
  const tok = r.results[0].accessToken;
  const wrongAud = await runClient(ctx, {
    op: 'jose-verify', discoveryUrl: ctx.discoveryUrl, token: tok, issuer: ctx.issuerV2, audience: d.blueprint.app_id,
  });
  assert.equal(wrongAud.ok, false, JSON.stringify(wrongAud));
  assert.equal(wrongAud.error.code, 'ERR_JWT_CLAIM_VALIDATION_FAILED', JSON.stringify(wrongAud));
  const [h, p, s] = tok.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  claims.roles = ['Weather.Admin'];
  const forged = [h, Buffer.from(JSON.stringify(claims)).toString('base64url'), s].join('.');
  const bad = await runClient(ctx, {
    op: 'jose-verify', discoveryUrl: ctx.discoveryUrl, token: forged, issuer: ctx.issuerV2, audience: d.api.app_id,
  });
  assert.equal(bad.ok, false, JSON.stringify(bad));
  assert.equal(bad.error.code, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED', JSON.stringify(bad));
});
