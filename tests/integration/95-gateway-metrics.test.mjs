// `agentid gateway` config.statsAddr and config.readinessAddr, as agentgateway has them:
// Prometheus metrics at /metrics (agentgateway_requests_total, agentgateway_request_duration_seconds)
// counted per bind, route, method and status, and readiness at /healthz/ready; both on their own
// address, never on the gateway's port; bad addresses stop start-up.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { start, run, request, distinctPorts } from './harness.mjs';
import { startRecorder } from './sidecar.mjs';

let rec, G, dir, statsPort, readyPort;

before(async () => {
  rec = await startRecorder();
  dir = mkdtempSync(join(tmpdir(), 'agentid-metrics-'));
  [statsPort, readyPort] = await distinctPorts(2);
  const up = rec.url.slice(7);
  writeFileSync(join(dir, 'gateway.yaml'), `config:
  statsAddr: "127.0.0.1:${statsPort}"
  readinessAddr: ${readyPort}
binds:
- port: 0
  listeners:
  - routes:
    - name: api
      matches: [{path: {pathPrefix: /api}}]
      backends: [{host: "${up}"}]
    - name: 'locked "in"'
      matches: [{path: {pathPrefix: /locked}}]
      backends: [{host: "${up}"}]
      policies:
        jwtAuth: {issuer: "https://issuer.example", audiences: ["x"], jwks: {url: "http://${up}/keys"}}
`);
  G = await start(['gateway', '--config', join(dir, 'gateway.yaml')]);
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  await rec?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The metrics text parsed: Map of 'name{labels}' → number. */
async function scrape() {
  const r = await request(`http://127.0.0.1:${statsPort}/metrics`);
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const m = new Map();
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    m.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return { m, text: r.text };
}

/** A request with a method of WebDAV's, sent as it is. */
function rawRequest(port, head) {
  return new Promise((ok, fail) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(head));
    let got = '';
    s.on('data', (b) => { got += b; if (got.includes('\r\n\r\n')) { s.destroy(); ok(got); } });
    s.on('error', fail);
  });
}

test('requests are counted by bind, route, method and status, with a latency histogram', async () => {
  for (let i = 0; i < 5; i++) assert.equal((await request(`${G.url}/api/x${i}`)).status, 201);
  for (let i = 0; i < 2; i++) assert.equal((await request(`${G.url}/api/y`, { method: 'POST', body: '{}' })).status, 201);
  for (let i = 0; i < 3; i++) assert.equal((await request(`${G.url}/locked/z`)).status, 401);
  assert.equal((await request(`${G.url}/nowhere`)).status, 404);
  const answer = await rawRequest(G.port, 'PROPFIND /api/odd HTTP/1.1\r\nHost: x\r\n\r\n');
  assert.match(answer, /^HTTP\/1\.1 201 /);

  const { m, text } = await scrape();
  const b = `bind="${G.port}"`;
  assert.equal(m.get(`agentgateway_requests_total{${b},route="api",method="GET",status="201"}`), 5);
  assert.equal(m.get(`agentgateway_requests_total{${b},route="api",method="POST",status="201"}`), 2);
  assert.equal(m.get(`agentgateway_requests_total{${b},route="locked \\"in\\"",method="GET",status="401"}`), 3,
    'a route name with quotes, escaped');
  assert.equal(m.get(`agentgateway_requests_total{${b},route="",method="GET",status="404"}`), 1, 'no route: route ""');
  assert.equal(m.get(`agentgateway_requests_total{${b},route="api",method="OTHER",status="201"}`), 1,
    'a method of the client\'s own makes no series of its own');
  assert.ok(!text.includes('PROPFIND'));

  const labels = `${b},route="api",method="GET",status="201"`;
  assert.equal(m.get(`agentgateway_request_duration_seconds_count{${labels}}`), 5);
  assert.equal(m.get(`agentgateway_request_duration_seconds_bucket{${labels},le="+Inf"}`), 5);
  const les = ['0.005', '0.01', '0.025', '0.05', '0.1', '0.25', '0.5', '1', '2.5', '5', '10', '+Inf'];
  const counts = les.map((le) => m.get(`agentgateway_request_duration_seconds_bucket{${labels},le="${le}"}`));
  assert.ok(counts.every((c, i) => Number.isInteger(c) && (i === 0 || c >= counts[i - 1])), `cumulative: ${counts}`);
  const sum = m.get(`agentgateway_request_duration_seconds_sum{${labels}}`);
  assert.ok(sum > 0 && sum < 5, `the durations' sum in seconds: ${sum}`);
  assert.match(text, /# TYPE agentgateway_requests_total counter/);
  assert.match(text, /# TYPE agentgateway_request_duration_seconds histogram/);

  // counters only grow
  assert.equal((await request(`${G.url}/api/again`)).status, 201);
  const after1 = (await scrape()).m;
  assert.equal(after1.get(`agentgateway_requests_total{${labels}}`), 6);
});

test('readiness on readinessAddr; neither is served on the gateway\'s own port', async () => {
  const r = await request(`http://127.0.0.1:${readyPort}/healthz/ready`);
  assert.equal(r.status, 200);
  assert.equal(r.text, 'ready');
  assert.equal((await request(`http://127.0.0.1:${statsPort}/nothing`)).status, 404);
  assert.equal((await request(`http://127.0.0.1:${statsPort}/metrics`, { method: 'POST', body: 'x' })).status, 405);
  const own = await request(`${G.url}/metrics`);
  assert.equal(own.status, 404);
  assert.equal(own.text, 'route not found');
});

test('a bad or exposed address stops start-up with FILE:LINE', () => {
  const cases = [
    ['statsAddr: "localhost:9"', /bad\.yaml:2: config\.statsAddr: expected ADDRESS:PORT with a numeric address/],
    ['statsAddr: "127.0.0.1:99999"', /bad\.yaml:2: config\.statsAddr: expected ADDRESS:PORT/],
    ['readinessAddr: "0.0.0.0:15021"', /bad\.yaml:2: config\.readinessAddr 0\.0\.0\.0 is not a loopback address/],
  ];
  for (const [line, want] of cases) {
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, `config:\n  ${line}\nbinds:\n- port: 0\n  listeners:\n  - routes:\n    - backends: [{host: 127.0.0.1:1}]\n`);
    const r = run(['gateway', '--config', f]);
    assert.equal(r.code, 1, line);
    assert.match(r.stderr, want, line);
  }
});
