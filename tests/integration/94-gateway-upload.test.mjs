// `agentid gateway` passes large and chunked request bodies upstream as they arrive, holding
// at most a window of each: the upstream sees the first bytes while the client is still
// sending, a slow upstream slows the client down (not the gateway's memory), and the body's
// end, a client that goes away and a body past the cap each reach the upstream as they should.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, randomBytes, generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { start, request, waitFor, sleep, freePort } from './harness.mjs';

let G, up, dir;
const MiB = 1024 * 1024;
const ISS = 'https://issuer.test/t/v2.0', AUD = 'api://upload';
const keys = generateKeyPairSync('rsa', { modulusLength: 2048 });
const b64u = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
const jwks = () => JSON.stringify({ keys: [{ ...keys.publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'RS256', use: 'sig' }] });
function token(claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64u({ alg: 'RS256', typ: 'JWT', kid: 'k1' });
  const body = b64u({ iss: ISS, aud: AUD, iat: now, nbf: now, exp: now + 600, sub: 'uploader', ...claims });
  return `${head}.${body}.${sign('sha256', Buffer.from(`${head}.${body}`), keys.privateKey).toString('base64url')}`;
}

// The upstream: every request's body is hashed as it comes; `seen` is what it got so far.
// /echo answers with what arrived; /hold does not read until released; /refuse answers 403
// at once without reading.
const seen = new Map(); // id -> { bytes, ended, aborted, te, cl }
const tries = new Map(); // id -> requests seen with that x-id
let release = null;
function startUpstream() {
  const srv = http.createServer((req, res) => {
    const id = req.headers['x-id'] || String(seen.size);
    const s = { bytes: 0, ended: false, aborted: false, te: req.headers['transfer-encoding'], cl: req.headers['content-length'] };
    seen.set(id, s);
    const hash = createHash('sha256');
    req.on('aborted', () => { s.aborted = true; });
    req.on('error', () => { s.aborted = true; });
    if (req.url === '/keys.json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(jwks());
      return;
    }
    if (req.url.startsWith('/flaky') || req.url.startsWith('/slowretry')) { // 503 for the first x-fail tries
      const n = (tries.get(id) ?? 0) + 1;
      tries.set(id, n);
      const chunks = [];
      req.on('data', (b) => chunks.push(b));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        if (n <= Number(req.headers['x-fail'] ?? 0)) { res.writeHead(503, { 'content-type': 'text/plain' }); res.end(`try ${n} failed`); return; }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ try: n, sha256: createHash('sha256').update(body).digest('hex') }));
      });
      return;
    }
    if (req.url.startsWith('/answer-first')) { // answers at once, then reads the body slowly
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('answered first');
      req.pause();
      setTimeout(() => { req.on('data', (b) => { s.bytes += b.length; }); req.on('end', () => { s.ended = true; }); req.resume(); }, 500);
      return;
    }
    if (req.url.startsWith('/refuse')) {
      res.writeHead(403, { 'content-type': 'text/plain' });
      res.end('not this one');
      return;
    }
    const read = () => {
      const kept = [];
      req.on('data', (b) => { s.bytes += b.length; hash.update(b); if (req.url.startsWith('/v1/')) kept.push(b); });
      req.on('end', () => {
        s.ended = true;
        let model = null;
        try { model = JSON.parse(Buffer.concat(kept).toString()).model ?? null; } catch { /* not JSON */ }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ bytes: s.bytes, sha256: hash.digest('hex'), te: s.te ?? null, cl: s.cl ?? null, path: req.url, model }));
      });
    };
    if (req.url.startsWith('/hold')) {
      req.pause();
      release = () => { read(); req.resume(); };
    } else {
      read();
    }
  });
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => ok(srv)));
}

// A request whose body the test writes piece by piece; resolves { status, json, text }.
function upload(path, { id, length, headers = {} } = {}) {
  const h = { 'x-id': id, 'content-type': 'application/octet-stream', ...headers };
  if (length !== undefined) h['content-length'] = String(length);
  const req = http.request(`${G.url}${path}`, { method: 'POST', headers: h, agent: false });
  req.setTimeout(15000, () => req.destroy(new Error('no progress in 15 s'))); // a hang fails
  const done = new Promise((ok, fail) => {
    req.on('response', (res) => {
      let text = '';
      res.on('data', (b) => { text += b; });
      res.on('end', () => { let json; try { json = JSON.parse(text); } catch { /* not JSON */ } ok({ status: res.statusCode, text, json }); });
    });
    req.on('error', fail);
  });
  const write = (buf) => new Promise((ok) => { if (req.write(buf)) ok(); else req.once('drain', ok); });
  return { req, done, write };
}

const vmrss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${G.proc.pid}/status`, 'utf8'))[1]) * 1024;

let closedPort;
before(async () => {
  up = await startUpstream();
  closedPort = await freePort(); // nothing listens there
  dir = mkdtempSync(join(tmpdir(), 'agentid-upload-'));
  const host = `127.0.0.1:${up.address().port}`;
  writeFileSync(join(dir, 'keys.json'), jwks());
  writeFileSync(join(dir, 'gateway.yaml'), `binds:
- port: 0
  listeners:
  - routes:
    - name: secure
      matches: [{path: {pathPrefix: /secure}}]
      backends: [{host: "${host}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {file: keys.json}}
    - name: fetched
      matches: [{path: {pathPrefix: /fetched}}]
      backends: [{host: "${host}"}]
      policies:
        jwtAuth: {issuer: "${ISS}", audiences: ["${AUD}"], jwks: {url: "http://${host}/keys.json"}}
    - name: llm
      matches: [{path: {pathPrefix: /llm}}]
      backends: [{ai: {name: local, provider: {openAI: {}}, hostOverride: "http://${host}"}}]
    - name: llm-model
      matches: [{path: {pathPrefix: /model}}]
      backends: [{ai: {name: local, provider: {openAI: {model: set-here}}, hostOverride: "http://${host}"}}]
    - name: flaky
      matches: [{path: {pathPrefix: /flaky}}]
      backends: [{host: "${host}"}]
      policies: {retry: {attempts: 2, codes: [503, 504]}}
    - name: slow-retry
      matches: [{path: {pathPrefix: /slowretry}}]
      backends: [{host: "${host}"}]
      policies: {retry: {attempts: 2, backoff: 150ms, codes: [503]}}
    - name: down
      matches: [{path: {pathPrefix: /down}}]
      backends: [{host: "127.0.0.1:${closedPort}"}]
      policies: {retry: {attempts: 2, codes: [503]}}
    - name: failover
      matches: [{path: {pathPrefix: /failover}}]
      backends: [{host: "127.0.0.1:${closedPort}", weight: 1}, {host: "${host}", weight: 1}]
      policies: {retry: {attempts: 1, codes: [503]}}
    - name: twoways
      matches: [{path: {pathPrefix: /twoways}}]
      backends: [{host: "127.0.0.1:${closedPort}", weight: 1}, {host: "${host}", weight: 1}]
    - name: limited
      matches: [{path: {pathPrefix: /limited}}]
      backends: [{host: "${host}"}]
      policies:
        localRateLimit: [{maxTokens: 1, tokensPerFill: 1, fillInterval: 1h}]
    - name: up
      matches: [{path: {pathPrefix: /}}]
      backends: [{host: "${host}"}]
`);
  G = await start(['gateway', '--config', join(dir, 'gateway.yaml')]);
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  up?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a chunked body arrives whole and still chunked; one with a length keeps its length', async () => {
  const body = randomBytes(3 * MiB + 17);
  const want = createHash('sha256').update(body).digest('hex');
  const c = upload('/echo', { id: 'chunked' });
  for (let i = 0; i < body.length; i += 100000) await c.write(body.subarray(i, i + 100000));
  c.req.end();
  let r = await c.done;
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { bytes: body.length, sha256: want, te: 'chunked', cl: null, path: '/echo', model: null });

  const l = upload('/echo', { id: 'length', length: body.length });
  await l.write(body);
  l.req.end();
  r = await l.done;
  assert.deepEqual(r.json, { bytes: body.length, sha256: want, te: null, cl: String(body.length), path: '/echo', model: null });

  const small = await request(`${G.url}/echo`, { method: 'POST', body: 'x'.repeat(1000), headers: { 'content-length': '1000' } });
  assert.deepEqual(small.json, { bytes: 1000, sha256: createHash('sha256').update('x'.repeat(1000)).digest('hex'), te: null, cl: '1000', path: '/echo', model: null },
    'a small body is sent whole, with its length');
});

test('on a jwtAuth route the token is checked before the body, which then streams', async () => {
  const body = randomBytes(2 * MiB);
  for (const [auth, status] of [[`Bearer ${token()}`, 200], [undefined, 401], [`Bearer ${token({ aud: 'api://other' })}`, 401]]) {
    const c = upload('/secure/echo', { id: `secure-${status}`, headers: auth ? { authorization: auth } : {} });
    c.done.catch(() => {});
    await c.write(body.subarray(0, MiB)).catch(() => {});
    if (status === 200)
      await waitFor(() => (seen.get('secure-200')?.bytes ?? 0) > 0, 5000, 'the upstream to see the start');
    await c.write(body.subarray(MiB)).catch(() => {});
    c.req.end();
    const r = await c.done;
    assert.equal(r.status, status, r.text);
    if (status === 200) assert.equal(r.json.sha256, createHash('sha256').update(body).digest('hex'));
    else assert.equal(seen.get(`secure-${status}`), undefined, 'nothing went upstream');
  }
});

test('a token whose keys are not fetched yet: checked after the body, which then goes whole', async () => {
  const body = randomBytes(MiB);
  const c = upload('/fetched/echo', { id: 'fetched', headers: { authorization: `Bearer ${token()}` } });
  await c.write(body);
  c.req.end();
  const r = await c.done;
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.sha256, createHash('sha256').update(body).digest('hex'));
  assert.equal(r.json.cl, String(MiB), 'read whole first, then sent with its length');
  const again = upload('/fetched/echo', { id: 'fetched-2', headers: { authorization: `Bearer ${token({ sub: 'b' })}` } });
  await again.write(body);
  again.req.end();
  assert.equal((await again.done).json.te, 'chunked', 'with the keys at hand, streamed');
});

test('the upstream gets the first bytes while the client is still sending', async () => {
  const c = upload('/echo', { id: 'early', length: 4 * MiB });
  await c.write(Buffer.alloc(MiB, 1));
  // With the body buffered first, the upstream would see nothing until all 4 MiB were sent.
  await waitFor(() => (seen.get('early')?.bytes ?? 0) >= 512 * 1024, 5000, 'the upstream to see the first MiB');
  assert.equal(seen.get('early').ended, false);
  await c.write(Buffer.alloc(3 * MiB, 2));
  c.req.end();
  const r = await c.done;
  assert.equal(r.json.bytes, 4 * MiB);
});

test('an upstream that does not read: the gateway holds a window of the body, not the body', async () => {
  const before = vmrss();
  const c = upload('/hold', { id: 'held', length: 7 * MiB });
  const body = Buffer.alloc(7 * MiB, 3);
  const writing = (async () => {
    for (let sent = 0; sent < body.length; sent += 256 * 1024) await c.write(body.subarray(sent, sent + 256 * 1024));
  })();
  await sleep(700);
  // The rest waits in the sockets' buffers (the kernel's), or in the client.
  const grew = vmrss() - before;
  assert.ok(grew < 3 * MiB, `the gateway's memory grew by ${grew} bytes while a 7 MiB body waited`);
  assert.equal(seen.get('held').bytes, 0);
  release();
  await writing;
  c.req.end();
  const r = await c.done;
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.bytes, 7 * MiB);
});

test('an upstream that answers without reading: the client gets that answer', async () => {
  const c = upload('/refuse', { id: 'refused', length: 2 * MiB });
  c.write(Buffer.alloc(2 * MiB, 4)).catch(() => {});
  c.req.end();
  const r = await c.done;
  assert.equal(r.status, 403);
  assert.equal(r.text, 'not this one');
  assert.equal((await request(`${G.url}/healthz`)).status, 200);
});

test('an upstream that answers first and reads the body later: the answer follows the body', async () => {
  const c = upload('/answer-first', { id: 'first', length: 6 * MiB });
  for (let i = 0; i < 6; i++) await c.write(Buffer.alloc(MiB, 10));
  c.req.end();
  const r = await c.done;
  assert.equal(r.status, 200);
  assert.equal(r.text, 'answered first');
});

test('a client that goes away mid-body: the upstream sees the body cut short, not complete', async () => {
  const c = upload('/echo', { id: 'gone', length: 4 * MiB });
  c.done.catch(() => {});
  await c.write(Buffer.alloc(MiB, 5));
  await waitFor(() => (seen.get('gone')?.bytes ?? 0) > 0, 5000, 'the upstream to see the start');
  c.req.destroy();
  await waitFor(() => seen.get('gone').aborted, 5000, 'the upstream to see the request aborted');
  assert.equal(seen.get('gone').ended, false);
  assert.equal((await request(`${G.url}/healthz`)).status, 200);
});

test('a chunked body past the cap: 413 for the client, a cut-short body for the upstream', async () => {
  const c = upload('/echo', { id: 'huge' });
  const piece = Buffer.alloc(512 * 1024, 6);
  let status;
  c.done.then((r) => { status = r.status; }, () => { status = 'reset'; });
  try {
    for (let i = 0; i < 18 && status === undefined; i++) await c.write(piece); // 9 MiB > 8 MiB
    c.req.end();
  } catch { /* the gateway may hang up on the rest */ }
  await waitFor(() => status !== undefined, 10000, 'an answer');
  assert.equal(status, 413);
  await waitFor(() => seen.get('huge')?.aborted, 5000, 'the upstream to see the body cut short');
  assert.equal(seen.get('huge').ended, false);
});

test('an LLM route streams a long prompt as it comes, unless it sets the model (then it reads it whole)', async () => {
  const prompt = JSON.stringify({ model: 'asked', messages: [{ role: 'user', content: 'x'.repeat(300 * 1024) }] });
  for (const [path, te, model] of [['/llm', 'chunked', 'asked'], ['/model', null, 'set-here']]) {
    const c = upload(path, { id: `llm${path}`, headers: { 'content-type': 'application/json' } });
    await c.write(prompt.slice(0, 100 * 1024));
    if (te) await waitFor(() => (seen.get(`llm${path}`)?.bytes ?? 0) > 0, 5000, 'the provider to see the start');
    await c.write(prompt.slice(100 * 1024));
    c.req.end();
    const r = await c.done;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.path, '/v1/chat/completions');
    assert.equal(r.json.te, te, path);
    assert.equal(r.json.model, model, path);
    if (te) assert.equal(r.json.sha256, createHash('sha256').update(prompt).digest('hex'));
  }
});

test('a client that waits for 100 Continue gets it, then streams', async () => {
  const c = upload('/echo', { id: 'expect', length: 2 * MiB, headers: { expect: '100-continue' } });
  await new Promise((ok, fail) => { c.req.once('continue', ok); c.req.once('error', fail); c.req.flushHeaders(); });
  await c.write(Buffer.alloc(2 * MiB, 7));
  c.req.end();
  const r = await c.done;
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.bytes, 2 * MiB);
});

test('a streamed request the gateway answers itself (429): its body is dropped, the answer follows', async () => {
  const statuses = [];
  for (const id of ['limited-1', 'limited-2']) {
    const c = upload('/limited/echo', { id });
    await c.write(Buffer.alloc(MiB, 8));
    c.req.end();
    statuses.push((await c.done).status);
  }
  assert.deepEqual(statuses, [200, 429]);
  assert.equal(seen.get('limited-2'), undefined, 'nothing of it went upstream');
  assert.equal((await request(`${G.url}/healthz`)).status, 200);
});

test('stopping with a body on its way: a clean exit, the upstream sees it cut short', async () => {
  const g = await start(['gateway', '--config', join(dir, 'gateway.yaml')]);
  const c = http.request(`${g.url}/hold`, { method: 'POST', headers: { 'x-id': 'stopping', 'content-length': String(7 * MiB) }, agent: false });
  c.on('error', () => {});
  c.write(Buffer.alloc(7 * MiB, 9));
  await waitFor(() => seen.get('stopping'), 5000, 'the upstream to get the request');
  await sleep(300); // the gateway's window full, its connection waiting for room
  assert.equal(await g.stop(), 0, 'clean exit (no leaks under ASan), not a hang');
  release();
  await waitFor(() => seen.get('stopping').aborted, 5000, 'the upstream to see the body cut short');
  assert.equal(seen.get('stopping').ended, false);
});

test('many uploads at once, chunked and with lengths: each arrives whole', async () => {
  const one = async (i) => {
    const body = randomBytes(256 * 1024 + i * 997);
    const c = upload('/echo', { id: `many-${i}`, length: i % 2 ? body.length : undefined });
    for (let k = 0; k < body.length; k += 65536) await c.write(body.subarray(k, k + 65536));
    c.req.end();
    const r = await c.done;
    return r.json?.sha256 === createHash('sha256').update(body).digest('hex');
  };
  const all = await Promise.all(Array.from({ length: 40 }, (_, i) => one(i)));
  assert.deepEqual(all, Array(40).fill(true));
});

test('retry: a listed status is tried again with the same body, up to attempts more times', async () => {
  const body = randomBytes(20000);
  const want = createHash('sha256').update(body).digest('hex');
  const post = (path, id, fail) => request(`${G.url}${path}`, { method: 'POST', body,
    headers: { 'x-id': id, 'x-fail': String(fail), 'content-length': String(body.length) } });
  let r = await post('/flaky/a', 'retry-ok', 2);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { try: 3, sha256: want }, 'the third try, with the same body');
  r = await post('/flaky/b', 'retry-spent', 3);
  assert.equal(r.status, 503, 'tries spent: the last answer goes to the client');
  assert.equal(r.text, 'try 3 failed');
  assert.equal(tries.get('retry-spent'), 3);
  const t0 = Date.now();
  r = await post('/slowretry/c', 'retry-backoff', 2);
  assert.equal(r.json.try, 3);
  assert.ok(Date.now() - t0 >= 300, `two backoffs of 150 ms (${Date.now() - t0} ms)`);
  const before = (G.logs().match(/"upstream_retry"/g) ?? []).length;
  r = await request(`${G.url}/down/x`);
  assert.equal(r.status, 502, 'an upstream that cannot be reached: tried 3 times, then 502');
  await waitFor(() => (G.logs().match(/"upstream_retry"/g) ?? []).length - before === 2, 5000, 'two retries logged');
  // Of two backends, one down: a try that found it down goes to the other, so all 20 pass
  // (with the retry sent to the same backend about half would fail).
  const before2 = (G.logs().match(/"upstream_retry"/g) ?? []).length;
  const codes = [];
  for (let i = 0; i < 20; i++) codes.push((await request(`${G.url}/failover/x${i}`)).status);
  assert.deepEqual(codes, Array(20).fill(200), 'a retry goes to the backend not tried yet');
  const retried = (G.logs().match(/"upstream_retry"/g) ?? []).length - before2;
  assert.ok(retried >= 1 && retried <= 19, `some first tries met the backend that is down (${retried})`);
  const c = upload('/flaky/streamed', { id: 'retry-streamed', headers: { 'x-fail': '1' } });
  await c.write(Buffer.alloc(MiB, 11));
  c.req.end();
  assert.equal((await c.done).status, 503, 'a streamed body is not sent twice');
  assert.equal(tries.get('retry-streamed'), 1);
});

test('of several backends, one found unreachable gets no first tries for a while (no retry needed)', async () => {
  let first502 = -1;
  for (let i = 0; i < 40 && first502 < 0; i++) if ((await request(`${G.url}/twoways/a${i}`)).status === 502) first502 = i;
  assert.ok(first502 >= 0, 'a first try met the backend that is down (half of them do)');
  await waitFor(() => /"backend_down".*twoways.*could not be reached/.test(G.logs()), 5000, 'logged once');
  const codes = [];
  for (let i = 0; i < 20; i++) codes.push((await request(`${G.url}/twoways/b${i}`)).status);
  assert.deepEqual(codes, Array(20).fill(200), 'the next ones all go to the backend that answers');
});
