"""Drives `openbox mcp` with the official MCP Python SDK, over stdio, and checks each tool.

Usage: client.py OPENBOX_BINARY NODE_NAME TAG   (OPENBOX_HOME in the environment: a
logged-in CLI). Exits non-zero, saying why, on the first check that fails.
"""

import asyncio
import os
import sys

from common import check, result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main():
    binary, node, tag = sys.argv[1:4]
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            # The current revision: no handshake, `server/discover`.
            found = await session.discover()
            check("2026-07-28" in found.supported_versions, "the current revision", found.supported_versions)
            print("protocol 2026-07-28")

            tools = {t.name: t for t in (await session.list_tools()).tools}
            for name in ["run", "run_all", "list_nodes", "list_sessions", "end_session", "start", "read", "wait", "stop", "list_jobs", "write_stdin"]:
                check(name in tools, f"tool {name}", sorted(tools))
                check(tools[name].description and tools[name].input_schema.get("type") == "object", f"{name} schema", tools[name])
            check("command" in tools["run"].input_schema["properties"], "run takes a command", tools["run"].input_schema)

            nodes, err = result(await session.call_tool("list_nodes", {}))
            check(not err and any(n["name"] == node for n in nodes["nodes"]), "list_nodes", nodes)

            ok, err = result(await session.call_tool("run", {"tag": tag, "command": "echo hi; echo there >&2"}))
            check(not err and ok["exit_code"] == 0 and ok["stdout"] == "hi\n" and ok["stderr"] == "there\n", "run", ok)

            failed, err = result(await session.call_tool("run", {"node": node, "command": "echo nope; exit 3"}))
            check(err and failed["exit_code"] == 3 and failed["stdout"] == "nope\n", "a failing command is an error result", failed)

            slow, err = result(await session.call_tool("run", {"node": node, "command": "sleep 30", "timeout_secs": 1}))
            check(err and slow["exit_code"] == 124, "timeout", slow)

            big, err = result(await session.call_tool("run", {"node": node, "command": "seq 1 100000", "max_output": 1000}))
            check(not err and big["truncated"]["stdout"] and "bytes omitted" in big["stdout"], "truncated", big["truncated"])
            check(big["stdout"].startswith("1\n2\n") and big["stdout"].endswith("100000\n") and len(big["stdout"]) < 1100, "head and tail", len(big["stdout"]))

            every, err = result(await session.call_tool("run_all", {"tags": [tag], "command": "echo all"}))
            check(not err and [r["stdout"] for r in every["results"]] == ["all\n"], "run_all", every)

            s, err = result(await session.call_tool("run", {"node": node, "session": "mcp", "command": "cd /tmp"}))
            check(not err, "session cd", s)
            s, err = result(await session.call_tool("run", {"node": node, "session": "mcp", "command": "pwd"}))
            check(s["stdout"] == "/tmp\n", "session keeps the directory", s)
            listed, err = result(await session.call_tool("list_sessions", {}))
            check(any(x["id"] == "mcp" for x in listed["sessions"]), "list_sessions", listed)
            ended, err = result(await session.call_tool("end_session", {"id": "mcp"}))
            check(not err, "end_session", ended)

            # A background command driven by start / read / wait.
            job, err = result(await session.call_tool("start", {"node": node, "command": "for i in 1 2 3; do echo line $i; sleep 0.3; done; exit 5"}))
            check(not err and job["id"] and job["state"] == "running", "start", job)
            waited, err = result(await session.call_tool("wait", {"job": job["id"], "seconds": 20}))
            check(waited["state"] == "exited" and waited["exit_code"] == 5 and err, "wait until it ends", waited)
            first, _ = result(await session.call_tool("read", {"job": job["id"], "max_bytes": 7}))
            check(first["stdout"] == "line 1\n" and first["stdout_next"] == 7 and first["more"], "read from 0", first)
            rest, _ = result(await session.call_tool("read", {"job": job["id"], "stdout_offset": first["stdout_next"]}))
            check(rest["stdout"] == "line 2\nline 3\n" and not rest["more"] and rest["exit_code"] == 5, "read from the offset", rest)

            long_job, _ = result(await session.call_tool("start", {"node": node, "command": "sleep 300"}))
            stopped, err = result(await session.call_tool("stop", {"job": long_job["id"]}))
            check(not err and stopped["state"] == "exited", "stop", stopped)
            listed, _ = result(await session.call_tool("list_jobs", {}))
            check({job["id"], long_job["id"]} <= {j["id"] for j in listed["jobs"]}, "list_jobs", listed)

            # A call the client gives up on (its read timeout sends notifications/cancelled)
            # stops its command on the node — for run and for every node of run_all.
            for tool, args in [("run", {"node": node}), ("run_all", {"tags": [tag]})]:
                marker = f"sleep 317{len(tool)}"
                try:
                    await session.call_tool(tool, {**args, "command": f"echo go; {marker}"}, read_timeout_seconds=2)
                    check(False, f"{tool} should have been cut off by the client")
                except Exception:
                    pass
                for _ in range(100):
                    left, _ = result(await session.call_tool("run", {"node": node, "command": f"pgrep -fx '{marker}' || echo gone"}))
                    if left["stdout"] == "gone\n":
                        break
                    await asyncio.sleep(0.1)
                check(left["stdout"] == "gone\n", f"a cancelled {tool}'s command stops on the node", left)
    # The revision before it: the initialize handshake.
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            check(init.server_info.name == "openbox" and init.protocol_version == "2025-11-25", "the handshake", init)
            print("protocol", init.protocol_version)
            ok, err = result(await session.call_tool("run", {"node": node, "command": "echo again"}))
            check(not err and ok["stdout"] == "again\n", "run after the handshake", ok)
    print("ok")


asyncio.run(main())
