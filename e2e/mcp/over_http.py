"""Drives `openbox mcp --http` with the official MCP Python SDK over Streamable HTTP.

Usage: over_http.py OPENBOX_BINARY URL TOKEN NODE — prints "ok" at the end; exits non-zero, saying why, on
the first check that fails.
"""

import asyncio
import sys

import httpx2
from common import check, over_http


async def main():
    _openbox, url, token, node = sys.argv[1:5]
    async with httpx2.AsyncClient() as plain:
        r = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream"})
        check(r.status_code == 401, "no bearer token: refused", r.status_code)
        r = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream", "Authorization": "Bearer wrong"})
        check(r.status_code == 401, "a wrong token: refused", r.status_code)

    async with over_http(url, token) as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        check({"run", "read_file", "start", "list_jobs"} <= tools, "the tools", tools)
        r = await s.call_tool("run", {"node": node, "command": "echo over-http; echo err >&2"})
        check(not r.is_error and r.structured_content["stdout"] == "over-http\n", "run", r)
        seen = []

        async def progress(p, total, message):
            seen.append(message or "")

        r = await s.call_tool("run", {"node": node, "command": "echo a; sleep 0.5; echo b"}, progress_callback=progress)
        check(r.structured_content["stdout"] == "a\nb\n" and "".join(seen).startswith("a\n"), "progress over HTTP", seen)
        job = (await s.call_tool("start", {"node": node, "command": "echo http-job"})).structured_content
        waited = await s.call_tool("wait", {"job": job["id"], "seconds": 30})
        check(not waited.is_error and waited.structured_content["exit_code"] == 0, "a job", waited)
        read = (await s.call_tool("read", {"job": job["id"]})).structured_content
        check(read["stdout"] == "http-job\n", "its output", read)
    print("ok")


asyncio.run(main())
