#!/usr/bin/env python3
"""Fan-out and the MCP server, measured against their neighbours in the same run.

Sets up, all on loopback under a temporary directory: a control plane, --agents agents
(tag `many`), a logged-in CLI with its openboxd; as many OpenSSH sshd, each on a loopback
address of its own (127.0.1.1 …), logging in the bench user by key; then measures
  - `openbox -t many --all true` against `pdsh -R ssh -w 127.0.1.[1-N] true` (fresh ssh
    connections, as pdsh makes them), median of --rounds;
  - an MCP `tools/call run` of `true` through one open `openbox mcp` session against the
    CLI `openbox -n NODE true`, median of --calls each;
  - MCP `write_file` and `read_file` of 1 MiB and 100 MiB against `openbox cp` up and down
    of the same file (median of 5 for 1 MiB, 2 for 100 MiB);
  - a job's output throughput: `start` of a command printing 200 MiB, until `wait` says it
    exited and every byte is in openboxd's spool, against the same command's output through
    `openbox -n NODE CMD > /dev/null`.

Usage: bench/fleet [--agents N] [--rounds N] [--calls N]   (needs root: it starts sshd)
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")
USER = "obbench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, env=None):
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=100)
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="obfleet-")
    os.chmod(tmp, 0o755)
    procs = []
    env = dict(os.environ, OPENBOX_HOME=f"{tmp}/cli")
    try:
        # The openbox fleet.
        addr = f"127.0.0.1:{free_port()}"
        token_file = f"{tmp}/admin.token"
        control = subprocess.Popen([f"{BIN}/openbox-control", "--addr", addr, "--bootstrap-token-file", token_file],
                                   env=dict(os.environ, OPENBOX_HOME=f"{tmp}/cp"), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        procs.append(control)
        while "listening on" not in control.stdout.readline():
            pass
        while not os.path.exists(token_file):
            time.sleep(0.01)
        url = f"http://{addr}"
        subprocess.run([f"{BIN}/openbox", "login", "--server", url, "--token", open(token_file).read().strip()],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        for i in range(a.agents):
            tok = json.loads(subprocess.run([f"{BIN}/openbox", "node", "token", "--tag", "many", "--json"], env=env,
                                            check=True, capture_output=True, text=True).stdout)["token"]
            agent = subprocess.Popen(
                [f"{BIN}/openbox-agent", "--server", url, "--addr", "127.0.0.1:0", "--name", f"m{i:02}"],
                env=dict(os.environ, OPENBOX_HOME=f"{tmp}/agent{i}", OPENBOX_ENROLL_TOKEN=tok,
                         DOCKER_HOST=f"unix://{tmp}/none.sock"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(agent)
        deadline = time.monotonic() + 120
        while True:
            nodes = json.loads(subprocess.run([f"{BIN}/openbox", "nodes", "--json"], env=env, capture_output=True,
                                              text=True).stdout or "[]")
            if sum(n["online"] for n in nodes) >= a.agents:
                break
            if time.monotonic() > deadline:
                sys.exit(f"only {sum(n['online'] for n in nodes)} of {a.agents} agents came online")
            time.sleep(0.2)

        # One sshd on as many loopback addresses, the bench user logging in by key.
        try:
            subprocess.run(["id", USER], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        subprocess.run(["usermod", "-p", "*", USER], check=True)
        sshd_dir = f"{tmp}/sshd"
        os.makedirs(sshd_dir)
        os.chmod(sshd_dir, 0o755)
        port = free_port()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{sshd_dir}/host_key"], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{sshd_dir}/user_key"], check=True)
        shutil.copy(f"{sshd_dir}/user_key.pub", f"{sshd_dir}/authorized_keys")
        os.chmod(f"{sshd_dir}/authorized_keys", 0o644)
        # One sshd per address (sshd listens on at most 16), as pdsh would find 50 machines.
        for i in range(a.agents):
            with open(f"{sshd_dir}/sshd_config{i}", "w") as f:
                f.write(f"Port {port}\nListenAddress 127.0.1.{i + 1}\nHostKey {sshd_dir}/host_key\n"
                        f"PidFile {sshd_dir}/sshd{i}.pid\nAuthorizedKeysFile {sshd_dir}/authorized_keys\n"
                        "UsePAM no\nStrictModes no\nUseDNS no\nPasswordAuthentication no\nMaxStartups 200\n")
            os.makedirs("/run/sshd", exist_ok=True)
            procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", f"{sshd_dir}/sshd_config{i}",
                                           "-E", f"{sshd_dir}/log{i}"]))
        time.sleep(0.5)
        pdsh_env = dict(os.environ, PDSH_SSH_ARGS=(
            f"-q -F /dev/null -i {sshd_dir}/user_key -p {port} -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -l%u %h"))
        pdsh = ["pdsh", "-R", "ssh", "-l", USER, "-w", f"127.0.1.[1-{a.agents}]", "true"]
        fan = [f"{BIN}/openbox", "-t", "many", "--all", "true"]
        # The first call is cold: openboxd dispatches (a certificate per node) and dials
        # every node. Then both are checked to reach every node.
        cold_ms = timed(fan, env)
        for cmd, e in ((fan, env), (pdsh, pdsh_env)):
            ran = subprocess.run(cmd[:-1] + ["echo", "ok"], env=e, capture_output=True, text=True)
            out = ran.stdout + ran.stderr[-2000:]
            reached = sum(line.endswith(": ok") for line in out.splitlines())
            if reached != a.agents:
                sys.exit(f"{cmd[0]} reached {reached} of {a.agents} nodes:\n{out}")
        openbox_ms = statistics.median(timed(fan, env) for _ in range(a.rounds))
        pdsh_ms = statistics.median(timed(pdsh, pdsh_env) for _ in range(a.rounds))

        # MCP: one open session, `run` of `true` again and again, against the CLI.
        cli = [f"{BIN}/openbox", "-n", "m00", "true"]
        timed(cli, env)
        cli_ms = statistics.median(timed(cli, env) for _ in range(a.calls))
        mcp = subprocess.Popen([f"{BIN}/openbox", "mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
        procs.append(mcp)

        def rpc(msg, answer=True):
            mcp.stdin.write(json.dumps(msg) + "\n")
            mcp.stdin.flush()
            while answer:
                reply = json.loads(mcp.stdout.readline())
                if reply.get("id") == msg.get("id"):
                    return reply
            return None

        rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        rpc({"jsonrpc": "2.0", "method": "notifications/initialized"}, answer=False)
        mcp_times = []
        for i in range(a.calls + 1):
            t = time.perf_counter()
            reply = rpc({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                         "params": {"name": "run", "arguments": {"node": "m00", "command": "true"}}})
            took = (time.perf_counter() - t) * 1000
            if reply["result"].get("isError"):
                sys.exit(f"MCP run failed: {reply}")
            if i:
                mcp_times.append(took)
        mcp_ms = statistics.median(mcp_times)

        # Files over MCP against `openbox cp`, the same bytes each way.
        import base64
        next_id = [10_000]

        def tool(name, arguments):
            next_id[0] += 1
            reply = rpc({"jsonrpc": "2.0", "id": next_id[0], "method": "tools/call",
                         "params": {"name": name, "arguments": arguments}})
            if reply["result"].get("isError"):
                sys.exit(f"MCP {name} failed: {str(reply)[:2000]}")
            return reply["result"]

        file_rows = []
        for size, label, rounds in ((1 << 20, "1 MiB", 5), (100 << 20, "100 MiB", 2)):
            data = os.urandom(size)
            local = f"{tmp}/file.bin"
            with open(local, "wb") as f:
                f.write(data)
            encoded = base64.b64encode(data).decode()
            remote = f"{tmp}/remote.bin"
            up_ms = statistics.median(timed([f"{BIN}/openbox", "cp", local, f"m00:{remote}"], env) for _ in range(rounds))
            down_ms = statistics.median(
                timed([f"{BIN}/openbox", "cp", f"m00:{remote}", f"{tmp}/back.bin"], env) for _ in range(rounds))
            writes, reads = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                tool("write_file", {"node": "m00", "path": remote, "content_base64": encoded})
                writes.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                got = tool("read_file", {"node": "m00", "path": remote, "length": size})
                reads.append((time.perf_counter() - t) * 1000)
                blob = next(c for c in got["content"] if c["type"] == "resource")["resource"]["blob"]
                if base64.b64decode(blob) != data:
                    sys.exit(f"read_file of {label} came back different")
            write_ms, read_ms = statistics.median(writes), statistics.median(reads)
            file_rows.append((f"MCP `write_file` of {label}, median of {rounds}", f"{write_ms:.1f} ms",
                              f"{up_ms:.1f} ms (`openbox cp` up)", f"{write_ms / up_ms:.2f}x cp"))
            file_rows.append((f"MCP `read_file` of {label}, median of {rounds}", f"{read_ms:.1f} ms",
                              f"{down_ms:.1f} ms (`openbox cp` down)", f"{read_ms / down_ms:.2f}x cp"))

        # A job's output, 200 MiB, until it is all in the spool, against the same output
        # streamed by a plain call.
        flood = "head -c 209715200 /dev/zero"
        stream_ms = timed([f"{BIN}/openbox", "-n", "m00", flood], env)
        t = time.perf_counter()
        job = tool("start", {"node": "m00", "command": flood})["structuredContent"]
        while True:
            info = tool("wait", {"job": job["id"], "seconds": 50})["structuredContent"]
            if info["state"] != "running":
                break
        job_ms = (time.perf_counter() - t) * 1000
        if info["stdout_bytes"] != 200 << 20:
            sys.exit(f"the job's spool holds {info['stdout_bytes']} bytes, not 200 MiB")
        file_rows.append(("job output, 200 MiB into openboxd's spool", f"{200 / job_ms * 1000:.0f} MiB/s",
                          f"{200 / stream_ms * 1000:.0f} MiB/s (a call to /dev/null)", f"{stream_ms / job_ms:.2f}x the call"))

        rows = [
            (f"`true` on {a.agents} nodes, first call (cold)", f"{cold_ms:.1f} ms", f"{pdsh_ms:.1f} ms",
             f"{cold_ms / pdsh_ms:.2f}x pdsh (ssh)"),
            (f"`true` on {a.agents} nodes, median of {a.rounds}", f"{openbox_ms:.1f} ms", f"{pdsh_ms:.1f} ms",
             f"{openbox_ms / pdsh_ms:.2f}x pdsh (ssh)"),
            (f"MCP `run` of `true`, median of {a.calls}", f"{mcp_ms:.2f} ms", f"{cli_ms:.2f} ms (CLI)",
             f"{mcp_ms / cli_ms:.2f}x the CLI"),
            *file_rows,
        ]
        print("| measure | openbox | baseline | ratio |\n|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run([f"{BIN}/openbox", "daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
