// An upstream MCP server over stdio, built with the official SDK, for the gateway's MCP tests.
// Tools: get-time, secret-tool (a tool the tests' mcpAuthorization rules deny), session_pid
// (its process id: one child per client session; a tool name with "_" in it), env (one
// variable of its environment, to check the target's env reaches it).
//   node stdio-server.mjs
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const TOOLS = [
  { name: 'get-time', description: 'The current time (ISO 8601)', inputSchema: { type: 'object', properties: {} } },
  { name: 'secret-tool', description: 'Must never be reachable through the gateway in the tests',
    inputSchema: { type: 'object', properties: {} } },
  { name: 'session_pid', description: 'The process id of this server', inputSchema: { type: 'object', properties: {} } },
  { name: 'env', description: 'One environment variable',
    inputSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } },
];

const server = new Server({ name: 'test-stdio-mcp', version: '1.0.0' },
  { capabilities: { tools: {} }, instructions: 'stdio test server.' });
server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
server.setRequestHandler(CallToolRequestSchema, async (req) => {
  const text = (t) => ({ content: [{ type: 'text', text: t }] });
  switch (req.params.name) {
  case 'get-time': return text(new Date().toISOString());
  case 'secret-tool': return text('the secret');
  case 'session_pid': return text(String(process.pid));
  case 'env': return text(process.env[String(req.params.arguments?.name)] ?? '');
  default: return { ...text(`no tool ${req.params.name}`), isError: true };
  }
});
// A log line on stderr, and a notification before answering: the gateway must cope.
process.stderr.write(`test-stdio-mcp ${process.pid} up\n`);
await server.connect(new StdioServerTransport());
process.stdin.on('end', () => process.exit(0));
