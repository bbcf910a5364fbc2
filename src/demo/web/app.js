// agentid chat agent — the page's logic. Plain JavaScript; msal-browser (global `msal`) signs the
// user in for the on-behalf-of flow. Everything the server sends is shown with textContent.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  cfg: null,
  mode: 'direct',
  flow: 'autonomous',
  pca: null,          // msal.PublicClientApplication, once initialised
  account: null,      // the signed-in account
  signIn: null,       // { ms, at } of the last interactive sign-in
  busy: false,
};

/* ---- small DOM helpers ---- */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function scrollDown(box) { box.scrollTop = box.scrollHeight; }
const fmtMs = (ms) => (typeof ms === 'number' ? `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms` : '');

/* ---- header and toggles ---- */
function setSeg(id, value) {
  for (const b of $(id).querySelectorAll('button'))
    b.setAttribute('aria-checked', String(b.dataset.value === value));
}
function wireSeg(id, key) {
  $(id).addEventListener('click', (ev) => {
    const b = ev.target.closest('button');
    if (!b) return;
    state[key] = b.dataset.value;
    setSeg(id, state[key]);
    refreshHint();
  });
}

function refreshHint() {
  const cfg = state.cfg || {};
  const hint = [];
  $('account').hidden = state.flow !== 'obo';
  if (state.flow === 'obo') {
    if (!cfg.obo_available) hint.push(`Sign-in is not available: ${cfg.obo_unavailable_reason || 'not configured'}.`);
    else if (!state.account) hint.push('Sign in so the agent can act on your behalf (OBO).');
  }
  if (state.mode === 'llm' && cfg.llm_available === false)
    hint.push(`The LLM (${cfg.llm_endpoint}) is not reachable; Direct mode works without it.`);
  $('hint').textContent = hint.join(' ');
  $('signin').disabled = !state.pca;
}

function showAccount() {
  const u = $('user');
  if (state.account) {
    u.textContent = state.account.name ? `${state.account.name} (${state.account.username})` : state.account.username;
    u.classList.remove('none');
  } else {
    u.textContent = 'Not signed in';
    u.classList.add('none');
  }
  $('signin').hidden = !!state.account;
  $('signout').hidden = !state.account;
  refreshHint();
}

function showLlm(available, model, endpoint) {
  const pill = $('llm-status');
  pill.textContent = `${model} · ${available ? 'online' : 'offline'}`;
  pill.className = `pill ${available ? 'on' : 'off'}`;
  pill.title = endpoint;
  if (state.cfg) state.cfg.llm_available = available;
}

/** Ask the agent again whether its LLM answers (after an LLM failure). */
async function refreshStatus() {
  try {
    const st = await (await fetch('/api/status', { headers: { Accept: 'application/json' } })).json();
    showLlm(st.ollama_available, st.model, st.llm_endpoint);
    refreshHint();
  } catch { /* the agent itself is down: the error bubble says so */ }
}

async function loadConfig() {
  const r = await fetch('/api/config', { headers: { Accept: 'application/json' } });
  const cfg = await r.json();
  state.cfg = cfg;
  $('tenant-id').textContent = cfg.tenant_id || '(not set)';
  $('agent-id').textContent = cfg.agent_id;
  showLlm(cfg.llm_available, cfg.model, cfg.llm_endpoint);
  refreshHint();
  return cfg;
}

/* ---- sign-in (msal-browser) ---- */
async function initMsal(cfg) {
  if (!cfg.obo_available) return;
  if (!window.msal) {
    cfg.obo_available = false;
    cfg.obo_unavailable_reason = 'msal-browser did not load';
    return;
  }
  state.pca = new window.msal.PublicClientApplication({
    auth: {
      clientId: cfg.spa_client_id,
      authority: cfg.authority,
      knownAuthorities: cfg.known_authorities,
      redirectUri: `${location.origin}${cfg.redirect_path}`,
      postLogoutRedirectUri: `${location.origin}/`,
    },
    cache: { cacheLocation: 'sessionStorage' },
  });
  await state.pca.initialize();
  const accounts = state.pca.getAllAccounts();
  if (accounts.length) {
    state.account = accounts[0];
    state.pca.setActiveAccount(state.account);
  }
}

function msalMessage(e) {
  const code = e && (e.errorCode || e.name);
  if (code === 'popup_window_error' || code === 'empty_window_error')
    return 'The sign-in popup was blocked: allow popups for this site and try again.';
  if (code === 'user_cancelled') return 'Sign-in was cancelled.';
  return `Sign-in failed: ${code ? `${code}: ` : ''}${(e && (e.errorMessage || e.message)) || e}`;
}

async function signIn() {
  if (!state.pca) return;
  $('signin').disabled = true;
  const t0 = performance.now();
  try {
    const res = await state.pca.loginPopup({ scopes: state.cfg.scopes });
    state.signIn = { ms: performance.now() - t0, at: new Date() };
    state.account = res.account;
    state.pca.setActiveAccount(res.account);
  } catch (e) {
    addError(msalMessage(e));
  } finally {
    $('signin').disabled = false;
    showAccount();
  }
}

async function signOut() {
  if (!state.pca) return;
  // Forget the account and its tokens in this app (the issuer's session is left alone).
  await state.pca.clearCache({ account: state.account });
  state.account = null;
  state.signIn = null;
  showAccount();
}

/** The user's token for this request, with a trace step saying how it was obtained. */
async function userToken() {
  const req = { scopes: state.cfg.scopes, account: state.account };
  const t0 = performance.now();
  let res;
  try {
    res = await state.pca.acquireTokenSilent(req);
  } catch (e) {
    if (!(window.msal.InteractionRequiredAuthError && e instanceof window.msal.InteractionRequiredAuthError)) throw e;
    res = await state.pca.acquireTokenPopup(req);
  }
  const ms = performance.now() - t0;
  const s = state.signIn;
  const step = {
    step: 'User sign-in (MSAL.js)',
    ms: s ? s.ms : ms,
    ok: true,
    client: true,
    detail: (s ? `loginPopup at ${state.cfg.authority} (${fmtMs(s.ms)}, ${s.at.toLocaleTimeString()}). `
               : 'Signed in earlier in this browser session. ') +
            `Token for this request: acquireTokenSilent, ${res.fromCache ? 'from the cache' : 'refreshed'} in ${fmtMs(ms)}.`,
    kv: { user: res.account.username, scopes: res.scopes.join(' '), authority: state.cfg.authority },
  };
  state.signIn = null; // the next request reports only the silent acquisition
  return { token: res.accessToken, step };
}

/* ---- chat ---- */
function addMsg(kind, text, meta) {
  const box = $('messages');
  const m = el('div', `msg ${kind}`, text);
  if (meta) m.append(el('span', 'meta', meta));
  box.append(m);
  scrollDown(box);
  return m;
}

function addError(text, code) {
  const m = addMsg('error', text);
  if (code === 'llm_unreachable' || code === 'llm_error') {
    const a = el('div', 'actions');
    const b = el('button', 'btn small', 'Use Direct mode');
    b.type = 'button';
    b.addEventListener('click', () => {
      state.mode = 'direct';
      setSeg('mode', 'direct');
      refreshHint();
      send();
    });
    a.append(b);
    m.append(a);
  } else if (code === 'sign_in_required' || code === 'user_token_rejected') {
    if (state.pca) {
      const a = el('div', 'actions');
      const b = el('button', 'btn small', 'Sign in');
      b.type = 'button';
      b.addEventListener('click', signIn);
      a.append(b);
      m.append(a);
    }
  }
  return m;
}

async function send(ev) {
  if (ev) ev.preventDefault();
  if (state.busy) return;
  const message = $('message').value.trim();
  if (!message) return;
  const mode = state.mode, flow = state.flow;
  addMsg('user', message);
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  const clientSteps = [];
  if (flow === 'obo') {
    if (!state.account) {
      addError('On behalf of user needs a signed-in user: sign in first.', 'sign_in_required');
      return;
    }
    try {
      const u = await userToken();
      headers.Authorization = `Bearer ${u.token}`;
      clientSteps.push(u.step);
    } catch (e) {
      addError(msalMessage(e), 'sign_in_required');
      return;
    }
  }
  state.busy = true;
  $('send').disabled = true;
  const pending = addMsg('agent pending', mode === 'llm' ? 'Thinking (LLM)…' : 'Fetching the weather…');
  let res, body;
  try {
    res = await fetch('/api/chat', { method: 'POST', headers, body: JSON.stringify({ message, mode, flow }) });
    body = await res.json();
  } catch (e) {
    body = { error: `The chat agent did not answer (${e.message}). Is agentid chat-agent running?`, trace: [] };
  } finally {
    pending.remove();
    state.busy = false;
    $('send').disabled = false;
  }
  const label = `${mode === 'llm' ? 'LLM' : 'Direct'} · ${flow === 'obo' ? 'On behalf of user' : 'Autonomous'}`;
  renderTrace(clientSteps.concat(body.trace || []), `${label}${body.ms !== undefined ? ` · ${fmtMs(body.ms)}` : ''}`);
  if (body.error) addError(body.error, body.error_code);
  else addMsg('agent', body.answer, label);
  if (mode === 'llm') refreshStatus();   // the LLM pill follows what just happened
}

/* ---- identity trace ---- */
const KEY_CLAIMS = new Set(['aud', 'iss', 'azp', 'appid', 'idtyp', 'oid', 'sub', 'name', 'preferred_username',
  'upn', 'scp', 'roles', 'tid', 'xms_act_fct', 'xms_sub_fct', 'xms_par_app_azp']);
const TIME_CLAIMS = new Set(['iat', 'nbf', 'exp']);

function renderToken(t) {
  const box = el('div', 'token');
  const title = el('div', 'token-title', t.name || 'token');
  box.append(title);
  if (t.error) {
    box.append(el('div', 'detail', `could not decode: ${t.error}`));
    return box;
  }
  const c = t.claims || {};
  if (c.idtyp) title.append(el('span', `tag ${c.idtyp === 'user' ? 'user' : 'app'}`, `idtyp=${c.idtyp}`));
  const who = c.preferred_username || c.upn || c.unique_name;
  if (who) title.append(el('span', 'tag user', who));
  if (state.cfg && c.azp === state.cfg.agent_id) title.append(el('span', 'tag', 'azp = this agent'));

  const body = el('div', 'token-body');
  body.append(el('div', 'section', 'Header'));
  const ht = el('table');
  for (const [k, v] of Object.entries(t.header || {})) {
    const tr = el('tr');
    tr.append(el('td', '', k), el('td', '', typeof v === 'string' ? v : JSON.stringify(v)));
    ht.append(tr);
  }
  body.append(ht);
  body.append(el('div', 'section', 'Claims'));
  const ct = el('table');
  for (const [k, v] of Object.entries(c)) {
    const tr = el('tr', KEY_CLAIMS.has(k) ? 'key' : '');
    const td = el('td', '', typeof v === 'string' ? v : JSON.stringify(v));
    if (TIME_CLAIMS.has(k) && typeof v === 'number')
      td.append(el('span', 'when', `  ${new Date(v * 1000).toLocaleString()}`));
    tr.append(el('td', '', k), td);
    ct.append(tr);
  }
  body.append(ct);
  box.append(body);
  return box;
}

/** Checks as the weather API reports them: an array of objects or strings, or an object map. */
function normChecks(v) {
  const one = (c, key) => {
    if (typeof c === 'string') return { name: c, ok: true };
    if (typeof c === 'boolean') return { name: key, ok: c };
    if (!c || typeof c !== 'object') return { name: key, ok: true, detail: String(c) };
    let ok = c.ok ?? c.passed ?? c.valid ?? c.success;
    const r = c.result ?? c.status;
    if (ok === undefined && typeof r === 'string') ok = /^(ok|pass|passed|valid|success)$/i.test(r);
    if (ok === undefined && typeof r === 'boolean') ok = r;
    const detail = c.detail ?? c.message ?? c.reason ?? c.value ?? c.got ?? c.expected;
    return { name: c.check ?? c.name ?? key, ok: ok !== false, detail };
  };
  if (Array.isArray(v)) return v.map((c, i) => one(c, `check ${i + 1}`));
  if (v && typeof v === 'object') return Object.entries(v).map(([k, c]) => one(c, k));
  return [];
}

function renderChecks(v) {
  const ul = el('ul', 'checks');
  for (const c of normChecks(v)) {
    const li = el('li', c.ok ? 'pass' : 'fail');
    li.append(el('span', 'mark', c.ok ? '✓' : '✗'), el('span', 'cname', c.name));
    const detail = c.detail === undefined || c.detail === null ? ''
      : typeof c.detail === 'string' ? c.detail : JSON.stringify(c.detail);
    li.append(el('span', 'cdetail', detail));   // always three cells: the list is a grid
    ul.append(li);
  }
  return ul;
}

function renderKv(obj) {
  const kv = el('div', 'kv');
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined || v === null || v === '') continue;
    kv.append(el('span', 'k', k), el('span', 'v', typeof v === 'string' || typeof v === 'number' ? v : JSON.stringify(v)));
  }
  return kv;
}

function renderTrace(steps, summary) {
  const ol = $('trace');
  ol.replaceChildren();
  $('trace-summary').textContent = summary || '';
  if (!steps.length) {
    ol.append(el('li', 'empty', 'No steps: the request was refused before anything ran.'));
    return;
  }
  steps.forEach((s, i) => {
    const li = el('li', `step ${s.ok === false ? 'fail' : 'ok'}${s.client ? ' client' : ''}`);
    const d = el('details');
    d.open = true;
    const sum = el('summary');
    sum.append(el('span', 'num', i + 1), el('span', 'name', s.step), el('span', 'ms', fmtMs(s.ms)),
               el('span', 'chev', '›'));
    d.append(sum);
    const body = el('div', 'body');
    if (s.detail) body.append(el('div', 'detail', s.detail));
    const kv = { ...(s.kv || {}) };
    if (s.flow) kv.flow = s.flow;
    if (s.status !== undefined) kv['HTTP status'] = s.status;
    if (s.correlation_id) kv['correlation id'] = s.correlation_id;
    if (s.failed_check) kv['failed check'] = s.failed_check;
    if (s.sidecar_detail) kv['sidecar detail'] = s.sidecar_detail;
    if (s.error) kv.error = s.error;
    if (s.tool_calls) kv['tool calls'] = s.tool_calls.join(', ');
    if (Object.keys(kv).length) body.append(renderKv(kv));
    if (s.validation) {
      body.append(el('div', 'label', 'Weather API validation'));
      body.append(renderChecks(s.validation));
    }
    if (s.token) body.append(renderToken(s.token));
    d.append(body);
    li.append(d);
    ol.append(li);
  });
}

/* ---- start ---- */
async function main() {
  wireSeg('mode', 'mode');
  wireSeg('flow', 'flow');
  $('ask').addEventListener('submit', send);
  $('signin').addEventListener('click', signIn);
  $('signout').addEventListener('click', signOut);
  try {
    const cfg = await loadConfig();
    try {
      await initMsal(cfg);
    } catch (e) {
      cfg.obo_available = false;
      cfg.obo_unavailable_reason = `msal-browser could not start (${e.errorCode || e.message})`;
    }
  } catch (e) {
    addError(`Could not load the configuration from the chat agent: ${e.message}`);
  }
  showAccount();
  document.body.dataset.ready = 'true';
}

main();
