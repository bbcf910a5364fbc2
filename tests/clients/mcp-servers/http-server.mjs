// An upstream MCP server over Streamable HTTP, built with the official SDK (stateful: one
// transport per Mcp-Session-Id), for the gateway's MCP tests. Tools: echo, add, whoami.
// It records every request's Authorization and Mcp-Session-Id headers, so a test can check
// what reached the upstream (the caller's token must not).
//
//   import { startHttpMcpServer } from './mcp-servers/http-server.mjs';
//   const up = await startHttpMcpServer({ json: false });   // SSE answers (the SDK default)
//   up.url; up.seen; up.sessions(); await up.close();
//
// or standalone: node http-server.mjs [PORT]   (prints the URL on stdout)
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema, ListToolsRequestSchema, isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const TOOLS = [
  { name: 'echo', description: 'Echoes the text back',
    inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] } },
  { name: 'add', description: 'Adds two numbers',
    inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] } },
  { name: 'whoami', description: 'The upstream session id and the Authorization header this call carried',
    inputSchema: { type: 'object', properties: {} } },
];

export function makeServer(state) {
  const server = new Server({ name: 'test-http-mcp', version: '1.0.0' },
    { capabilities: { tools: {} }, instructions: 'HTTP test server: echo, add, whoami.' });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const a = req.params.arguments ?? {};
    switch (req.params.name) {
    case 'echo':
      return { content: [{ type: 'text', text: String(a.text) }] };
    case 'add':
      return { content: [{ type: 'text', text: String(Number(a.a) + Number(a.b)) }],
        structuredContent: { sum: Number(a.a) + Number(a.b) } };
    case 'whoami':
      return { content: [{ type: 'text', text: JSON.stringify({
        sessionId: extra.sessionId ?? null,
        authorization: extra.requestInfo?.headers?.authorization ?? null,
      }) }] };
    default:
      return { content: [{ type: 'text', text: `no tool ${req.params.name}` }], isError: true };
    }
  });
  state.servers.add(server);
  return server;
}

function readBody(req) {
  return new Promise((ok, fail) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => ok(Buffer.concat(chunks).toString('utf8')));
    req.on('error', fail);
  });
}

/**
 * Start the server on 127.0.0.1. json: answer POSTs with application/json instead of SSE.
 * Returns { url, port, seen (every request: {method, rpc, authorization, sessionId}),
 * sessions() (live upstream session ids), deleted (ids ended by DELETE), close() }.
 */
export async function startHttpMcpServer({ port = 0, json = false, path = '/mcp' } = {}) {
  const state = { servers: new Set() };
  const transports = new Map();
  const seen = [];
  const deleted = [];
  const http = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://127.0.0.1');
      const text = await readBody(req);
      let body;
      try { body = text ? JSON.parse(text) : undefined; } catch { body = undefined; }
      const sid = req.headers['mcp-session-id'];
      seen.push({ method: req.method, rpc: body?.method ?? null, authorization: req.headers.authorization ?? null,
        sessionId: sid ?? null, protocolVersion: req.headers['mcp-protocol-version'] ?? null });
      if (url.pathname !== path) { res.writeHead(404).end(); return; }
      let t = sid ? transports.get(sid) : undefined;
      if (!t) {
        if (req.method === 'POST' && !sid && isInitializeRequest(body)) {
          t = new StreamableHTTPServerTransport({
            sessionIdGenerator: () => randomUUID(),
            enableJsonResponse: json,
            onsessioninitialized: (id) => { transports.set(id, t); },
          });
          t.onclose = () => {
            if (t.sessionId) { transports.delete(t.sessionId); }
          };
          await makeServer(state).connect(t);
        } else {
          res.writeHead(sid ? 404 : 400, { 'Content-Type': 'application/json' })
            .end(JSON.stringify({ jsonrpc: '2.0', id: null,
              error: { code: -32000, message: sid ? 'Session not found' : 'Bad Request: no session' } }));
          return;
        }
      }
      if (req.method === 'DELETE') deleted.push(sid);
      await t.handleRequest(req, res, body);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500).end(String(e?.message ?? e));
    }
  });
  await new Promise((ok) => http.listen(port, '127.0.0.1', ok));
  const p = http.address().port;
  return {
    url: `http://127.0.0.1:${p}${path}`, port: p, seen, deleted,
    sessions: () => [...transports.keys()],
    /** Forget every session, as a restarted server would (the next request gets 404). */
    forgetSessions() { transports.clear(); },
    async close() {
      for (const t of transports.values()) await t.close().catch(() => {});
      for (const s of state.servers) await s.close().catch(() => {});
      http.closeAllConnections?.();
      await new Promise((ok) => http.close(ok));
    },
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const s = await startHttpMcpServer({ port: Number(process.argv[2] ?? 0), json: process.env.MCP_JSON === '1' });
  process.stdout.write(`${s.url}\n`);
}
