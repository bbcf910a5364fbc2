// Signing-key rotation on a running issuer: `issuer rotate-keys` adds a key that signs from then
// on while the old one stays published; `--retire-old` unpublishes it. The server picks both up
// by reloading directory.json. Also: a broken directory.json keeps the previous one serving.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, verify } from 'node:crypto';
import { spawn } from 'node:child_process';
import { initDirectory, startIssuer, demo, request, run, BIN } from './harness.mjs';
import {
  TOKEN_EXCHANGE_SCOPE, assertionFields, token as post, ok, refused, saveDirectory, waitFor,
} from './tokens.mjs';

let dir, iss, d, ca;
let oldTok, oldKid, oldT1, newKid;
const tok = (fields) => post(iss, ca, fields);
const apiScope = () => `${d.api.identifier_uris[0]}/.default`;
const appToken = async () => ok(await tok({
  grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
  scope: apiScope(),
}));
const jwks = async (path = 'discovery/v2.0/keys') => {
  const r = await request(`${iss.authority}/${path}`, { ca });
  assert.equal(r.status, 200);
  return r.json.keys;
};
/** Does the JWKS key named by the token's kid verify its RS256 signature? */
const verifies = (keys, jwt) => {
  const [h, p, s] = jwt.split('.');
  const { kid } = JSON.parse(Buffer.from(h, 'base64url').toString());
  const k = keys.find((x) => x.kid === kid);
  return !!k && verify('sha256', Buffer.from(`${h}.${p}`), createPublicKey({ key: k, format: 'jwk' }),
    Buffer.from(s, 'base64url'));
};
const agentApp = (t1) => tok({
  grant_type: 'client_credentials', client_id: d.agent.app_id, scope: apiScope(), ...assertionFields(t1),
});

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  ca = dir.ca;
  iss = await startIssuer(dir);
});
after(async () => {
  assert.equal(await iss.stop(), 0, 'clean exit (no leaks under ASan)');
  dir.cleanup();
});

test('before rotation: one key, and it signs', async () => {
  oldTok = await appToken();
  oldKid = oldTok.header.kid;
  oldT1 = ok(await tok({
    grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    scope: TOKEN_EXCHANGE_SCOPE, fmi_path: d.agent.app_id,
  })).access_token;
  const keys = await jwks();
  assert.deepEqual(keys.map((k) => k.kid), [oldKid]);
  assert.ok(verifies(keys, oldTok.access_token));
});

test('rotate-keys: the JWKS serves two keys within 3 s, new tokens carry the new kid', async () => {
  const r = run(['issuer', 'rotate-keys', '--dir', dir.dir]);
  assert.equal(r.code, 0, r.stderr);
  const active = dir.json().signing_keys.filter((k) => k.status === 'active');
  assert.equal(active.length, 1);
  newKid = active[0].kid;
  assert.notEqual(newKid, oldKid);

  const keys = await waitFor(async () => { const k = await jwks(); return k.length === 2 && k; });
  assert.ok(keys, 'the issuer reloaded directory.json within 3 s');
  assert.deepEqual(keys.map((k) => k.kid).sort(), [oldKid, newKid].sort());
  assert.ok(keys.some((k) => k.kid === oldKid), 'the old token\'s kid is still published');
  assert.deepEqual((await jwks('discovery/keys')).map((k) => k.kid).sort(), [oldKid, newKid].sort());

  const fresh = await appToken();
  assert.equal(fresh.header.kid, newKid);
  assert.ok(verifies(keys, fresh.access_token), 'the new key verifies new tokens');
  assert.ok(verifies(keys, oldTok.access_token), 'the old key still verifies old tokens');
});

test('a T1 signed with the old key still authenticates the agent', async () => {
  const r = ok(await agentApp(oldT1));
  assert.equal(r.header.kid, newKid);
  assert.equal(r.claims.azp, d.agent.app_id);
});

test('a broken directory.json is refused and the previous directory keeps serving', async () => {
  const good = dir.json();
  saveDirectory(dir, { ...good, signing_keys: 'not an array' });
  const seen = await waitFor(async () => {
    await request(`${iss.authority}/discovery/v2.0/keys`, { ca });
    return /directory_invalid/.test(iss.logs());
  });
  assert.ok(seen, 'the reload was attempted and reported');
  assert.equal((await appToken()).header.kid, newKid);
  assert.equal((await jwks()).length, 2);
  const loads = () => (iss.logs().match(/directory_loaded/g) ?? []).length;
  const before = loads();
  saveDirectory(dir, good);
  assert.ok(await waitFor(async () => {
    await request(`${iss.authority}/discovery/v2.0/keys`, { ca });
    return loads() > before;
  }), 'the repaired file is loaded again');
});

test('--retire-old: the old kid leaves the JWKS, tokens it signed stop working', async () => {
  const r = run(['issuer', 'rotate-keys', '--dir', dir.dir, '--retire-old']);
  assert.equal(r.code, 0, r.stderr);
  const keys = await waitFor(async () => { const k = await jwks(); return k.length === 1 && k; });
  assert.ok(keys, 'the issuer reloaded directory.json within 3 s');
  assert.deepEqual(keys.map((k) => k.kid), [newKid]);
  assert.ok(!keys.some((k) => k.kid === oldKid));
  assert.ok(!verifies(keys, oldTok.access_token));
  assert.equal((await appToken()).header.kid, newKid);
  refused(await agentApp(oldT1), 401, 'invalid_client', 700027);
});

test('tokens keep flowing while a rotation is picked up (no request fails or crashes the server)', async () => {
  const rotated = new Promise((resolve) => {
    const p = spawn(BIN, ['issuer', 'rotate-keys', '--dir', dir.dir], { stdio: 'ignore' });
    p.on('exit', resolve);
  });
  const results = [];
  const deadline = Date.now() + 2500;   // past the next once-a-second check
  const worker = async () => {
    while (Date.now() < deadline) {
      results.push(await tok({
        grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
        scope: apiScope(),
      }));
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  assert.equal(await rotated, 0);
  const keys = await waitFor(async () => { const k = await jwks(); return k.length === 2 && k; });
  assert.ok(keys, 'the issuer reloaded directory.json within 3 s');
  assert.ok(results.length > 20, `${results.length} requests`);
  const kids = new Set();
  for (const r of results) {
    const t = ok(r);
    kids.add(t.header.kid);
    assert.ok(verifies(keys, t.access_token), 'every token verifies with the published keys');
  }
  assert.ok(kids.has(newKid));
  const latest = dir.json().signing_keys.find((k) => k.status === 'active').kid;
  assert.equal((await appToken()).header.kid, latest);
});
