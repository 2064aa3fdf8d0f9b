"""Drives `openbox mcp`'s file tools, strict arguments and progress with the official MCP
Python SDK over stdio.

Usage: files.py OPENBOX_BINARY NODE_NAME TAG DIR [SESSION ISOLATION]
(OPENBOX_HOME in the environment: a logged-in CLI). DIR is an empty directory on the node
(the node is this machine, so the caller checks what landed there), or, with SESSION, a
directory inside that session's container. Exits non-zero, saying why, on the first check
that fails; prints "ok" at the end.
"""

import asyncio
import base64
import hashlib
import os
import sys
import tempfile

from common import check, result
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4a80000000049454e44ae426082")


async def main():
    binary, node, tag, d = sys.argv[1:5]
    session_id = sys.argv[5] if len(sys.argv) > 5 else None
    isolation = sys.argv[6] if len(sys.argv) > 6 else None
    where = {"session": session_id} if session_id else {"node": node}
    params = StdioServerParameters(command=binary, args=["mcp"], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()

            async def call(tool, **args):
                return result(await s.call_tool(tool, args))

            if session_id:
                # The session exists once a command ran in it (its container started).
                out, err = await call("run", session=session_id, isolation=isolation, node=node, command=f"mkdir -p {d} && echo in-container > {d}/made")
                check(not err, "the session starts", out)
                out, err = await call("read_file", **where, path=f"{d}/made")
                check(not err and out["text"] == "in-container\n", "read_file inside the session's container", out)
                out, err = await call("write_file", **where, path=f"{d}/sent", content="from-mcp\n")
                check(not err and out["bytes"] == 9, "write_file inside the container", out)
                out, err = await call("run", session=session_id, isolation=isolation, command=f"cat {d}/sent")
                check(out.get("stdout") == "from-mcp\n", "the container's commands see the written file", out)
                out, err = await call("list_dir", **where, path=d)
                check(sorted(e["name"] for e in out["entries"]) == ["made", "sent"], "list_dir in the container", out)
                out, err = await call("end_session", id=session_id)
                check(not err, "end_session", out)
                print("ok")
                return

            tools = {t.name: t for t in (await s.list_tools()).tools}
            for name in ["read_file", "write_file", "edit_file", "list_dir", "stat", "upload", "download"]:
                check(name in tools and tools[name].input_schema.get("additionalProperties") is False, f"tool {name}, strict", tools.get(name))
                check(tools[name].output_schema, f"{name} describes its answer", tools[name])
            check(tools["read_file"].annotations.read_only_hint is True, "read_file is read-only", tools["read_file"].annotations)
            check(tools["write_file"].annotations.destructive_hint is True, "write_file is destructive", tools["write_file"].annotations)
            check(tools["list_nodes"].annotations.read_only_hint is True, "list_nodes is read-only", tools["list_nodes"].annotations)
            check(tools["run"].output_schema and "exit_code" in tools["run"].output_schema["properties"], "run's answer schema", tools["run"].output_schema)

            # Strict arguments: refused as tool errors that say what to send.
            out, err = await call("run", node=node, command="true", bogus=1)
            check(err and "bogus" in out["error"] and "run takes:" in out["error"], "an unknown argument is refused", out)
            out, err = await call("run_all", tags=[], command="echo everywhere")
            check(err and "`tags` is empty" in out["error"], "run_all with no tags is refused", out)
            out, err = await call("run_all", tags=[tag], command="echo native", isolation="nspawn:/nonexistent-tree")
            check(err and "native" not in str(out), "run_all's isolation is used, not ignored", out)
            out, err = await call("run", command="true")
            check(err and "give `node`" in out["error"], "run without a place says what to give", out)
            out, err = await call("run", node=node, command=1)
            check(err and "error" in out, "a wrong type is a tool error too", out)
            out, err = await call("list_sessions", extra=True)
            check(err and "takes no arguments" in out["error"], "a tool without arguments refuses one", out)
            out, err = await call("run", node=node, command="sleep 1.2; echo waited", timeout_secs=0)
            check(not err and out["stdout"] == "waited\n", "timeout_secs 0 is no limit", out)
            out, err = await call("run", node=node, command="sleep 5", timeout_secs=1)
            check(err and out["exit_code"] == 124 and "start" in out.get("hint", ""), "a timeout says how to go on as a job", out)

            # Output that is not text arrives exact; text cut by max_output keeps whole characters.
            out, err = await call("run", node=node, command=f"cat {d}/../png")
            check(not err and base64.b64decode(out["stdout_base64"]) == PNG and "stdout" not in out, "binary output is exact", out)
            out, err = await call("run", node=node, command="for i in $(seq 1 300); do printf '€'; done", max_output=101)
            check(not err and "\ufffd" not in out["stdout"] and out["stdout"].startswith("€€") and out["stdout"].endswith("€"), "a cut never splits a character", out)

            # Progress: a long run's output arrives while it runs.
            seen = []

            async def progress(p, total, message):
                seen.append(message or "")

            r = await s.call_tool("run", {"node": node, "command": "for i in 1 2 3; do echo p$i; sleep 0.4; done"}, progress_callback=progress)
            out, err = result(r)
            check(not err and out["stdout"] == "p1\np2\np3\n", "the run itself", out)
            check("".join(seen).startswith("p1\n") and len(seen) >= 2, "progress notifications carry the output as it comes", seen)

            # Write, read, by bytes and by lines.
            text = "one\ntwo\nthree ünï\nfour"
            out, err = await call("write_file", node=node, path=f"{d}/a.txt", content=text, mode="0640")
            check(not err and out["bytes"] == len(text.encode()), "write_file", out)
            out, err = await call("read_file", node=node, path=f"{d}/a.txt")
            check(not err and out["text"] == text and out["size"] == len(text.encode()) and out["eof"] and out["total_lines"] == 4, "read_file whole", out)
            out, err = await call("read_file", node=node, path=f"{d}/a.txt", line=2, count=2)
            check(out["text"] == "two\nthree ünï\n" and out["first_line"] == 2 and out["lines"] == 2 and out["total_lines"] == 4, "read_file by lines", out)
            out, err = await call("read_file", node=node, path=f"{d}/a.txt", line=1, length=4)
            check(out["text"] == "one\n" and out["lines"] == 1 and out["next_offset"] == 4, "a byte cap at a line's end counts that line only", out)
            # Bytes 12..16 cut ü (bytes 14-15) after its first byte: it is left for the next read.
            out, err = await call("read_file", node=node, path=f"{d}/a.txt", offset=8, length=7)
            check(out["text"] == "three " and out["next_offset"] == 14 and not out["eof"], "a range never cuts a character", out)
            out, err = await call("read_file", node=node, path=f"{d}/a.txt", offset=15, length=4)
            check(out["text"] == "nï" and out["offset"] == 16, "a range begun inside a character starts after it", out)
            out, err = await call("stat", node=node, path=f"{d}/a.txt")
            check(out["type"] == "file" and out["mode"] == "0640" and out["size"] == len(text.encode()), "stat", out)

            out, err = await call("write_file", node=node, path=f"{d}/a.txt", content="x", how="create")
            check(err and "already exists" in out["error"], "create refuses an existing file", out)
            out, err = await call("write_file", node=node, path=f"{d}/a.txt", content="\nfive\n", how="append")
            check(not err and out["size"] == len(text.encode()) + 6, "append", out)

            # Edits the way coding agents make them.
            out, err = await call("edit_file", node=node, path=f"{d}/a.txt", old_text="two", new_text="TWO")
            check(not err and out["replaced"] == 1, "edit_file, once", out)
            await call("write_file", node=node, path=f"{d}/b.txt", content="x = 1\nx = 1\n")
            out, err = await call("edit_file", node=node, path=f"{d}/b.txt", old_text="x = 1", new_text="x = 2")
            check(err and "occurs 2 times" in out["error"], "an ambiguous edit says how often", out)
            out, err = await call("edit_file", node=node, path=f"{d}/b.txt", old_text="y", new_text="z")
            check(err and "not in the file" in out["error"], "a missing text is said", out)
            out, err = await call("edit_file", node=node, path=f"{d}/b.txt", old_text="x = 1", new_text="x = 2", replace_all=True)
            check(not err and out["replaced"] == 2, "replace_all", out)
            out, err = await call("stat", node=node, path=f"{d}/a.txt")
            check(out["mode"] == "0640", "an edit keeps the mode", out)

            # Binary: an image comes back as image content, other bytes as a base64 resource.
            await call("write_file", node=node, path=f"{d}/dot.png", content_base64=base64.b64encode(PNG).decode())
            r = await s.call_tool("read_file", {"node": node, "path": f"{d}/dot.png"})
            images = [c for c in r.content if c.type == "image"]
            check(images and images[0].mime_type == "image/png" and base64.b64decode(images[0].data) == PNG, "an image is image content", r.content)
            blob = bytes(range(256)) * 40
            await call("write_file", node=node, path=f"{d}/blob.bin", content_base64=base64.b64encode(blob).decode(), mode="0755")
            r = await s.call_tool("read_file", {"node": node, "path": f"{d}/blob.bin"})
            res = [c for c in r.content if c.type == "resource"]
            check(res and base64.b64decode(res[0].resource.blob) == blob, "binary is an exact base64 resource", r.content)

            out, err = await call("list_dir", node=node, path=d, depth=2)
            names = {e["name"]: e for e in out["entries"]}
            check({"a.txt", "b.txt", "dot.png", "blob.bin", "sub", "sub/inner"} <= set(names), "list_dir to depth 2", out)
            check(names["sub"]["type"] == "dir" and names["blob.bin"]["mode"] == "0755" and names["blob.bin"]["size"] == len(blob), "entries' types, modes, sizes", names)
            out, err = await call("stat", node=node, path=f"{d}/link")
            check(out["type"] == "symlink" and out["target"] == "a.txt", "stat of a link", out)
            out, err = await call("read_file", node=node, path=f"{d}/missing")
            check(err and "missing" in out["error"], "a missing file is a clear error", out)
            out, err = await call("list_dir", node=node, path=f"{d}/a.txt")
            check(err and "not a directory" in out["error"], "list_dir of a file", out)

            # 20 MiB each way, byte-exact (more than an MCP SDK's default line of 16 MiB).
            big = os.urandom(20 << 20)
            out, err = await call("write_file", node=node, path=f"{d}/big.bin", content_base64=base64.b64encode(big).decode())
            check(not err and out["size"] == len(big), "a 20 MiB write", out)
            r = await s.call_tool("read_file", {"node": node, "path": f"{d}/big.bin", "length": 32 << 20})
            res = [c for c in r.content if c.type == "resource"]
            check(res and hashlib.sha256(base64.b64decode(res[0].resource.blob)).digest() == hashlib.sha256(big).digest(), "a 20 MiB read", r.structured_content)

            # upload and download between this machine and the node.
            with tempfile.TemporaryDirectory() as here:
                src = os.path.join(here, "up.bin")
                with open(src, "wb") as f:
                    f.write(big)
                out, err = await call("upload", node=node, local_path=src, remote_path=f"{d}/up.bin")
                check(not err and out["bytes"] == len(big) and out["files"] == 1, "upload", out)
                out, err = await call("download", node=node, remote_path=f"{d}/up.bin", local_path=os.path.join(here, "down.bin"))
                with open(os.path.join(here, "down.bin"), "rb") as f:
                    check(not err and f.read() == big, "download", out)
                out, err = await call("download", node=node, remote_path=f"{d}/nothing", local_path=here)
                check(err and "nothing" in out["error"], "a missing remote file", out)
    print("ok")


asyncio.run(main())
