"""Jobs through `openbox mcp` with the official MCP Python SDK, across restarts.

Usage: jobs.py OPENBOX_BINARY start NODE DIR   — starts a job (prints its id), then this
           server goes away; the job writes DIR/done when it has printed everything.
       jobs.py OPENBOX_BINARY finish ID        — a new server: the job is listed, read to
           its last byte, and waited on.
(OPENBOX_HOME in the environment: a logged-in CLI.) Prints "ok" at the end.
"""

import asyncio
import os
import sys

from common import check, result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

LINES = 300


async def main():
    binary, phase = sys.argv[1:3]
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            if phase == "start":
                node, d = sys.argv[3:5]
                script = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.01; done; echo €nd >&2; read x; echo got $x; touch {d}/done"
                job, err = result(await s.call_tool("start", {"node": node, "command": script, "stdin": True}))
                check(not err and job["stdin"], "start", job)
                out, err = result(await s.call_tool("write_stdin", {"job": job["id"], "text": "hello\n", "close": True}))
                check(not err, "write_stdin", out)
                print(job["id"])
            else:
                job_id = sys.argv[3]
                listed, err = result(await s.call_tool("list_jobs", {}))
                check(any(j["id"] == job_id for j in listed["jobs"]), "the job is listed by a new server", listed)
                waited, err = result(await s.call_tool("wait", {"job": job_id, "seconds": 30}))
                check(not err and waited["state"] == "exited" and waited["exit_code"] == 0, "wait", waited)
                # Read in small pieces, to the last byte.
                (out, err_text, at_out, at_err) = ("", "", 0, 0)
                while True:
                    r, e = result(await s.call_tool("read", {"job": job_id, "stdout_offset": at_out, "stderr_offset": at_err, "max_bytes": 1000}))
                    check(not e, "read", r)
                    out += r.get("stdout", "")
                    err_text += r.get("stderr", "")
                    at_out, at_err = r["stdout_next"], r["stderr_next"]
                    if not r["more"]:
                        break
                expected = "".join(f"line {i}\n" for i in range(1, LINES + 1)) + "got hello\n"
                check(out == expected, "every byte of stdout", (len(out), out[-40:]))
                check(err_text == "€nd\n", "stderr, whole characters", err_text)
    print("ok")


asyncio.run(main())
