"""What the MCP client scripts share: reading a tool's result, and failing clearly."""

import json
import sys


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
