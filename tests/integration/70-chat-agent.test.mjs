// agentid chat-agent at the API level, against the real issuer, sidecar and weather API; the only
// test double is a scripted LLM speaking Ollama's /api/chat tool-calling protocol (and, for the
// OpenAI-compatible path, /v1/chat/completions). Covers: Direct + Autonomous, Direct + OBO with
// alice's token, LLM mode's tool call, the web assets and config, and the failures the UI
// explains (sidecar down, wrong blueprint secret, missing consent, audience refused, LLM down).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { initDirectory, startIssuer, demo, start, request, freePort, decodeJwt } from './harness.mjs';
import { userToken } from './sidecar.mjs';

const MSAL_LIB = resolve(import.meta.dirname, '../../src/demo/web/node_modules/@azure/msal-browser/lib');

let dir, d, iss, caPath, weather, badAudWeather, sidecar, badSidecar;
const procs = [];
let llm;

/**
 * The scripted LLM: POST /api/chat (Ollama) or /v1/chat/completions (OpenAI). Without a tool
 * result in the conversation it asks for get_weather {"city":"Seattle"} ("S3attle" when the
 * question says "retry"); after a tool error it asks again for Seattle; after a forecast it
 * answers with a sentence built from it. GET /api/tags and /v1/models list the model.
 */
async function startLlm() {
  const seen = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const send = (status, obj) => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      if (req.method === 'GET' && req.url === '/api/tags') return send(200, { models: [{ name: 'qwen2.5:1.5b' }] });
      if (req.method === 'GET' && req.url === '/v1/models') return send(200, { data: [{ id: 'qwen2.5:1.5b' }] });
      const openai = req.url === '/v1/chat/completions';
      if (req.method !== 'POST' || (req.url !== '/api/chat' && !openai)) return send(404, { error: 'not found' });
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      seen.push({ url: req.url, body });
      const tool = body.messages.filter((m) => m.role === 'tool').at(-1);
      // "retry" in the question: the first call names a city the API refuses (400)
      const retry = /retry/.test(body.messages.find((m) => m.role === 'user').content);
      let message;
      if (!tool || JSON.parse(tool.content).error) {
        const city = !tool && retry ? 'S3attle' : 'Seattle';
        message = openai
          ? { role: 'assistant', content: null,
              tool_calls: [{ id: 'call_1', type: 'function',
                             function: { name: 'get_weather', arguments: JSON.stringify({ city }) } }] }
          : { role: 'assistant', content: '',
              tool_calls: [{ function: { name: 'get_weather', arguments: { city } } }] };
      } else {
        const r = JSON.parse(tool.content);
        message = { role: 'assistant',
                    content: `In ${r.city} it is ${r.forecast.condition.toLowerCase()} and ${r.forecast.temperature_c} °C.` };
      }
      if (openai) return send(200, { id: 'x', object: 'chat.completion', choices: [{ index: 0, message, finish_reason: 'stop' }] });
      return send(200, { model: body.model, created_at: new Date().toISOString(), message, done: true });
    });
  });
  await new Promise((ok) => srv.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${srv.address().port}`, seen,
    close: () => new Promise((ok) => { srv.closeAllConnections(); srv.close(() => ok()); }),
  };
}

function sidecarEnv(secret) {
  return {
    AzureAd__Instance: `${iss.url}/`,
    AzureAd__TenantId: d.tenant,
    AzureAd__ClientId: d.blueprint.app_id,
    AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
    AzureAd__ClientCredentials__0__ClientSecret: secret,
    DownstreamApis__weather__BaseUrl: `${weather.url}/`,
    DownstreamApis__weather__Scopes__0: `api://${d.api.app_id}/.default`,
    // a resource the agent has no consent for: OBO to it fails with AADSTS65001
    DownstreamApis__noconsent__BaseUrl: `${weather.url}/`,
    DownstreamApis__noconsent__Scopes__0: `api://${d.blueprint.app_id}/.default`,
    Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated: 'true',
    SSL_CERT_FILE: caPath,
  };
}

async function startWeather(audience) {
  const w = await start(['weather-api', '--authority', `${iss.authority}/v2.0`, '--audience', audience,
    '--scope', 'Weather.Read', '--role', 'Weather.Read.All'], { env: { SSL_CERT_FILE: caPath } });
  procs.push(w);
  return w;
}

/** A chat agent with the demo's settings; extra args override. */
async function chatAgent(extra = [], env = {}) {
  const c = await start(['chat-agent', '--sidecar', sidecar.url, '--weather-url', weather.url,
    '--agent-id', d.agent.app_id, '--tenant-id', d.tenant, '--authority', iss.authority,
    '--spa-client-id', d.spa.app_id, '--blueprint-app-id', d.blueprint.app_id,
    '--llm', llm.url, ...extra], { env });
  procs.push(c);
  return c;
}

function chat(c, body, { bearer, headers = {} } = {}) {
  return request(`${c.url}/api/chat`, {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}), ...headers },
  });
}

const stepNamed = (trace, re) => trace.find((s) => re.test(s.step));

before(async () => {
  dir = initDirectory();
  d = demo(dir.json());
  caPath = join(dir.dir, 'tls/ca.crt');
  iss = await startIssuer(dir);
  weather = await startWeather(d.api.app_id);
  badAudWeather = await startWeather('00000000-0000-0000-0000-00000000beef');
  sidecar = await start(['sidecar'], { env: sidecarEnv(d.blueprint.secrets[0]) });
  procs.push(sidecar);
  badSidecar = await start(['sidecar'], { env: sidecarEnv('not-the-secret') });
  procs.push(badSidecar);
  llm = await startLlm();
});

after(async () => {
  for (const p of procs.reverse()) assert.equal(await p.stop(), 0, 'clean exit (no leaks under ASan)');
  await llm?.close();
  assert.equal(await iss?.stop(), 0);
  dir?.cleanup();
});

describe('chat-agent', () => {
  let c;
  before(async () => { c = await chatAgent(); });

  test('status, config and the embedded web UI', async () => {
    let r = await request(`${c.url}/api/status`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(
      { ...r.json, llm_protocol: undefined },
      { ollama_available: true, llm_endpoint: llm.url, model: 'qwen2.5:1.5b', tenant_id: d.tenant,
        agent_id: d.agent.app_id, llm_protocol: undefined });

    r = await request(`${c.url}/api/config`);
    assert.equal(r.status, 200);
    const host = new URL(iss.url).host;
    assert.equal(r.json.authority, iss.authority);
    assert.equal(r.json.spa_client_id, d.spa.app_id);
    assert.deepEqual(r.json.scopes, [`api://${d.blueprint.app_id}/access_as_user`]);
    assert.deepEqual(r.json.known_authorities, [host]);
    assert.equal(r.json.agent_id, d.agent.app_id);
    assert.equal(r.json.tenant_id, d.tenant);
    assert.equal(r.json.llm_available, true);
    assert.equal(r.json.redirect_path, '/redirect.html');

    r = await request(`${c.url}/`);
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/html/);
    assert.match(r.text, /Identity Trace/);
    assert.match(r.text, /value="Weather in Dallas\?"/);
    assert.match(r.headers['content-security-policy'], new RegExp(`connect-src 'self' ${iss.url.replace(/\./g, '\\.')}`));
    for (const [p, type] of [['/app.js', /javascript/], ['/app.css', /text\/css/], ['/redirect.html', /text\/html/]]) {
      r = await request(`${c.url}${p}`);
      assert.equal(r.status, 200, p);
      assert.match(r.headers['content-type'], type);
    }
    r = await request(`${c.url}/redirect.html`);
    assert.match(r.text, /msal-redirect-bridge\.min\.js/);
    r = await request(`${c.url}/redirect.js`);
    assert.match(r.text, /broadcastResponseToMainFrame\(\)/);
    assert.equal((await request(`${c.url}/nope`)).status, 404);

    if (existsSync(join(MSAL_LIB, 'msal-browser.min.js'))) {
      r = await request(`${c.url}/vendor/msal-browser.min.js`);
      assert.equal(r.status, 200);
      assert.match(r.text, /PublicClientApplication/);
      r = await request(`${c.url}/vendor/msal-redirect-bridge.min.js`);
      assert.equal(r.status, 200);
      assert.match(r.text, /broadcastResponseToMainFrame/);
      r = await request(`${c.url}/api/config`);
      assert.equal(r.json.obo_available, true);
    }
  });

  test('Direct + Autonomous: the agent\'s own token (idtyp=app, azp=agent) and the API\'s checks', async () => {
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 200, r.text);
    const { answer, trace, error } = r.json;
    assert.equal(error, undefined);
    // the API's deterministic forecast for Seattle, as the weather API itself answers it
    assert.match(answer, /^Weather in Seattle: /);
    assert.match(answer, /°C/);
    assert.match(stepNamed(trace, /city/i).detail, /"Seattle"/);

    const sc = stepNamed(trace, /sidecar/i);
    assert.equal(sc.ok, true);
    assert.equal(typeof sc.ms, 'number');
    assert.equal(sc.detail,
      `GET ${sidecar.url}/AuthorizationHeaderUnauthenticated/weather?AgentIdentity=${d.agent.app_id}`);
    assert.match(sc.flow, /autonomous/);
    assert.equal(sc.token.header.alg, 'RS256');
    assert.equal(sc.token.claims.idtyp, 'app');
    assert.equal(sc.token.claims.azp, d.agent.app_id);
    assert.equal(sc.token.claims.aud, d.api.app_id);
    assert.equal(sc.token.claims.xms_par_app_azp, d.blueprint.app_id);
    assert.ok(!JSON.stringify(r.json).match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/), 'no raw token anywhere in the answer');

    const api = stepNamed(trace, /weather API/i);
    assert.equal(api.ok, true);
    assert.equal(api.status, 200);
    assert.match(api.detail, new RegExp(`${weather.url}/weather\\?city=Seattle`));
    assert.deepEqual(api.validation.map((v) => [v.check, v.ok]),
      [['token_present', true], ['signature', true], ['issuer', true], ['audience', true],
       ['lifetime', true], ['scope_or_role', true]]);
    assert.equal(api.caller.azp, d.agent.app_id);

    // the same city straight from the API gives the same forecast
    const again = await chat(c, { message: 'what about the weather for Seattle today', mode: 'direct', flow: 'autonomous' });
    assert.equal(again.json.answer, answer);
  });

  test('Direct: the city is a capitalised phrase after in/for, else the last capitalised word', async () => {
    for (const [message, city] of [
      ['Weather in Dallas?', 'Dallas'],
      ['How is the weather in New York today?', 'New York'],
      ['Forecast for San Francisco, please', 'San Francisco'],
      ['Paris weather', 'Paris'],
      ['weather in boston', 'Boston'],
    ]) {
      const r = await chat(c, { message, mode: 'direct', flow: 'autonomous' });
      assert.equal(r.status, 200, `${message}: ${r.text}`);
      assert.match(stepNamed(r.json.trace, /city/i).detail, new RegExp(`"${city}"`), message);
      assert.match(r.json.answer, new RegExp(`^Weather in ${city}: `), message);
    }
    const r = await chat(c, { message: 'weather please', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'no_city');
    assert.match(r.json.error, /Name a city/);
  });

  test('Direct + OBO with alice\'s token: Tc and TR show the user (idtyp=user, alice)', async () => {
    const tc = await userToken(iss, dir.ca, d, d.alice);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'obo' }, { bearer: tc });
    assert.equal(r.status, 200, r.text);
    const { trace, answer } = r.json;
    assert.match(answer, /^Weather in Seattle: .*alice@agentid\.local/);
    const user = stepNamed(trace, /user token/i);
    assert.equal(user.token.claims.preferred_username, 'alice@agentid.local');
    assert.equal(user.token.claims.aud, d.blueprint.app_id);
    const sc = stepNamed(trace, /sidecar/i);
    assert.equal(sc.detail, `GET ${sidecar.url}/AuthorizationHeader/weather?AgentIdentity=${d.agent.app_id}`);
    assert.match(sc.flow, /on behalf of the user/);
    assert.equal(sc.token.claims.idtyp, 'user');
    assert.equal(sc.token.claims.preferred_username, 'alice@agentid.local');
    assert.equal(sc.token.claims.azp, d.agent.app_id);
    assert.equal(sc.token.claims.oid, d.alice.object_id);
    const api = stepNamed(trace, /weather API/i);
    assert.equal(api.caller.idtyp, 'user');
    assert.equal(api.validation.at(-1).detail, 'scp Weather.Read');
  });

  test('OBO without a signed-in user is refused before anything runs', async () => {
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'obo' });
    assert.equal(r.status, 401);
    assert.equal(r.json.error_code, 'sign_in_required');
    assert.match(r.json.error, /sign in/i);
  });

  test('LLM mode: the model calls get_weather, the call goes through the sidecar, the answer uses it', async () => {
    const before = llm.seen.length;
    const r = await chat(c, { message: 'Should I take an umbrella in Seattle?', mode: 'llm', flow: 'autonomous' });
    assert.equal(r.status, 200, r.text);
    const calls = llm.seen.slice(before);
    assert.equal(calls.length, 2);
    const [first, second] = calls.map((s) => s.body);
    assert.equal(first.model, 'qwen2.5:1.5b');
    assert.equal(first.stream, false);
    assert.equal(first.tools[0].function.name, 'get_weather');
    assert.deepEqual(first.tools[0].function.parameters.required, ['city']);
    assert.deepEqual(first.messages.map((m) => m.role), ['system', 'user']);
    assert.deepEqual(second.messages.map((m) => m.role), ['system', 'user', 'assistant', 'tool']);
    assert.equal(second.messages[2].tool_calls[0].function.name, 'get_weather');
    const toolResult = JSON.parse(second.messages[3].content);
    assert.equal(toolResult.city, 'Seattle');
    assert.ok(toolResult.forecast.condition);
    assert.ok(!JSON.stringify(second).includes('eyJ'), 'the LLM never sees a token');

    const { answer, trace } = r.json;
    assert.equal(answer, `In Seattle it is ${toolResult.forecast.condition.toLowerCase()} and ${toolResult.forecast.temperature_c} °C.`);
    assert.deepEqual(trace.map((s) => s.step),
      ['LLM step 1', 'Token request to the sidecar', 'Call the weather API', 'LLM step 2']);
    assert.deepEqual(trace[0].tool_calls, ['get_weather(city="Seattle")']);
    assert.equal(trace[1].token.claims.idtyp, 'app');
    assert.equal(trace[1].token.claims.azp, d.agent.app_id);
    assert.match(trace[3].detail, /final answer/);
  });

  test('LLM mode: a city the API refuses goes back to the model, which calls again', async () => {
    const before = llm.seen.length;
    const r = await chat(c, { message: 'Weather in Seattle? (retry)', mode: 'llm', flow: 'autonomous' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.trace.map((s) => [s.step, s.ok]), [
      ['LLM step 1', true], ['Token request to the sidecar', true], ['Call the weather API', false],
      ['LLM step 2', true], ['Token request to the sidecar', true], ['Call the weather API', true],
      ['LLM step 3', true]]);
    assert.equal(r.json.trace[2].status, 400);
    const second = llm.seen[before + 1].body;
    assert.match(JSON.parse(second.messages.at(-1).content).error, /city must be/);
    assert.match(r.json.answer, /^In Seattle it is /);
  });

  test('LLM mode on behalf of alice', async () => {
    const tc = await userToken(iss, dir.ca, d, d.alice);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'llm', flow: 'obo' }, { bearer: tc });
    assert.equal(r.status, 200, r.text);
    assert.equal(stepNamed(r.json.trace, /sidecar/i).token.claims.preferred_username, 'alice@agentid.local');
    assert.match(r.json.answer, /^In Seattle it is /);
  });

  test('bad requests', async () => {
    let r = await chat(c, { mode: 'direct' });
    assert.equal(r.status, 400);
    assert.match(r.json.error, /message/);
    r = await chat(c, { message: 'x', mode: 'psychic' });
    assert.equal(r.status, 400);
    r = await chat(c, { message: 'x', flow: 'sideways' });
    assert.equal(r.status, 400);
    r = await request(`${c.url}/api/chat`, { method: 'POST', body: '{', headers: { 'Content-Type': 'application/json' } });
    assert.equal(r.status, 400);
    r = await request(`${c.url}/api/chat`, { method: 'POST', body: '{"message":"Weather in Paris"}', headers: { 'Content-Type': 'text/plain' } });
    assert.equal(r.status, 415, 'a cross-site form cannot post JSON without a preflight');
    r = await chat(c, { message: 'Weather in Paris' }, { headers: { Origin: 'http://evil.example' } });
    assert.equal(r.status, 403);
    r = await request(`${c.url}/api/chat`);
    assert.equal(r.status, 405);
  });
});

describe('chat-agent with an OpenAI-compatible LLM (/v1)', () => {
  test('tool_calls with ids, role tool + tool_call_id', async () => {
    const c = await chatAgent(['--llm', `${llm.url}/v1`, '--model', 'qwen2.5:1.5b']);
    const before = llm.seen.length;
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'llm', flow: 'autonomous' });
    assert.equal(r.status, 200, r.text);
    const calls = llm.seen.slice(before);
    assert.deepEqual(calls.map((x) => x.url), ['/v1/chat/completions', '/v1/chat/completions']);
    const tool = calls[1].body.messages.at(-1);
    assert.equal(tool.role, 'tool');
    assert.equal(tool.tool_call_id, 'call_1');
    assert.equal(calls[1].body.messages.at(-2).tool_calls[0].id, 'call_1');
    assert.match(r.json.answer, /^In Seattle it is /);
    assert.equal((await request(`${c.url}/api/status`)).json.ollama_available, true);
  });
});

describe('chat-agent failures', () => {
  test('sidecar down: says so, names the URL', async () => {
    const port = await freePort();
    const c = await chatAgent(['--sidecar', `http://127.0.0.1:${port}`]);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'sidecar_unreachable');
    assert.match(r.json.error, new RegExp(`sidecar at http://127\\.0\\.0\\.1:${port} is not reachable`));
    const sc = stepNamed(r.json.trace, /sidecar/i);
    assert.equal(sc.ok, false);
  });

  test('wrong blueprint secret: the sidecar\'s 401 with AADSTS7000215', async () => {
    const c = await chatAgent(['--sidecar', badSidecar.url]);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'wrong_secret');
    assert.match(r.json.error, /client secret/);
    assert.match(r.json.error, /AADSTS7000215/);
    const sc = stepNamed(r.json.trace, /sidecar/i);
    assert.equal(sc.sidecar_status, 401);
    assert.match(sc.sidecar_detail, /AADSTS7000215/);
  });

  test('consent missing: AADSTS65001 explained', async () => {
    const c = await chatAgent(['--api-name', 'noconsent']);
    const tc = await userToken(iss, dir.ca, d, d.alice);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'obo' }, { bearer: tc });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'consent_required');
    assert.match(r.json.error, /consent/i);
    assert.match(r.json.error, /AADSTS65001/);
  });

  test('the API rejects the audience: its failed_check and checks in the trace', async () => {
    const c = await chatAgent(['--weather-url', badAudWeather.url]);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'api_rejected');
    assert.match(r.json.error, /HTTP 401/);
    assert.match(r.json.error, /'audience' check failed/);
    const api = stepNamed(r.json.trace, /weather API/i);
    assert.equal(api.ok, false);
    assert.equal(api.failed_check, 'audience');
    assert.deepEqual(api.validation.map((v) => v.ok), [true, true, true, false]);
  });

  test('LLM unreachable: says so and offers Direct; status says unavailable', async () => {
    const port = await freePort();
    const c = await chatAgent(['--llm', `http://127.0.0.1:${port}`]);
    let r = await request(`${c.url}/api/status`);
    assert.equal(r.json.ollama_available, false);
    r = await chat(c, { message: 'Weather in Seattle?', mode: 'llm', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'llm_unreachable');
    assert.match(r.json.error, /LLM at http:\/\/127\.0\.0\.1:\d+ is not reachable/);
    assert.match(r.json.error, /Direct/);
    // and Direct still works with the same agent
    r = await chat(c, { message: 'Weather in Seattle?', mode: 'direct', flow: 'autonomous' });
    assert.equal(r.status, 200, r.text);
  });

  test('an LLM that never gives a final answer is stopped at --max-steps', async () => {
    const c = await chatAgent(['--max-steps', '1']);
    const r = await chat(c, { message: 'Weather in Seattle?', mode: 'llm', flow: 'autonomous' });
    assert.equal(r.status, 502);
    assert.equal(r.json.error_code, 'max_steps');
    assert.match(r.json.error, /no final answer within 1 call \(--max-steps\)/);
    assert.equal(r.json.trace.filter((s) => /^LLM step/.test(s.step)).length, 1);
  });

  test('usage errors', async () => {
    const { run } = await import('./harness.mjs');
    let r = run(['chat-agent']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--agent-id/);
    r = run(['chat-agent', '--agent-id', 'nope']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /not a GUID/);
    r = run(['chat-agent', '--agent-id', d.agent.app_id, '--sidecar', 'ftp://x']);
    assert.equal(r.code, 2);
    r = run(['chat-agent', '--agent-id', d.agent.app_id, '--max-steps', '0']);
    assert.equal(r.code, 2);
    r = run(['chat-agent', '--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /--weather-url/);
  });
});
