"""The control plane at fleet scale: for each backend (SQLite, PostgreSQL) and fleet size,
a fresh control plane (release binary) on 127.0.0.1, over HTTPS with its own certificate
(--plain-http for plain HTTP), and `openbox-loadgen` against it — nodes enrolled through
the API, each heartbeating every --interval seconds with its own secret and keeping its
connection between beats, as agents do (--fresh-connections: a new connection, and a TLS
handshake, for every beat), --dispatchers users dispatching to a rack as fast as answers
come, and --subscribers event streams that must each see a change. Prints a Markdown table:
heartbeat p50/p99, dispatches per second and p99, time for a change to reach every
subscriber, the control plane's memory, also per 10,000 nodes, and the cores kept busy in
the measured window (the control plane, the load generator, the whole machine — the
database included).

PostgreSQL is the test cluster of scripts/test-postgres (fsync off: the numbers are the
control plane's, not a disk's). The load generator shares the machine's cores with the
control plane (and PostgreSQL), so each number is a floor for what the control plane does.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_database():
    out = subprocess.run([os.path.join(ROOT, "scripts", "test-postgres")], check=True, capture_output=True, text=True)
    server = next(l.split("=", 1)[1] for l in out.stdout.splitlines() if l.startswith("OPENBOX_TEST_POSTGRES="))
    name = "scale_" + uuid.uuid4().hex[:10]
    subprocess.run(["psql", "-X", "-q", f"{server}/postgres", "-c", f"CREATE DATABASE {name}"], check=True)
    return f"{server}/{name}"


def connections_for(nodes, a):
    """One kept connection per node, as agents hold them, where the open-file limit allows
    (the control plane holds one end of each, beside the event streams); else as many as it
    allows, the nodes taking turns on each."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return min(nodes, files - a.subscribers - 2048)


def run(backend, nodes, a):
    home = tempfile.mkdtemp(prefix="obscale-")
    addr = f"127.0.0.1:{free_port()}"
    token_file = os.path.join(home, "admin.token")
    log = os.path.join(home, "control.log")
    db = postgres_database() if backend == "postgres" else f"sqlite:{home}/openbox.db"
    # The load generator enrolls every node before any beats, so the first ones enrolled are
    # silent for the whole enrollment (about 1 ms a node on SQLite, 4 on PostgreSQL here). A
    # real node beats as soon as it enrolls: give the enrollment time on top of three
    # intervals, or runs whose enrollment passes 90 s measure a wave of nodes going offline
    # and coming back instead of the steady state.
    offline_after = a.interval * 3 + nodes // 200
    control = subprocess.Popen(
        [os.path.join(BIN, "openbox-control"), "--addr", addr, "--db", db, "--ca", f"{home}/ca_key",
         "--bootstrap-token-file", token_file, "--offline-after", f"{offline_after}s"]
        + ([] if a.plain_http else ["--tls"]),
        env={**os.environ, "OPENBOX_HOME": home}, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    try:
        line = ""
        while "listening on" not in line:
            line = control.stdout.readline()
            if control.poll() is not None:
                raise RuntimeError("the control plane did not start")
        url = line.split("listening on ", 1)[1].split()[0]
        server = ["--server", url]
        if not a.plain_http:
            fingerprint = control.stdout.readline().split("TLS certificate key ", 1)[1].split()[0]
            server += ["--fingerprint", fingerprint]
        while not os.path.exists(token_file):
            time.sleep(0.01)
        out = subprocess.run(
            [os.path.join(BIN, "openbox-loadgen"), *server, "--token", open(token_file).read().strip(),
             "--nodes", str(nodes), "--interval", str(a.interval), "--seconds", str(a.seconds),
             "--dispatch-rate", str(a.dispatch_rate), "--dispatchers", str(a.dispatchers), "--subscribers", str(a.subscribers), "--changes", str(a.changes),
             "--pid", str(control.pid), "--connections", str(connections_for(nodes, a))]
            + (["--fresh-connections"] if a.fresh_connections else []),
            stdout=subprocess.PIPE, text=True)  # its progress and errors: on stderr
        if out.returncode != 0:
            sys.exit(f"bench/scale: the load generator failed at {nodes} nodes on {backend}; "
                     f"the control plane's log is {log}")
        return json.loads(out.stdout)
    finally:
        control.terminate()
        control.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,10000,50000,100000")
    p.add_argument("--plain-http", action="store_true", help="plain HTTP, not HTTPS")
    p.add_argument("--fresh-connections", action="store_true", help="a new connection for every heartbeat")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--interval", type=int, default=30)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--dispatch-rate", type=int, default=20)
    p.add_argument("--dispatchers", type=int, default=4)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--changes", type=int, default=10)
    a = p.parse_args()
    # Every node keeps a connection: the load generator holds one end of each, the control
    # plane the other, beside a thousand event streams. Raising the hard limit needs root.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        most = int(open("/proc/sys/fs/nr_open").read())
        resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    largest = max(int(n) for n in a.sizes.split(","))
    if connections_for(largest, a) < largest:
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(f"bench/scale: {files} open files allowed (root raises the limit, unless the machine forbids it): "
              "where that is too few for a connection per node, the nodes take turns on fewer", file=sys.stderr)

    print(f"| backend | nodes | connections | heartbeats/s | heartbeat p50 / p99 | dispatch p50 / p99 at {a.dispatch_rate}/s "
          "| dispatches/s flat out (p99) | change to all subscribers (median / max) | memory (RSS / peak) "
          "| RSS per 10k nodes (above the start's) | cores busy: control / loadgen / machine | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in a.backends.split(","):
        for nodes in (int(n) for n in a.sizes.split(",")):
            r = run(backend, nodes, a)
            hb, d, b, c = r["heartbeats"], r["dispatches"], r["dispatch_burst"], r["change_to_all_subscribers"]
            m = r["control_plane_memory_after_burst"] or {}
            start = (r["control_plane_memory_at_start"] or {}).get("rss_mib") or 0
            errors = hb["errors"] + d["errors"] + b["errors"] + c["errors"]
            conns = "new per beat" if a.fresh_connections else f"{connections_for(nodes, a):,}"
            cpu = r["cpu_in_window"]
            print(f"| {backend} | {nodes:,} | {conns} | {hb['per_sec']:.0f} | {hb['p50_ms']:.1f} / {hb['p99_ms']:.1f} ms "
                  f"| {d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms | {b['per_sec']:.0f} ({b['p99_ms']:.1f} ms) "
                  f"| {c['p50_ms']:.0f} / {c['max_ms']:.0f} ms ({r['subscribers']} streams) "
                  f"| {m.get('rss_mib')} / {m.get('peak_mib')} MiB "
                  f"| {((m.get('rss_mib') or 0) - start) * 10000 / nodes:.1f} MiB "
                  f"| {cpu['control_plane']:.2f} / {cpu['load_generator']:.2f} / {cpu['machine']:.2f} of {cpu['cores']} "
                  f"| {errors} |", flush=True)
            for k in ("heartbeats", "dispatches", "dispatch_burst", "change_to_all_subscribers"):
                if r[k]["first_error"]:
                    print(f"  {backend} {nodes} {k}: {r[k]['first_error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
