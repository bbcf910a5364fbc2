// `agentid gateway` against real `agentid issuer`s and scripted upstreams: jwtAuth refusals, each
// with its failed_check and WWW-Authenticate; valid agent tokens proxied to a recording API without
// the token (unless passthrough) and with claims as headers; the seed 003 agent rule (allowed agent,
// denied other app); an LLM route streaming SSE through piece by piece; CORS preflight; local rate
// limit; upstream timeout and unreachable; RFC 9728 metadata and the MCP 401's resource_metadata;
// reload on SIGHUP and on file change (a broken file keeps the old config); FILE:LINE errors.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID, createPublicKey } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import { cpus } from 'node:os';
import { initDirectory, startIssuer, start, run, demo, decodeJwt, request, freePort } from './harness.mjs';
import { token, ok, saveDirectory, signJwt, waitFor, TOKEN_EXCHANGE_SCOPE, CLIENT_ASSERTION_TYPE } from './tokens.mjs';
import { startRecorder } from './sidecar.mjs';
import { appToken, jwtAuthYaml, writeConfig } from './gateway-setup.mjs';

const GW_URI = 'api://gateway-api';
let dirA, dirB, issA, issB, issOld, issFuture, dA, rec, llm, G, cfgFile, closedPort, tinyMcp;
const tok = {};

/** A scripted OpenAI-compatible upstream: answers chat completions with SSE in three pieces and
 *  sends the last ones only after release() (or after 5 s, noting that it had to wait). */
async function startLlm() {
  const seen = [];
  const state = { release: () => {}, releasedInTime: null };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      seen.push({ method: req.method, path: req.url, headers: req.headers, body, port: req.socket.remotePort });
      if (!req.url.endsWith('/chat/completions')) {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ object: 'list', data: [{ id: 'gpt-test' }] }));
        return;
      }
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write('data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n');
      const gate = new Promise((r) => { state.release = () => r(true); });
      state.releasedInTime = await Promise.race([gate, new Promise((r) => setTimeout(() => r(false), 5000))]);
      res.write('data: {"choices":[{"delta":{"content":"lo"}}]}\n\n');
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `127.0.0.1:${srv.address().port}`, seen, state,
    close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }) };
}

/** A minimal stdio MCP server (newline-delimited JSON-RPC): one tool, ping, answering its pid. */
const TINY_MCP = `import readline from 'node:readline';
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const m = JSON.parse(line);
  if (m.id === undefined) return;
  const results = {
    initialize: () => ({ protocolVersion: m.params.protocolVersion, capabilities: { tools: {} },
      serverInfo: { name: 'tiny', version: '1' } }),
    'tools/list': () => ({ tools: [{ name: 'ping', inputSchema: { type: 'object' } }] }),
    'tools/call': () => ({ content: [{ type: 'text', text: 'pong ' + process.pid }] }),
  };
  const out = results[m.method] ? { result: results[m.method]() } : { error: { code: -32601, message: 'no' } };
  process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id: m.id, ...out }) + '\\n');
});
`;

/** A request that records each body piece as it arrives. */
function streamRequest(url, { method = 'GET', headers = {}, body, onChunk } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => { chunks.push(c.toString()); onChunk?.(c.toString(), chunks.length); });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, chunks, text: chunks.join('') }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('answer cut short')));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const bearer = (t) => (t ? { Authorization: `Bearer ${t}` } : {});
const get = (path, t, headers = {}) => request(`${G.url}${path}`, { headers: { ...bearer(t), ...headers } });

/** The gateway configuration, as a user would write it. */
function configYaml({ extraRoutes = '', mcpRules = ["mcp.tool.name == 'ping'"] } = {}) {
  const v1 = `${issA.authority}/`;
  const jwks = `${issA.url}/${dA.tenant}/discovery/v2.0/keys`;
  const auth = jwtAuthYaml(issA, dA, GW_URI, v1);
  return `# agentid gateway test configuration
binds:
- port: 0
  listeners:
  - name: main
    routes:
    - name: api
      matches: [{path: {pathPrefix: /api}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth}
        claimsToHeaders: {x-user-oid: oid, x-app-id: appid}
    - name: pass
      matches: [{path: {pathPrefix: /pass}}]
      backends: [{url: "${rec.url}"}]
      policies:
        ${auth}
        backendAuth: {passthrough: {}}
    - name: seed003
      matches: [{path: {pathPrefix: /agent-only}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        ${auth}
        authorization:
          rules:
          - "jwt.appid == '${dA.agent.app_id}' && '11' in jwt.xms_act_fct.split(' ')"
    - name: v2-agent
      matches: [{path: {pathPrefix: /v2-agent-only}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth:
          issuer: "${issA.authority}/v2.0"
          audiences: ["${dA.api.app_id}"]
          jwks: {url: "${jwks}"}
        authorization:
          rules:
          - require: "jwt.azp == '${dA.agent.app_id}'"
          - "'11' in jwt.xms_act_fct.split(' ')"
    - name: wrong-issuer
      matches: [{path: {pathPrefix: /wrong-issuer}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        jwtAuth: {issuer: "https://login.example.invalid/tenant/", jwks: {url: "${jwks}"}}
    - name: llm
      matches: [{path: {pathPrefix: /llm}}]
      backends:
      - ai: {name: local, provider: {openAI: {model: gpt-test}}, hostOverride: "${llm.url}"}
      policies:
        ${auth}
        cors:
          allowOrigins: ["http://localhost:3003"]
          allowHeaders: [authorization, content-type]
          allowMethods: [GET, POST]
          exposeHeaders: [x-request-id]
          maxAge: 100s
    - name: mcp
      matches: [{path: {exact: /mcp}}]
      backends:
      - mcp:
          targets:
          - name: nowhere
            mcp: {host: "http://127.0.0.1:${closedPort}/mcp"}
      resourceMetadata: {scopesSupported: ["${GW_URI}/.default"]}
      policies:
        ${auth}
    - name: mcp-local
      matches: [{path: {exact: /mcp-local}}]
      backends:
      - mcp:
          targets:
          - name: tiny
            stdio: {cmd: "${process.execPath}", args: ["${tinyMcp}"]}
      policies:
        ${auth}
        mcpAuthorization:
          rules: [${mcpRules.map((r) => JSON.stringify(r)).join(', ')}]
    - name: limited
      matches: [{path: {pathPrefix: /limited}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies:
        localRateLimit: [{maxTokens: 2, tokensPerFill: 1, fillInterval: 60s}]
    - name: slow
      matches: [{path: {pathPrefix: /hang}}]
      backends: [{host: "${rec.url.slice(7)}"}]
      policies: {timeout: {requestTimeout: 500ms}}
    - name: down
      matches: [{path: {pathPrefix: /down}}]
      backends: [{host: "127.0.0.1:${closedPort}"}]
${extraRoutes}`;
}

async function agentToken(iss, dir, d, scope) {
  const t1 = await appToken(iss, dir, d, TOKEN_EXCHANGE_SCOPE, { fmi_path: d.agent.app_id });
  return ok(await token(iss, dir.ca, { grant_type: 'client_credentials', client_id: d.agent.app_id,
    client_assertion_type: CLIENT_ASSERTION_TYPE, client_assertion: t1, scope })).access_token;
}

before(async () => {
  dirA = initDirectory();
  dirB = initDirectory();
  // A v1 API, as the seed's MCP server and Microsoft Graph-style apps are: tokens carry appid.
  const j = dirA.json();
  j.applications.push({ name: 'Gateway API', app_id: randomUUID(), object_id: randomUUID(),
    identifier_uris: [GW_URI], scopes: ['Gateway.Use'], app_roles: ['Gateway.Invoke'], access_token_version: 1 });
  saveDirectory(dirA, j);
  dA = demo(dirA.json());
  const dB = demo(dirB.json());
  issA = await startIssuer(dirA);
  issB = await startIssuer(dirB);
  // A's keys and URL, with clocks two hours behind and ahead.
  const shifted = (offset) => start(['issuer', '--dir', dirA.dir, '--public-url', issA.url],
    { tls: true, ca: dirA.ca, env: { AGENTID_TIME_OFFSET: offset } });
  issOld = await shifted('-7200');
  issFuture = await shifted('7200');
  for (const s of [issOld, issFuture]) s.tokenUrl = `${s.url}/${dA.tenant}/oauth2/v2.0/token`;

  tok.agent = await agentToken(issA, dirA, dA, `${GW_URI}/.default`);
  tok.blueprint = await appToken(issA, dirA, dA, `${GW_URI}/.default`);
  tok.agentV2 = await agentToken(issA, dirA, dA, `${dA.api.identifier_uris[0]}/.default`);
  tok.blueprintV2 = await appToken(issA, dirA, dA, `${dA.api.identifier_uris[0]}/.default`);
  tok.graph = await appToken(issA, dirA, dA, 'https://graph.microsoft.com/.default');
  tok.expired = await appToken(issOld, dirA, dA, `${GW_URI}/.default`);
  tok.future = await appToken(issFuture, dirA, dA, `${GW_URI}/.default`);
  tok.fromB = await appToken(issB, dirB, dB, 'https://graph.microsoft.com/.default');

  rec = await startRecorder();
  llm = await startLlm();
  closedPort = await freePort();
  cfgFile = join(dirA.root, 'gateway.yaml');
  tinyMcp = join(dirA.root, 'tiny-mcp.mjs');
  writeFileSync(tinyMcp, TINY_MCP);
  writeConfig(cfgFile, configYaml());
  G = await start(['gateway', '--config', cfgFile], { env: { SSL_CERT_FILE: join(dirA.dir, 'tls/ca.crt') } });
});

after(async () => {
  assert.equal(await G?.stop(), 0, 'clean exit (no leaks under ASan)');
  for (const s of [issOld, issFuture, issA, issB]) assert.equal(await s?.stop(), 0);
  await rec?.close();
  await llm?.close();
  dirA?.cleanup();
  dirB?.cleanup();
});

/** Assert a jwtAuth refusal: 401, the failed check in the body and in WWW-Authenticate. */
function refused(r, check, detail) {
  assert.equal(r.status, 401, r.text);
  assert.match(r.headers['content-type'], /^application\/json/);
  assert.equal(r.json.error, 'invalid_token');
  assert.equal(r.json.failed_check, check, r.text);
  assert.ok(r.json.error_description.startsWith(`${check}: `), r.json.error_description);
  if (detail) assert.match(r.json.error_description, detail);
  const h = r.headers['www-authenticate'];
  if (check === 'missing') assert.equal(h, 'Bearer');
  else assert.equal(h, `Bearer error="invalid_token", error_description="${r.json.error_description}"`);
}

describe('jwtAuth refusals (strict by default)', () => {
  test('missing: no token, or another scheme', async () => {
    refused(await get('/api/x'), 'missing');
    refused(await get('/api/x', null, { Authorization: 'Basic dXNlcjpwYXNz' }), 'missing');
  });

  test('expired: a token from the issuer two hours behind', async () => {
    assert.ok(decodeJwt(tok.expired).claims.exp < Date.now() / 1000 - 3000);
    refused(await get('/api/x', tok.expired), 'expired', /^expired: expired \d+ s ago/);
  });

  test('not yet valid: a token from the issuer two hours ahead', async () => {
    refused(await get('/api/x', tok.future), 'not_yet_valid', /not valid for another \d+ s/);
  });

  test('issuer: a route that trusts another issuer', async () => {
    refused(await get('/wrong-issuer/x', tok.agent), 'issuer', /is not https:\/\/login\.example\.invalid/);
  });

  test('audience: a Microsoft Graph token', async () => {
    refused(await get('/api/x', tok.graph), 'audience', /graph\.microsoft\.com/);
  });

  test('signature: a second issuer\'s token (unknown key)', async () => {
    refused(await get('/api/x', tok.fromB), 'signature', /no key/);
  });

  test('signature: alg none, and HS256 keyed with the issuer\'s public key', async () => {
    const { header, claims } = decodeJwt(tok.agent);
    refused(await get('/api/x', signJwt({ ...header, alg: 'none' }, claims)), 'signature', /alg not allowed/);
    const keys = (await request(`${issA.url}/${dA.tenant}/discovery/v2.0/keys`, { ca: dirA.ca })).json.keys;
    const jwk = keys.find((k) => k.kid === header.kid);
    const pem = createPublicKey({ key: { kty: jwk.kty, n: jwk.n, e: jwk.e }, format: 'jwk' })
      .export({ type: 'spki', format: 'pem' });
    refused(await get('/api/x', signJwt({ ...header, alg: 'HS256' }, claims, pem)), 'signature', /alg not allowed/);
  });

  test('signature: a tampered payload', async () => {
    const [h, , s] = tok.agent.split('.');
    const claims = { ...decodeJwt(tok.agent).claims, appid: dA.blueprint.app_id };
    const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
    refused(await get('/api/x', forged), 'signature', /signature does not verify/);
  });

  test('malformed: not a JWT', async () => {
    refused(await get('/api/x', 'not-a-jwt'), 'malformed');
  });

  test('no token text in the logs', () => {
    assert.ok(!G.logs().includes(tok.agent.split('.')[2]), 'no signature in the logs');
    assert.ok(!/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/.test(G.logs()), 'no JWT in the logs');
  });
});

describe('valid tokens reach the upstream', () => {
  test('the agent token passes; the upstream sees no Authorization, claims as headers, X-Forwarded-*', async () => {
    const r = await get('/api/items?q=1&x=%2F', tok.agent, {
      'x-user-oid': 'spoofed', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      Connection: 'keep-alive, X-Hop', 'X-Hop': 'drop me', 'X-Keep': 'keep me',
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers['x-recorder'], 'yes');
    const seen = rec.last();
    assert.equal(seen.path, '/api/items');
    assert.deepEqual(seen.query, { q: '1', x: '/' });
    assert.equal(seen.headers.authorization, undefined);
    const claims = decodeJwt(tok.agent).claims;
    assert.equal(seen.headers['x-user-oid'], claims.oid);
    assert.equal(seen.headers['x-app-id'], dA.agent.app_id);
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${G.port}`);
    assert.equal(seen.headers.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    assert.equal(seen.headers['x-hop'], undefined);
    assert.equal(seen.headers['x-keep'], 'keep me');
    assert.equal(seen.headers.host, rec.url.slice(7));
  });

  test('a POST body is forwarded; a traceparent is generated when none is given', async () => {
    const r = await request(`${G.url}/api/post`, { method: 'POST', body: '{"a":1}',
      headers: { ...bearer(tok.agent), 'Content-Type': 'application/json' } });
    assert.equal(r.status, 201, r.text);
    const seen = rec.last();
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body, '{"a":1}');
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.match(seen.headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  });

  test('backendAuth passthrough forwards the token', async () => {
    const r = await get('/pass/x', tok.agent);
    assert.equal(r.status, 201, r.text);
    assert.equal(rec.last().headers.authorization, `Bearer ${tok.agent}`);
  });

  test('upstream answers pass through: status, body, headers', async () => {
    let r = await get('/api/fail', tok.agent);
    assert.equal(r.status, 500);
    assert.equal(r.text, 'downstream broke');
    r = await get('/api/empty', tok.agent);
    assert.equal(r.status, 204);
    r = await get('/api/binary', tok.agent);
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/octet-stream');
  });

  test('dot segments (plain or %-encoded, / or \\) → 400 before any route', async () => {
    const raw = (path) => new Promise((ok, fail) => {
      http.get({ host: '127.0.0.1', port: G.port, path, headers: bearer(tok.agent), agent: false }, (res) => {
        res.resume();
        res.on('end', () => ok(res.statusCode));
      }).on('error', fail);
    });
    const n = rec.seen.length;
    for (const path of ['/api/../limited', '/api/%2e%2e/limited', '/api/.%2E/x', '/api/./x', '/api/..', '/api\\..\\x'])
      assert.equal(await raw(path), 400, path);
    assert.equal(rec.seen.length, n, 'nothing reached the upstream');
    assert.equal(await raw('/api/..x/.y'), 201, 'dots inside names are fine');
  });

  test('routes: unknown path → 404; /healthz answers', async () => {
    assert.equal((await get('/nothing-here')).status, 404);
    assert.equal((await get('/apix', tok.agent)).status, 404, 'prefix /api does not match /apix');
    assert.equal((await get('/healthz')).text, 'Healthy');
  });
});

describe('authorization rules', () => {
  test('seed 003: the agent (v1 appid, xms_act_fct 11) passes', async () => {
    const c = decodeJwt(tok.agent).claims;
    assert.equal(c.appid, dA.agent.app_id);
    assert.ok(c.xms_act_fct.split(' ').includes('11'));
    const r = await get('/agent-only/tools', tok.agent);
    assert.equal(r.status, 201, r.text);
  });

  test('seed 003: another app (the blueprint) → 403 authorization failed', async () => {
    const r = await get('/agent-only/tools', tok.blueprint);
    assert.equal(r.status, 403);
    assert.equal(r.text, 'authorization failed');
  });

  test('v2 tokens: the same rule written with azp', async () => {
    assert.equal((await get('/v2-agent-only/x', tok.agentV2)).status, 201);
    const r = await get('/v2-agent-only/x', tok.blueprintV2);
    assert.equal(r.status, 403);
    assert.equal(r.text, 'authorization failed');
  });
});

describe('LLM route', () => {
  test('SSE passes through piece by piece; the model is set; the prefix maps to the chat path', async () => {
    let firstAt = null;
    const r = await streamRequest(`${G.url}/llm`, {
      method: 'POST', body: JSON.stringify({ model: 'anything', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
      headers: { ...bearer(tok.agent), 'Content-Type': 'application/json' },
      onChunk: (c, n) => { if (n === 1) { firstAt = c; llm.state.release(); } },
    });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/event-stream/);
    assert.match(firstAt, /"Hel"/);
    assert.ok(!firstAt.includes('[DONE]'), 'the first piece came alone');
    assert.equal(llm.state.releasedInTime, true, 'the client had the first piece before the upstream sent the last');
    assert.match(r.text, /"lo"[\s\S]*data: \[DONE\]/);
    const seen = llm.seen.at(-1);
    assert.equal(seen.path, '/v1/chat/completions');
    assert.equal(JSON.parse(seen.body).model, 'gpt-test');
    assert.equal(seen.headers.authorization, undefined);
  });

  test('other paths under the prefix go to the provider as they are; connections are kept alive', async () => {
    const r = await get('/llm/v1/models?x=%20', tok.agent);
    assert.equal(r.status, 200, r.text);
    assert.equal(llm.seen.at(-1).path, '/v1/models?x=%20');
    // Upstream connections are kept per event loop (one per CPU), and a client's connection may
    // land on any loop: more requests than loops, one connection each, must share upstream ones.
    const loops = cpus().length, n = 2 * loops + 2, ports = new Set();
    for (let i = 0; i < n; i++) {
      assert.equal((await get('/llm/v1/models', tok.agent)).status, 200);
      ports.add(llm.seen.at(-1).port);
    }
    assert.ok(ports.size <= loops, `${n} requests came on ${ports.size} upstream connections (${loops} loops)`);
  });

  test('CORS preflight is answered by the gateway, without a token', async () => {
    const r = await request(`${G.url}/llm/v1/chat/completions`, { method: 'OPTIONS', headers: {
      Origin: 'http://localhost:3003', 'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization, content-type' } });
    assert.equal(r.status, 200);
    assert.equal(r.headers['access-control-allow-origin'], 'http://localhost:3003');
    assert.equal(r.headers['access-control-allow-methods'], 'GET, POST');
    assert.equal(r.headers['access-control-allow-headers'], 'authorization, content-type');
    assert.equal(r.headers['access-control-max-age'], '100');
    const n = llm.seen.length;
    const bad = await request(`${G.url}/llm`, { method: 'OPTIONS', headers: {
      Origin: 'http://evil.example', 'Access-Control-Request-Method': 'POST' } });
    assert.equal(bad.headers['access-control-allow-origin'], undefined);
    assert.equal(llm.seen.length, n, 'preflights never reach the upstream');
    // Actual requests carry the CORS headers too, refusals included.
    const r401 = await get('/llm', null, { Origin: 'http://localhost:3003' });
    assert.equal(r401.status, 401);
    assert.equal(r401.headers['access-control-allow-origin'], 'http://localhost:3003');
    assert.equal(r401.headers['access-control-expose-headers'], 'x-request-id');
  });
});

describe('limits and upstream failures', () => {
  test('local rate limit: the third request in a minute → 429 with x-ratelimit-*', async () => {
    const a = await get('/limited/a');
    assert.equal(a.status, 201);
    assert.equal(a.headers['x-ratelimit-limit'], '2');
    assert.equal(a.headers['x-ratelimit-remaining'], '1');
    assert.equal((await get('/limited/b')).status, 201);
    const c = await get('/limited/c');
    assert.equal(c.status, 429);
    assert.equal(c.text, 'rate limit exceeded');
    assert.equal(c.headers['x-ratelimit-remaining'], '0');
    assert.ok(Number(c.headers['x-ratelimit-reset']) > 0);
  });

  test('upstream timeout → 504; unreachable → 502', async () => {
    const t0 = Date.now();
    const r = await get('/hang/x');
    assert.equal(r.status, 504, r.text);
    assert.ok(Date.now() - t0 < 3000);
    assert.equal((await get('/down/x')).status, 502);
  });
});

describe('MCP authorization discovery (RFC 9728)', () => {
  test('the protected-resource document, without a token, CORS *', async () => {
    const r = await get('/.well-known/oauth-protected-resource/mcp');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['access-control-allow-origin'], '*');
    assert.deepEqual(r.json, {
      resource: `${G.url}/mcp`, authorization_servers: [`${issA.authority}/`],
      bearer_methods_supported: ['header'], scopes_supported: [`${GW_URI}/.default`],
    });
    const api = await get('/.well-known/oauth-protected-resource/api/x');
    assert.equal(api.json.resource, `${G.url}/api/x`);
    assert.equal((await get('/.well-known/oauth-protected-resource/limited')).status, 404, 'no jwtAuth there');
  });

  test('an MCP route\'s 401 names the metadata', async () => {
    const r = await request(`${G.url}/mcp`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 401);
    const meta = `resource_metadata="${G.url}/.well-known/oauth-protected-resource/mcp"`;
    assert.equal(r.headers['www-authenticate'], `Bearer ${meta}`);
    const e = await request(`${G.url}/mcp`, { method: 'POST', body: '{}', headers: bearer(tok.expired) });
    assert.equal(e.json.failed_check, 'expired');
    assert.ok(e.headers['www-authenticate'].startsWith('Bearer error="invalid_token", error_description="expired: '));
    assert.ok(e.headers['www-authenticate'].endsWith(`, ${meta}`));
  });
});

describe('reload', () => {
  const added = `    - name: added
      matches: [{path: {exact: /added}}]
      backends: [{host: "${'REC'}"}]
`;
  test('SIGHUP: a new route appears; a broken file keeps the old configuration', async () => {
    assert.equal((await get('/added')).status, 404);
    writeConfig(cfgFile, configYaml({ extraRoutes: added.replace('REC', rec.url.slice(7)) }));
    G.proc.kill('SIGHUP');
    assert.ok(await waitFor(async () => (await get('/added')).status === 201), 'route added');
    assert.equal((await get('/api/x', tok.agent)).status, 201, 'old routes still there');

    writeConfig(cfgFile, `${configYaml()}    - name: broken\n      backends: [{nope: 1}]\n`);
    G.proc.kill('SIGHUP');
    assert.ok(await waitFor(() => /config_invalid.*keeping the previous configuration.*gateway\.yaml:\d+: backends/.test(G.logs())),
      G.logs().slice(-2000));
    assert.equal((await get('/added')).status, 201, 'the old configuration stays');
  });

  test('a changed file is picked up without a signal', async () => {
    writeConfig(cfgFile, configYaml());
    assert.ok(await waitFor(async () => (await get('/added')).status === 404, 5000), 'route removed');
    assert.equal((await get('/api/x', tok.agent)).status, 201);
  });

  /** One JSON-RPC request to the stdio MCP route. */
  const mcp = (body, sid) => request(`${G.url}/mcp-local`, { method: 'POST', body: JSON.stringify(body), headers: {
    ...bearer(tok.agent), 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream',
    ...(sid ? { 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': '2025-06-18' } : {}) } });
  const rpcResult = (r) => {
    const text = r.text.includes('data:') ? r.text.split('\n').find((l) => l.startsWith('data:')).slice(5) : r.text;
    return JSON.parse(text).result;
  };
  const ping = async (sid) => {
    const r = await mcp({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'ping', arguments: {} } }, sid);
    return r.status === 200 ? rpcResult(r).content[0].text : r.status;
  };

  test('MCP sessions survive a reload that leaves their route alone, not one that changes it', async () => {
    const init = await mcp({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18',
      capabilities: {}, clientInfo: { name: 't', version: '1' } } });
    assert.equal(init.status, 200, init.text);
    const sid = init.headers['mcp-session-id'];
    assert.ok(sid);
    assert.equal((await mcp({ jsonrpc: '2.0', method: 'notifications/initialized' }, sid)).status, 202);
    const before = await ping(sid);
    assert.match(before, /^pong \d+$/);

    writeConfig(cfgFile, configYaml({ extraRoutes: added.replace('REC', rec.url.slice(7)) }));
    G.proc.kill('SIGHUP');
    assert.ok(await waitFor(async () => (await get('/added')).status === 201));
    assert.equal(await ping(sid), before, 'same session, same stdio child');

    writeConfig(cfgFile, configYaml({ mcpRules: ["mcp.tool.name == 'ping'", "jwt.appid != ''"] }));
    G.proc.kill('SIGHUP');
    assert.ok(await waitFor(async () => (await get('/added')).status === 404));
    assert.equal(await ping(sid), 404, 'the changed route starts with no sessions');
  });

  test('a request in flight keeps its configuration across a reload', async () => {
    const p = streamRequest(`${G.url}/llm`, {
      method: 'POST', body: '{"messages":[]}', headers: { ...bearer(tok.agent), 'Content-Type': 'application/json' },
      onChunk: (c, n) => {
        if (n === 1) {
          writeConfig(cfgFile, configYaml({ extraRoutes: added.replace('REC', rec.url.slice(7)) }));
          G.proc.kill('SIGHUP');
          setTimeout(() => llm.state.release(), 300);
        }
      },
    });
    const r = await p;
    assert.equal(r.status, 200);
    assert.match(r.text, /\[DONE\]/);
    assert.ok(await waitFor(async () => (await get('/added')).status === 201));
  });
});

describe('start-up', () => {
  const bad = (name, text) => {
    const f = join(dirA.root, name);
    writeFileSync(f, text);
    return f;
  };

  test('a bad file stops start-up with FILE:LINE: reason', () => {
    const f = bad('bad1.yaml', 'binds:\n- port: 0\n  listeners:\n  - routes:\n    - name: r\n      backends: [{host: 127.0.0.1:1}]\n      policies:\n        jwtauth: {}\n');
    const r = run(['gateway', '--config', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad1\.yaml:8: policies: unknown or unsupported key 'jwtauth'/);
  });

  test('a CEL error names the rule\'s line and column', () => {
    const f = bad('bad2.yaml', 'binds:\n- port: 0\n  listeners:\n  - routes:\n    - backends: [{host: 127.0.0.1:1}]\n      policies:\n        authorization:\n          rules: ["jwt.sub == (1"]\n');
    const r = run(['gateway', '--config', f]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad2\.yaml:8:\d+: authorization: /);
  });

  test('YAML syntax errors, non-loopback binds, usage', () => {
    let r = run(['gateway', '--config', bad('bad3.yaml', 'binds: [\n  - port: 1\n   x: :')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad3\.yaml:\d+: /);
    r = run(['gateway', '--config', bad('bad4.yaml', 'binds:\n- port: 0\n  address: 0.0.0.0\n  listeners: []\n')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /bad4\.yaml:2: .*allowNonLoopback/);
    r = run(['gateway']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--config FILE is required/);
    assert.equal(run(['gateway', '--help']).code, 0);
  });
});
