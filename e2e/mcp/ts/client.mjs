// Drives `openbox mcp --http` with the official MCP TypeScript SDK over Streamable HTTP.
// Usage: node client.mjs URL TOKEN NODE — prints "ok" at the end; exits non-zero, saying
// why, on the first check that fails.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, node] = process.argv.slice(2);

function check(cond, what, got) {
  if (!cond) {
    console.log(`FAILED: ${what}: ${JSON.stringify(got)}`);
    process.exit(1);
  }
}

// Without the token: refused, and nothing served.
const refused = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
  body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list" }),
});
check(refused.status === 401, "a request without the bearer token is refused", refused.status);

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "openbox-e2e-ts", version: "1.0.0" });
await client.connect(transport);
check(client.getServerVersion()?.name === "openbox", "the server", client.getServerVersion());

const { tools } = await client.listTools();
const names = tools.map((t) => t.name);
for (const name of ["run", "read_file", "write_file", "start", "wait", "list_jobs"]) {
  check(names.includes(name), `tool ${name}`, names);
}

const ran = await client.callTool({ name: "run", arguments: { node, command: "echo from-ts" } });
check(!ran.isError && ran.structuredContent.stdout === "from-ts\n", "run", ran);

const bad = await client.callTool({ name: "run", arguments: { node, command: "true", bogus: 1 } });
check(bad.isError && JSON.parse(bad.content[0].text).error.includes("bogus"), "an unknown argument is a tool error", bad);

const path = `/tmp/openbox-ts-${process.pid}.txt`;
const wrote = await client.callTool({ name: "write_file", arguments: { node, path, content: "ünïcode\n" } });
check(!wrote.isError, "write_file", wrote);
const read = await client.callTool({ name: "read_file", arguments: { node, path } });
check(read.structuredContent.text === "ünïcode\n", "read_file", read);
await client.callTool({ name: "run", arguments: { node, command: `rm ${path}` } });

const job = await client.callTool({ name: "start", arguments: { node, command: "echo job-from-ts; exit 4" } });
check(!job.isError, "start", job);
const waited = await client.callTool({ name: "wait", arguments: { job: job.structuredContent.id, seconds: 30 } });
check(waited.structuredContent.exit_code === 4 && waited.isError, "wait", waited);

await client.close();
console.log("ok");
