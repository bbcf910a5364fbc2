// `agentid gateway`'s cache of verified tokens (src/gateway/tokcache.h): a token that passed
// jwtAuth once is let through again with its claims (claimsToHeaders still sees them), but only
// on the route and configuration it passed — the same token is still refused where its
// audience is not accepted, after a reload that stops accepting it, and any change to its bytes
// (an altered signature) is checked in full and refused.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { initDirectory, startIssuer, start, demo, decodeJwt, request } from './harness.mjs';
import { waitFor } from './tokens.mjs';
import { appToken, jwtAuthYaml, writeConfig } from './gateway-setup.mjs';
import { startRecorder } from './sidecar.mjs';

let dir, iss, d, rec, G, cfgFile, tok, gate;

// An upstream that holds every request (but .../warm) until GATE_N are in at once (or 2 s
// passed), and says how many it ever held together.
const GATE_N = 80;
function startGate() {
  const held = [];
  const g = { most: 0 };
  const release = () => { while (held.length) held.pop().end('{"gate":"open"}'); };
  g.srv = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    if (req.url.endsWith('/warm')) { res.end('{}'); return; }
    held.push(res);
    g.most = Math.max(g.most, held.length);
    if (held.length >= GATE_N) release();
    else setTimeout(() => { if (held.includes(res)) release(); }, 2000);
  });
  return new Promise((ok) => g.srv.listen(0, '127.0.0.1', () => { g.host = `127.0.0.1:${g.srv.address().port}`; ok(g); }));
}

function configYaml(audA) {
  const auth = (aud) => jwtAuthYaml(iss, d, aud);
  return `binds:
- port: 0
  listeners:
  - routes:
    - name: a
      matches: [{path: {pathPrefix: /a}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth(audA)}
        claimsToHeaders: {x-oid: oid}
    - name: b
      matches: [{path: {pathPrefix: /b}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth('api://somebody-else')}
    - name: gate
      matches: [{path: {pathPrefix: /gate}}]
      backends: [{host: "${gate.host}"}]
      policies:
        ${auth(audA)}
`;
}

const get = (path, t) => request(`${G.url}${path}`, { headers: t ? { Authorization: `Bearer ${t}` } : {} });
const lastSeen = () => rec.seen[rec.seen.length - 1];

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
  tok = await appToken(iss, dir, d);
  rec = await startRecorder();
  gate = await startGate();
  cfgFile = join(dir.root, 'gateway.yaml');
  writeConfig(cfgFile, configYaml(d.api.app_id));
  G = await start(['gateway', '--config', cfgFile], { env: { SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt') } });
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  assert.equal(await iss?.stop(), 0);
  await rec?.close();
  gate?.srv.close();
  dir?.cleanup();
});

describe('verified tokens', () => {
  test('the same token again passes with its claims, from the cache as the first time in full', async () => {
    const oid = decodeJwt(tok).claims.oid;
    for (let i = 0; i < 3; i++) {
      const r = await get(`/a/again-${i}`, tok);
      assert.equal(r.status, 201, r.text);
      assert.equal(lastSeen().path, `/a/again-${i}`);
      assert.equal(lastSeen().headers['x-oid'], oid, 'claimsToHeaders sees the claims on every request');
      assert.equal(lastSeen().headers.authorization, undefined, 'the token is not passed on');
    }
  });

  test('a token that passed one route is still refused by another whose audience it lacks', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    const r = await get('/b/x', tok);
    assert.equal(r.status, 401);
    assert.equal(r.json.failed_check, 'audience');
  });

  test('its bytes changed, the token is checked in full and refused', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    const last = tok.at(-1) === 'A' ? 'B' : 'A';
    for (const bad of [tok.slice(0, -1) + last, tok + 'A', tok.slice(0, -1)]) {
      const r = await get('/a/x', bad);
      assert.equal(r.status, 401, 'altered token');
      assert.ok(['signature', 'malformed'].includes(r.json.failed_check), r.json.failed_check);
    }
    assert.equal((await get('/a/x')).status, 401, 'no token');
  });

  test('after a reload that no longer accepts its audience, the token is refused; back, it passes', async () => {
    assert.equal((await get('/a/x', tok)).status, 201);
    writeConfig(cfgFile, configYaml('api://not-the-weather-api'));
    G.proc.kill('SIGHUP');
    await waitFor(async () => (await get('/a/x', tok)).status === 401);
    const r = await get('/a/x', tok);
    assert.equal(r.status, 401);
    assert.equal(r.json.failed_check, 'audience');
    writeConfig(cfgFile, configYaml(d.api.app_id));
    G.proc.kill('SIGHUP');
    await waitFor(async () => (await get('/a/x', tok)).status === 201);
    assert.equal((await get('/a/x', tok)).status, 201);
  });

  test(`first requests of ${GATE_N} new tokens (keys at hand) are checked at once, not queued for a worker each`, async () => {
    const toks = [];
    for (let i = 0; i < GATE_N; i++) toks.push(await appToken(iss, dir, d));
    assert.equal(new Set(toks).size, GATE_N, 'all different');
    assert.equal((await get('/gate/warm', tok)).status, 200); // the route's keys fetched
    const all = await Promise.all(toks.map((t, i) => get(`/gate/${i}`, t)));
    assert.deepEqual(all.map((r) => r.status), Array(GATE_N).fill(200));
    assert.equal(gate.most, GATE_N, `all ${GATE_N} reached the upstream together (at most ${gate.most})`);
  });

  test('many requests at once with the same token all pass', async () => {
    const all = await Promise.all(Array.from({ length: 40 }, (_, i) => get(`/a/par-${i}`, tok)));
    assert.deepEqual(all.map((r) => r.status), Array(40).fill(201));
  });
});

/* Send a request's head only, announcing a body of `length` bytes that is not sent (yet),
 * with Expect: 100-continue unless told otherwise. Resolves { head, socket }: the first line and
 * headers of the answer, or head null if none came within `wait` ms. */
function headOnly(path, { token: t, length = 8_000_000, wait = 1500, expect = true } = {}) {
  return new Promise((ok, fail) => {
    const socket = net.connect(G.port, '127.0.0.1', () => {
      socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${length}\r\n${expect ? 'Expect: 100-continue\r\n' : ''}` +
        `${t ? `Authorization: Bearer ${t}\r\n` : ''}\r\n`);
    });
    let got = '';
    const timer = setTimeout(() => ok({ head: null, socket }), wait);
    socket.on('data', (b) => {
      got += b;
      const end = got.indexOf('\r\n\r\n');
      if (end >= 0 && !got.startsWith('HTTP/1.1 100')) { clearTimeout(timer); ok({ head: got.slice(0, end), socket }); }
    });
    socket.on('error', fail);
  });
}

const vmhwm = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${G.proc.pid}/status`, 'utf8'))[1]) * 1024;

describe('refused before the body', () => {
  test('no token, a malformed one, an altered signature, a wrong audience, no route: at once to a client that waits for 100 Continue', async () => {
    const sig = tok.at(-10) === 'A' ? 'B' : 'A';
    const altered = tok.slice(0, -10) + sig + tok.slice(-9);
    for (const [t, check] of [[null, 'missing'], ['nonsense', 'malformed'], [altered, 'signature']]) {
      const { head, socket } = await headOnly('/a/upload', { token: t });
      socket.destroy();
      assert.ok(head, `an answer before the body (${check})`);
      assert.match(head, /^HTTP\/1\.1 401 /);
      assert.match(head, /WWW-Authenticate: Bearer/i);
    }
    // Route b's own key set, fetched by a first request (a token whose check needs the keys
    // fetched is left to the handler, after the body): then b's audience is refused early too.
    assert.equal((await get('/b/warm', tok)).status, 401);
    const { head, socket } = await headOnly('/b/upload', { token: tok });
    socket.destroy();
    assert.match(head ?? '', /^HTTP\/1\.1 401 /, 'route b does not accept its audience');
    const none = await headOnly('/nowhere', { token: tok });
    none.socket.destroy();
    assert.match(none.head ?? '', /^HTTP\/1\.1 404 /, 'no route: 404 before the body');
    assert.ok(!rec.seen.some((x) => x.path.endsWith('/upload')), 'nothing reached the upstream');
  });

  test('bodies sent along without a valid token are dropped as they come, not held: 401 after each', async () => {
    const before = vmhwm();
    const big = 'x'.repeat(7_000_000);
    const all = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      request(`${G.url}/a/big-${i}`, { method: 'POST', body: big, headers: { 'Content-Type': 'text/plain', ...(i % 2 ? { Authorization: 'Bearer nonsense' } : {}) } })));
    assert.deepEqual(all.map((r) => r.status), Array(8).fill(401));
    assert.equal(all[0].json.failed_check, 'missing');
    assert.equal(all[1].json.failed_check, 'malformed');
    const grew = vmhwm() - before;
    assert.ok(grew < 24 * 1024 * 1024, `the gateway's peak memory grew by ${grew} bytes for 56 MB of refused bodies`);
    assert.ok(!rec.seen.some((x) => x.path.startsWith('/a/big-')));
  });

  test('a valid token: the gateway waits for the body and passes it on', async () => {
    const body = JSON.stringify({ hello: 'world' });
    const { head, socket } = await headOnly('/a/upload-ok', { token: tok, length: body.length, wait: 300, expect: false });
    assert.equal(head, null, 'no answer before the body');
    const answer = new Promise((ok) => { let got = ''; socket.on('data', (b) => { got += b; if (got.includes('"ok":true')) ok(got); }); });
    socket.write(body);
    assert.match(await answer, /^HTTP\/1\.1 201 /);
    socket.destroy();
    assert.equal(lastSeen().path, '/a/upload-ok');
    assert.equal(lastSeen().body, body);
  });
});
