// `agentid agent` end to end on seed 003's topology, started by `agentid up --profile gateway`:
// the issuer, the sidecar (federated token file), the gateway (/llm and /mcp with jwtAuth and
// the appid + xms_act_fct rule) in front of two MCP servers built with @modelcontextprotocol/sdk,
// and a scripted OpenAI-compatible LLM — the only test double. The device code sign-in is
// completed by the test over HTTP; the interactive menu is driven through tmux.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, freePort, request, run } from '../integration/harness.mjs';
import { completeDeviceLogin } from '../integration/devicelogin.mjs';
import { startHttpMcpServer } from './mcp-servers/http-server.mjs';

const PROMPT = 'What is 2+3? Use the add tool.';
let root, stack, stackOut = '', llm, calc, notes, dirJson, env, ports;

/** A scripted OpenAI-compatible chat completions server: it calls the first "*add" tool it is
 * offered for a prompt mentioning "add", answers with the tool's result once it has it, and
 * streams everything as server-sent events, splitting the tool call's arguments over chunks. */
function startScriptedLlm() {
  const seen = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const msg = JSON.parse(body);
      seen.push({ url: req.url, body: msg });
      const sse = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
      const chunk = (delta, finish = null) => sse({ id: 'c1', object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] });
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      const last = msg.messages.at(-1);
      const add = (msg.tools ?? []).map((t) => t.function.name).find((n) => /add$/.test(n));
      if (last.role === 'tool') {
        chunk({ role: 'assistant', content: 'The answer ' });
        chunk({ content: `is ${last.content}.` }, 'stop');
      } else if (/add/.test(last.content) && add) {
        chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: add, arguments: '{"a":2,' } }] });
        chunk({ tool_calls: [{ index: 0, function: { arguments: '"b":3}' } }] }, 'tool_calls');
      } else {
        chunk({ role: 'assistant', content: `No tools here (${(msg.tools ?? []).length} offered).` }, 'stop');
      }
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({
    url: `http://127.0.0.1:${server.address().port}`, seen, close: () => new Promise((r) => server.close(r)),
  })));
}

/** Run `agentid agent ...` with the test's settings; when it prints a device code, complete the
 * sign-in page as alice. Resolves { code, stdout, stderr, signedIn }. */
function agent(args, { signIn = true, timeout = 60000 } = {}) {
  return new Promise((ok, fail) => {
    const p = spawn(BIN, ['agent', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', signedIn = null;
    const t = setTimeout(() => { p.kill('SIGKILL'); fail(new Error(`agent ${args[0]} timed out: ${stderr}`)); }, timeout);
    p.stdout.on('data', (b) => { stdout += b; });
    p.stderr.on('data', (b) => {
      stderr += b;
      const m = /open the page (\S+) and enter the code (\S+) to authenticate/.exec(stderr);
      if (m && signedIn === null && signIn) {
        signedIn = completeDeviceLogin({ baseUrl: m[1], userCode: m[2], username: 'alice@agentid.local',
          password: dirJson.users.find((u) => u.user_principal_name === 'alice@agentid.local').password,
          ca: readFileSync(join(root, 'issuer/tls/ca.crt')) });
      }
    });
    p.on('exit', async (code) => {
      clearTimeout(t);
      ok({ code, stdout, stderr, signedIn: signedIn && (await signedIn).ok });
    });
  });
}

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'agentid-agent-'));
  // A directory whose device codes may be polled every second (Entra's interval is 5 s).
  assert.equal(run(['issuer', 'init', '--dir', join(root, 'issuer')]).code, 0);
  const file = join(root, 'issuer/directory.json');
  dirJson = JSON.parse(readFileSync(file, 'utf8'));
  dirJson.device_code_interval_seconds = 1;
  // The blueprint itself may also act for alice towards the LLM and the MCP server: a token
  // of another app than the agent identity, which the gateway's rule must refuse.
  for (const resource of ['Azure OpenAI (local)', 'MCP Server']) {
    const scopes = dirJson.applications.find((a) => a.name === resource).scopes;
    dirJson.consents.push({ client: 'Weather Agent Blueprint', resource, scopes });
  }
  writeFileSync(file, JSON.stringify(dirJson, null, 2));

  [llm, calc, notes] = await Promise.all([startScriptedLlm(), startHttpMcpServer({ json: false }), startHttpMcpServer({ json: true })]);
  ports = {};
  for (const k of ['issuer', 'mi', 'sidecar', 'gateway']) ports[k] = await freePort();
  stack = spawn(BIN, ['up', '--profile', 'gateway', '--dir', join(root, 'issuer'),
    '--issuer-port', ports.issuer, '--mi-port', ports.mi, '--sidecar-port', ports.sidecar,
    '--gateway-port', ports.gateway,
    '--llm', llm.url, '--model', 'scripted-1', '--mcp', `calc=${calc.url}`, '--mcp', `notes=${notes.url}`].map(String),
  { stdio: ['ignore', 'pipe', 'pipe'], detached: false });
  stack.stdout.on('data', (b) => { stackOut += b; });
  stack.stderr.on('data', (b) => { stackOut += b; });
  const deadline = Date.now() + 30000;
  for (;;) {
    if (stack.exitCode !== null) throw new Error(`up exited: ${stackOut}`);
    const ready = await Promise.all([`http://127.0.0.1:${ports.gateway}/healthz`, `http://127.0.0.1:${ports.sidecar}/healthz`]
      .map((u) => request(u, { timeout: 500 }).then((r) => r.status === 200, () => false)));
    if (ready.every(Boolean) && existsSync(join(root, 'agent.json'))) break;
    if (Date.now() > deadline) throw new Error(`stack not ready in 30 s: ${stackOut}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  env = { ...process.env, AGENTID_AGENT_CONFIG: join(root, 'agent.json'), XDG_CONFIG_HOME: join(root, 'config'), HOME: root };
  delete env.SSL_CERT_FILE;
});

after(async () => {
  if (stack && stack.exitCode === null) {
    const exited = new Promise((r) => stack.on('exit', (code) => r(code)));
    stack.kill('SIGINT');
    assert.equal(await exited, 0, stackOut.slice(-2000));
  }
  await Promise.all([llm?.close(), calc?.close(), notes?.close()]);
  if (root) rmSync(root, { recursive: true, force: true });
});

const cachePath = () => join(root, 'config/agentid/agent-session.json');

test('ask: device code sign-in, OBO tokens from the sidecar, the LLM calls an MCP tool through the gateway', async () => {
  const r = await agent(['ask', PROMPT]);
  assert.equal(r.signedIn, true, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /The answer is 5\./);
  assert.match(r.stderr, /Authentication successful, token cached for future use/);
  assert.match(r.stderr, /Logged in as: alice@agentid\.local/);
  assert.match(r.stderr, /→ tool calc_add on gateway \{"a":2,"b":3\}/);

  // The LLM got the model, both servers' tools (prefixed by the gateway) and the tool's result.
  const calls = llm.seen.filter((s) => s.url === '/v1/chat/completions');
  assert.equal(calls.length, 2);
  assert.equal(calls[0].body.model, 'scripted-1');
  assert.equal(calls[0].body.stream, true);
  const names = calls[0].body.tools.map((t) => t.function.name);
  for (const n of ['calc_add', 'calc_echo', 'notes_add', 'notes_echo']) assert.ok(names.includes(n), names.join());
  assert.deepEqual(calls[1].body.messages.at(-1), { role: 'tool', tool_call_id: 'call_1', content: '5' });
  assert.equal(calls[1].body.messages.at(-2).tool_calls[0].function.arguments, '{"a":2,"b":3}');

  // The sign-in is cached for the user only.
  const st = statSync(cachePath());
  assert.equal(st.mode & 0o777, 0o600);
  assert.equal(statSync(join(root, 'config/agentid')).mode & 0o777, 0o700);
  const cached = JSON.parse(readFileSync(cachePath(), 'utf8'));
  assert.ok(cached.refresh_token && cached.access_token);
});

test('show-tokens: the user token and two agent OBO tokens, each validated against the issuer', async () => {
  const agentId = JSON.parse(readFileSync(join(root, 'agent.json'), 'utf8')).agent_identity;
  const r = await agent(['show-tokens', '--json'], { signIn: false });
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /enter the code/, 'the cached sign-in is reused');
  const rows = JSON.parse(r.stdout);
  assert.deepEqual(rows.map((t) => t.token), ['user', 'llm', 'mcp']);
  for (const t of rows) {
    assert.equal(t.valid, true, t.status);
    assert.match(t.status, /^valid: signed by https:\/\/127\.0\.0\.1:/);
    assert.equal(t.idtyp, 'user');
  }
  assert.match(rows[0].aud, /^(api:\/\/)?[0-9a-f-]{36}$/);
  assert.equal(rows[1].aud, 'https://cognitiveservices.azure.com');
  for (const t of rows.slice(1)) {
    assert.equal(t.appid, agentId);
    assert.ok(t.xms_act_fct.split(' ').includes('11'), t.xms_act_fct);
    assert.ok(t.xms_par_app_azp);
  }
  assert.equal(rows[0].raw, undefined);

  const table = await agent(['show-tokens', '--output-raw'], { signIn: false });
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /Token Summary\n┏━+┳/);
  for (const label of ['Tc \\(User\\)', 'T2 \\(LLM\\)', 'T2 \\(MCP Server\\)'])
    assert.match(table.stdout, new RegExp(`│ ${label} +│.*│ ✓ +│`));
  assert.match(table.stdout, /── T2 \(MCP Server\) ──\nRaw token:\neyJ[\w-]+\.[\w-]+\.[\w-]+\nHeader:/);
});

test('run: the steps of seed 003, then the menu driven through a terminal', async (t) => {
  const session = `agentid-test-${process.pid}`;
  const envs = Object.entries({ AGENTID_AGENT_CONFIG: env.AGENTID_AGENT_CONFIG, XDG_CONFIG_HOME: env.XDG_CONFIG_HOME, HOME: env.HOME })
    .map(([k, v]) => `${k}='${v}'`).join(' ');
  const asan = process.env.ASAN_OPTIONS ? `ASAN_OPTIONS='${process.env.ASAN_OPTIONS}' ` : '';
  execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '200', '-y', '60',
    `env ${asan}${envs} '${BIN}' agent run; echo "EXITED $?"; sleep 60`]);
  t.after(() => spawnSync('tmux', ['kill-session', '-t', session]));
  const screen = () => execFileSync('tmux', ['capture-pane', '-p', '-J', '-S', '-500', '-t', session], { encoding: 'utf8' });
  const until = async (re, what) => {
    const deadline = Date.now() + 30000;
    for (;;) {
      const s = screen();
      if (re.test(s)) return s;
      if (Date.now() > deadline) throw new Error(`no ${what} on the screen:\n${s}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const keys = (...k) => execFileSync('tmux', ['send-keys', '-t', session, ...k]);

  let s = await until(/Select an option \[1\/2\/3\/4\/5\/6\]: $/m, 'menu');
  for (const step of ['Step 1: User Authentication', 'Requesting user token with Blueprint audience: api://',
    'reusing the cached sign-in', 'Logged in as: alice@agentid.local', 'Step 2: Initializing Token Provider (sidecar mode)',
    'Calling sidecar: GET /AuthorizationHeader/openai', 'Got token from sidecar for mcp', 'Agent initialized with OBO authentication',
    'AI Agent CLI', '1. Prompt agent', '6. Exit'])
    assert.ok(s.includes(step), `missing "${step}" in:\n${s}`);

  keys('2', 'Enter');
  s = await until(/calc_whoami/, 'tool list');
  assert.match(s, /gateway \(http:\/\/127\.0\.0\.1:\d+\/mcp\): \d+ tools/);
  assert.match(s, /- calc_add: Adds two numbers/);

  keys('1', 'Enter');
  await until(/Prompt: $/m, 'prompt');
  keys(PROMPT, 'Enter');
  s = await until(/The answer is 5\./, 'answer');
  assert.match(s, /→ tool calc_add on gateway/);

  keys('5', 'Enter');
  await until(/Conversation history cleared/, 'cleared');
  keys('4', 'Enter');
  await until(/Name of the server to remove: $/m, 'remove prompt');
  keys('gateway', 'Enter');
  await until(/Removed MCP server gateway/, 'removed');
  keys('2', 'Enter');
  await until(/No MCP servers: add one/, 'no servers');
  keys('3', 'Enter');
  await until(/Name \(letters, digits, '-'\): $/m, 'name prompt');
  keys('direct', 'Enter');
  await until(/Streamable HTTP URL: $/m, 'url prompt');
  keys(notes.url, 'Enter');
  await until(/Sidecar API for its token \(empty: no token\): $/m, 'token prompt');
  keys('Enter');
  await until(/Added MCP server direct/, 'added');
  keys('2', 'Enter');
  await until(/direct \(http:\/\/127\.0\.0\.1:\d+\/mcp\): 3 tools/, 'direct tools');
  keys('6', 'Enter');
  s = await until(/EXITED \d+/, 'exit');
  assert.match(s, /Goodbye\.\nEXITED 0/);
});

test('a non-agent token is refused by the gateway rule, and the CLI says why', async () => {
  // Without an agent identity the sidecar acts as the blueprint itself: an OBO token of another
  // app, without xms_act_fct 11. jwtAuth accepts it; the rule hides every MCP tool from it.
  const r = await agent(['ask', PROMPT, '--agent-id', ''], { signIn: false });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /The mcp token is not an agent acting for the user \(appid [0-9a-f-]{36}, idtyp user, xms_act_fct \(none\)\)/);
  assert.match(r.stderr, /gateway offers no tools to this caller/);
  assert.match(r.stdout, /No tools here \(0 offered\)\./);
});

test('the gateway refusing a token: the CLI prints the check that failed', async () => {
  // The MCP token sent to /llm: its audience is not the LLM route's.
  const cfg = JSON.parse(readFileSync(join(root, 'agent.json'), 'utf8'));
  const wrong = join(root, 'agent-wrong-audience.json');
  writeFileSync(wrong, JSON.stringify({ ...cfg, llm_api: cfg.mcp_api }));
  const r = await agent(['ask', 'hello', '--config', wrong], { signIn: false });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /the gateway refused the LLM token \(HTTP 401\): .*audience/i);
});

test('errors a person understands: sidecar down, gateway down, LLM down', async () => {
  const free = await freePort();
  let r = await agent(['ask', PROMPT, '--sidecar', `http://127.0.0.1:${free}`], { signIn: false });
  assert.equal(r.code, 1);
  assert.match(r.stderr, new RegExp(`the sidecar is not running at http://127\\.0\\.0\\.1:${free} .*agentid up --profile gateway`));

  r = await agent(['ask', PROMPT, '--gateway', `http://127.0.0.1:${free}`], { signIn: false });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /MCP server gateway .* cannot be reached/);
  assert.match(r.stderr, /the LLM route http:\/\/127\.0\.0\.1:\d+\/llm\/chat\/completions cannot be reached .*is the gateway running\?/);

  r = await agent(['ask', 'hello'], { signIn: false, timeout: 30000 });
  assert.equal(r.code, 0, r.stderr);
  await llm.close();
  r = await agent(['ask', 'hello'], { signIn: false });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /the LLM behind .* is unreachable \(HTTP 502/);
  llm = null;
});

test('an expired access token is refreshed silently with the cached refresh token', async () => {
  const before = JSON.parse(readFileSync(cachePath(), 'utf8'));
  writeFileSync(cachePath(), JSON.stringify({ ...before, expires_at: 1 }), { mode: 0o600 });
  const r = await agent(['show-tokens', '--json'], { signIn: false });
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /enter the code/);
  const after = JSON.parse(readFileSync(cachePath(), 'utf8'));
  assert.ok(after.expires_at > Date.now() / 1000 + 600);
  assert.notEqual(after.access_token, before.access_token);
  assert.equal(statSync(cachePath()).mode & 0o777, 0o600);
});

test('an expired sign-in is replaced by a new device code sign-in; logout forgets it', async () => {
  const c = JSON.parse(readFileSync(cachePath(), 'utf8'));
  c.expires_at = 1;                        // the access token has expired...
  c.refresh_token = `${c.refresh_token.slice(0, -4)}AAAA`;   // ...and the refresh token is refused
  writeFileSync(cachePath(), JSON.stringify(c), { mode: 0o600 });
  let r = await agent(['show-tokens', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /The saved sign-in has expired \(the refresh token was refused: invalid_grant.*\); signing in again\./);
  assert.equal(r.signedIn, true);

  r = await agent(['logout']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /Signed out: removed .*agent-session\.json/);
  assert.equal(existsSync(cachePath()), false);
  r = await agent(['logout']);
  assert.match(r.stdout, /Not signed in/);
});

test('usage errors', async () => {
  for (const [args, re] of [[['ask'], /ask needs a prompt/], [['frob'], /unknown command 'frob'/],
    [['run', '--max-steps', '0'], /--max-steps takes 1 to 100/], [['show-tokens', '--bogus'], /unexpected argument --bogus/]]) {
    const r = await agent(args, { signIn: false });
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, re);
  }
  const r = await agent(['ask', 'x', '--config', join(root, 'nope.json')], { signIn: false });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /nope\.json/);
});
