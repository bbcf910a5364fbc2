// Shared by the client tests: an issuer on a fresh directory, and run-client.mjs in a child
// node process that trusts the issuer's local CA through NODE_EXTRA_CA_CERTS.
//
// AGENTID_CLIENT_DEBUG=1 (inherited by the children): MSAL's verbose log on a failing job's
// stderr, a timestamped line per job on this process's stderr, and each issuer's log kept as
// $TMPDIR/agentid-issuer-PORT.log when it stops.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { initDirectory, startIssuer, demo } from '../integration/harness.mjs';

export const RESULT_PREFIX = '@@agentid-client-result ';
const HERE = import.meta.dirname;
const DEBUG = !!process.env.AGENTID_CLIENT_DEBUG;
const dbg = (m) => { if (DEBUG) process.stderr.write(`${new Date().toISOString()} ${m}\n`); };
const RUNNER = join(HERE, 'run-client.mjs');

/** Fail early, and say how to fix it, when `npm ci` has not been run here. */
export function requireNodeModules() {
  for (const m of ['@azure/msal-node', '@azure/identity', 'jose'])
    if (!existsSync(join(HERE, 'node_modules', m, 'package.json')))
      throw new Error(`tests/clients: ${m} is not installed; run \`npm ci\` in tests/clients ` +
                      '(scripts/deps.sh check does it)');
}

/**
 * A fresh directory and an HTTPS issuer on a free 127.0.0.1 port. Returns
 * { dir, iss, d (demo objects), caPath, host ('127.0.0.1:PORT'), stop() }.
 */
export async function setup() {
  requireNodeModules();
  const dir = initDirectory();
  let iss;
  try {
    iss = await startIssuer(dir);
  } catch (e) {
    dir.cleanup();
    throw e;
  }
  const d = demo(dir.json());
  const users = dir.json().users;
  return {
    dir, iss, d,
    alicePassword: users.find((u) => u.user_principal_name === 'alice@agentid.local').password,
    caPath: join(dir.dir, 'tls/ca.crt'),
    host: new URL(iss.url).host,           // '127.0.0.1:PORT', the knownAuthorities entry
    discoveryUrl: `${iss.authority}/v2.0/.well-known/openid-configuration`,
    issuerV2: `${iss.authority}/v2.0`,
    /** Stops the issuer (resolves to its exit code) and removes the directory. */
    async stop() {
      dbg(`stop issuer ${iss.port}`);
      try {
        return await iss.stop();
      } finally {
        if (DEBUG) writeFileSync(join(tmpdir(), `agentid-issuer-${iss.port}.log`), iss.logs());
        dir.cleanup();
      }
    },
  };
}

/** The blueprint's registered certificate: thumbprints as MSAL wants them, and the key. */
export function blueprintCert(ctx) {
  const x = new X509Certificate(readFileSync(join(ctx.dir.dir, 'keys/blueprint.crt')));
  const hex = (fp) => fp.replaceAll(':', '').toLowerCase();
  return {
    thumbprint: hex(x.fingerprint),                 // SHA-1 of the DER
    thumbprintSha256: hex(x.fingerprint256),        // SHA-256 of the DER
    privateKeyPath: join(ctx.dir.dir, 'keys/blueprint.key'),
    pemPath: join(ctx.dir.dir, 'keys/blueprint.pem'),   // key + certificate
    certPath: join(ctx.dir.dir, 'keys/blueprint.crt'),
  };
}

/**
 * Run one job in `node run-client.mjs` with NODE_EXTRA_CA_CERTS=<dir>/tls/ca.crt (or with
 * `ca: null`, no extra CA at all). Resolves to the job's JSON result; rejects only when the
 * child printed no result (crash, timeout).
 */
export function runClient(ctx, job, { ca = ctx.caPath, timeout = 60000 } = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    // The clients must reach 127.0.0.1 directly and see no Azure settings from the caller.
    if (/^(https?_proxy|all_proxy|no_proxy|AZURE_|MSAL_|IDENTITY_|MSI_|NODE_OPTIONS$)/i.test(k)) continue;
    env[k] = v;
  }
  delete env.NODE_EXTRA_CA_CERTS;
  if (ca) env.NODE_EXTRA_CA_CERTS = ca;
  env.NO_PROXY = '127.0.0.1';
  dbg(`spawn ${job.op}`);
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [RUNNER], { env, cwd: HERE, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (b) => { out += b; });
    child.stderr.on('data', (b) => { err += b; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
    child.on('error', (e) => { clearTimeout(timer); fail(e); });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(RESULT_PREFIX));
      if (!line) {
        fail(new Error(`run-client ${job.op} printed no result (exit ${code ?? sig}):\n${out}\n${err}`));
        return;
      }
      const result = JSON.parse(line.slice(RESULT_PREFIX.length));
      // What the client wrote on stderr explains a failure (AGENTID_CLIENT_DEBUG=1: MSAL's log).
      if (!result.ok && err) result.stderr = err.slice(-4000);
      ok(result);
    });
    child.stdin.end(JSON.stringify(job));
  });
}

/** Like runClient, but the job must succeed; otherwise the client's error is the failure. */
export async function mustRun(ctx, job, opts) {
  const r = await runClient(ctx, job, opts);
  if (!r.ok) {
    throw new Error(`${job.op} failed: ${JSON.stringify({ error: r.error, probe: r.probe }, null, 2)}` +
                    `${r.stderr ? `\n${r.stderr}` : ''}`);
  }
  return r;
}

/**
 * Verify a token with jose (createRemoteJWKSet on the jwks_uri from discovery, jwtVerify with
 * the tenant's v2 issuer and the expected audience) in a child process; resolves to
 * { payload, protectedHeader }, and rejects when jose does.
 */
export function verifyToken(ctx, token, audience) {
  return mustRun(ctx, {
    op: 'jose-verify', discoveryUrl: ctx.discoveryUrl, token, issuer: ctx.issuerV2, audience,
  });
}

/** Token endpoint requests the issuer has logged so far. */
export function tokenRequests(ctx) {
  let n = 0;
  for (const line of ctx.iss.logs().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line);
      if (o.event === 'request' && o.method === 'POST' && /\/oauth2\/v2\.0\/token$/.test(o.path)) n++;
    } catch { /* not a log line */ }
  }
  return n;
}

/** The claims every Entra v2 access token from this tenant carries. */
export function assertV2Basics(assert, ctx, payload, { aud, azp }) {
  assert.equal(payload.aud, aud, 'aud');
  assert.equal(payload.iss, ctx.issuerV2, 'iss');
  assert.equal(payload.tid, ctx.d.tenant, 'tid');
  assert.equal(payload.ver, '2.0', 'ver');
  assert.equal(payload.azp, azp, 'azp');
  assert.ok(Number.isInteger(payload.exp) && payload.exp > Date.now() / 1000, 'exp in the future');
}

/** The blueprint's app-only token for the Weather API, as every credential must give it;
 * acr is the azpacr the credential implies ('1' secret, '2' certificate or assertion). */
export function assertBlueprintAppToken(assert, ctx, payload, acr) {
  const { d } = ctx;
  assertV2Basics(assert, ctx, payload, { aud: d.api.app_id, azp: d.blueprint.app_id });
  assert.equal(payload.idtyp, 'app');
  assert.equal(payload.azpacr, acr);
  assert.equal(payload.oid, d.blueprint.object_id);
  assert.equal(payload.sub, d.blueprint.object_id);
  assert.deepEqual(payload.roles, ['Weather.Read.All']);
  assert.equal(payload.scp, undefined, 'no scp in an app token');
}
