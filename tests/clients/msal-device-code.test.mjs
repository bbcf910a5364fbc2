// @azure/msal-node's device code flow, unchanged, against agentid issuer:
// PublicClientApplication.acquireTokenByDeviceCode, whose deviceCodeCallback completes the
// issuer's /devicelogin page over HTTP (tests/integration/devicelogin.mjs), then
// acquireTokenSilent from MSAL's cache and, forced, with the refresh token.
//
// MSAL runs in a child process started with NODE_EXTRA_CA_CERTS (Node reads it only at
// start-up): this same file, with AGENTID_MSAL_DEVICE_JOB set, is that child.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setup, verifyToken, assertV2Basics, RESULT_PREFIX } from './client-harness.mjs';
import { postForm } from '../integration/harness.mjs';
import { completeDeviceLogin } from '../integration/devicelogin.mjs';

const JOB_ENV = 'AGENTID_MSAL_DEVICE_JOB';

/** The child: one device code sign-in with msal-node; prints RESULT_PREFIX + JSON. */
async function child(job) {
  const { PublicClientApplication } = await import('@azure/msal-node');
  const pca = new PublicClientApplication({
    auth: { clientId: job.clientId, authority: job.authority, knownAuthorities: job.knownAuthorities },
  });
  const out = { ok: false };
  let page;
  try {
    const first = await pca.acquireTokenByDeviceCode({
      scopes: job.scopes,
      deviceCodeCallback: (r) => {
        out.deviceCode = { userCode: r.userCode, verificationUri: r.verificationUri, message: r.message,
                           interval: r.interval, expiresIn: r.expiresIn };
        // The person at the browser: MSAL polls meanwhile.
        page = completeDeviceLogin({ baseUrl: r.verificationUri, userCode: r.userCode,
                                     username: job.username, password: job.password, deny: job.deny });
      },
    });
    out.page = await page.then((p) => ({ ok: p.ok, error: p.error }));
    out.first = { accessToken: first.accessToken, fromCache: first.fromCache, scopes: first.scopes,
                  username: first.account?.username, homeAccountId: first.account?.homeAccountId,
                  idTokenClaims: first.idTokenClaims };
    const silent = await pca.acquireTokenSilent({ account: first.account, scopes: job.scopes });
    out.silent = { accessToken: silent.accessToken, fromCache: silent.fromCache };
    const refreshed = await pca.acquireTokenSilent({ account: first.account, scopes: job.scopes, forceRefresh: true });
    out.refreshed = { accessToken: refreshed.accessToken, fromCache: refreshed.fromCache };
    out.ok = true;
  } catch (e) {
    if (page) out.page = await page.then((p) => ({ ok: p.ok, error: p.error }), (x) => ({ ok: false, error: String(x) }));
    out.error = { name: e?.name, errorCode: e?.errorCode, message: String(e?.message ?? e) };
  }
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(out)}\n`);
}

if (process.env[JOB_ENV]) {
  await child(JSON.parse(process.env[JOB_ENV]));
} else {
  let ctx, d, job;

  /** Run the child with the issuer's CA trusted; resolves to its result. */
  const runDeviceJob = (extra = {}) => new Promise((ok, fail) => {
    const env = {};
    for (const [k, v] of Object.entries(process.env))
      if (!/^(https?_proxy|all_proxy|no_proxy|AZURE_|MSAL_|NODE_OPTIONS$)/i.test(k)) env[k] = v;
    Object.assign(env, { NODE_EXTRA_CA_CERTS: ctx.caPath, NO_PROXY: '127.0.0.1', [JOB_ENV]: JSON.stringify({ ...job, ...extra }) });
    const c = spawn(process.execPath, [fileURLToPath(import.meta.url)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    c.stdout.on('data', (b) => { out += b; });
    c.stderr.on('data', (b) => { err += b; });
    const timer = setTimeout(() => c.kill('SIGKILL'), 60000);
    c.on('close', (code) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
      if (!line) fail(new Error(`device code child printed no result (exit ${code}):\n${out}\n${err}`));
      else ok(JSON.parse(line.slice(RESULT_PREFIX.length)));
    });
  });

  before(async () => {
    ctx = await setup();
    d = ctx.d;
    // Poll every second (directory.json's device_code_interval_seconds; SIGHUP reloads it).
    ctx.dir.save({ ...ctx.dir.json(), device_code_interval_seconds: 1 });
    ctx.iss.proc.kill('SIGHUP');
    for (let i = 0; ; i++) {
      const r = await postForm(`${ctx.iss.authority}/oauth2/v2.0/devicecode`,
        { client_id: d.cli.app_id, scope: `api://${d.blueprint.app_id}/access_as_user` }, { ca: ctx.dir.ca });
      if (r.json?.interval === 1) break;
      if (i > 50) throw new Error(`the directory was not reloaded: ${r.text}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    job = {
      clientId: d.cli.app_id, authority: ctx.iss.authority, knownAuthorities: [ctx.host],
      scopes: [`api://${d.blueprint.app_id}/access_as_user`],
      username: d.alice.user_principal_name, password: ctx.alicePassword,
    };
  });
  after(async () => {
    if (ctx) assert.equal(await ctx.stop(), 0, 'issuer exits cleanly (no leaks under ASan)');
  });

  test('acquireTokenByDeviceCode: the callback completes the page; then silent from cache and by refresh', async () => {
    const r = await runDeviceJob();
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.deviceCode.verificationUri, `${ctx.iss.url}/devicelogin`);
    assert.equal(r.deviceCode.interval, 1);
    assert.equal(r.deviceCode.expiresIn, 900);
    assert.match(r.deviceCode.message, new RegExp(`enter the code ${r.deviceCode.userCode} to authenticate`));
    assert.deepEqual(r.page, { ok: true, error: null });
    assert.equal(r.first.fromCache, false);
    assert.equal(r.first.username, d.alice.user_principal_name);
    assert.equal(r.first.homeAccountId, `${d.alice.object_id}.${d.tenant}`);
    assert.equal(r.first.idTokenClaims.preferred_username, d.alice.user_principal_name);

    const { payload } = await verifyToken(ctx, r.first.accessToken, d.blueprint.app_id);
    assertV2Basics(assert, ctx, payload, { aud: d.blueprint.app_id, azp: d.cli.app_id });
    assert.equal(payload.idtyp, 'user');
    assert.equal(payload.scp, 'access_as_user');
    assert.equal(payload.oid, d.alice.object_id);
    assert.equal(payload.preferred_username, d.alice.user_principal_name);
    assert.equal(payload.azpacr, '0');

    assert.equal(r.silent.fromCache, true, 'the second call is served from MSAL\'s cache');
    assert.equal(r.silent.accessToken, r.first.accessToken);
    assert.equal(r.refreshed.fromCache, false, 'forceRefresh redeems the refresh token');
    assert.notEqual(r.refreshed.accessToken, r.first.accessToken);
    const again = await verifyToken(ctx, r.refreshed.accessToken, d.blueprint.app_id);
    assert.equal(again.payload.oid, d.alice.object_id);
  });

  test('Cancel on the page: acquireTokenByDeviceCode rejects with authorization_declined', async () => {
    const r = await runDeviceJob({ deny: true });
    assert.equal(r.ok, false);
    assert.deepEqual(r.page, { ok: true, error: null }, 'the page declined');
    assert.match(r.error.message, /authorization_declined/);
  });
}
