// An upstream MCP server over the legacy HTTP+SSE transport (MCP 2024-11-05), built with the
// official SDK's SSEServerTransport, for the gateway's `sse:` targets. Same tools as
// http-server.mjs (echo, add, whoami). GET /sse opens a session's event stream (its first event,
// "endpoint", names /messages?sessionId=...); POST /messages carries the client's messages,
// answered on the stream.
//
//   import { startSseMcpServer } from './mcp-servers/sse-server.mjs';
//   const up = await startSseMcpServer();
//   up.url (the /sse URL); up.seen; up.sessions(); await up.close();
import { createServer } from 'node:http';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { makeServer } from './http-server.mjs';

/**
 * Start the server on 127.0.0.1. Returns { url, port, seen (every request: {method, path, rpc,
 * authorization, sessionId}), sessions() (live session ids), closed (ids whose stream the
 * client closed), close() }.
 */
export async function startSseMcpServer({ port = 0 } = {}) {
  const state = { servers: new Set() };
  const transports = new Map();
  const seen = [];
  const closed = [];
  const http = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://127.0.0.1');
      const sid = url.searchParams.get('sessionId');
      const entry = { method: req.method, path: url.pathname, rpc: null,
        authorization: req.headers.authorization ?? null, sessionId: sid };
      seen.push(entry);
      if (req.method === 'GET' && url.pathname === '/sse') {
        const t = new SSEServerTransport('/messages', res);
        transports.set(t.sessionId, t);
        res.on('close', () => { transports.delete(t.sessionId); closed.push(t.sessionId); });
        await makeServer(state).connect(t);
        return;
      }
      if (req.method === 'POST' && url.pathname === '/messages') {
        const t = transports.get(sid);
        if (!t) { res.writeHead(404).end('Session not found'); return; }
        const chunks = [];
        for await (const c of req) chunks.push(c);
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        entry.rpc = body.method ?? null;
        await t.handlePostMessage(req, res, body);
        return;
      }
      res.writeHead(404).end();
    } catch (e) {
      if (!res.headersSent) res.writeHead(500).end(String(e?.message ?? e));
    }
  });
  await new Promise((ok) => http.listen(port, '127.0.0.1', ok));
  const p = http.address().port;
  return {
    url: `http://127.0.0.1:${p}/sse`, port: p, seen, closed,
    sessions: () => [...transports.keys()],
    /** Forget every session, as a restarted server would (POSTs get 404, streams end). */
    forgetSessions() { for (const t of transports.values()) t.close().catch(() => {}); transports.clear(); },
    async close() {
      for (const t of transports.values()) await t.close().catch(() => {});
      for (const s of state.servers) await s.close().catch(() => {});
      http.closeAllConnections?.();
      await new Promise((ok) => http.close(ok));
    },
  };
}
