// The chat agent's web UI in a real browser: Debian's Chromium driven by playwright-core, the
// page's msal-browser signing alice in through the issuer's sign-in page (popup), and the whole
// stack real — issuer, sidecar, weather API, chat agent — except the LLM, a scripted test double
// speaking Ollama's tool-calling protocol.
//
// TLS: the issuer's local CA is imported with certutil into $HOME/.pki/nssdb of a temporary HOME,
// which Chromium trusts (no --ignore-certificate-errors, no ignoreHTTPSErrors). Every request the
// browser makes to a host other than 127.0.0.1 is aborted and fails the test.
// Screenshots: tests/artifacts/chat-ui-*.png.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { initDirectory, startIssuer, demo, start, freePort } from '../integration/harness.mjs';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = resolve(import.meta.dirname, '../artifacts');
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let chromium;
let dir, d, iss, caPath, alicePassword, llm, home, ctx, page;
const procs = [];
const stray = [];      // requests to hosts other than 127.0.0.1
const pageErrors = [];

function requireTools() {
  const missing = [];
  if (!existsSync(CHROMIUM)) missing.push('chromium (apt-get install chromium)');
  try { execFileSync('certutil', ['-H'], { stdio: 'ignore' }); } catch (e) {
    if (e.code === 'ENOENT') missing.push('certutil (apt-get install libnss3-tools)');
  }
  if (!existsSync(resolve(import.meta.dirname, 'node_modules/playwright-core/package.json')))
    missing.push('playwright-core (npm ci in tests/clients)');
  if (missing.length) throw new Error(`chat-ui tests need ${missing.join(', ')}; scripts/deps.sh check installs them`);
}

/** The scripted LLM (Ollama /api/chat): a get_weather{"city":"Seattle"} call, then a sentence. */
async function startLlm() {
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      res.setHeader('Content-Type', 'application/json');
      if (req.method === 'GET' && req.url === '/api/tags') return res.end('{"models":[{"name":"qwen2.5:1.5b"}]}');
      if (req.method !== 'POST' || req.url !== '/api/chat') { res.statusCode = 404; return res.end('{}'); }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      const tool = body.messages.filter((m) => m.role === 'tool').at(-1);
      let message;
      if (!tool) {
        message = { role: 'assistant', content: '',
                    tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Seattle' } } }] };
      } else {
        const r = JSON.parse(tool.content);
        message = { role: 'assistant',
                    content: `In ${r.city} it is ${r.forecast.condition.toLowerCase()} and ${r.forecast.temperature_c} °C right now.` };
      }
      res.end(JSON.stringify({ model: body.model, message, done: true }));
    });
  });
  await new Promise((ok) => srv.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    close: () => new Promise((ok) => { srv.closeAllConnections(); srv.close(() => ok()); }),
  };
}

function sidecarEnv(weatherUrl, secret) {
  return {
    AzureAd__Instance: `${iss.url}/`,
    AzureAd__TenantId: d.tenant,
    AzureAd__ClientId: d.blueprint.app_id,
    AzureAd__ClientCredentials__0__SourceType: 'ClientSecret',
    AzureAd__ClientCredentials__0__ClientSecret: secret,
    DownstreamApis__weather__BaseUrl: `${weatherUrl}/`,
    DownstreamApis__weather__Scopes__0: `api://${d.api.app_id}/.default`,
    Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated: 'true',
    SSL_CERT_FILE: caPath,
  };
}

async function run(args, opts) {
  const p = await start(args, opts);
  procs.push(p);
  return p;
}

async function chatAgent(port, sidecarUrl, weatherUrl, llmUrl) {
  return run(['chat-agent', '--sidecar', sidecarUrl, '--weather-url', weatherUrl, '--agent-id', d.agent.app_id,
    '--tenant-id', d.tenant, '--authority', iss.authority, '--spa-client-id', d.spa.app_id,
    '--blueprint-app-id', d.blueprint.app_id, '--llm', llmUrl], { port });
}

/** A full-page screenshot with the chat and trace panels grown to their content (no inner scroll). */
async function shot(name) {
  const grow = (on) => {
    for (const e of [document.documentElement, document.body, ...document.querySelectorAll('.card, .steps, .messages')]) {
      e.style.height = on ? 'auto' : '';
      e.style.overflow = on ? 'visible' : '';
    }
    document.body.style.minHeight = on ? '100vh' : '';
  };
  await page.evaluate(grow, true);
  await page.screenshot({ path: join(ARTIFACTS, `chat-ui-${name}.png`), fullPage: true });
  await page.evaluate(grow, false);
}

async function open(url) {
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]');
}

async function pick(group, value) {
  await page.click(`#${group} button[data-value="${value}"]`);
}

/** Send a message; resolves to the new last bubble (answer or error) once the agent replied. */
async function send(text) {
  const n = await page.locator('#messages .msg:not(.pending)').count();
  await page.fill('#message', text);
  await page.click('#send');
  // the user's bubble plus the reply
  await page.waitForFunction((k) => document.querySelectorAll('#messages .msg:not(.pending)').length >= k + 2, n,
    { timeout: 30000 });
  return page.locator('#messages .msg:not(.pending)').last();
}

const traceText = () => page.locator('#trace').innerText();

let stack;   // the ports and URLs of the main chat agent and its failure twins

before(async () => {
  requireTools();
  ({ chromium } = await import('playwright-core'));
  mkdirSync(ARTIFACTS, { recursive: true });
  dir = initDirectory();
  caPath = join(dir.dir, 'tls/ca.crt');
  // The chat agents' redirect pages, registered on the SPA before the issuer starts.
  const ports = { main: await freePort(), badSecret: await freePort(), badAud: await freePort() };
  const dj = dir.json();
  const spa = dj.applications.find((a) => a.name === 'Chat SPA');
  for (const p of Object.values(ports)) spa.redirect_uris.push(`http://127.0.0.1:${p}/redirect.html`);
  dir.save(dj);
  d = demo(dir.json());
  alicePassword = d.alice.password;
  iss = await startIssuer(dir);
  llm = await startLlm();

  const weather = await run(['weather-api', '--authority', `${iss.authority}/v2.0`, '--audience', d.api.app_id,
    '--scope', 'Weather.Read', '--role', 'Weather.Read.All'], { env: { SSL_CERT_FILE: caPath } });
  const badAudWeather = await run(['weather-api', '--authority', `${iss.authority}/v2.0`, '--audience',
    '00000000-0000-0000-0000-00000000beef'], { env: { SSL_CERT_FILE: caPath } });
  const sidecar = await run(['sidecar'], { env: sidecarEnv(weather.url, d.blueprint.secrets[0]) });
  const badSidecar = await run(['sidecar'], { env: sidecarEnv(weather.url, 'not-the-secret') });
  const badAudSidecar = await run(['sidecar'], { env: sidecarEnv(badAudWeather.url, d.blueprint.secrets[0]) });
  stack = {
    main: await chatAgent(ports.main, sidecar.url, weather.url, llm.url),
    badSecret: await chatAgent(ports.badSecret, badSidecar.url, weather.url, llm.url),
    badAud: await chatAgent(ports.badAud, badAudSidecar.url, badAudWeather.url, llm.url),
  };

  // A fresh HOME whose NSS database trusts the issuer's CA, as Chromium on Linux reads it.
  home = mkdtempSync(join(tmpdir(), 'agentid-chromium-'));
  const nss = join(home, '.pki/nssdb');
  mkdirSync(nss, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${nss}`, '-N', '--empty-password']);
  execFileSync('certutil', ['-d', `sql:${nss}`, '-A', '-t', 'C,,', '-n', 'agentid-local-ca', '-i', caPath]);

  const env = { ...process.env, HOME: home };
  for (const k of Object.keys(env)) if (/^(https?_proxy|all_proxy|no_proxy)$/i.test(k)) delete env[k];
  ctx = await chromium.launchPersistentContext(join(home, 'profile'), {
    executablePath: CHROMIUM, headless: true, args: ARGS, env,
    viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1,
  });
  // Only 127.0.0.1: anything else is aborted and recorded.
  await ctx.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1' || u.protocol === 'about:' || u.protocol === 'data:') return route.continue();
    stray.push(route.request().url());
    return route.abort();
  });
  page = ctx.pages()[0] ?? await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
});

after(async () => {
  await ctx?.close();
  for (const p of procs.reverse()) assert.equal(await p.stop(), 0, 'clean exit (no leaks under ASan)');
  await llm?.close();
  if (iss) assert.equal(await iss.stop(), 0);
  dir?.cleanup();
  if (home) rmSync(home, { recursive: true, force: true });
});

describe('chat UI in Chromium', () => {
  test('the page: header with tenant and agent, toggles, the prefilled question', async () => {
    await open(stack.main.url);
    assert.equal(await page.locator('#tenant-id').innerText(), d.tenant);
    assert.equal(await page.locator('#agent-id').innerText(), d.agent.app_id);
    assert.equal(await page.inputValue('#message'), 'Weather in Dallas?');
    assert.match(await page.locator('#llm-status').innerText(), /online/);
    assert.equal(await page.locator('#mode button[aria-checked="true"]').innerText(), 'Direct');
    assert.equal(await page.locator('#flow button[aria-checked="true"]').innerText(), 'Autonomous');
    assert.equal(await page.locator('#account').isVisible(), false, 'no sign-in box for Autonomous');
    await shot('0-start');
  });

  test('Direct + Autonomous: Seattle, and the trace shows the agent\'s app token', async () => {
    const reply = await send('Weather in Seattle?');
    assert.match(await reply.getAttribute('class'), /agent/);
    assert.match(await reply.innerText(), /^Weather in Seattle: /);
    const trace = await traceText();
    assert.match(trace, /Token request to the sidecar/);
    assert.match(trace, new RegExp(`AuthorizationHeaderUnauthenticated/weather\\?AgentIdentity=${d.agent.app_id}`));
    assert.match(trace, /idtyp=app/);
    assert.match(trace, /azp = this agent/);
    assert.match(trace, new RegExp(d.agent.app_id));
    assert.match(trace, /Call the weather API/);
    for (const check of ['token_present', 'signature', 'issuer', 'audience', 'lifetime', 'scope_or_role'])
      assert.match(trace, new RegExp(check));
    assert.equal(await page.locator('#trace .step.fail').count(), 0);
    await shot('1-direct-autonomous');
  });

  test('LLM mode: the model calls get_weather and answers', async () => {
    await pick('mode', 'llm');
    const reply = await send('Do I need an umbrella in Seattle?');
    assert.match(await reply.innerText(), /^In Seattle it is .* °C right now\./);
    const trace = await traceText();
    assert.match(trace, /LLM step 1/);
    assert.match(trace, /get_weather\(city="Seattle"\)/);
    assert.match(trace, /LLM step 2/);
    assert.match(trace, /idtyp=app/);
    await shot('2-llm');
  });

  test('On behalf of user: sign in as alice in the popup, the trace shows her tokens', async () => {
    await pick('mode', 'direct');
    await pick('flow', 'obo');
    assert.equal(await page.locator('#account').isVisible(), true);
    assert.equal(await page.locator('#user').innerText(), 'Not signed in');
    const popupP = ctx.waitForEvent('page');
    await page.click('#signin');
    const popup = await popupP;
    await popup.waitForSelector('#login', { timeout: 20000 });
    await popup.screenshot({ path: join(ARTIFACTS, 'chat-ui-3-sign-in-page.png') });
    await popup.fill('#login', 'alice@agentid.local');
    await popup.fill('#passwd', alicePassword);
    // A sign-in page whose Content-Security-Policy blocks the redirect back to the app (Chromium
    // applies form-action to the redirects that follow a form post) fails here by name.
    const blocked = new Promise((_, fail) => popup.on('console', (m) => {
      if (/violates the following Content Security Policy directive/.test(m.text()))
        fail(new Error(`the issuer's sign-in page blocked the redirect to the app: ${m.text().slice(-160)}`));
    }));
    blocked.catch(() => {});   // handled by the race below
    await popup.click('#submit');
    const signedIn = page.waitForFunction(
      () => /alice@agentid\.local/.test(document.getElementById('user').textContent), null, { timeout: 20000 });
    signedIn.catch(() => {});   // the race reports whichever fails first
    await Promise.race([blocked, signedIn]);
    assert.equal(await page.locator('#signout').isVisible(), true);

    const reply = await send('Weather in Seattle?');
    const answer = await reply.innerText();
    assert.match(answer, /^Weather in Seattle: /);
    assert.match(answer, /alice@agentid\.local/);
    const trace = await traceText();
    assert.match(trace, /User sign-in \(MSAL\.js\)/);
    assert.match(trace, /loginPopup/);
    assert.match(trace, /Tc \(user token/);
    assert.match(trace, new RegExp(`AuthorizationHeader/weather\\?AgentIdentity=${d.agent.app_id}`));
    assert.doesNotMatch(trace, /AuthorizationHeaderUnauthenticated/);
    assert.match(trace, /idtyp=user/);
    assert.match(trace, /TR \(resource token/);
    // Tc and TR both name alice
    const tokens = page.locator('#trace .token');
    assert.equal(await tokens.count(), 2);
    for (let i = 0; i < 2; i++) assert.match(await tokens.nth(i).innerText(), /alice@agentid\.local/);
    await shot('4-obo');
  });

  test('sign out', async () => {
    assert.ok(await page.locator('#signout').isVisible(), 'signed in by the previous test');
    await page.click('#signout');
    assert.equal(await page.locator('#user').innerText(), 'Not signed in');
    const reply = await send('Weather in Seattle?');
    assert.match(await reply.getAttribute('class'), /error/);
    assert.match(await reply.innerText(), /sign in first/i);
    await pick('flow', 'autonomous');
  });

  test('failure: the blueprint secret is wrong (AADSTS7000215)', async () => {
    await open(stack.badSecret.url);
    const reply = await send('Weather in Dallas?');
    assert.match(await reply.getAttribute('class'), /error/);
    const text = await reply.innerText();
    assert.match(text, /rejected the blueprint's client secret/);
    assert.match(text, /AADSTS7000215/);
    assert.equal(await page.locator('#trace .step.fail').count(), 1);
    await shot('5-wrong-secret');
  });

  test('failure: the weather API refuses the audience', async () => {
    await open(stack.badAud.url);
    const reply = await send('Weather in Dallas?');
    const text = await reply.innerText();
    assert.match(text, /'audience' check failed/);
    const trace = await traceText();
    assert.match(trace, /failed check\s+audience/);
    assert.match(trace, /✗\s*audience/);
    await shot('6-audience-refused');
  });

  test('failure: the LLM is unreachable, and the offered Direct mode works', async () => {
    await open(stack.main.url);
    await llm.close();
    await pick('mode', 'llm');
    const reply = await send('Weather in Dallas?');
    const text = await reply.innerText();
    assert.match(text, /LLM at http:\/\/127\.0\.0\.1:\d+ is not reachable/);
    await shot('7-llm-unreachable');
    const n = await page.locator('#messages .msg:not(.pending)').count();
    await reply.getByRole('button', { name: 'Use Direct mode' }).click();
    await page.waitForFunction((k) => document.querySelectorAll('#messages .msg:not(.pending)').length >= k + 2, n);
    assert.match(await page.locator('#messages .msg').last().innerText(), /^Weather in Dallas: /);
    assert.equal(await page.locator('#mode button[aria-checked="true"]').innerText(), 'Direct');
  });

  test('no request left 127.0.0.1, no page errors', () => {
    assert.deepEqual(stray, []);
    assert.deepEqual(pageErrors.filter((e) => !/Failed to load resource: the server responded with a status of (401|403|502)/.test(e)), []);
  });
});
