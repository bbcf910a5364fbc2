// Test harness: start the real agentid binary on 127.0.0.1 and talk HTTP(S) to it.
// Only node built-ins, so the integration tests need no npm install.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import net from 'node:net';
import https from 'node:https';
import http from 'node:http';

export const BIN = process.env.AGENTID_BIN || resolve(import.meta.dirname, '../../build/agentid');

/** A port the kernel says is free on 127.0.0.1 right now. */
export async function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Run the binary to completion; returns { code, stdout, stderr }. */
export function run(args, opts = {}) {
  try {
    // A command that should end but serves instead (a server given a config it should refuse)
    // is killed after 30 s, so the test fails rather than hangs.
    const stdout = execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000, ...opts });
    return { code: 0, stdout, stderr: '' };
  } catch (e) {
    return { code: e.status, stdout: e.stdout?.toString() ?? '', stderr: e.stderr?.toString() ?? '' };
  }
}

/** A fresh issuer directory (agentid issuer init) in a temporary folder. */
export function initDirectory() {
  const root = mkdtempSync(join(tmpdir(), 'agentid-test-'));
  const dir = join(root, 'issuer');
  const r = run(['issuer', 'init', '--dir', dir]);
  if (r.code !== 0) throw new Error(`issuer init failed: ${r.stderr}`);
  const file = join(dir, 'directory.json');
  const json = () => JSON.parse(readFileSync(file, 'utf8'));
  return {
    root, dir, file, json,
    save: (obj) => writeFileSync(file, JSON.stringify(obj, null, 2)),
    ca: readFileSync(join(dir, 'tls/ca.crt')),
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}

/** Look up demo objects by name in a directory.json object. */
export function demo(d) {
  const app = (name) => d.applications.find((a) => a.name === name);
  return {
    tenant: d.tenant_id,
    blueprint: app('Weather Agent Blueprint'),
    agent: app('Weather Agent'),
    api: app('Weather API'),
    spa: app('Chat SPA'),
    cli: app('agentid CLI'),
    graph: app('Microsoft Graph'),
    alice: d.users.find((u) => u.user_principal_name === 'alice@agentid.local'),
    agentUser: d.users.find((u) => u.agent_identity),
  };
}

/**
 * Start a long-running agentid subcommand and wait until GET /healthz answers.
 * Returns { url, port, proc, logs(), stop() }; stop() sends SIGTERM and resolves to the
 * exit code, which tests assert is 0 (under ASan a leak makes it non-zero).
 * listen: false starts it without --listen (it must find `port` in its own settings).
 */
export async function start(args, { tls = false, ca, env = {}, port, listen = true } = {}) {
  port ??= await freePort();
  const full = listen ? [...args, '--listen', `127.0.0.1:${port}`] : args;
  const proc = spawn(BIN, full, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (b) => { out += b; });
  proc.stderr.on('data', (b) => { out += b; });
  const exited = new Promise((ok) => proc.on('exit', (code, sig) => ok(code ?? sig)));
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const deadline = Date.now() + 10000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${args.join(' ')} exited: ${out}`);
    try {
      const r = await request(`${url}/healthz`, { ca, timeout: 500 });
      if (r.status === 200) break;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`not healthy in 10s: ${out}`); }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    url, port, proc,
    logs: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** Start `agentid issuer` over HTTPS on a directory. */
export async function startIssuer(dir, opts = {}) {
  const args = ['issuer', '--dir', dir.dir];
  if (opts.http) args.push('--http');
  const s = await start(args, { tls: !opts.http, ca: dir.ca, env: opts.env });
  const tenant = dir.json().tenant_id;
  s.tenant = tenant;
  s.authority = `${s.url}/${tenant}`;
  s.tokenUrl = `${s.url}/${tenant}/oauth2/v2.0/token`;
  return s;
}

/** One HTTP(S) request. Resolves { status, headers, text, json } and never throws on status. */
export function request(url, { method = 'GET', headers = {}, body, ca, timeout = 10000 } = {}) {
  return new Promise((ok, fail) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(u, { method, headers, ca, timeout, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        ok({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', fail);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** POST an x-www-form-urlencoded body made from an object. */
export function postForm(url, fields, { ca, headers = {} } = {}) {
  const body = new URLSearchParams(fields).toString();
  return request(url, {
    method: 'POST', ca, body,
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', ...headers },
  });
}

/** Decode a JWT without verifying: { header, claims }. */
export function decodeJwt(token) {
  const [h, p] = token.split('.');
  const dec = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
  return { header: dec(h), claims: dec(p) };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll fn (sync or async) until it returns something truthy, and return that; after ms throw
 * "timed out waiting for <what>", followed by context() (e.g. the process's output). */
export async function waitFor(fn, ms, what, context = () => '') {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${context()}`);
    await sleep(50);
  }
}

/** Direct children of pid: [{ pid, cmd: argv[] }], from /proc. */
export function children(pid) {
  const kids = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== pid) continue;
      kids.push({ pid: Number(e), cmd: readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0') });
    } catch { /* gone meanwhile */ }
  }
  return kids;
}

/** True if something accepts connections on 127.0.0.1:port. */
export function listening(port) {
  return new Promise((ok) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.on('connect', () => { s.destroy(); ok(true); });
    s.on('error', () => ok(false));
  });
}

/** n different free ports. */
export async function distinctPorts(n) {
  const set = new Set();
  while (set.size < n) set.add(await freePort());
  return [...set];
}
