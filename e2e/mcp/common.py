"""What the MCP client scripts share: reading a tool's result, and failing clearly."""

import contextlib
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def result(r):
    """The structured result of a tool call (a failure's `{"error": …}` is its text), and whether it is an error."""
    data = r.structured_content
    if data is None:
        data = json.loads(r.content[0].text)
    return data, bool(r.is_error)


def check(cond, what, got=None):
    """Exits, saying what failed and what came, unless `cond`."""
    if not cond:
        sys.exit(f"FAILED: {what}: {got!r}")


@contextlib.asynccontextmanager
async def over_http(url, token):
    """An initialized MCP session with openbox over Streamable HTTP, with `token` as the bearer token."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                init = await s.initialize()
                check(init.server_info.name == "openbox", "the handshake", init)
                yield s
