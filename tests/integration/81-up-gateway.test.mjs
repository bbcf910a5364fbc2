// `agentid up --profile gateway`: seed 003's stack from one command — the issuer with its
// managed-identity endpoint, a sidecar whose only credential is a federated token file that up
// projects (no client secret), two demo MCP servers, and the gateway with jwtAuth on /llm and
// /mcp and the appid + xms_act_fct rule. A user token goes through the sidecar's agent OBO to
// the gateway's MCP tools and LLM; other tokens are kept out; agent.json is the contract for
// `agentid agent`. Also the demo MCP server itself, spoken to in raw JSON-RPC.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { BIN, freePort, request, run, start, demo, decodeJwt, postForm, sleep, waitFor as waitForIt, children, listening, distinctPorts } from './harness.mjs';

const START_MS = 90000;   // ASan builds start slower
const TOKEN_EXCHANGE_APPID = 'fb60f99c-7a34-4190-8149-302f77469936';

let root, dir, ports, up, exited, d, ca, llm;
let stdout = '', stderr = '';
const waitFor = (fn, ms, what) => waitForIt(fn, ms, what, () => `${stdout}\n${stderr}`);
const llmSeen = [];





const local = (port, path = '') => `http://127.0.0.1:${port}${path}`;
const json = (o) => JSON.stringify(o);

/** One MCP message to url; returns the harness response. */
function mcp(url, msg, { token, session, headers = {} } = {}) {
  const h = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream', ...headers };
  if (token) h.Authorization = token.startsWith('Bearer ') ? token : `Bearer ${token}`;
  if (session) h['Mcp-Session-Id'] = session;
  return request(url, { method: 'POST', headers: h, body: typeof msg === 'string' ? msg : json(msg) });
}

const INIT = { jsonrpc: '2.0', id: 1, method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'test', version: '1' } } };

/** initialize + notifications/initialized through the gateway: the session id. */
async function mcpSession(token) {
  const r = await mcp(local(ports.gateway, '/mcp'), INIT, { token });
  assert.equal(r.status, 200, r.text);
  const session = r.headers['mcp-session-id'];
  assert.ok(session, 'the gateway gives a session');
  const n = await mcp(local(ports.gateway, '/mcp'), { jsonrpc: '2.0', method: 'notifications/initialized' }, { token, session });
  assert.equal(n.status, 202);
  return session;
}

/** A user token for the blueprint's access_as_user, from the "agentid CLI" public client. */
async function userToken() {
  const r = await postForm(`https://127.0.0.1:${ports.issuer}/${d.tenant}/oauth2/v2.0/token`, {
    grant_type: 'password', client_id: d.cli.app_id, username: 'alice@agentid.local', password: d.alice.password,
    scope: `api://${d.blueprint.app_id}/access_as_user`,
  }, { ca });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

/** The agent's OBO Authorization header for a sidecar API (mcp, openai). */
async function agentHeader(api, user) {
  const r = await request(local(ports.sidecar, `/AuthorizationHeader/${api}?AgentIdentity=${d.agent.app_id}`),
    { headers: { Authorization: `Bearer ${user}` } });
  assert.equal(r.status, 200, r.text);
  assert.match(r.json.authorizationHeader, /^Bearer ey/);
  return r.json.authorizationHeader;
}

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'agentid-upgw-'));
  dir = join(root, 'state', 'issuer');
  mkdirSync(join(root, 'state'));
  // A directory as an older `issuer init` made it: no seed 003 apps, no consents to them, and
  // the host's federated credential naming only the default issuer URL. up must add them.
  const init = run(['issuer', 'init', '--dir', dir]);
  assert.equal(init.code, 0, init.stderr);
  const j = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8'));
  const names = j.applications.map((a) => a.name);
  assert.ok(names.includes('Azure OpenAI (local)') && names.includes('MCP Server'), 'issuer init makes seed 003\'s apps');
  assert.ok(init.stdout.includes('MCP Server'), 'and lists them');
  j.applications = j.applications.filter((a) => a.name !== 'Azure OpenAI (local)' && a.name !== 'MCP Server');
  j.consents = j.consents.filter((c) => c.resource !== 'Azure OpenAI (local)' && c.resource !== 'MCP Server');
  writeFileSync(join(dir, 'directory.json'), JSON.stringify(j, null, 2), { mode: 0o600 });

  // A scripted OpenAI-compatible provider behind /llm.
  llm = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      llmSeen.push({ method: req.method, url: req.url, headers: req.headers, body });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(json({ id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: 'test-model',
        choices: [{ index: 0, message: { role: 'assistant', content: 'Sunny in Dallas.' }, finish_reason: 'stop' }] }));
    });
  });
  await new Promise((ok) => llm.listen(0, '127.0.0.1', ok));

  const [issuer, mi, sidecar, gateway, mcpWeather, mcpClock] = await distinctPorts(6);
  ports = { issuer, mi, sidecar, gateway, mcpWeather, mcpClock };
  const env = { ...process.env, AzureAd__ClientCredentials__0__ClientSecret: 'from-the-users-shell' };
  delete env.OLLAMA_HOST;
  delete env.AGENTID_ISSUER_DIR;
  up = spawn(BIN, ['up', '--profile', 'gateway', '--dir', dir, '--issuer-port', String(issuer), '--mi-port', String(mi),
    '--sidecar-port', String(sidecar), '--gateway-port', String(gateway), '--mcp-weather-port', String(mcpWeather),
    '--mcp-clock-port', String(mcpClock), '--llm', `http://127.0.0.1:${llm.address().port}`, '--model', 'test-model'],
  { env, stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout.on('data', (b) => { stdout += b; });
  up.stderr.on('data', (b) => { stderr += b; });
  exited = new Promise((ok) => up.on('exit', (code, sig) => ok(code ?? sig)));
  await waitFor(() => stdout.includes('stack is running') || up.exitCode !== null, START_MS, 'the banner');
  assert.equal(up.exitCode, null, `up exited early:\n${stdout}\n${stderr}`);
  d = demo(JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')));
  ca = readFileSync(join(dir, 'tls/ca.crt'));
});

after(() => {
  if (up && up.exitCode === null) up.kill('SIGKILL');
  llm?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

test('every part comes up as a child of up, and the banner names each part, the rule and the next step', async () => {
  const names = children(up.pid).map((c) => `${c.cmd[1]}${c.cmd[1] === 'mcp-demo' ? `:${c.cmd[3]}` : ''}`).sort();
  assert.deepEqual(names, ['gateway', 'issuer', 'mcp-demo:clock', 'mcp-demo:weather', 'sidecar']);
  for (const port of [ports.sidecar, ports.gateway, ports.mcpWeather, ports.mcpClock])
    assert.equal((await request(local(port, '/healthz'))).status, 200, `port ${port}`);
  assert.match(stdout, new RegExp(`gateway +http://127\\.0\\.0\\.1:${ports.gateway}`));
  assert.match(stdout, new RegExp(`http://127\\.0\\.0\\.1:${ports.mcpWeather}/mcp +\\(MCP target 'weather'\\)`));
  assert.match(stdout, new RegExp(`http://127\\.0\\.0\\.1:${ports.mcpClock}/mcp +\\(MCP target 'clock'\\)`));
  assert.ok(stdout.includes(`jwt.appid == '${d.agent.app_id}' && '11' in jwt.xms_act_fct.split(' ')`), 'the rule');
  assert.ok(stdout.includes(`http://127.0.0.1:${llm.address().port}, model test-model`), 'the LLM');
  assert.match(stdout, /next step +agentid agent run/);
  assert.doesNotMatch(stderr, /"level":"(warn|error)","component":"up"/, 'nothing went wrong during start-up');
});

test('an older directory gains seed 003\'s apps, consents and the host\'s federated credential for this issuer', () => {
  const j = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8'));
  const llmApp = j.applications.find((a) => a.name === 'Azure OpenAI (local)');
  const mcpApp = j.applications.find((a) => a.name === 'MCP Server');
  assert.deepEqual(llmApp.identifier_uris, ['https://cognitiveservices.azure.com']);
  assert.deepEqual(llmApp.scopes, ['user_impersonation']);
  assert.equal(llmApp.access_token_version, 1);
  assert.deepEqual(mcpApp.identifier_uris, [`api://${mcpApp.app_id}`]);
  assert.deepEqual(mcpApp.scopes, ['Tools.Call']);
  assert.equal(mcpApp.access_token_version, 1);
  for (const [res, scope] of [['Azure OpenAI (local)', 'user_impersonation'], ['MCP Server', 'Tools.Call']])
    assert.ok(j.consents.some((c) => c.client === 'Weather Agent' && c.resource === res && c.scopes.includes(scope)), res);
  const host = j.applications.find((a) => a.name === 'Weather Agent Host');
  const fics = d.blueprint.federated_credentials;
  assert.ok(fics.some((f) => f.issuer === `https://127.0.0.1:8443/${d.tenant}/v2.0`), 'the original one is kept');
  assert.ok(fics.some((f) => f.issuer === `https://127.0.0.1:${ports.issuer}/${d.tenant}/v2.0` && f.subject === host.object_id));
  assert.ok(d.blueprint.secrets.length >= 1, 'other content is kept');
});

test('agent.json is the contract for `agentid agent`, 0600; gateway.yaml and the token file sit in gateway-stack/', () => {
  const file = join(root, 'state', 'agent.json');
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const a = JSON.parse(readFileSync(file, 'utf8'));
  assert.deepEqual(a, {
    authority: `https://127.0.0.1:${ports.issuer}/${d.tenant}`,
    client_id: d.cli.app_id,
    scopes: [`api://${d.blueprint.app_id}/access_as_user`],
    ca_file: join(dir, 'tls/ca.crt'),
    sidecar_url: `http://127.0.0.1:${ports.sidecar}`,
    agent_identity: d.agent.app_id,
    llm_api: 'openai',
    mcp_api: 'mcp',
    gateway_url: `http://127.0.0.1:${ports.gateway}`,
    llm_path: '/llm',
    mcp_path: '/mcp',
    model: 'test-model',
  });
  const stack = join(root, 'state', 'gateway-stack');
  const yaml = readFileSync(join(stack, 'gateway.yaml'), 'utf8');
  assert.equal(statSync(join(stack, 'gateway.yaml')).mode & 0o777, 0o600);
  assert.ok(yaml.includes(`issuer: "https://127.0.0.1:${ports.issuer}/${d.tenant}/"`), 'the v1 issuer');
  const tokenFile = join(stack, 'federated-token');
  assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
  const { claims } = decodeJwt(readFileSync(tokenFile, 'utf8').trim());
  const host = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')).applications.find((x) => x.name === 'Weather Agent Host');
  assert.ok([TOKEN_EXCHANGE_APPID, 'api://AzureADTokenExchange'].includes(claims.aud), claims.aud);
  assert.equal(claims.sub, host.object_id, 'the host\'s managed identity');
  assert.equal(claims.iss, `https://127.0.0.1:${ports.issuer}/${d.tenant}/v2.0`);
  assert.match(stderr, /"component":"up","event":"token-projected"/);
});

test('the sidecar holds no client secret: its environment names the token file instead', () => {
  const sc = children(up.pid).find((c) => c.cmd[1] === 'sidecar');
  const env = readFileSync(`/proc/${sc.pid}/environ`, 'utf8').split('\0');
  const secrets = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')).applications.flatMap((a) => a.secrets ?? []);
  assert.ok(secrets.length >= 1);
  for (const s of secrets) assert.ok(!env.some((e) => e.includes(s)), 'a client secret in the sidecar\'s environment');
  assert.ok(!env.some((e) => /ClientSecret/i.test(e)), 'no ClientSecret setting, not even one from up\'s own environment');
  assert.ok(env.includes('AzureAd__ClientCredentials__0__SourceType=SignedAssertionFilePath'));
  assert.ok(env.includes(`AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath=${join(root, 'state', 'gateway-stack', 'federated-token')}`));
  assert.ok(env.includes('DownstreamApis__openai__Scopes__0=https://cognitiveservices.azure.com/.default'));
});

test('a user\'s token, exchanged by the sidecar for the agent, lists and calls both servers\' tools through the gateway', async () => {
  const user = await userToken();
  const header = await agentHeader('mcp', user);
  const { claims } = decodeJwt(header.slice(7));
  const mcpApp = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8')).applications.find((a) => a.name === 'MCP Server');
  assert.equal(claims.aud, `api://${mcpApp.app_id}`);
  assert.equal(claims.iss, `https://127.0.0.1:${ports.issuer}/${d.tenant}/`, 'a v1 token');
  assert.equal(claims.appid, d.agent.app_id);
  assert.equal(claims.idtyp, 'user');
  assert.ok(claims.xms_act_fct.split(' ').includes('11'), claims.xms_act_fct);
  assert.equal(claims.scp, 'Tools.Call');
  assert.match(stderr, /"component":"issuer".*"token":"issued".*"credential":"federated"/, 'the blueprint signed in with the projected token');

  const session = await mcpSession(header);
  const gw = local(ports.gateway, '/mcp');
  const list = await mcp(gw, { jsonrpc: '2.0', id: 2, method: 'tools/list' }, { token: header, session });
  assert.equal(list.status, 200, list.text);
  const names = list.json.result.tools.map((t) => t.name).sort();
  assert.deepEqual(names, ['clock_echo', 'clock_get_time', 'weather_get_forecast']);

  const w = await mcp(gw, { jsonrpc: '2.0', id: 3, method: 'tools/call',
    params: { name: 'weather_get_forecast', arguments: { city: 'Dallas' } } }, { token: header, session });
  assert.equal(w.status, 200, w.text);
  assert.equal(w.json.result.isError, false);
  assert.equal(w.json.result.structuredContent.city, 'Dallas');
  assert.match(w.json.result.content[0].text, /^Dallas: .* °C/);

  const c = await mcp(gw, { jsonrpc: '2.0', id: 4, method: 'tools/call',
    params: { name: 'clock_get_time', arguments: { timezone: '+05:30' } } }, { token: header, session });
  assert.equal(c.status, 200, c.text);
  assert.equal(c.json.result.structuredContent.utc_offset_minutes, 330);
  assert.match(c.json.result.structuredContent.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:30$/);
});

test('a token of another app (the blueprint\'s own) passes jwtAuth but sees no tools; no token gets 401', async () => {
  const r = await request(local(ports.sidecar, '/AuthorizationHeaderUnauthenticated/mcp?optionsOverride.RequestAppToken=true'));
  assert.equal(r.status, 200, r.text);
  const app = r.json.authorizationHeader;
  const { claims } = decodeJwt(app.slice(7));
  assert.equal(claims.appid, d.blueprint.app_id);
  assert.equal(claims.xms_act_fct, undefined);
  const session = await mcpSession(app);
  const gw = local(ports.gateway, '/mcp');
  const list = await mcp(gw, { jsonrpc: '2.0', id: 2, method: 'tools/list' }, { token: app, session });
  assert.equal(list.status, 200, list.text);
  assert.deepEqual(list.json.result.tools, []);
  const call = await mcp(gw, { jsonrpc: '2.0', id: 3, method: 'tools/call',
    params: { name: 'weather_get_forecast', arguments: { city: 'Dallas' } } }, { token: app, session });
  assert.equal(call.json.error.code, -32602);
  assert.match(call.json.error.message, /Unknown tool/);

  const none = await mcp(gw, INIT);
  assert.equal(none.status, 401);
  assert.match(none.headers['www-authenticate'], /resource_metadata=/);
});

test('/llm: the agent\'s OpenAI token reaches the scripted provider through the gateway; the MCP token does not', async () => {
  const user = await userToken();
  const header = await agentHeader('openai', user);
  const { claims } = decodeJwt(header.slice(7));
  assert.equal(claims.aud, 'https://cognitiveservices.azure.com');
  assert.equal(claims.appid, d.agent.app_id);
  const before = llmSeen.length;
  const body = json({ model: 'whatever', messages: [{ role: 'user', content: 'Weather in Dallas?' }] });
  const r = await request(local(ports.gateway, '/llm'), { method: 'POST', body,
    headers: { Authorization: header, 'Content-Type': 'application/json' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].message.content, 'Sunny in Dallas.');
  assert.equal(llmSeen.length, before + 1);
  assert.equal(llmSeen.at(-1).url, '/v1/chat/completions');
  assert.equal(JSON.parse(llmSeen.at(-1).body).model, 'test-model', '--model replaces the request\'s model');

  const wrongAud = await agentHeader('mcp', user);
  const denied = await request(local(ports.gateway, '/llm'), { method: 'POST', body,
    headers: { Authorization: wrongAud, 'Content-Type': 'application/json' } });
  assert.equal(denied.status, 401, denied.text);
  assert.equal(llmSeen.length, before + 1, 'nothing reached the provider');
});

test('usage errors exit 2', () => {
  assert.equal(run(['up', '--profile', 'nope']).code, 2);
  assert.equal(run(['up', '--profile', 'gateway', '--chat-port', '4000']).code, 2);
  assert.equal(run(['up', '--gateway-port', '4000']).code, 2);
  assert.equal(run(['up', '--profile', 'gateway', '--mcp', 'bad_name=http://127.0.0.1:1/mcp']).code, 2);
  assert.equal(run(['up', '--profile', 'gateway', '--mcp', 'x=ftp://host/mcp']).code, 2);
  assert.equal(run(['up', '--profile', 'gateway', '--mcp', 'x=http://a/mcp', '--mcp', 'x=http://b/mcp']).code, 2);
  assert.equal(run(['up', '--profile', 'gateway', '--mcp', 'x=http://a/mcp', '--mcp-clock-port', '4000']).code, 2);
  const h = run(['up', '--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--profile default\|gateway/);
});

test('the demo MCP server speaks JSON-RPC over Streamable HTTP and refuses bad input', async () => {
  const s = await start(['mcp-demo', '--kind', 'clock']);
  try {
    const url = `${s.url}/mcp`;
    const init = await mcp(url, INIT);
    assert.equal(init.status, 200);
    assert.match(init.headers['content-type'], /^application\/json/);
    assert.equal(init.json.id, 1);
    assert.equal(init.json.result.protocolVersion, '2025-06-18');
    assert.equal(init.json.result.serverInfo.name, 'agentid-mcp-clock');
    assert.deepEqual(init.json.result.capabilities, { tools: { listChanged: false } });
    const old = await mcp(url, { ...INIT, params: { ...INIT.params, protocolVersion: '1999-01-01' } });
    assert.equal(old.json.result.protocolVersion, '2025-06-18', 'an unknown version: the newest we speak');
    assert.equal((await mcp(url, { jsonrpc: '2.0', method: 'notifications/initialized' })).status, 202);
    const ping = await mcp(url, { jsonrpc: '2.0', id: 'p', method: 'ping' });
    assert.deepEqual(ping.json, { jsonrpc: '2.0', id: 'p', result: {} });
    const list = await mcp(url, { jsonrpc: '2.0', id: 2, method: 'tools/list' });
    assert.deepEqual(list.json.result.tools.map((t) => t.name), ['get_time', 'echo']);
    for (const t of list.json.result.tools) assert.equal(t.inputSchema.type, 'object');
    const echo = await mcp(url, { jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'echo', arguments: { text: 'hi' } } });
    assert.deepEqual(echo.json.result.content, [{ type: 'text', text: 'hi' }]);
    const utc = await mcp(url, { jsonrpc: '2.0', id: 4, method: 'tools/call', params: { name: 'get_time' } });
    assert.match(utc.json.result.structuredContent.time, /Z$/);
    assert.ok(Math.abs(utc.json.result.structuredContent.unix - Date.now() / 1000) < 60);
    const badTz = await mcp(url, { jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'get_time', arguments: { timezone: 'Mars/Base' } } });
    assert.equal(badTz.json.result.isError, true, 'a bad argument value is a tool error');

    const err = async (msg, code, status = 200) => {
      const r = await mcp(url, msg);
      assert.equal(r.status, status, r.text);
      assert.equal(r.json.jsonrpc, '2.0');
      assert.equal(r.json.error.code, code, r.text);
      return r.json;
    };
    await err('{"jsonrpc": "2.0", "id": 1, "method": ', -32700, 400);
    await err([{ jsonrpc: '2.0', id: 1, method: 'ping' }], -32600, 400);
    await err({ id: 1, method: 'ping' }, -32600, 400);
    await err({ jsonrpc: '2.0', id: null, method: 'ping' }, -32600, 400);
    assert.match((await err({ jsonrpc: '2.0', id: 6, method: 'resources/list' }, -32601)).error.message, /resources\/list/);
    assert.match((await err({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'nope' } }, -32602)).error.message, /Unknown tool: nope/);
    await err({ jsonrpc: '2.0', id: 8, method: 'tools/call', params: { name: 'echo', arguments: {} } }, -32602);
    await err({ jsonrpc: '2.0', id: 9, method: 'tools/call', params: { name: 'echo', arguments: { text: 5 } } }, -32602);
    await err({ jsonrpc: '2.0', id: 10, method: 'tools/call', params: { name: 'echo', arguments: 'x' } }, -32602);
    await err({ jsonrpc: '2.0', id: 11, method: 'initialize', params: {} }, -32602);

    assert.equal((await request(url)).status, 405);
    assert.equal((await request(url, { method: 'POST', body: json(INIT), headers: { 'Content-Type': 'text/plain' } })).status, 415);
    assert.equal((await mcp(url, INIT, { headers: { Accept: 'text/html' } })).status, 406);
    assert.equal((await mcp(url, INIT, { headers: { 'MCP-Protocol-Version': '1999-01-01' } })).status, 400);
    assert.equal((await request(`${s.url}/other`)).status, 404);
    assert.equal(await s.stop(), 0);
  } finally {
    await s.stop();
  }
  const w = await start(['mcp-demo', '--kind', 'weather']);
  try {
    const url = `${w.url}/mcp`;
    const call = (city) => mcp(url, { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'get_forecast', arguments: { city } } });
    const a = await call('São Paulo');
    assert.equal(a.json.result.isError, false);
    assert.deepEqual((await call('São Paulo')).json, a.json, 'deterministic');
    assert.equal((await call('<script>')).json.result.isError, true);
  } finally {
    assert.equal(await w.stop(), 0);
  }
  assert.equal(run(['mcp-demo']).code, 2);
  assert.equal(run(['mcp-demo', '--kind', 'radio']).code, 2);
});

test('SIGINT stops every part and up exits 0; all ports are closed afterwards', async () => {
  const kids = children(up.pid);
  assert.equal(kids.length, 5);
  up.kill('SIGINT');
  const code = await Promise.race([exited, sleep(20000).then(() => 'still running')]);
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  for (const k of kids) assert.ok(!existsSync(`/proc/${k.pid}`), `${k.cmd[1]} (pid ${k.pid}) is gone`);
  for (const [name, port] of Object.entries(ports)) assert.equal(await listening(port), false, `${name} port closed`);
  for (const k of kids)
    assert.match(stderr, new RegExp(`\\(pid ${k.pid}\\) exited with status 0`));
  assert.doesNotMatch(stderr, /ERROR: \w+Sanitizer|runtime error:/);
});

test('--mcp NAME=URL replaces the demo servers; with no LLM given /llm points at Ollama and the banner says how to change it', async () => {
  const own = await start(['mcp-demo', '--kind', 'clock']);
  const state = join(root, 'second');
  const [issuer, mi, sidecar, gateway] = await distinctPorts(4);
  const env = { ...process.env };
  delete env.OLLAMA_HOST;
  delete env.AGENTID_ISSUER_DIR;
  const proc = spawn(BIN, ['up', '--profile', 'gateway', '--dir', join(state, 'issuer'), '--issuer-port', String(issuer),
    '--mi-port', String(mi), '--sidecar-port', String(sidecar), '--gateway-port', String(gateway),
    '--mcp', `tools=${own.url}/mcp`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  proc.stdout.on('data', (b) => { out += b; });
  proc.stderr.on('data', (b) => { err += b; });
  const done = new Promise((ok) => proc.on('exit', (code, sig) => ok(code ?? sig)));
  try {
    const deadline = Date.now() + START_MS;
    while (!out.includes('stack is running') && proc.exitCode === null && Date.now() < deadline) await sleep(50);
    assert.ok(out.includes('stack is running'), `${out}\n${err}`);
    assert.match(out, /created the issuer directory/);
    assert.deepEqual(children(proc.pid).map((c) => c.cmd[1]).sort(), ['gateway', 'issuer', 'sidecar']);
    assert.ok(out.includes(`${own.url}/mcp  (MCP target 'tools')`));
    assert.match(out, /-> http:\/\/127\.0\.0\.1:11434 \(Ollama's default\)/);
    assert.match(out, /--llm http:\/\/host:port/);
    const a = JSON.parse(readFileSync(join(state, 'agent.json'), 'utf8'));
    assert.equal(a.model, null);
    assert.equal(a.gateway_url, `http://127.0.0.1:${gateway}`);
    const yaml = readFileSync(join(state, 'gateway-stack', 'gateway.yaml'), 'utf8');
    assert.ok(yaml.includes('hostOverride: "http://127.0.0.1:11434"'));
    assert.ok(yaml.includes('provider: {openAI: {}}'), 'no model: the request\'s own');

    // Through this stack: one target, so the tools keep their own names.
    const dd = demo(JSON.parse(readFileSync(join(state, 'issuer', 'directory.json'), 'utf8')));
    const tok = await postForm(`https://127.0.0.1:${issuer}/${dd.tenant}/oauth2/v2.0/token`, {
      grant_type: 'password', client_id: dd.cli.app_id, username: 'alice@agentid.local', password: dd.alice.password,
      scope: `api://${dd.blueprint.app_id}/access_as_user`,
    }, { ca: readFileSync(join(state, 'issuer', 'tls/ca.crt')) });
    assert.equal(tok.status, 200, tok.text);
    const h = await request(local(sidecar, `/AuthorizationHeader/mcp?AgentIdentity=${dd.agent.app_id}`),
      { headers: { Authorization: `Bearer ${tok.json.access_token}` } });
    assert.equal(h.status, 200, h.text);
    const token = h.json.authorizationHeader;
    const init = await mcp(local(gateway, '/mcp'), INIT, { token });
    assert.equal(init.status, 200, init.text);
    const session = init.headers['mcp-session-id'];
    await mcp(local(gateway, '/mcp'), { jsonrpc: '2.0', method: 'notifications/initialized' }, { token, session });
    const list = await mcp(local(gateway, '/mcp'), { jsonrpc: '2.0', id: 2, method: 'tools/list' }, { token, session });
    assert.deepEqual(list.json.result.tools.map((t) => t.name).sort(), ['echo', 'get_time']);
  } finally {
    if (proc.exitCode === null) proc.kill('SIGINT');
    assert.equal(await Promise.race([done, sleep(20000).then(() => 'still running')]), 0, err);
    assert.equal(await own.stop(), 0);
  }
});

test('no secret and no token in the output', () => {
  const j = JSON.parse(readFileSync(join(dir, 'directory.json'), 'utf8'));
  for (const s of j.applications.flatMap((a) => a.secrets ?? [])) assert.ok(!(stdout + stderr).includes(s));
  assert.ok(!(stdout + stderr).includes(j.managed_identity_header), 'the managed-identity header');
  assert.ok(!stderr.includes(d.alice.password), 'the password is never logged');
  assert.doesNotMatch(stdout + stderr, /eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/, 'no token');
});
