// client.mjs — the official TypeScript MCP client (@modelcontextprotocol/sdk,
// pinned in package.json) as a test oracle for pgtrust mcp. Go tests run it
// through internal/mcpnode.
//
// Input: one JSON request, from the file named by argv[2] or from stdin:
//
//	{"transport": "stdio" | "http",
//	 "command": "...", "args": [...], "env": {...},   // stdio
//	 "url": "http://127.0.0.1:N/mcp", "token": "...", // http (token → Authorization: Bearer)
//	 "headers": {...},                                // http, extra request headers
//	 "calls": [{"tool": "...", "arguments": {...}}],
//	 "listResources": true, "readResources": ["uri", ...],
//	 "timeoutMs": 30000}                              // per MCP request
//
// Output: one JSON document on stdout (see internal/mcpnode.Response). A
// failure of the server or of a step is reported in the document ("error"
// at the top, or per call/resource); the exit status is non-zero only when
// the harness itself failed (bad request, unexpected exception).
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

function readRequest() {
  const src = process.argv[2] ? readFileSync(process.argv[2], 'utf8') : readFileSync(0, 'utf8');
  return JSON.parse(src);
}

function message(err) {
  if (err === undefined || err === null) return '';
  // McpError carries the JSON-RPC code; keep it so tests can assert it.
  if (typeof err.code === 'number') return `MCP error ${err.code}: ${err.message.replace(/^MCP error -?\d+: /, '')}`;
  return String(err.message ?? err);
}

async function main() {
  const req = readRequest();
  const timeout = req.timeoutMs ?? 30000;
  const opts = { timeout };
  const out = { serverInfo: null, protocolVersion: '', instructions: '', capabilities: null, tools: [], results: [], resources: [], resourceContents: [], error: '', stderr: '' };

  let transport;
  if (req.transport === 'stdio') {
    if (!req.command) throw new Error('request: stdio needs "command"');
    // The SDK adds its default inherited variables (HOME, PATH, USER, ...)
    // from this process's environment, as desktop MCP clients do.
    transport = new StdioClientTransport({ command: req.command, args: req.args ?? [], env: req.env ?? {}, stderr: 'pipe' });
    transport.stderr?.on('data', (b) => { out.stderr += b.toString(); });
  } else if (req.transport === 'http') {
    if (!req.url) throw new Error('request: http needs "url"');
    const headers = { ...(req.headers ?? {}) };
    if (req.token) headers.Authorization = `Bearer ${req.token}`;
    transport = new StreamableHTTPClientTransport(new URL(req.url), { requestInit: { headers } });
  } else {
    throw new Error(`request: transport must be "stdio" or "http", not ${JSON.stringify(req.transport)}`);
  }

  const client = new Client({ name: 'pgtrust-mcp-node-oracle', version: '1.0.0' });
  try {
    await client.connect(transport, opts);
    out.serverInfo = client.getServerVersion() ?? null;
    out.protocolVersion = transport.protocolVersion ?? '';
    out.instructions = client.getInstructions() ?? '';
    out.capabilities = client.getServerCapabilities() ?? null;

    let cursor;
    do {
      const page = await client.listTools(cursor ? { cursor } : undefined, opts);
      for (const t of page.tools) {
        out.tools.push({ name: t.name, title: t.title, description: t.description, inputSchema: t.inputSchema, outputSchema: t.outputSchema, annotations: t.annotations });
      }
      cursor = page.nextCursor;
    } while (cursor);

    for (const call of req.calls ?? []) {
      const r = { tool: call.tool, isError: false, structuredContent: null, content: [], error: '' };
      try {
        // callTool validates structuredContent against the tool's
        // outputSchema, as every SDK-based agent will.
        const res = await client.callTool({ name: call.tool, arguments: call.arguments ?? {} }, undefined, opts);
        r.isError = res.isError === true;
        r.structuredContent = res.structuredContent ?? null;
        r.content = res.content ?? [];
      } catch (err) {
        r.error = message(err);
      }
      out.results.push(r);
    }

    if (req.listResources) {
      let rc;
      do {
        const page = await client.listResources(rc ? { cursor: rc } : undefined, opts);
        out.resources.push(...page.resources);
        rc = page.nextCursor;
      } while (rc);
    }
    for (const uri of req.readResources ?? []) {
      const r = { uri, contents: [], error: '' };
      try {
        const res = await client.readResource({ uri }, opts);
        r.contents = res.contents ?? [];
      } catch (err) {
        r.error = message(err);
      }
      out.resourceContents.push(r);
    }
  } catch (err) {
    out.error = message(err);
  } finally {
    if (req.transport === 'http' && transport.sessionId) {
      // Ends the session on the server (HTTP DELETE), as a client should.
      await transport.terminateSession().catch(() => {});
    }
    await client.close().catch(() => {});
  }
  // Let the piped stderr of a stdio server drain after it exits (bounded).
  const se = transport.stderr;
  if (req.transport === 'stdio' && se && !se.readableEnded) {
    await Promise.race([new Promise((resolve) => se.once('end', resolve)), new Promise((resolve) => setTimeout(resolve, 1000))]);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`mcp-node harness: ${err?.stack ?? err}\n`);
    process.exit(2);
  },
);
