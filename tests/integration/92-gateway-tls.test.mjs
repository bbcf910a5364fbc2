// `agentid gateway` serving HTTPS itself: a listener with `protocol: HTTPS` and
// `tls: {cert, key}` (agentgateway's listener shape). Tokens are checked and requests proxied
// as over HTTP; the URLs the gateway hands out (RFC 9728 metadata, the 401's
// resource_metadata, X-Forwarded-Proto) say https; a bad certificate or key stops start-up
// with FILE:LINE; a reload with a new certificate and key serves them to new connections
// (rotation without a restart), but cannot switch a running port between HTTP and HTTPS.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import tls from 'node:tls';
import { initDirectory, startIssuer, start, demo, request, run, waitFor, freePort } from './harness.mjs';
import { appToken, jwtAuthYaml, writeConfig } from './gateway-setup.mjs';
import { startRecorder } from './sidecar.mjs';

let dir, iss, d, rec, G, cfgFile, tok, closedPort;

function configYaml({ protocol = 'HTTPS', tls = 'tls: {cert: gw.crt, key: gw.key}' } = {}) {
  const auth = jwtAuthYaml(iss, d, d.api.app_id);
  return `binds:
- port: 0
  listeners:
  - name: secure
    protocol: ${protocol}
    ${tls}
    routes:
    - name: api
      matches: [{path: {pathPrefix: /api}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth}
    - name: mcp
      matches: [{path: {exact: /mcp}}]
      backends:
      - mcp:
          targets:
          - name: nowhere
            mcp: {host: "http://127.0.0.1:${closedPort}/mcp"}
      policies:
        ${auth}
`;
}

const bearer = (t) => ({ Authorization: `Bearer ${t}` });

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  iss = await startIssuer(dir);
  tok = await appToken(iss, dir, d);
  rec = await startRecorder();
  closedPort = await freePort(); // nothing listens there
  // The issuer's server certificate (127.0.0.1, localhost; signed by the directory's CA), next to
  // the configuration: relative paths are relative to the file.
  copyFileSync(join(dir.dir, 'tls/server.crt'), join(dir.root, 'gw.crt'));
  copyFileSync(join(dir.dir, 'tls/server.key'), join(dir.root, 'gw.key'));
  cfgFile = writeConfig(join(dir.root, 'gateway.yaml'), configYaml());
  G = await start(['gateway', '--config', cfgFile], { tls: true, ca: dir.ca, env: { SSL_CERT_FILE: join(dir.dir, 'tls/ca.crt') } });
});

after(async () => {
  const logs = G?.logs() ?? '';
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  assert.doesNotMatch(logs, /PRIVATE KEY/, 'the key never reaches the log');
  assert.ok(!logs.includes(tok), 'nor a token');
  assert.equal(await iss?.stop(), 0);
  await rec?.close();
  dir?.cleanup();
});

test('HTTPS: a valid token is proxied, X-Forwarded-Proto says https; none is 401', async () => {
  assert.match(G.logs(), /gateway on https:\/\/127\.0\.0\.1:\d+/);
  const r = await request(`${G.url}/api/weather`, { ca: dir.ca, headers: bearer(tok) });
  assert.equal(r.status, 201, r.text);
  assert.equal(rec.last().path, '/api/weather');
  assert.equal(rec.last().headers['x-forwarded-proto'], 'https');
  assert.equal(rec.last().headers.authorization, undefined, 'the token is not passed on');
  const none = await request(`${G.url}/api/weather`, { ca: dir.ca });
  assert.equal(none.status, 401);
  assert.equal(none.json.failed_check, 'missing');
});

test('the metadata and the 401 of an MCP route name https URLs', async () => {
  const m = await request(`${G.url}/.well-known/oauth-protected-resource/mcp`, { ca: dir.ca });
  assert.equal(m.status, 200, m.text);
  assert.equal(m.json.resource, `${G.url}/mcp`);
  assert.ok(G.url.startsWith('https://'));
  const r = await request(`${G.url}/mcp`, { ca: dir.ca, method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
  assert.equal(r.status, 401);
  assert.equal(r.headers['www-authenticate'], `Bearer resource_metadata="${G.url}/.well-known/oauth-protected-resource/mcp"`);
});

test('a client that does not trust the certificate, or speaks plain HTTP, gets no answer', async () => {
  await assert.rejects(request(`${G.url}/api/weather`, { headers: bearer(tok) }), /self[- ]signed|unable to (verify|get)|certificate/i);
  await assert.rejects(request(`http://127.0.0.1:${G.port}/api/weather`, { headers: bearer(tok), timeout: 3000 }));
  const r = await request(`${G.url}/api/weather`, { ca: dir.ca, headers: bearer(tok) });
  assert.equal(r.status, 201, 'and the gateway serves on');
});

test('a reload cannot switch the running port to HTTP: it says so and keeps HTTPS', async () => {
  writeConfig(cfgFile, configYaml({ protocol: 'HTTP', tls: '' }));
  await waitFor(() => /takes effect on restart; 127\.0\.0\.1:\d+ stays HTTPS/.test(G.logs()), 5000, 'the reload warning', () => G.logs());
  const r = await request(`${G.url}/api/weather`, { ca: dir.ca, headers: bearer(tok) });
  assert.equal(r.status, 201);
  writeConfig(cfgFile, configYaml());
});

/* The SHA-256 fingerprint of the certificate the gateway shows a new connection; the socket
 * stays open for later use if keep is set. */
function peerCert(ca, keep = false) {
  return new Promise((ok, fail) => {
    const s = tls.connect({ host: '127.0.0.1', port: G.port, ca, servername: 'localhost' }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      if (!keep) s.end();
      ok({ fp, socket: s });
    });
    s.on('error', fail);
  });
}

/* One GET over an open TLS socket; resolves the status line. */
function getOver(socket, path) {
  return new Promise((ok, fail) => {
    let got = '';
    socket.on('data', (b) => { got += b; if (got.includes('\r\n\r\n')) ok(got.split('\r\n')[0]); });
    socket.on('error', fail);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${tok}\r\n\r\n`);
  });
}

test('a reload with a new certificate: new connections get it, open ones keep theirs, no restart', async () => {
  const dir2 = initDirectory(); // another CA and server certificate
  try {
    copyFileSync(join(dir2.dir, 'tls/server.crt'), join(dir.root, 'gw2.crt'));
    copyFileSync(join(dir2.dir, 'tls/server.key'), join(dir.root, 'gw2.key'));
    const first = await peerCert([dir.ca]);
    const open = await peerCert([dir.ca], true); // a connection from before the reload
    const pid = G.proc.pid;
    const reloaded = () => (G.logs().match(/"tls_reloaded"/g) ?? []).length;
    const n = reloaded();
    writeConfig(cfgFile, configYaml({ tls: 'tls: {cert: gw2.crt, key: gw2.key}' }));
    await waitFor(() => reloaded() > n, 5000, 'tls_reloaded', () => G.logs());
    const second = await peerCert([dir2.ca]);
    assert.notEqual(second.fp, first.fp, 'the new certificate');
    await assert.rejects(peerCert([dir.ca]), /self[- ]signed|unable to (verify|get)|certificate/i, 'the old CA no longer fits');
    const r = await request(`${G.url}/api/weather`, { ca: dir2.ca, headers: bearer(tok) });
    assert.equal(r.status, 201, r.text);
    assert.equal(await getOver(open.socket, '/api/kept'), 'HTTP/1.1 201 Created', 'the open connection serves on');
    open.socket.destroy();
    assert.equal(G.proc.pid, pid);

    // A pair that does not fit is refused by the reload; the running certificate stays.
    writeConfig(cfgFile, configYaml({ tls: 'tls: {cert: gw2.crt, key: gw.key}' }));
    await waitFor(() => /keeping the previous configuration: .*the key is not the certificate's/.test(G.logs()), 5000,
      'config_invalid', () => G.logs());
    assert.equal((await peerCert([dir2.ca])).fp, second.fp);

    writeConfig(cfgFile, configYaml());
    await waitFor(() => reloaded() > n + 1, 5000, 'tls_reloaded back', () => G.logs());
    assert.equal((await peerCert([dir.ca])).fp, first.fp);
  } finally {
    dir2.cleanup();
  }
});

test('bad TLS settings stop start-up with FILE:LINE: reason', () => {
  const bad = (name, opts) => writeConfig(join(dir.root, name), configYaml(opts));
  const cases = [
    ['t1.yaml', { tls: '' }, /t1\.yaml:4: listeners: protocol HTTPS needs tls: \{cert: FILE, key: FILE\}/],
    ['t2.yaml', { protocol: 'HTTP' }, /t2\.yaml:6: listeners\.tls: needs protocol: HTTPS/],
    ['t3.yaml', { protocol: 'TCP', tls: '' }, /t3\.yaml:5: listeners\.protocol: expected HTTP or HTTPS/],
    ['t4.yaml', { tls: 'tls: {cert: gw.crt, key: nope.key}' }, /t4\.yaml:6: listeners\.tls\.key: cannot read .*nope\.key: No such file/],
    ['t5.yaml', { tls: 'tls: {cert: gw.crt, key: ca.key}' }, /t5\.yaml:6: listeners\.tls: the key is not the certificate's/],
    ['t6.yaml', { tls: 'tls: {cert: gw.key, key: gw.key}' }, /t6\.yaml:6: listeners\.tls: not a PEM certificate/],
    ['t7.yaml', { tls: 'tls: {cert: gw.crt, key: gw.key, root: ca.crt}' }, /t7\.yaml:6: listeners\.tls\.root: client certificates \(mTLS\) are not supported/],
    ['t8.yaml', { tls: 'tls: {cert: gw.crt}' }, /t8\.yaml:6: listeners\.tls: key is required/],
  ];
  copyFileSync(join(dir.dir, 'tls/ca.key'), join(dir.root, 'ca.key'));
  copyFileSync(join(dir.dir, 'tls/ca.crt'), join(dir.root, 'ca.crt'));
  for (const [name, opts, want] of cases) {
    const r = run(['gateway', '--config', bad(name, opts)]);
    assert.equal(r.code, 1, `${name}: ${r.stderr}`);
    assert.match(r.stderr, want);
    assert.doesNotMatch(r.stderr, /PRIVATE KEY|BEGIN/, 'no key material in the message');
  }
  // Two listeners on one port must agree.
  const two = configYaml() + `  - name: plain
    routes:
    - name: other
      matches: [{path: {pathPrefix: /other}}]
      backends: [{host: "${rec.url.slice(7)}"}]
`;
  const r = run(['gateway', '--config', writeConfig(join(dir.root, 't9.yaml'), two)]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /t9\.yaml:\d+: listeners: every listener of one bind \(port\) needs the same protocol and tls/);
  assert.ok(readFileSync(join(dir.root, 'gw.key'), 'utf8').includes('PRIVATE KEY'), 'the fixture is a real key');
});
