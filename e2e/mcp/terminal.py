"""A job in a terminal through `openbox mcp`, with the official MCP Python SDK: vi, driven by its screen and keys.

Usage: terminal.py OPENBOX_BINARY NODE FILE (OPENBOX_HOME in the environment: a logged-in CLI). Prints "ok" at the
end; exits non-zero, saying why, on the first check that fails.
"""

import asyncio
import os
import sys
import time

from common import check, result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def screen_until(s, job, what, ok):
    """The job's screen once `ok(screen)` holds (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        screen, err = result(await s.call_tool("screen", {"job": job}))
        check(not err, "screen", screen)
        if ok(screen):
            return screen
        check(time.monotonic() < deadline, what, screen)
        await asyncio.sleep(0.05)


async def main():
    binary, node, path = sys.argv[1:4]
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name: t for t in (await s.list_tools()).tools}
            check({"screen", "send_keys"} <= set(tools), "the terminal tools", sorted(tools))
            check(tools["screen"].annotations.read_only_hint, "screen only reads", tools["screen"].annotations)

            job, err = result(await s.call_tool("start", {"node": node, "command": f"vi {path}",
                                                          "terminal": {"rows": 8, "cols": 30}}))
            check(not err and job["terminal"] == {"rows": 8, "cols": 30} and job["stdin"], "start in a terminal", job)
            screen = await screen_until(s, job["id"], "vi to draw its screen",
                                        lambda sc: sc["lines"][1:6] == ["~"] * 5)
            check(screen["rows"] == 8 and screen["cols"] == 30 and screen["cursor"] == [0, 0], "its size, its cursor", screen)

            sent, err = result(await s.call_tool("send_keys", {"job": job["id"], "keys": ["i", "typed over MCP", "Escape"]}))
            check(not err, "send_keys", sent)
            await screen_until(s, job["id"], "the typed text to show", lambda sc: sc["lines"][0] == "typed over MCP")
            bad, err = result(await s.call_tool("send_keys", {"job": job["id"], "keys": ["Ctrl-Shift"]}))
            check(err and "Ctrl-" in bad["error"], "a key that is no key", bad)
            await s.call_tool("send_keys", {"job": job["id"], "keys": [":wq", "Enter"]})
            waited, err = result(await s.call_tool("wait", {"job": job["id"], "seconds": 30}))
            check(not err and waited["exit_code"] == 0, "vi ended", waited)
            with open(path) as f:
                check(f.read() == "typed over MCP\n", "the file vi wrote", path)

            plain, _ = result(await s.call_tool("start", {"node": node, "command": "true"}))
            no_screen, err = result(await s.call_tool("screen", {"job": plain["id"]}))
            check(err and "without a terminal" in no_screen["error"], "no screen without a terminal", no_screen)
    print("ok")


asyncio.run(main())
