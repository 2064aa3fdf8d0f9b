"""Drives a control plane's `/mcp` as a user who is not an admin, with the official MCP Python SDK over
Streamable HTTP.

Usage: hosted.py OPENBOX_BINARY URL TOKEN NODE PHASE — PHASE `ungranted` (nothing granted yet: refused, saying
what to ask for) or `granted` (runs as the user, in a session, and as a job). Prints "ok" at the end; exits
non-zero, saying why, on the first check that fails.
"""

import asyncio
import sys
import time

import httpx2
from common import check, over_http, result


async def main():
    _openbox, url, token, node, phase = sys.argv[1:6]
    async with httpx2.AsyncClient() as plain:
        r = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream", "Authorization": "Bearer obx_0"})
        check(r.status_code == 401 and "revoked" in r.text, "a token the control plane does not know: refused", r.text)

    async with over_http(url, token) as s:
        tools = {t.name for t in (await s.list_tools()).tools}
        check({"run", "read_file", "write_file", "start"} <= tools, "the fleet's tools", tools)
        check(not {"upload", "download"} & tools, "no tools that reach the control plane's own files", tools)
        r = await s.call_tool("upload", {"node": node, "local_path": "/etc/shadow", "remote_path": "/tmp/x"})
        data, err = result(r)
        check(err and "no tool \"upload\"" in data["error"], "upload is no tool here", data)

        if phase == "ungranted":
            r = await s.call_tool("run", {"node": node, "command": "true"})
            data, err = result(r)
            check(err and "openbox user grant" in (data.get("error") or data.get("stderr", "")), "nothing granted: refused, saying what to ask for", data)
        else:
            # The grant reaches this user's openboxd as an event: wait for the node to show.
            deadline = time.monotonic() + 30
            while True:
                nodes, _ = result(await s.call_tool("list_nodes", {}))
                if any(n["name"] == node for n in nodes["nodes"]):
                    break
                check(time.monotonic() < deadline, "the granted node to show", nodes)
                await asyncio.sleep(0.1)
            r = await s.call_tool("run", {"node": node, "command": "echo $OPENBOX_USER"})
            data, err = result(r)
            check(not err and data["stdout"] == "bob\n", "runs as the caller", data)
            await s.call_tool("run", {"node": node, "session": "mcp-work", "command": "cd /tmp && X=kept"})
            data, _ = result(await s.call_tool("run", {"session": "mcp-work", "command": "echo $PWD $X"}))
            check(data["stdout"] == "/tmp kept\n", "a session keeps its shell", data)
            job, err = result(await s.call_tool("start", {"node": node, "command": "echo hosted-job"}))
            check(not err, "start", job)
            waited, err = result(await s.call_tool("wait", {"job": job["id"], "seconds": 30}))
            check(not err and waited["exit_code"] == 0, "a job", waited)
            read, _ = result(await s.call_tool("read", {"job": job["id"]}))
            check(read["stdout"] == "hosted-job\n", "its output", read)
            await s.call_tool("end_session", {"id": "mcp-work"})
    print("ok")


asyncio.run(main())
