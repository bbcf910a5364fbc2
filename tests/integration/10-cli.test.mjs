// The binary's command line: version, help, usage errors, issuer init and rotate-keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { run, initDirectory } from './harness.mjs';

test('version and help', () => {
  const v = run(['version']);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^agentid \S+/);
  const h = run(['help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /issuer init/);
  assert.match(h.stdout, /rotate-keys/);
});

test('unknown command and option are usage errors (exit 2)', () => {
  assert.equal(run(['frobnicate']).code, 2);
  const r = run(['issuer', 'init', '--bogus']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown option --bogus/);
  assert.equal(run(['issuer', '--dir']).code, 2);
});

test('issuer init writes a directory and refuses to overwrite it without --force', () => {
  const d = initDirectory();
  try {
    const j = d.json();
    assert.match(j.tenant_id, /^[0-9a-f-]{36}$/);
    assert.equal(statSync(d.file).mode & 0o777, 0o600, 'directory.json holds secrets: 0600');
    for (const f of ['tls/ca.crt', 'tls/server.crt', 'tls/server.key', 'keys/blueprint.pem', 'keys/signing-1.key'])
      assert.ok(existsSync(join(d.dir, f)), f);
    const types = j.applications.map((a) => a.type ?? 'application');
    assert.ok(types.includes('agent_blueprint'));
    assert.ok(types.includes('agent_identity'));
    const before = j.tenant_id;
    const again = run(['issuer', 'init', '--dir', d.dir]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /exists; use --force/);
    assert.equal(d.json().tenant_id, before, 'untouched');
    assert.equal(run(['issuer', 'init', '--dir', d.dir, '--force']).code, 0);
    assert.notEqual(d.json().tenant_id, before, 'replaced with --force');
  } finally { d.cleanup(); }
});

test('rotate-keys adds an active key, keeps the old one published, --retire-old drops it', () => {
  const d = initDirectory();
  try {
    const old = d.json().signing_keys[0].kid;
    const r = run(['issuer', 'rotate-keys', '--dir', d.dir]);
    assert.equal(r.code, 0, r.stderr);
    const keys = d.json().signing_keys;
    assert.equal(keys.length, 2);
    assert.equal(keys.find((k) => k.kid === old).status, 'published');
    assert.equal(keys.filter((k) => k.status === 'active').length, 1);
    assert.equal(run(['issuer', 'rotate-keys', '--dir', d.dir, '--retire-old']).code, 0);
    assert.equal(d.json().signing_keys.find((k) => k.kid === old).status, 'retired');
  } finally { d.cleanup(); }
});

test('a broken directory.json is reported with the field at fault', () => {
  const d = initDirectory();
  try {
    const j = d.json();
    j.applications[1].parent = '00000000-0000-0000-0000-000000000000';
    d.save(j);
    const r = run(['issuer', 'rotate-keys', '--dir', d.dir]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /applications\[1\]\.parent/);
  } finally { d.cleanup(); }
});
