// `agentid up`: the whole local stack as child processes of one supervisor — start-up in order,
// an agent token through the stack, restart of a killed part, busy ports, usage errors, a clean
// stop on SIGINT, and no secret in its output.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, freePort, request, run, demo, decodeJwt, sleep, waitFor as waitForIt, children, listening, distinctPorts } from './harness.mjs';

const START_MS = 90000;   // ASan builds start slower

let root, dir, ports, up, exited, d, ca;
let stdout = '', stderr = '';
const waitFor = (fn, ms, what) => waitForIt(fn, ms, what, () => `${stdout}\n${stderr}`);

/** Poll fn until it returns something truthy; throw with what after ms. */

const child = (name) => children(up.pid).find((c) => c.cmd[1] === name);



const portArgs = (p) => [
  '--issuer-port', String(p.issuer), '--mi-port', String(p.mi), '--sidecar-port', String(p.sidecar),
  '--weather-port', String(p.weather), '--chat-port', String(p.chat),
];
const url = (name, path = '/healthz') =>
  `${name === 'issuer' ? 'https' : 'http'}://127.0.0.1:${ports[name]}${path}`;

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'agentid-up-'));
  dir = join(root, 'issuer');
  const [issuer, mi, sidecar, weather, chat] = await distinctPorts(5);
  ports = { issuer, mi, sidecar, weather, chat };
  const env = { ...process.env };
  delete env.OLLAMA_HOST;
  delete env.AGENTID_ISSUER_DIR;
  up = spawn(BIN, ['up', '--dir', dir, ...portArgs(ports)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout.on('data', (b) => { stdout += b; });
  up.stderr.on('data', (b) => { stderr += b; });
  exited = new Promise((ok) => up.on('exit', (code, sig) => ok(code ?? sig)));
  await waitFor(() => stdout.includes('the local stack is running') || up.exitCode !== null, START_MS, 'the banner');
  assert.equal(up.exitCode, null, `up exited early:\n${stdout}\n${stderr}`);
  d = demo(JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')));
  ca = readFileSync(join(dir, 'tls/ca.crt'));
});

after(() => {
  if (up && up.exitCode === null) up.kill('SIGKILL');   // children follow (PR_SET_PDEATHSIG)
  if (root) rmSync(root, { recursive: true, force: true });
});

test('every part comes up, in its own child process, and the banner says where', async () => {
  for (const name of ['issuer', 'sidecar', 'weather', 'chat']) {
    const r = await request(url(name), { ca });
    assert.equal(r.status, 200, `${name} /healthz`);
  }
  const st = await request(url('chat', '/api/status'));
  assert.equal(st.status, 200, '/api/status');
  assert.ok(st.json, '/api/status is JSON');
  const names = children(up.pid).map((c) => c.cmd[1]).sort();
  assert.deepEqual(names, ['chat-agent', 'issuer', 'sidecar', 'weather-api']);
  assert.match(stdout, new RegExp(`http://localhost:${ports.chat}`));
  assert.match(stdout, new RegExp(`https://127\\.0\\.0\\.1:${ports.issuer}/${d.tenant}/v2\\.0`));
  assert.match(stdout, new RegExp(`http://127\\.0\\.0\\.1:${ports.sidecar}`));
  assert.match(stdout, new RegExp(`http://127\\.0\\.0\\.1:${ports.weather}`));
  assert.ok(stdout.includes(`alice@agentid.local / ${d.alice.password}`), 'the demo sign-in');
  assert.ok(stdout.includes(`NODE_EXTRA_CA_CERTS=${join(dir, 'tls/ca.crt')}`), 'the CA hint');
  assert.doesNotMatch(stderr, /"level":"(warn|error)","component":"up"/, 'nothing went wrong during start-up');
  // The SPA may receive sign-in codes on the chat port in use (msal-browser's redirect page).
  const spa = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')).applications.find((a) => a.name === 'Chat SPA');
  assert.ok(spa.redirect_uris.includes(`http://localhost:${ports.chat}/redirect.html`));
  assert.ok(spa.redirect_uris.includes(`http://127.0.0.1:${ports.chat}/redirect.html`));
});

test('the sidecar gives an autonomous agent token, and calls the weather API with it', async () => {
  const q = `AgentIdentity=${d.agent.app_id}`;
  const r = await request(url('sidecar', `/AuthorizationHeaderUnauthenticated/weather?${q}`));
  assert.equal(r.status, 200, r.text);
  assert.match(r.json.authorizationHeader, /^Bearer ey/);
  const { claims } = decodeJwt(r.json.authorizationHeader.slice(7));
  assert.equal(claims.azp, d.agent.app_id);
  assert.equal(claims.aud, d.api.app_id);
  assert.equal(claims.iss, `https://127.0.0.1:${ports.issuer}/${d.tenant}/v2.0`);
  const w = await request(url('sidecar', `/DownstreamApiUnauthenticated/weather?${q}&optionsOverride.RelativePath=weather/Dallas`),
    { method: 'POST' });
  assert.equal(w.status, 200, w.text);
  assert.equal(w.json.statusCode, 200, w.text);
});

test('a part that dies is restarted, with a log line naming it, and answers again', async () => {
  const old = child('sidecar');
  assert.ok(old, 'the sidecar is a child of up');
  process.kill(old.pid, 'SIGKILL');
  const fresh = await waitFor(() => {
    const c = child('sidecar');
    return c && c.pid !== old.pid ? c : null;
  }, 15000, 'a new sidecar');
  await waitFor(async () => (await request(url('sidecar'))).status === 200, 15000, 'the new sidecar to answer');
  assert.match(stderr, new RegExp(`"component":"up".*sidecar \\(pid ${old.pid}\\) was killed by signal 9.*restarting`));
  assert.match(stderr, new RegExp(`sidecar started \\(pid ${fresh.pid}\\)`));
  const r = await request(url('sidecar', `/AuthorizationHeaderUnauthenticated/weather?AgentIdentity=${d.agent.app_id}`));
  assert.equal(r.status, 200, r.text);
});

test('a second agentid up on a busy port exits 1 naming the port and its part, creating nothing', async () => {
  const second = join(root, 'second');
  const [issuer, mi, weather, chat] = await distinctPorts(4);
  const r = run(['up', '--dir', second, ...portArgs({ issuer, mi, sidecar: ports.sidecar, weather, chat })]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`port ${ports.sidecar} \\(sidecar\\) is already in use`));
  assert.ok(!existsSync(second), 'no directory was created');
  const all = run(['up', '--dir', second, ...portArgs(ports)]);
  assert.equal(all.code, 1);
  assert.match(all.stderr, new RegExp(`port ${ports.issuer} \\(issuer\\) is already in use`));
});

test('a directory.json that does not load stops up before anything starts (and is left alone)', async () => {
  const bad = join(root, 'bad');
  mkdirSync(bad);
  writeFileSync(join(bad, 'directory.json'), '{"format": 1, "tenant_id": 42}');
  const [issuer, mi, sidecar, weather, chat] = await distinctPorts(5);
  const r = run(['up', '--dir', bad, ...portArgs({ issuer, mi, sidecar, weather, chat })]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /agentid up: .*directory\.json/);
  assert.equal(readFileSync(join(bad, 'directory.json'), 'utf8'), '{"format": 1, "tenant_id": 42}');
});

test('usage errors exit 2', () => {
  assert.equal(run(['up', '--bogus']).code, 2);
  assert.equal(run(['up', '--sidecar-port', '0']).code, 2);
  assert.equal(run(['up', '--chat-port', 'http']).code, 2);
  assert.equal(run(['up', '--dir']).code, 2);
  const h = run(['up', '--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--sidecar-port/);
});

test('SIGINT stops every part and up exits 0; all ports are closed afterwards', async () => {
  const kids = children(up.pid);
  assert.equal(kids.length, 4);
  up.kill('SIGINT');
  const code = await Promise.race([exited, sleep(20000).then(() => 'still running')]);
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  for (const k of kids) assert.ok(!existsSync(`/proc/${k.pid}`), `${k.cmd[1]} (pid ${k.pid}) is gone`);
  for (const [name, port] of Object.entries(ports)) assert.equal(await listening(port), false, `${name} port closed`);
  assert.match(stderr, /"component":"up".*every part has stopped/);
  for (const k of kids)   // a clean stop (under ASan, a leak would make it 23)
    assert.match(stderr, new RegExp(`${k.cmd[1]} \\(pid ${k.pid}\\) exited with status 0`));
  assert.doesNotMatch(stderr, /ERROR: \w+Sanitizer|runtime error:/);
});

test('no secret appears in the output; only the demo user\'s password, on stdout', () => {
  const j = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8'));
  const secrets = j.applications.flatMap((a) => a.secrets ?? []);
  assert.ok(secrets.length >= 1);
  assert.ok(secrets.includes(d.blueprint.secrets[0]));
  for (const s of secrets) {
    assert.ok(!stdout.includes(s), 'a client secret on stdout');
    assert.ok(!stderr.includes(s), 'a client secret on stderr');
  }
  if (j.managed_identity_header) assert.ok(!(stdout + stderr).includes(j.managed_identity_header));
  assert.ok(!stderr.includes(d.alice.password), 'the password is never logged');
  assert.doesNotMatch(stdout + stderr, /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/, 'no token');
});
