#!/usr/bin/env python3
"""The web dashboard, measured on this machine (there is no OpenSSH counterpart: the goals
are the measure).

Starts a control plane (release binary) on 127.0.0.1 under a temporary directory, enrolls
--nodes nodes through its API (no agents: they are registry entries, offline after 30 s),
then measures:
  - page weight: every byte the first load fetches, as served and as sent gzipped, and the
    requests that went anywhere but the control plane (goal: <= 200 KB compressed, none);
  - time to the first live table: headless Chromium from navigation to all rows drawn,
    median of --loads loads with the session cookie already set;
  - events per second to --dashboards open event streams while an admin changes a node's
    tags as fast as the API answers, for --seconds.

Usage: bench/dashboard [--nodes N] [--dashboards N] [--seconds S] [--loads N]
"""

import argparse
import gzip
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, addr, token):
        self.addr, self.token = addr, token

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection(self.addr, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return json.loads(data) if data else None


class Browser:
    """web/tests/browser.mjs: headless Chromium, one JSON request per line."""

    def __init__(self):
        self.proc = subprocess.Popen(["node", "browser.mjs"], cwd=os.path.join(ROOT, "web/tests"),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, op, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if not answer["ok"]:
            raise RuntimeError(f"browser {op}: {answer['error']}")
        return answer["value"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


def enroll(api, n):
    key_dir = tempfile.mkdtemp()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{key_dir}/k"], check=True)
    public = open(f"{key_dir}/k.pub").read().strip()
    for i in range(n):
        tok = api.call("POST", "/v1/enroll-tokens", {"tags": ["bench", f"rack{i % 20}"], "ttl_secs": 600})["token"]
        api.call("POST", "/v1/enroll", {
            "token": tok, "name": f"node{i:05}", "addr": f"127.0.0.1:{10000 + i}", "tags": ["bench", f"rack{i % 20}"],
            "platform": {"os": "linux", "arch": "x86_64"}, "host_public_key": public, "capabilities": ["native"],
        })


def stream_events(addr, token, stop, counts, index, ready):
    """Reads one /v1/events stream as the dashboard does (the whole list once, then each
    change alone), counting node events and their bytes."""
    conn = http.client.HTTPConnection(addr, timeout=60)
    conn.request("GET", "/v1/events?changes=true",
                 headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"})
    resp = conn.getresponse()
    ready.release()
    while not stop.is_set():
        line = resp.fp.readline()
        if not line:
            break
        counts[index][1] += len(line)
        if line.startswith(b"event: node"):
            counts[index][0] += 1
    conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--dashboards", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--loads", type=int, default=5)
    a = p.parse_args()

    home = tempfile.mkdtemp(prefix="obdash-")
    addr = f"127.0.0.1:{free_port()}"
    token_file = os.path.join(home, "admin.token")
    control = subprocess.Popen(
        [os.path.join(BIN, "openbox-control"), "--addr", addr, "--bootstrap-token-file", token_file],
        env={**os.environ, "OPENBOX_HOME": home}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    browser = None
    try:
        while "listening on" not in control.stdout.readline():
            pass
        while not os.path.exists(token_file):
            time.sleep(0.01)
        api = Api(addr, open(token_file).read().strip())
        url = f"http://{addr}"
        started = time.monotonic()
        enroll(api, a.nodes)
        print(f"enrolled {a.nodes} nodes in {time.monotonic() - started:.1f} s", file=sys.stderr)

        # Resolves once every node has its row.
        all_rows = (f"new Promise(r => {{ const t = () => document.querySelectorAll('#nodes tbody tr').length >= {a.nodes}"
                    " ? r() : requestAnimationFrame(t); t(); })")
        # Page weight and where the page reaches, on a first load.
        browser = Browser()
        browser("fresh")
        browser("goto", url=api.call("POST", "/v1/web-links")["url"])
        browser("eval", js=all_rows)
        requests = browser("requests")
        outside = [r for r in requests if not r.startswith(url)]
        assets = sorted({r for r in requests if r.startswith(url) and ("/assets/" in r or r.rstrip("/") == url)})
        def weigh(paths):
            """Bytes as served plain, and as sent to a browser that takes gzip."""
            plain = sent = 0
            for path in paths:
                for encoding in ("identity", "gzip"):
                    conn = http.client.HTTPConnection(addr)
                    conn.request("GET", path, headers={"Accept-Encoding": encoding})
                    resp = conn.getresponse()
                    body = resp.read()
                    if encoding == "gzip":
                        assert resp.getheader("Content-Encoding") == "gzip", path
                        assert gzip.decompress(body) == last, path
                        sent += len(body)
                    else:
                        plain += len(body)
                        last = body
            return plain, sent
        served, packed = weigh([a[len(url):] or "/" for a in assets])
        # The terminal's code, fetched only when one is opened.
        terminal_files = ["/assets/xterm.mjs", "/assets/addon-fit.mjs", "/assets/xterm.css"]
        terminal_plain, terminal_sent = weigh(terminal_files)
        # Time to the first live table: navigation start to every row drawn.
        times = []
        for _ in range(a.loads):
            browser("goto", url=f"{url}/#/fleet")
            browser("eval", js=all_rows)
            times.append(browser("eval", js="performance.now()"))
        browser.close()
        browser = None

        # Events to many open dashboards while a node's tags change.
        stop, ready = threading.Event(), threading.Semaphore(0)
        counts = [[0, 0] for _ in range(a.dashboards)]
        threads = [threading.Thread(target=stream_events, args=(addr, api.token, stop, counts, i, ready), daemon=True)
                   for i in range(a.dashboards)]
        for t in threads:
            t.start()
        for _ in threads:
            ready.acquire()
        time.sleep(1)  # the first (whole-list) event each stream gets on opening
        base = [c[0] for c in counts]
        base_bytes = sum(c[1] for c in counts)
        node = "node00000"
        changes, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < a.seconds:
            change = {"add_tags": ["flip"]} if changes % 2 == 0 else {"remove_tags": ["flip"]}
            api.call("PATCH", f"/v1/nodes/{node}", change)
            changes += 1
        elapsed = time.monotonic() - t0
        time.sleep(1)
        stop.set()
        delivered = sum(c[0] for c in counts) - sum(base)
        moved = sum(c[1] for c in counts) - base_bytes

        rows = [
            ("page weight, first load (as served)", f"{served / 1024:.1f} KB", f"{len(assets)} files"),
            ("page weight, first load (sent gzipped)", f"{packed / 1024:.1f} KB", f"{packed / (200 * 1024):.2f}x the 200 KB goal"),
            ("terminal, on first use (sent gzipped)", f"{terminal_sent / 1024:.1f} KB",
             f"{len(terminal_files)} files, {terminal_plain / 1024:.1f} KB as served"),
            ("requests beyond the control plane", f"{len(outside)}", "goal: none"),
            (f"first live table, {a.nodes} nodes, median of {a.loads}", f"{statistics.median(times):.0f} ms", f"max {max(times):.0f} ms"),
            (f"changes made, {a.dashboards} dashboards open", f"{changes / elapsed:.0f} /s", f"{a.seconds:g} s"),
            (f"events delivered to {a.dashboards} dashboards", f"{delivered / elapsed:.0f} /s",
             f"{delivered / max(changes, 1) / a.dashboards:.2f} per change per dashboard, {moved / elapsed / 1e6:.0f} MB/s"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"| {'measure'.ljust(width)} | value | note |\n|{'-' * (width + 2)}|---|---|")
        for name, value, note in rows:
            print(f"| {name.ljust(width)} | {value} | {note} |")
        if outside:
            print("outside requests:", outside, file=sys.stderr)
    finally:
        if browser:
            browser.close()
        control.terminate()
        control.wait()


if __name__ == "__main__":
    main()
