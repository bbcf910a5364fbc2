// `agentid decode TOKEN [--verify]`: header and claims, and validation against the issuer the
// token names (discovery from iss, JWKS, signature, issuer, lifetime).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { BIN, initDirectory, demo, startIssuer, postForm } from './harness.mjs';

let dir, issuer, ids, caFile;

function decode(args, { input, env = {} } = {}) {
  const r = spawnSync(BIN, ['decode', ...args], {
    encoding: 'utf8', input, env: { ...process.env, SSL_CERT_FILE: '', ...env }, timeout: 20000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function appToken(scope) {
  const r = await postForm(issuer.tokenUrl, {
    client_id: ids.blueprint.app_id, client_secret: ids.blueprint.secrets[0],
    grant_type: 'client_credentials', scope,
  }, { ca: dir.ca });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

before(async () => {
  dir = initDirectory();
  ids = demo(dir.json());
  caFile = join(dir.dir, 'tls/ca.crt');
  issuer = await startIssuer(dir);
});
after(async () => { assert.equal(await issuer?.stop(), 0); dir?.cleanup(); });

test('decode prints header, claims and times without contacting anyone', async () => {
  const tok = await appToken(`api://${ids.api.app_id}/.default`);
  const r = decode([tok]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Header\n\{\n[^}]*"alg": "RS256"[^}]*\}\nClaims\n\{/);
  assert.match(r.stdout, new RegExp(`"azp": "${ids.blueprint.app_id}"`));
  assert.match(r.stdout, /exp {2}\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in 60 min\) {2}expires/);
  assert.doesNotMatch(r.stdout, /Verification/);
  assert.ok(!r.stdout.includes(tok), 'the token itself is not printed back');
});

test('--verify: a v2 token and a v1 token of the local issuer are valid', async () => {
  for (const scope of [`api://${ids.api.app_id}/.default`, 'https://graph.microsoft.com/.default']) {
    const tok = await appToken(scope);
    const r = decode([`Bearer ${tok}`, '--verify', '--ca-file', caFile, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.verification.valid, true);
    assert.match(out.verification.status, new RegExp(`^valid: signed by ${out.claims.iss.replace(/[./]/g, '\\$&')}`));
    assert.match(out.verification.status, new RegExp(`\\(key ${out.header.kid}\\)`));
  }
});

test('--verify reads the token from stdin and trusts SSL_CERT_FILE', async () => {
  const tok = await appToken(`api://${ids.api.app_id}/.default`);
  const r = decode(['--verify'], { input: `${tok}\n`, env: { SSL_CERT_FILE: caFile } });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /Verification\n {2}✓ valid/);
});

test('--verify refuses a tampered, an expired and an untrusted token, saying why', async () => {
  const tok = await appToken(`api://${ids.api.app_id}/.default`);
  const [h, p, s] = tok.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  claims.roles = ['Everything'];
  const tampered = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
  let r = decode([tampered, '--verify', '--ca-file', caFile]);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /✗ signature: /);

  r = decode([tok, '--verify', '--ca-file', caFile], { env: { AGENTID_TIME_OFFSET: '7200' } });
  assert.equal(r.code, 1);
  assert.match(r.stdout, /✗ expired: /);

  r = decode([tok, '--verify']);   // the local CA is not trusted without --ca-file
  assert.equal(r.code, 1);
  assert.match(r.stdout, /✗ issuer unreachable: /);
});

test('--verify does not fetch a plain-http issuer on another host', async () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const forged = `${b64({ alg: 'RS256', kid: 'x' })}.${b64({ iss: 'http://example.invalid/t/', exp: 9999999999 })}.${'A'.repeat(342)}`;
  const r = decode([forged, '--verify']);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /not an https URL \(or http on loopback\): not fetched/);
});

test('bad input gets a clear error and exit status', () => {
  let r = decode(['not-a-token']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^agentid decode: not a JWT: /);
  r = decode(['a.b.c', 'd.e.f']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /one token at a time/);
  r = decode(['--frobnicate']);
  assert.equal(r.code, 2);
  r = decode(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^usage: agentid decode/);
});
