// Every setting the sidecar reads is documented (as mod_auth_openidc's check_conf_reference does).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { run } from './harness.mjs';

test('docs/sidecar.md documents every key in SETTINGS_KEYS', () => {
  const r = run(['sidecar', '--list-settings']);
  assert.equal(r.code, 0);
  const keys = r.stdout.trim().split('\n');
  assert.ok(keys.length > 20, 'the table is there');
  const doc = readFileSync(resolve(import.meta.dirname, '../../docs/sidecar.md'), 'utf8');
  const missing = keys.filter((k) => !doc.includes('`' + k + '`'));
  assert.deepEqual(missing, []);
});
