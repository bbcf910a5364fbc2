// `agentid gateway` as an MCP multiplexer, driven by the official MCP SDK client
// (StreamableHTTPClientTransport) with a real token from `agentid issuer`, in front of two
// upstream MCP servers written with the same SDK: a Streamable HTTP server (http1: echo, add,
// whoami; it records every request's headers) and a stdio server the gateway spawns (local:
// get-time, secret-tool, session_pid, env).
//
// Checked: initialize through the gateway; tools/list merged with "<target>_<tool>" names;
// calls reaching both targets; a tool denied by mcpAuthorization hidden from the list and
// refused on call (HTTP 400, JSON-RPC -32602 "Unknown tool: <name>"); two clients' sessions
// kept apart (different Mcp-Session-Id, different stdio children, each still working after
// the other's DELETE); the caller's token never reaching an upstream; 401 without a token; the
// same SDK client through a gateway listener with protocol: HTTPS; an `sse:` target (the SDK's
// legacy SSEServerTransport) beside a Streamable HTTP one: listed, called, one upstream stream
// per client session ended with it, a new one after the server forgot the session or restarted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { demo, freePort, initDirectory, request, start, startIssuer } from '../integration/harness.mjs';
import { ok, token } from '../integration/tokens.mjs';

const HERE = import.meta.dirname;
const STDIO_SERVER = join(HERE, 'mcp-servers/stdio-server.mjs');
const SDK = join(HERE, 'node_modules/@modelcontextprotocol/sdk/package.json');

let dir, iss, up, sse, gw, tmp, tok, Client, StreamableHTTPClientTransport, startHttpMcpServer, startSseMcpServer;
const clients = [];

/** Start `agentid gateway --config FILE --listen 127.0.0.1:PORT`; resolves once /healthz answers. */
const startGateway = (config, port) => start(['gateway', '--config', config], { port });

/** A connected SDK client with the caller's token on every request. */
async function connect(name, path = '/mcp') {
  const transport = new StreamableHTTPClientTransport(new URL(`${gw.url}${path}`), {
    requestInit: { headers: { Authorization: `Bearer ${tok}` } },
  });
  const client = new Client({ name, version: '1.0.0' });
  await client.connect(transport);
  clients.push(client);
  return { client, transport };
}

const text = (r) => r.content.find((c) => c.type === 'text')?.text;

/** A raw JSON-RPC POST to the gateway's MCP endpoint. */
function post(body, { sid, auth = tok } = {}) {
  return request(`${gw.url}/mcp`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: {
      'Content-Type': 'application/json', Accept: 'application/json, text/event-stream',
      ...(auth ? { Authorization: `Bearer ${auth}` } : {}),
      ...(sid ? { 'Mcp-Session-Id': sid } : {}),
    },
  });
}

before(async () => {
  if (!existsSync(SDK))
    throw new Error('tests/clients: @modelcontextprotocol/sdk is not installed; run `npm ci` in tests/clients');
  ({ Client } = await import('@modelcontextprotocol/sdk/client/index.js'));
  ({ StreamableHTTPClientTransport } = await import('@modelcontextprotocol/sdk/client/streamableHttp.js'));
  ({ startHttpMcpServer } = await import('./mcp-servers/http-server.mjs'));
  ({ startSseMcpServer } = await import('./mcp-servers/sse-server.mjs'));

  dir = initDirectory();
  iss = await startIssuer(dir);
  const d = demo(dir.json());
  // The caller: the blueprint's app token for the Weather API (any valid token of the issuer).
  const t = ok(await token(iss, dir.ca, {
    grant_type: 'client_credentials', client_id: d.blueprint.app_id, client_secret: d.blueprint.secrets[0],
    scope: `${d.api.identifier_uris[0]}/.default`,
  }));
  tok = t.access_token;
  const disco = await request(`${iss.authority}/v2.0/.well-known/openid-configuration`, { ca: dir.ca });
  const jwks = await request(disco.json.jwks_uri, { ca: dir.ca });
  assert.equal(jwks.status, 200);

  up = await startHttpMcpServer();
  sse = await startSseMcpServer();
  tmp = mkdtempSync(join(tmpdir(), 'agentid-gw-mcp-'));
  writeFileSync(join(tmp, 'jwks.json'), jwks.text);
  const port = await freePort();
  const q = JSON.stringify;   // JSON strings are valid YAML scalars
  const jwtAuth = `jwtAuth: {mode: strict, issuer: ${q(t.claims.iss)}, audiences: [${q(t.claims.aud)}], jwks: {file: jwks.json}}`;
  writeFileSync(join(tmp, 'gateway.yaml'), `
binds:
- port: ${port}
  listeners:
  - name: main
    routes:
    - name: mcp
      matches:
      - path: {exact: /mcp}
      backends:
      - mcp:
          targets:
          - name: http1
            mcp: {url: ${q(up.url)}}
          - name: local
            stdio:
              cmd: ${q(process.execPath)}
              args: [${q(STDIO_SERVER)}]
              env: {GREETING: "hello from the gateway config"}
      policies:
        ${jwtAuth}
        mcpAuthorization:
          rules:
          - deny: "mcp.tool.name == 'secret-tool'"
          - require: ${q(`jwt.iss == '${t.claims.iss}'`)}
    - name: legacy
      matches:
      - path: {exact: /legacy}
      backends:
      - mcp:
          targets:
          - name: old
            sse: {host: 127.0.0.1, port: ${sse.port}}
          - name: http1
            mcp: {url: ${q(up.url)}}
      policies:
        ${jwtAuth}
`);
  gw = await startGateway(join(tmp, 'gateway.yaml'), port);
});

after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (gw) assert.equal(await gw.stop(), 0, `clean exit (no leaks under ASan):\n${gw.logs().slice(-3000)}`);
  await up?.close();
  await sse?.close();
  if (iss) assert.equal(await iss.stop(), 0);
  dir?.cleanup();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('initialize, merged tools/list with prefixes, the denied tool hidden', async () => {
  const { client, transport } = await connect('one');
  assert.ok(transport.sessionId, 'the gateway gave an Mcp-Session-Id');
  assert.equal(client.getServerVersion().name, 'agentid-gateway');
  assert.ok(client.getServerCapabilities().tools);
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert.deepEqual(names, ['http1_add', 'http1_echo', 'http1_whoami', 'local_env', 'local_get-time',
    'local_session_pid']);
  const echo = tools.find((t) => t.name === 'http1_echo');
  assert.equal(echo.description, 'Echoes the text back');
  assert.deepEqual(echo.inputSchema.required, ['text']);
});

test('calls reach both targets, answered with the caller\'s ids', async () => {
  const { client } = await connect('calls');
  assert.equal(text(await client.callTool({ name: 'http1_echo', arguments: { text: 'héllo' } })), 'héllo');
  const sum = await client.callTool({ name: 'http1_add', arguments: { a: 2, b: 40 } });
  assert.equal(text(sum), '42');
  assert.deepEqual(sum.structuredContent, { sum: 42 });
  assert.match(text(await client.callTool({ name: 'local_get-time', arguments: {} })), /^\d{4}-\d{2}-\d{2}T/);
  // the target's env reached the child; "local_session_pid" splits on the first "_"
  assert.equal(text(await client.callTool({ name: 'local_env', arguments: { name: 'GREETING' } })),
    'hello from the gateway config');
  assert.match(text(await client.callTool({ name: 'local_session_pid', arguments: {} })), /^\d+$/);
  assert.ok(await client.ping());
});

test('a denied tool is refused like an unknown one: 400, -32602 "Unknown tool"', async () => {
  const { client, transport } = await connect('denied');
  await assert.rejects(client.callTool({ name: 'local_secret-tool', arguments: {} }),
    (e) => /Unknown tool: local_secret-tool/.test(e.message) && /-32602/.test(e.message));
  for (const name of ['local_secret-tool', 'nosuch_echo']) {
    const r = await post({ jsonrpc: '2.0', id: 'x1', method: 'tools/call', params: { name, arguments: {} } },
      { sid: transport.sessionId });
    assert.equal(r.status, 400, r.text);
    assert.deepEqual(r.json, { jsonrpc: '2.0', id: 'x1', error: { code: -32602, message: `Unknown tool: ${name}` } });
  }
});

test('two clients: separate sessions and children; each works after the other ends', async () => {
  const a = await connect('a');
  const b = await connect('b');
  assert.notEqual(a.transport.sessionId, b.transport.sessionId);
  const pidA = text(await a.client.callTool({ name: 'local_session_pid', arguments: {} }));
  const pidB = text(await b.client.callTool({ name: 'local_session_pid', arguments: {} }));
  assert.notEqual(pidA, pidB, 'one stdio child per client session');
  const upA = JSON.parse(text(await a.client.callTool({ name: 'http1_whoami', arguments: {} }))).sessionId;
  const upB = JSON.parse(text(await b.client.callTool({ name: 'http1_whoami', arguments: {} }))).sessionId;
  assert.notEqual(upA, upB, 'one upstream HTTP session per client session');

  const oldA = a.transport.sessionId;
  await a.transport.terminateSession();              // DELETE
  assert.ok(up.deleted.includes(upA), 'the upstream session ended with it');
  const gone = await post({ jsonrpc: '2.0', id: 1, method: 'tools/list' }, { sid: oldA });
  assert.equal(gone.status, 404);
  await waitGone(Number(pidA));

  assert.equal(text(await b.client.callTool({ name: 'http1_echo', arguments: { text: 'still here' } })), 'still here');
  assert.equal(text(await b.client.callTool({ name: 'local_session_pid', arguments: {} })), pidB);
  await b.transport.terminateSession();
  await waitGone(Number(pidB));
});

test('the caller\'s token never reaches an upstream', async () => {
  const { client } = await connect('token');
  const who = JSON.parse(text(await client.callTool({ name: 'http1_whoami', arguments: {} })));
  assert.equal(who.authorization, null);
  assert.ok(up.seen.length > 0);
  for (const s of up.seen) {
    assert.equal(s.authorization, null, JSON.stringify(s));
  }
  // initialize, notifications/initialized, then requests with the upstream's own session
  assert.ok(up.seen.some((s) => s.rpc === 'initialize' && s.sessionId === null));
  assert.ok(up.seen.some((s) => s.rpc === 'notifications/initialized' && s.sessionId));
  assert.ok(up.seen.some((s) => s.rpc === 'tools/call' && s.sessionId && s.protocolVersion));
  assert.ok(!gw.logs().includes(tok), 'no token in the gateway log');
});

test('an sse target (legacy HTTP+SSE): listed, called, its session per client and ended with it', async () => {
  const a = await connect('sse-a', '/legacy');
  const b = await connect('sse-b', '/legacy');
  const names = (await a.client.listTools()).tools.map((x) => x.name).sort();
  assert.deepEqual(names, ['http1_add', 'http1_echo', 'http1_whoami', 'old_add', 'old_echo', 'old_whoami']);
  const sum = await a.client.callTool({ name: 'old_add', arguments: { a: 2, b: 40 } });
  assert.equal(text(sum), '42');
  assert.deepEqual(sum.structuredContent, { sum: 42 });
  assert.equal(text(await b.client.callTool({ name: 'old_echo', arguments: { text: 'over sse' } })), 'over sse');
  const who = (c) => c.client.callTool({ name: 'old_whoami', arguments: {} }).then((r) => JSON.parse(text(r)));
  const [wa, wb] = [await who(a), await who(b)];
  assert.ok(wa.sessionId && wb.sessionId && wa.sessionId !== wb.sessionId, 'one upstream SSE session per client session');
  assert.equal(wa.authorization, null, 'the caller\'s token does not reach the target');
  assert.ok(sse.seen.every((x) => x.authorization === null));
  assert.ok(sse.sessions().includes(wa.sessionId));

  await a.transport.terminateSession();
  for (let i = 0; i < 100 && !sse.closed.includes(wa.sessionId); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(sse.closed.includes(wa.sessionId), 'the upstream stream ended with the client session');
  assert.equal((await who(b)).sessionId, wb.sessionId, 'the other session is untouched');

  sse.forgetSessions(); // a restarted server: the stream ends, the session is unknown
  const again = await who(b);
  assert.ok(again.sessionId && again.sessionId !== wb.sessionId, 'a new upstream session, transparently');
  await b.transport.terminateSession();
});

test('an sse target that is down: a JSON-RPC error, and the other target still answers', async () => {
  const { client } = await connect('sse-down', '/legacy');
  await sse.close();
  await assert.rejects(client.callTool({ name: 'old_echo', arguments: { text: 'x' } }), /old/);
  assert.equal(text(await client.callTool({ name: 'http1_echo', arguments: { text: 'fine' } })), 'fine');
  sse = await startSseMcpServer({ port: sse.port });
  assert.equal(text(await client.callTool({ name: 'old_echo', arguments: { text: 'back' } })), 'back');
});

test('no token: 401 before any MCP', async () => {
  const r = await post({ jsonrpc: '2.0', id: 1, method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } },
  { auth: null });
  assert.equal(r.status, 401);
});

/* fetch over node:https trusting ca (the SDK takes a fetch; Node's own has no per-call CA). */
const caFetch = (ca) => (url, init = {}) => new Promise((ok, fail) => {
  const headers = Object.fromEntries(new Headers(init.headers ?? {}));
  const req = https.request(new URL(url), { method: init.method ?? 'GET', headers, ca }, (res) => {
    const h = new Headers();
    for (const [k, v] of Object.entries(res.headers)) for (const x of [].concat(v)) h.append(k, x);
    const none = [204, 304].includes(res.statusCode) || init.method === 'HEAD';
    if (none) res.resume();
    ok(new Response(none ? null : Readable.toWeb(res), { status: res.statusCode, headers: h }));
  });
  req.on('error', fail);
  init.signal?.addEventListener('abort', () => req.destroy(new Error('aborted')));
  req.end(init.body ?? undefined);
});

test('the same through an HTTPS listener: the SDK client over TLS, metadata and 401 in https', async () => {
  const tlsDir = mkdtempSync(join(tmpdir(), 'agentid-gw-mcp-tls-'));
  let g;
  try {
    copyFileSync(join(dir.dir, 'tls/server.crt'), join(tlsDir, 'gw.crt'));
    copyFileSync(join(dir.dir, 'tls/server.key'), join(tlsDir, 'gw.key'));
    copyFileSync(join(tmp, 'jwks.json'), join(tlsDir, 'jwks.json'));
    const port = await freePort();
    const plain = readFileSync(join(tmp, 'gateway.yaml'), 'utf8');
    writeFileSync(join(tlsDir, 'gateway.yaml'), plain.replace(/- port: \d+/, `- port: ${port}`)
      .replace('  - name: main\n', '  - name: main\n    protocol: HTTPS\n    tls: {cert: gw.crt, key: gw.key}\n'));
    g = await start(['gateway', '--config', join(tlsDir, 'gateway.yaml')], { port, tls: true, ca: dir.ca });
    assert.ok(g.url.startsWith('https://'));
    const transport = new StreamableHTTPClientTransport(new URL(`${g.url}/mcp`), {
      requestInit: { headers: { Authorization: `Bearer ${tok}` } }, fetch: caFetch(dir.ca),
    });
    const client = new Client({ name: 'tls', version: '1.0.0' });
    await client.connect(transport);
    assert.ok(transport.sessionId);
    const { tools } = await client.listTools();
    assert.ok(tools.some((t) => t.name === 'http1_echo'));
    assert.equal(text(await client.callTool({ name: 'http1_echo', arguments: { text: 'over tls' } })), 'over tls');
    await client.close();
    const meta = await request(`${g.url}/.well-known/oauth-protected-resource/mcp`, { ca: dir.ca });
    assert.equal(meta.json.resource, `${g.url}/mcp`);
    const r = await request(`${g.url}/mcp`, { ca: dir.ca, method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 401);
    assert.equal(r.headers['www-authenticate'], `Bearer resource_metadata="${g.url}/.well-known/oauth-protected-resource/mcp"`);
  } finally {
    if (g) assert.equal(await g.stop(), 0, 'clean exit (no leaks under ASan)');
    rmSync(tlsDir, { recursive: true, force: true });
  }
});

async function waitGone(pid) {
  for (let i = 0; i < 300; i++) {
    try { process.kill(pid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`stdio child ${pid} still running`);
}
