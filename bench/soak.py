#!/usr/bin/env python3
"""A soak under faults: the real CLI for --minutes while the fleet under it is frozen, cut
off, killed, restarted and out of disk — and every answer checked.

Sets up, under a temporary directory, on loopback and on one network namespace of its own
(a veth pair on 10.77.N.0/24: the namespace at .2, this side at .1):
  - a control plane on the link's host side (so it serves HTTPS; every client pins its key
    with --fingerprint), its registry on PostgreSQL (scripts/test-postgres, on port 5496)
    or SQLite; nodes show offline only 60 s after their last heartbeat;
  - agents, heartbeating every second, tagged `soak`: s0 and s1 plain, s2 inside the
    namespace, s3 with its clock 3 minutes ahead (libfaketime preloaded, as `faketime -f
    +3m` does, so the agent keeps its own pid), and with --mesh s4 on a Headscale tailnet
    only (no TCP listener; every openboxd joins the tailnet at login);
  - three users, each with an OPENBOX_HOME (and openboxd) of its own: admin, alice and
    bob, granted the tag and each node by name (nodes beside the control plane take only
    grants that name them);
  - a 2 MiB tmpfs, for copies into a full disk.
Then, for --minutes, workers call through `openbox`, each call with its own --timeout and
a watchdog: a call still running 30 s past its deadline is killed and counted STUCK.
  one-shot  alice, bob  `seq A B` (up to ~1 MB): exit 0 must print exactly seq's output
  session   alice       `cd /tmp && export V=X`, then `echo $V $PWD` must say `X /tmp` when
                        both exit 0; a new session every 20 calls, the old one removed
                        (`session rm`)
  cp        bob         a 0-4 MiB file to a random node and back, checked byte for byte
                        (both ways); one in five goes into the full tmpfs, where exit 1
                        "No space left" is fine and exit 0 must still be exact
  fan-out   admin       `--all 'echo hi'`: only `NAME: hi` lines, every node on exit 0, and
                        every node no fault touched in the last 15 s must have answered
  mcp       admin       one long-lived `openbox mcp` (JSON-RPC on stdio, `initialize`
                        first): tool `run` of `seq 1 N` checked as above, `run_all` of
                        `echo hi` checked as fan-out; a server that dies or hangs is
                        started again
Meanwhile, every 3-8 s, one fault from a shuffled cycle of all kinds (never two at once):
  freeze            SIGSTOP a random agent for 2-6 s, then SIGCONT
  partition         the namespace's end of the link down for 2-6 s (agent s2), then up
  kill-agent        SIGKILL a random agent, start it again at once (same home and args)
  restart-control   SIGKILL the control plane, start it again (same address, home, db)
  restart-postgres  stop PostgreSQL, start it again 1-4 s later (only on PostgreSQL)
  kill-openboxd     SIGKILL a random user's openboxd (the next call starts one)
  full-disk         fill the tmpfs with dd, or (every other time) empty it
and every 10 s a sample of the RSS and open descriptors of each openboxd, each agent, the
control plane and the MCP server.

Reading the table: one row per kind of call; the outcome columns count calls by exit
code — ok (0, and the answer checked), 124 (timed out), 255 (node lost or unreachable),
254 (the session's shell had ended: a documented outcome), other (anything else; the lines
under the table say which code and why, e.g. cp's exit 1 "No space left"). The failure
columns: overrun>1s (ended more than a second after its --timeout), stuck (killed by the
watchdog), lost-bytes (exit 0 but the output or copy differs), wrong (exit 0 with a wrong
answer), missed (a fan-out left out a node that no fault had touched). Any failure, or an
error of the harness itself, makes the soak exit 1; --keep then keeps the temporary
directory (every process's log, each openboxd's under its user's home, soak.log with
each fault and failure). The memory table uses the samples after a warm-up (the first
quarter of the run, at least a minute for runs of 4 minutes or more): first, last and
largest RSS and descriptor counts of each role, and their growth per hour — the
least-squares slope over the samples of the role's longest-lived process, since faults
restart processes.

PostgreSQL is on by default when /usr/lib/postgresql/*/bin/initdb exists, the tailnet when
scripts/test-headscale answers within 10 s (its Headscale already built); the first line
says which. The binaries are copied from target/release (target/debug with --debug) into
the temporary directory first, so a build meanwhile cannot change them under a restart.

Usage: bench/soak --minutes N [--seed S] [--debug] [--postgres|--no-postgres]
                  [--mesh|--no-mesh] [--faults KIND,…] [--keep] [--json]   (needs root)
"""

import argparse
import collections
import dataclasses
import glob
import hashlib
import itertools
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
TAG = "soak"
CALL_TIMEOUT = 8  # seconds, for commands
CP_TIMEOUT = 20  # seconds, for each copy
WATCHDOG = 30  # a call still running this long past its deadline is STUCK
GRACE = 15  # seconds after a fault during which the node it touched may still fail
SAMPLE_EVERY = 10
POSTGRES_PORT = 5496
FULL_MIB = 2
SKEW = "+3m"
# What tailnet processes in tests set (e2e/src/lib.rs MESH_TEST_ENV): nodes would
# otherwise offer each other the machine's own interface addresses.
MESH_TEST_ENV = ("TS_DEBUG_OMIT_LOCAL_ADDRS", "true")
# Set in every process the soak starts, so that the end can find them all.
MARK = "OBSOAK_RUN"

OUTCOMES = ["ok", "124", "255", "254", "other"]
FAILURES = ["overrun>1s", "stuck", "lost-bytes", "wrong", "missed"]
ROWS = ["one-shot", "session", "session rm", "cp", "fan-out", "mcp"]
FAULT_KINDS = ["freeze", "partition", "kill-agent", "restart-control", "restart-postgres", "kill-openboxd",
               "full-disk"]


class HarnessError(Exception):
    """The soak itself could not go on (not a finding about openbox)."""


# ---- small helpers ---------------------------------------------------------------------


def sha(data):
    return hashlib.sha256(data).hexdigest()


def seq(a, b):
    """What `seq a b` prints."""
    return "".join(f"{i}\n" for i in range(a, b + 1)).encode()


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host, port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def first_difference(got, want):
    """Where two byte strings first differ, in words."""
    n = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
    return f"{len(got)} bytes instead of {len(want)}, first difference at byte {n}"


def gist(text):
    """One line of an error message, with numbers and ids folded, to count alike ones."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(no message)")
    line = re.sub(r"/tmp/obsoak-[^/ ]+", "TMP", line)
    line = re.sub(r"\b[0-9a-f]{8,}\b", "…", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    return line[:110]


def proc_stat(pid):
    """(RSS in KiB, open descriptors) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        if re.search(r"^State:\s+Z", status, re.M):
            return None
        rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, AttributeError):
        return None


def fd_targets(pid):
    """What each open descriptor of a process points at (`socket:[…]`, a path, …)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    targets = []
    for name in names:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue  # closed meanwhile
    return targets


def fd_kinds(pid):
    """A process's open descriptors counted by kind: socket, pipe, pty, file, eventpoll…"""
    kinds = collections.Counter()
    for target in fd_targets(pid):
        if target.startswith(("socket:", "pipe:")):
            kinds[target.split(":")[0]] += 1
        elif target.startswith("anon_inode:"):
            kinds[target[len("anon_inode:"):].strip("[]")] += 1
        elif target.startswith("/dev/pts/") or target == "/dev/ptmx":
            kinds["pty"] += 1
        else:
            kinds["file"] += 1
    return kinds


def fd_files(pid):
    """The files (not sockets, pipes, terminals or kernel objects) a process has open."""
    return collections.Counter(re.sub(r"/tmp/obsoak-[^/]+", "TMP", t) for t in fd_targets(pid)
                               if t.startswith("/") and not t.startswith("/dev/pts/") and t != "/dev/ptmx")


def descendants(pid):
    """How many processes descend from `pid`."""
    count, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            count += len(kids)
            todo += kids
    return count


def proc_state(pid):
    """The State line of /proc/PID/status, e.g. "T (stopped)"."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return re.search(r"^State:\s+(.*)$", f.read(), re.M).group(1)
    except (OSError, AttributeError):
        return "gone"


def pids_with_env(needle):
    """Live processes whose environment holds `needle` (bytes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def slope_per_hour(points):
    """Least-squares slope of (seconds, value) points, per hour; None with fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / sxx * 3600


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


# ---- the log, the faults so far, the counts --------------------------------------------


class Log:
    """Timestamped lines (seconds since the start) to stdout and to soak.log."""

    def __init__(self, path):
        self.t0 = time.monotonic()
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def __call__(self, msg, quiet=False):
        line = f"[{self.now():7.1f}s] {msg}"
        with self.lock:
            self.file.write(line + "\n")
            if not quiet:
                print(line, flush=True)


@dataclasses.dataclass
class Fault:
    kind: str
    scope: str  # "global", "agent:NAME", "user:NAME" or "disk"
    what: str
    start: float
    end: float | None = None


class FaultLog:
    """Every fault with when it began and ended, to tell which calls it may have touched."""

    def __init__(self, log):
        self.log = log
        self.faults = []
        self.counts = collections.Counter()
        self.lock = threading.Lock()

    def begin(self, kind, scope, what):
        fault = Fault(kind, scope, what, self.log.now())
        with self.lock:
            self.faults.append(fault)
            self.counts[kind] += 1
        self.log(f"fault {kind}: {what}")
        return fault

    def end(self, fault, note=""):
        fault.end = self.log.now()
        if note:
            self.log(f"  {fault.kind} done: {note}")

    def touching(self, scopes, t0, t1):
        """Faults on any of `scopes` active during [t0, t1] or ended less than GRACE before."""
        with self.lock:
            return [f for f in self.faults if f.scope in scopes and f.start <= t1
                    and (f.end is None or f.end + GRACE >= t0)]

    def around(self, t0, t1):
        """In words, every fault active during [t0, t1] or just before."""
        with self.lock:
            near = [f for f in self.faults if f.start <= t1 and (f.end is None or f.end + GRACE >= t0)]
        return "; ".join(f"{f.kind} {f.what} at {f.start:.1f}s" for f in near) or "no fault"


class Stats:
    """Calls by row and outcome, failures with their evidence, the worst overrun."""

    def __init__(self, log):
        self.log = log
        self.counts = {row: collections.Counter() for row in ROWS}
        self.reasons = {row: collections.Counter() for row in ROWS}
        self.failures = []  # (row, kind, detail)
        self.harness = []
        self.worst = (float("-inf"), "no call")  # the largest time past a deadline, and which call
        self.lock = threading.Lock()

    def call(self, row, code, elapsed, timeout, why, what):
        bucket = str(code) if code in (124, 255, 254) else "ok" if code == 0 else "other"
        with self.lock:
            self.counts[row][bucket] += 1
            if code != 0:
                self.reasons[row][(str(code), gist(why))] += 1
            if timeout is not None and code != "exited" and elapsed - timeout > self.worst[0]:
                self.worst = (elapsed - timeout, f"{what} (exit {code}, {elapsed:.2f}s)")
        if timeout is not None and elapsed > timeout + 1:
            self.fail(row, "overrun>1s", f"{what}: exit {code} after {elapsed:.2f}s, deadline {timeout}s")

    def fail(self, row, kind, detail):
        with self.lock:
            self.counts[row][kind] += 1
            self.failures.append((row, kind, detail))
        self.log(f"FAILURE {row} {kind}: {detail}")

    def harness_error(self, what):
        with self.lock:
            self.harness.append(what)
        self.log(f"HARNESS ERROR: {what}")

    def leaked(self, detail):
        """What a process still held once the run was over and everything it did was undone."""
        with self.lock:
            self.failures.append(("descriptors", "leaked", detail))
        self.log(f"FAILURE descriptors leaked: {detail}")

    def failed(self):
        return bool(self.failures or self.harness)


# ---- processes -------------------------------------------------------------------------


@dataclasses.dataclass
class Ran:
    """One finished CLI call. `code` is None when the watchdog had to kill it."""

    code: int | None
    out: bytes
    err: str
    t0: float
    t1: float

    @property
    def elapsed(self):
        return self.t1 - self.t0


class Proc:
    """A long-running child, its output appended to a log, started again with the same
    command and environment after a fault."""

    def __init__(self, name, argv, env, log_path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen = None

    def start(self, ready=None, timeout=60):
        """Starts it and waits for a line of its output containing `ready`; that line."""
        offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self.wait_line(offset, ready, timeout) if ready else None

    def wait_line(self, offset, needle, timeout):
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if needle in line:
                    return line
            if self.popen.poll() is not None:
                raise HarnessError(f"{self.name} exited ({self.popen.returncode}) before printing {needle!r}; "
                                   f"see {self.log_path}:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name} did not print {needle!r} within {timeout}s; see {self.log_path}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill(self):
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()


class User:
    """One person's CLI: an OPENBOX_HOME of its own, and so an openboxd of its own."""

    counter = itertools.count()

    def __init__(self, name, home, env, openbox, clock, scratch):
        self.name, self.home, self.openbox, self.clock, self.scratch = name, home, openbox, clock, scratch
        self.env = dict(env, OPENBOX_HOME=home)
        os.makedirs(home, exist_ok=True)

    def run(self, args, timeout=None, env=None):
        """`openbox ARGS`, its output in files (openboxd holds the CLI's descriptors, so a
        pipe's end could outlive the CLI), killed WATCHDOG s past `timeout`."""
        n = next(User.counter)
        out_path, err_path = f"{self.scratch}/{n}.out", f"{self.scratch}/{n}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = self.clock()
            p = subprocess.Popen([self.openbox, *args], env=env or self.env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err)
        try:
            code = p.wait(timeout=(timeout or 30) + WATCHDOG)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            code = None
        t1 = self.clock()
        with open(out_path, "rb") as f:
            stdout = f.read()
        with open(err_path, "rb") as f:
            stderr = f.read().decode(errors="replace")
        os.remove(out_path)
        os.remove(err_path)
        return Ran(code, stdout, stderr, t0, t1)

    def must(self, args, env=None):
        """A set-up call that has to succeed; its stdout."""
        ran = self.run(args, 60, env)
        if ran.code != 0:
            raise HarnessError(f"{self.name}: openbox {shlex.join(args)} exited {ran.code}: {ran.err.strip()}")
        return ran.out.decode()

    def daemon_pid(self):
        """This user's live openboxd, found by its environment (no call that would start one)."""
        for pid in pids_with_env(f"OPENBOX_HOME={self.home}".encode()):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "openboxd" and proc_stat(pid):
                        return pid
            except OSError:
                pass
        return None


class Link:
    """A network namespace joined to this side by a veth pair (as e2e/src/lib.rs Link)."""

    def __init__(self):
        used = sh("ip -o addr; ip route show table all", check=False).stdout
        n = next((n for n in range(77, 100) if f"10.77.{n}." not in used), None)
        if n is None:
            raise HarnessError("no free subnet 10.77.N.0/24 (N in 77-99)")
        self.netns, self.veth, self.subnet = f"obsoak{n}", f"obsoakv{n}", f"10.77.{n}"
        sh(f"ip netns add {self.netns} && ip link add {self.veth} type veth peer name {self.veth}p "
           f"&& ip link set {self.veth}p netns {self.netns} && ip addr add {self.subnet}.1/24 dev {self.veth} "
           f"&& ip link set {self.veth} up && ip -n {self.netns} addr add {self.subnet}.2/24 dev {self.veth}p "
           f"&& ip -n {self.netns} link set {self.veth}p up && ip -n {self.netns} link set lo up "
           f"&& ip route add blackhole {self.subnet}.0/24 metric 4000")

    @property
    def gateway(self):
        return f"{self.subnet}.1"

    @property
    def addr(self):
        return f"{self.subnet}.2"

    def prefix(self):
        return ["ip", "netns", "exec", self.netns]

    def cut(self):
        sh(f"ip -n {self.netns} link set {self.veth}p down")

    def heal(self):
        sh(f"ip -n {self.netns} link set {self.veth}p up")

    def remove(self):
        sh(f"ip netns pids {self.netns} | xargs -r kill -9; ip netns del {self.netns}; "
           f"ip link del {self.veth} 2>/dev/null; ip route del blackhole {self.subnet}.0/24 metric 4000", check=False)


class Postgres:
    """A PostgreSQL cluster of the soak's own, through scripts/test-postgres."""

    def __init__(self, tmp, env):
        self.env = dict(env, OPENBOX_TEST_POSTGRES_DIR=f"{tmp}/pg", OPENBOX_TEST_POSTGRES_PORT=str(POSTGRES_PORT))
        if port_open("127.0.0.1", POSTGRES_PORT):
            raise HarnessError(f"something already listens on 127.0.0.1:{POSTGRES_PORT} (another soak?)")
        self.started = True
        self.server = self.start()
        out = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", f"{self.server}/postgres", "-c",
                              "CREATE DATABASE soak"], capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"psql: {out.stderr}")
        self.url = f"{self.server}/soak"

    def start(self):
        out = subprocess.run([f"{ROOT}/scripts/test-postgres"], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"scripts/test-postgres: {out.stderr}")
        return next(ln.split("=", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("OPENBOX_TEST_POSTGRES="))

    def stop(self):
        subprocess.run([f"{ROOT}/scripts/test-postgres", "stop"], env=self.env, capture_output=True)


def headscale_binary(wait):
    """The path scripts/test-headscale prints, or None if it fails or takes over `wait` s."""
    p = subprocess.Popen([f"{ROOT}/scripts/test-headscale"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None
    return out.strip() if p.returncode == 0 else None


class Headscale:
    """Headscale on 127.0.0.1 as e2e/src/lib.rs Headscale::start configures it."""

    def __init__(self, binary, tmp, env):
        self.bin, self.dir = binary, f"{tmp}/headscale"
        os.makedirs(self.dir)
        http, grpc, stun = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{http}"
        with open(f"{ROOT}/scripts/headscale.yaml") as f:
            config = f.read()
        for key, value in [("{url}", self.url), ("{http}", str(http)), ("{grpc}", str(grpc)),
                           ("{stun}", str(stun)), ("{d}", self.dir)]:
            config = config.replace(key, value)
        self.config = f"{self.dir}/config.yaml"
        with open(self.config, "w") as f:
            f.write(config)
        self.proc = Proc("headscale", [binary, "-c", self.config, "serve"], env, f"{tmp}/logs/headscale.log")
        self.proc.start()
        self.wait_healthy()

    def wait_healthy(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HarnessError("Headscale did not answer /health within 60s")
            time.sleep(0.2)

    def cli(self, *args):
        out = subprocess.run([self.bin, "-c", self.config, *args, "-o", "json"], capture_output=True, text=True)
        if out.returncode != 0:
            raise HarnessError(f"headscale {' '.join(args)}: {out.stderr}")
        return json.loads(out.stdout)

    def auth_key(self, user):
        """A reusable pre-authorized key for `user`, made with the user (Headscale::new_key)."""
        made = self.cli("users", "create", user)
        key = self.cli("preauthkeys", "create", "-u", str(made["id"]), "--reusable", "-e", "24h")
        return key["key"]


class ControlPlane:
    def __init__(self, soak, addr, db_args):
        home = f"{soak.tmp}/cp"
        self.token_file = f"{soak.tmp}/admin.token"
        argv = [soak.bin("openbox-control"), "--addr", addr, "--bootstrap-token-file", self.token_file,
                "--offline-after", "60s", *db_args]
        self.proc = Proc("control plane", argv, dict(soak.env, OPENBOX_HOME=home), f"{soak.tmp}/logs/control.log")
        listening = self.proc.start("listening on ")
        self.url = next(w for w in listening.split() if w.startswith("https://"))
        self.fingerprint = self.proc.wait_line(0, "TLS certificate key ", 30).split()[3]
        deadline = time.monotonic() + 30
        while not os.path.exists(self.token_file):
            if time.monotonic() > deadline:
                raise HarnessError("the control plane wrote no bootstrap token")
            time.sleep(0.05)
        with open(self.token_file) as f:
            self.admin_token = f.read().strip()

    def restart(self):
        self.proc.kill()
        self.proc.start("listening on ")


class Agent:
    """One node's agent; `start` again after a kill brings back the same node."""

    def __init__(self, soak, name, addr, token, prefix=(), env=None, extra=()):
        self.name = name
        home = f"{soak.tmp}/agents/{name}"
        os.makedirs(home)
        argv = [*prefix, soak.bin("openbox-agent"), "--server", soak.cp.url, "--fingerprint", soak.cp.fingerprint,
                "--heartbeat", "1s", "--name", name, "--tag", TAG, *extra]
        if addr:
            argv += ["--addr", addr]
        self.env = dict(soak.env, OPENBOX_HOME=home, DOCKER_HOST=f"unix://{soak.tmp}/none.sock", **(env or {}))
        self.proc = Proc(f"agent {name}", argv, dict(self.env, OPENBOX_ENROLL_TOKEN=token),
                         f"{soak.tmp}/logs/agent-{name}.log")

    def start(self):
        """Starts it and waits until it serves; how long that took."""
        t = time.monotonic()
        self.proc.start("serving on ", timeout=120)
        self.proc.env = self.env  # enrolled now: later starts need no token
        return time.monotonic() - t


class Mcp:
    """One `openbox mcp` process, spoken to in newline-delimited JSON-RPC 2.0."""

    def __init__(self, user, log_path):
        self.user, self.log_path = user, log_path
        self.ids = itertools.count(1)
        self.popen = None
        self.protocol = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([self.user.openbox, "mcp"], env=self.user.env, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        self.lines = queue.Queue()
        threading.Thread(target=self.read, args=(self.popen.stdout, self.lines), daemon=True).start()
        # Without `initialize` the server wants each request's _meta to name the protocol
        # (the newer revision); after it, plain requests do.
        kind, reply = self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                  "clientInfo": {"name": "soak", "version": "1"}}, 30)
        if kind != "reply" or "result" not in reply:
            raise HarnessError(f"openbox mcp did not take initialize: {kind} {reply}")
        self.protocol = reply["result"].get("protocolVersion")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    @staticmethod
    def read(stream, lines):
        for line in stream:
            lines.put(line)
        lines.put(None)

    def send(self, msg):
        self.popen.stdin.write((json.dumps(msg) + "\n").encode())
        self.popen.stdin.flush()

    def request(self, method, params, wait):
        """("reply", message), ("exited", None) or ("stuck", None) after `wait` s."""
        rid = next(self.ids)
        try:
            self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except (BrokenPipeError, OSError):
            return "exited", None
        deadline = time.monotonic() + wait
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "stuck", None
            if line is None:
                return "exited", None
            msg = json.loads(line)
            if msg.get("id") == rid:
                return "reply", msg

    def stop(self):
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def restart(self):
        self.stop()
        self.start()

    @property
    def pid(self):
        return self.popen.pid if self.popen and self.popen.poll() is None else None


def tool_result(reply):
    """A tools/call reply's structured result (structuredContent, else content[0] as JSON)."""
    if "error" in reply:
        return {"error": reply["error"].get("message", str(reply["error"]))}
    result = reply["result"]
    data = result.get("structuredContent")
    if data is None:
        data = json.loads(result["content"][0]["text"])
    return data


# ---- the soak --------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="obsoak-")
        os.chmod(self.tmp, 0o755)
        for d in ["bin", "logs", "agents", "calls", "cp", "remote", "full"]:
            os.makedirs(f"{self.tmp}/{d}")
        self.built = os.path.join(TARGET, "debug" if args.debug else "release")
        self.bindir = f"{self.tmp}/bin"
        self.log = Log(f"{self.tmp}/soak.log")
        self.stats = Stats(self.log)
        self.faults = FaultLog(self.log)
        self.stop = threading.Event()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBOX_")}
        self.env.update({"TS_NO_LOGS_NO_SUPPORT": "true", MARK: self.tmp})
        self.link = self.pg = self.hs = self.cp = self.mcp = None
        self.mounted = False
        self.agents, self.users = [], {}
        self.samples = collections.defaultdict(list)  # role -> [(t, pid, rss KiB, fds)]
        # role -> [(t, pid, descriptors by kind, descendant processes)]: what a growth is made of
        self.kinds = collections.defaultdict(list)
        self.threads = []

    def bin(self, name):
        return os.path.join(self.bindir, name)

    # -- set-up --

    def setup(self):
        a = self.args
        self.log(f"temporary directory {self.tmp}; binaries from {self.built}")
        # A copy: a build running meanwhile cannot swap them under a restart. openbox
        # starts openboxd and openbox-mcp from its own directory.
        for name in ["openbox", "openboxd", "openbox-mcp", "openbox-control", "openbox-agent"]:
            if not os.path.exists(os.path.join(self.built, name)):
                raise HarnessError(f"{self.built}/{name} is missing: bench/soak builds it")
            shutil.copy2(os.path.join(self.built, name), self.bindir)
        self.link = Link()
        self.log(f"network namespace {self.link.netns}: {self.link.addr} behind {self.link.gateway}")
        sh(f"mount -t tmpfs -o size={FULL_MIB}m soakfull {self.tmp}/full")
        self.mounted = True
        db_args = []
        if a.postgres:
            self.pg = Postgres(self.tmp, self.env)
            db_args = ["--db", self.pg.url, "--ca", f"{self.tmp}/ca_key"]
            self.log(f"PostgreSQL on 127.0.0.1:{POSTGRES_PORT}")
        if a.mesh:
            self.env[MESH_TEST_ENV[0]] = MESH_TEST_ENV[1]
            self.hs = Headscale(a.headscale, self.tmp, self.env)
            self.mesh_key = self.hs.auth_key("soak")
            self.log(f"Headscale at {self.hs.url}")
        gateway = self.link.gateway
        self.cp = ControlPlane(self, f"{gateway}:{free_port(gateway)}", db_args)
        self.log(f"control plane at {self.cp.url} ({self.cp.fingerprint})")
        self.make_users()
        self.start_agents()
        self.grant()
        self.wait_until_every_user_reaches_every_node()
        self.mcp = Mcp(self.users["admin"], f"{self.tmp}/logs/mcp.log")
        self.mcp.start()
        self.log(f"openbox mcp answered initialize with protocol {self.mcp.protocol}")

    def new_user(self, name, token):
        user = User(name, f"{self.tmp}/u-{name}", self.env, self.bin("openbox"), self.log.now, f"{self.tmp}/calls")
        login_env = dict(user.env)
        if self.hs:  # openboxd joins the tailnet at login and remembers it
            login_env.update(OPENBOX_MESH_CONTROL=self.hs.url, OPENBOX_MESH_AUTHKEY=self.mesh_key)
        user.must(["login", "--server", self.cp.url, "--fingerprint", self.cp.fingerprint, "--token", token],
                  env=login_env)
        self.users[name] = user
        return user

    def make_users(self):
        admin = self.new_user("admin", self.cp.admin_token)
        for name in ["alice", "bob"]:
            token = json.loads(admin.must(["user", "add", name, "--json"]))["token"]
            self.new_user(name, token)

    def enroll_token(self):
        return json.loads(self.users["admin"].must(["node", "token", "--tag", TAG, "--json"]))["token"]

    def start_agents(self):
        lib = (glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1") + glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
        if not lib:
            raise HarnessError("libfaketime is missing (apt-get install faketime)")
        skew = {"LD_PRELOAD": lib[0], "FAKETIME": SKEW, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        specs = [("s0", "127.0.0.1:0", {}, {}), ("s1", "127.0.0.1:0", {}, {}),
                 ("s2", f"{self.link.addr}:0", {"prefix": self.link.prefix()}, {}),
                 ("s3", "127.0.0.1:0", {}, skew)]
        if self.hs:
            specs.append(("s4", None, {"extra": ["--mesh-control", self.hs.url]},
                          {"OPENBOX_MESH_AUTHKEY": self.mesh_key}))
        for name, addr, kw, env in specs:
            agent = Agent(self, name, addr, self.enroll_token(), env=env, **kw)
            agent.start()
            self.agents.append(agent)
        self.log("agents serving: " + ", ".join(a.name for a in self.agents))

    def grant(self):
        admin = self.users["admin"]
        for name in ["alice", "bob"]:
            admin.must(["user", "grant", name, "--tag", TAG])
            for agent in self.agents:
                admin.must(["user", "grant", name, "--node", agent.name])

    def wait_until_every_user_reaches_every_node(self):
        names = {a.name for a in self.agents}
        deadline = time.monotonic() + 120
        for user in self.users.values():
            while True:
                ran = user.run(["-t", TAG, "--all", "--timeout", "10s", "echo hi"], 10)
                answered = {ln.split(": ")[0] for ln in ran.out.decode().splitlines() if ln.endswith(": hi")}
                if ran.code == 0 and answered == names:
                    break
                if time.monotonic() > deadline:
                    raise HarnessError(f"{user.name} reached {sorted(answered)} of {sorted(names)}: {ran.err}")
                time.sleep(1)
        self.log(f"every user reaches every node ({len(names)})")

    # -- the run --

    def run(self):
        a = self.args
        self.log(f"soak for {a.minutes} min, seed {a.seed}")
        self.started = self.log.now()
        rng = lambda role: random.Random(f"{a.seed}-{role}")  # noqa: E731
        u = self.users
        workers = [
            ("one-shot alice", lambda: self.oneshot_worker(u["alice"], rng("one-shot alice"))),
            ("one-shot bob", lambda: self.oneshot_worker(u["bob"], rng("one-shot bob"))),
            ("session", lambda: self.session_worker(u["alice"], rng("session"))),
            ("cp", lambda: self.cp_worker(u["bob"], rng("cp"))),
            ("fan-out", lambda: self.fanout_worker(u["admin"])),
            ("mcp", lambda: self.mcp_worker(rng("mcp"))),
            ("faults", lambda: self.fault_loop(random.Random(a.seed))),
            ("sampler", self.sampler),
        ]
        self.sample()  # what each process holds before the first call
        self.files_before = {a.name: fd_files(a.proc.pid) for a in self.agents}
        for name, body in workers:
            t = threading.Thread(target=self.guarded, args=(name, body), name=name, daemon=True)
            t.start()
            self.threads.append(t)
        self.stop.wait(a.minutes * 60)
        self.stop.set()
        self.log("time is up: waiting for the calls in flight and the fault in hand")
        deadline = time.monotonic() + CP_TIMEOUT + WATCHDOG + 60
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self.stats.harness_error(f"thread {t.name} did not end")

    def settle(self):
        """Once the calls and faults are over, every session left is removed (some were left
        when their `session rm` met a fault), and each agent's descriptors are compared with
        its own before the first call: what a live session does not explain is a leak.
        Sockets are shown, not judged: a connection cut by a partition stays open at the
        agent until its SSH keepalive gives up on it."""
        removed = 0
        for user in self.users.values():
            ran = user.run(["sessions", "--json"], 30)
            if ran.code != 0:
                self.stats.harness_error(f"{user.name}: openbox sessions: {ran.err.strip()}")
                continue
            for session in json.loads(ran.out):
                if user.run(["session", "rm", session["id"]], 30).code == 0:
                    removed += 1
        deadline = time.monotonic() + 60
        while any(descendants(a.proc.pid) for a in self.agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.settled = []  # (role, descriptors before the first call, now, processes under it now)
        for agent in self.agents:
            role, pid = f"agent {agent.name}", agent.proc.pid
            first = self.kinds[role][0] if self.kinds[role] else None
            if not first or first[1] != pid:
                continue  # restarted during the run: nothing of its own to compare with
            now, under = fd_kinds(pid), descendants(pid)
            self.settled.append((role, first[2], now, under))
            grown = {k: (first[2].get(k, 0), n) for k, n in now.items() if k != "socket" and n > first[2].get(k, 0)}
            if grown:
                new_files = fd_files(pid) - self.files_before.get(agent.name, collections.Counter())
                self.stats.leaked(f"{role} holds more than before the first call once its {removed} sessions "
                                  f"left were removed: " + ", ".join(f"{k} {a}→{b}" for k, (a, b) in grown.items())
                                  + f"; processes under it: {under}; files it did not have: "
                                  + (", ".join(sorted(new_files)) or "none"))
        self.log(f"settled: removed {removed} sessions left by the run")
        self.settled_sessions = removed

    def guarded(self, name, body):
        try:
            body()
        except Exception:  # noqa: BLE001 - any error of the harness ends the soak
            self.stats.harness_error(f"{name}: {traceback.format_exc()}")
            self.stop.set()

    def call(self, row, user, args, timeout, note=""):
        """One counted call through the CLI; `note` goes before its error, to tell calls apart."""
        ran = user.run(args, timeout)
        what = f"{user.name}: openbox {shlex.join(args)}"
        if ran.code is None:
            self.stats.fail(row, "stuck", f"{what} started at {ran.t0:.1f}s, still running {ran.elapsed:.0f}s later "
                            f"(killed); faults around: {self.faults.around(ran.t0, ran.t1)}")
        else:
            self.stats.call(row, ran.code, ran.elapsed, timeout, f"{note} {ran.err.strip()}".strip(), what)
        return ran

    def pause(self, rng):
        self.stop.wait(rng.uniform(0.05, 0.3))

    # -- workers --

    def oneshot_worker(self, user, rng):
        while not self.stop.is_set():
            a = rng.randrange(1, 1_000_000)
            b = a + (rng.randrange(1, 120_000) if rng.random() < 0.5 else rng.randrange(0, 100))
            ran = self.call("one-shot", user, ["-t", TAG, "--timeout", f"{CALL_TIMEOUT}s", f"seq {a} {b}"],
                            CALL_TIMEOUT)
            want = seq(a, b)
            if ran.code == 0 and sha(ran.out) != sha(want):
                self.stats.fail("one-shot", "lost-bytes", f"{user.name}: seq {a} {b} at {ran.t0:.1f}s: "
                                f"{first_difference(ran.out, want)}; faults around: "
                                f"{self.faults.around(ran.t0, ran.t1)}")
            self.pause(rng)

    def session_worker(self, user, rng):
        sid, used, k = None, 0, 0
        while not self.stop.is_set():
            if sid is None or used >= 20:
                old, k, used = sid, k + 1, 0
                sid = f"soak{k}"
                if old:
                    self.call("session rm", user, ["session", "rm", old], None)
            value = f"v{rng.randrange(10**9)}"
            base = ["-t", TAG, "-s", sid, "--timeout", f"{CALL_TIMEOUT}s"]
            new = "(a new session)" if used == 0 else ""
            put = self.call("session", user, [*base, f"cd /tmp && export V={value}"], CALL_TIMEOUT, new)
            got = self.call("session", user, [*base, "echo $V $PWD"], CALL_TIMEOUT)
            used += 2
            answer = got.out.decode(errors="replace")
            if put.code == 0 and got.code == 0 and answer != f"{value} /tmp\n":
                self.stats.fail("session", "wrong", f"session {sid} at {got.t0:.1f}s: `echo $V $PWD` said "
                                f"{answer!r} after `export V={value}` succeeded; faults around: "
                                f"{self.faults.around(put.t0, got.t1)}")
            self.pause(rng)

    def cp_worker(self, user, rng):
        for n in itertools.count():
            if self.stop.is_set():
                return
            self.copy_once(user, rng, n)
            self.pause(rng)

    def copy_once(self, user, rng, n):
        """A random file to a random node and back, each copy checked byte for byte."""
        size = 0 if rng.random() < 0.1 else rng.randrange(1, 4 << 20)
        data = rng.randbytes(size)
        src, back = f"{self.tmp}/cp/src{n}", f"{self.tmp}/cp/back{n}"
        with open(src, "wb") as f:
            f.write(data)
        node = rng.choice(self.agents).name
        # Every node's disk is this machine's: what an upload wrote is read here.
        remote = f"{self.tmp}/{'full' if rng.random() < 0.2 else 'remote'}/f{n}"
        cp = ["cp", "--timeout", f"{CP_TIMEOUT}s"]
        try:
            up = self.call("cp", user, [*cp, src, f"{node}:{remote}"], CP_TIMEOUT)
            if up.code == 0 and self.same_bytes(remote, data, f"upload of {size} bytes to {node}:{remote}", up):
                down = self.call("cp", user, [*cp, f"{node}:{remote}", back], CP_TIMEOUT)
                if down.code == 0:
                    self.same_bytes(back, data, f"download of {size} bytes from {node}:{remote}", down)
        finally:
            for path in (src, back, remote):
                if os.path.exists(path):
                    os.remove(path)

    def same_bytes(self, path, want, what, ran):
        """Whether the file at `path` holds exactly `want`; LOST BYTES if not."""
        got = open(path, "rb").read() if os.path.exists(path) else None
        if got == want:
            return True
        found = "no file" if got is None else f"a file of {first_difference(got, want)}"
        self.stats.fail("cp", "lost-bytes", f"{what} at {ran.t0:.1f}s exited 0, but there is {found}; "
                        f"faults around: {self.faults.around(ran.t0, ran.t1)}")
        return False

    def fanout_worker(self, user):
        names = {a.name for a in self.agents}
        while not self.stop.is_set():
            ran = self.call("fan-out", user, ["-t", TAG, "--all", "--timeout", f"{CALL_TIMEOUT}s", "echo hi"],
                            CALL_TIMEOUT)
            if ran.code is not None:
                lines = ran.out.decode(errors="replace").splitlines()
                answered = {ln[:-4] for ln in lines if ln.endswith(": hi") and ln[:-4] in names}
                strange = [ln for ln in lines if not (ln.endswith(": hi") and ln[:-4] in names)]
                self.check_fanout("fan-out", user, ran, answered, strange, names, ran.err)
            self.stop.wait(0.5)

    def check_fanout(self, row, user, ran, answered, strange, names, summary=None):
        """Every line `NAME: hi`; all nodes (and a summary saying so) on exit 0; else every
        node no fault touched."""
        when = f"at {ran.t0:.1f}s (exit {ran.code})"
        if strange:
            self.stats.fail(row, "wrong", f"{when}: unexpected lines {strange[:5]}")
        elif ran.code == 0 and answered != names:
            self.stats.fail(row, "wrong", f"{when}: exit 0 without {sorted(names - answered)}")
        elif ran.code == 0 and summary is not None and f"openbox: {len(names)} nodes: {len(names)} ok" not in summary:
            self.stats.fail(row, "wrong", f"{when}: the summary on stderr says {summary.strip()!r}")
        elif ran.code != 0 and not self.faults.touching({"global", f"user:{user.name}"}, ran.t0, ran.t1):
            healthy = {n for n in names if not self.faults.touching({f"agent:{n}"}, ran.t0, ran.t1)}
            if healthy - answered:
                self.stats.fail(row, "missed", f"{when}: no answer from {sorted(healthy - answered)}, which no "
                                f"fault touched; stderr: {ran.err.strip()[-600:]!r}; faults around: "
                                f"{self.faults.around(ran.t0, ran.t1)}")

    def mcp_worker(self, rng):
        names = {a.name for a in self.agents}
        while not self.stop.is_set():
            if rng.random() < 0.2:
                self.mcp_run_all(names)
            else:
                self.mcp_run(rng)
            self.pause(rng)

    def mcp_call(self, tool, arguments):
        """One tools/call: its structured result (None when there was none), and its times."""
        t0 = self.log.now()
        kind, reply = self.mcp.request("tools/call", {"name": tool, "arguments": arguments},
                                       CALL_TIMEOUT + WATCHDOG)
        ran = Ran(None, b"", "", t0, self.log.now())
        what = f"mcp {tool} {json.dumps(arguments)}"
        if kind == "stuck":
            self.stats.fail("mcp", "stuck", f"{what} at {t0:.1f}s: no answer in {ran.elapsed:.0f}s (server "
                            f"restarted); faults around: {self.faults.around(ran.t0, ran.t1)}")
            self.mcp.restart()
            return None, ran
        if kind == "exited":
            self.stats.call("mcp", "exited", ran.elapsed, None, "the MCP server exited (started again)", what)
            self.mcp.restart()
            return None, ran
        data = tool_result(reply)
        return data, ran

    def mcp_run(self, rng):
        n = rng.randrange(1, 100_000) if rng.random() < 0.5 else rng.randrange(1, 100)
        args = {"tag": TAG, "command": f"seq 1 {n}", "timeout_secs": CALL_TIMEOUT}
        data, ran = self.mcp_call("run", args)
        if data is None:
            return
        code = data.get("exit_code", "error")
        why = "run: " + (data.get("error") or data.get("stderr", ""))
        self.stats.call("mcp", code, ran.elapsed, CALL_TIMEOUT, why, f"mcp run seq 1 {n}")
        want = seq(1, n)
        got = data.get("stdout", "").encode()
        if code == 0 and got != want:
            self.stats.fail("mcp", "lost-bytes", f"run seq 1 {n} at {ran.t0:.1f}s: {first_difference(got, want)}; "
                            f"faults around: {self.faults.around(ran.t0, ran.t1)}")

    def mcp_run_all(self, names):
        args = {"tags": [TAG], "command": "echo hi", "timeout_secs": CALL_TIMEOUT}
        data, ran = self.mcp_call("run_all", args)
        if data is None:
            return
        results = data.get("results")
        if results is None:
            why = "run_all: " + data.get("error", "")
            self.stats.call("mcp", "error", ran.elapsed, CALL_TIMEOUT, why, "mcp run_all echo hi")
            return
        codes = [r.get("exit_code", 255) for r in results]
        worst = max(codes, default=0)
        why = "run_all: " + "; ".join(f"{r['node']}: {r.get('error') or r.get('stderr', '')}" for r in results
                                      if r.get("exit_code") != 0)
        self.stats.call("mcp", worst, ran.elapsed, CALL_TIMEOUT, why, "mcp run_all echo hi")
        ran.code = worst
        answered = {r["node"] for r in results if r.get("exit_code") == 0 and r.get("stdout") == "hi\n"}
        strange = [r for r in results if r.get("exit_code") == 0 and r.get("stdout") != "hi\n"]
        strange += [r for r in results if r.get("node") not in names]
        self.check_fanout("mcp", self.users["admin"], ran, answered, strange, names)

    # -- faults --

    def fault_kinds(self):
        """The kinds this soak draws from, in the order the report lists them."""
        return [k for k in FAULT_KINDS if (self.pg or k != "restart-postgres")
                and (not self.args.faults or k in self.args.faults)]

    def fault_loop(self, rng):
        """One fault every 3-8 s, each kind once per cycle in a shuffled order."""
        kinds, cycle = self.fault_kinds(), []
        while kinds and not self.stop.wait(rng.uniform(3, 8)):
            if not cycle:
                cycle = list(kinds)
                rng.shuffle(cycle)
            kind = cycle.pop()
            getattr(self, "fault_" + kind.replace("-", "_"))(rng)

    def fault_freeze(self, rng):
        agent, hold = rng.choice(self.agents), rng.uniform(2, 6)
        fault = self.faults.begin("freeze", f"agent:{agent.name}", f"SIGSTOP {agent.name} for {hold:.1f}s")
        agent.proc.signal(signal.SIGSTOP)
        self.log(f"  {agent.name} ({agent.proc.pid}): {proc_state(agent.proc.pid)}", quiet=True)
        try:
            time.sleep(hold)
        finally:
            agent.proc.signal(signal.SIGCONT)
            self.faults.end(fault)

    def fault_partition(self, rng):
        hold = rng.uniform(2, 6)
        fault = self.faults.begin("partition", "agent:s2", f"link of s2 down for {hold:.1f}s")
        self.link.cut()
        try:
            time.sleep(hold)
        finally:
            self.link.heal()
            self.faults.end(fault)

    def fault_kill_agent(self, rng):
        agent = rng.choice(self.agents)
        fault = self.faults.begin("kill-agent", f"agent:{agent.name}", f"SIGKILL {agent.name}")
        agent.proc.kill()
        took = agent.start()
        self.faults.end(fault, f"{agent.name} serving again after {took:.1f}s")

    def fault_restart_control(self, rng):
        fault = self.faults.begin("restart-control", "global", "SIGKILL the control plane, start it again")
        t = time.monotonic()
        self.cp.restart()
        self.faults.end(fault, f"listening again after {time.monotonic() - t:.1f}s")

    def fault_restart_postgres(self, rng):
        down = rng.uniform(1, 4)
        fault = self.faults.begin("restart-postgres", "global", f"PostgreSQL stopped, started {down:.1f}s later")
        try:
            self.pg.stop()
            time.sleep(down)
        finally:
            self.pg.start()
            self.faults.end(fault)

    def fault_kill_openboxd(self, rng):
        user = rng.choice(list(self.users.values()))
        ran = user.run(["daemon", "status", "--json"], 10)
        try:
            pid = json.loads(ran.out)["pid"]
        except (ValueError, KeyError, TypeError):
            self.log(f"kill-openboxd: no pid from {user.name}'s `daemon status` (exit {ran.code}): {ran.err.strip()}")
            return
        fault = self.faults.begin("kill-openboxd", f"user:{user.name}", f"SIGKILL {user.name}'s openboxd ({pid})")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.faults.end(fault)

    def fault_full_disk(self, rng):
        fill = f"{self.tmp}/full/fill"
        if os.path.exists(fill):
            fault = self.faults.begin("full-disk", "disk", "emptied the tmpfs")
            os.remove(fill)
        else:
            fault = self.faults.begin("full-disk", "disk", "filled the tmpfs")
            subprocess.run(["dd", "if=/dev/zero", f"of={fill}", "bs=64k"], capture_output=True)
        self.faults.end(fault)

    # -- resources --

    def roles(self):
        """(role, current pid) of everything sampled."""
        found = [("control plane", self.cp.proc.pid)]
        found += [(f"agent {a.name}", a.proc.pid) for a in self.agents]
        found += [(f"openboxd ({name})", user.daemon_pid()) for name, user in self.users.items()]
        found.append(("mcp (admin)", self.mcp.pid))
        return found

    def sample(self):
        t = self.log.now()
        for role, pid in self.roles():
            got = pid and proc_stat(pid)
            if got:
                self.samples[role].append((t, pid, *got))
                self.kinds[role].append((t, pid, fd_kinds(pid), descendants(pid)))

    def sampler(self):
        self.sample()
        while not self.stop.wait(SAMPLE_EVERY):
            self.sample()
        self.sample()

    def memory_rows(self):
        warm = self.args.minutes * 60 * 0.25
        if self.args.minutes >= 4:
            warm = max(warm, 60)
        rows = []
        for role, _ in self.roles():
            samples = [s for s in self.samples[role] if s[0] - self.started >= warm]
            if not samples:
                continue
            by_pid = collections.defaultdict(list)
            for s in samples:
                by_pid[s[1]].append(s)
            longest = max(by_pid.values(), key=len)
            rss_h = slope_per_hour([(t, rss / 1024) for t, _, rss, _ in longest])
            fds_h = slope_per_hour([(t, fds) for t, _, _, fds in longest])
            pid = longest[0][1]
            kinds = [k for k in self.kinds[role] if k[1] == pid and k[0] - self.started >= warm]
            rows.append({"role": role, "fd_kinds": [dict(kinds[0][2]), dict(kinds[-1][2])] if kinds else None,
                         "descendants": [kinds[0][3], kinds[-1][3]] if kinds else None,
                         "rss_mib": [samples[0][2] / 1024, samples[-1][2] / 1024,
                                                    max(s[2] for s in samples) / 1024],
                         "rss_growth_mib_per_h": rss_h, "fds": [samples[0][3], samples[-1][3],
                                                                 max(s[3] for s in samples)],
                         "fds_growth_per_h": fds_h, "samples": len(samples), "pids": len(by_pid)})
        return rows, warm

    # -- the report --

    def report(self):
        a = self.args
        st = self.stats
        n_agents = len(self.agents)
        mesh = ", 1 on a tailnet" if self.hs else ""
        print(f"\nsoak: {a.minutes} min, seed {a.seed}, {n_agents} agents (1 in a netns, 1 with its clock "
              f"{SKEW}{mesh}), {len(self.users)} users, postgres {'on' if self.pg else 'off'}, "
              f"mesh {'on' if self.hs else 'off'}")
        head = f"{'calls':<11}" + "".join(f"{c:>7}" for c in OUTCOMES) + "".join(f"{c:>12}" for c in FAILURES)
        print(head)
        for row in ROWS:
            c = st.counts[row]
            print(f"{row:<11}" + "".join(f"{c[k]:>7}" for k in OUTCOMES) + "".join(f"{c[k]:>12}" for k in FAILURES))
        print("why calls did not exit 0 (most frequent first):")
        for row in ROWS:
            for (code, why), count in st.reasons[row].most_common(6):
                print(f"  {row:<11} {code:>6} ×{count:<5} {why}")
        print("faults: " + ", ".join(f"{k} {self.faults.counts[k]}" for k in self.fault_kinds()))
        late, which = st.worst
        if late > 0:
            print(f"worst deadline overrun: {late:.2f} s ({which})")
        elif late > float("-inf"):
            print(f"worst deadline overrun: none (the call nearest its deadline ended {-late:.2f} s before it: "
                  f"{which})")
        rows, warm = self.memory_rows()
        print(f"memory after a {warm:.0f} s warm-up   RSS MiB: start    end    max  growth/h   "
              f"fds: start  end  max growth/h  samples pids")
        for r in rows:
            rs, fd = r["rss_mib"], r["fds"]
            g = "—" if r["rss_growth_mib_per_h"] is None else f"{r['rss_growth_mib_per_h']:+.1f}"
            gf = "—" if r["fds_growth_per_h"] is None else f"{r['fds_growth_per_h']:+.0f}"
            print(f"  {r['role']:<28} {rs[0]:8.1f} {rs[1]:6.1f} {rs[2]:6.1f} {g:>9}   "
                  f"{fd[0]:10} {fd[1]:4} {fd[2]:4} {gf:>8} {r['samples']:8} {r['pids']:4}")
        grew = [r for r in rows if r["fd_kinds"] and r["fds"][1] > r["fds"][0]]
        if grew:
            print("what the descriptors that grew are (start → end of the longest-lived process):")
        for r in grew:
            start, end = r["fd_kinds"]
            parts = [f"{k} {start.get(k, 0)}→{end.get(k, 0)}" for k in sorted(set(start) | set(end))
                     if start.get(k, 0) != end.get(k, 0)]
            d0, d1 = r["descendants"]
            print(f"  {r['role']:<28} {', '.join(parts) or 'no change by kind'}; processes under it {d0}→{d1}")
        if getattr(self, "settled", None):
            print(f"agents' descriptors before the first call → once the {self.settled_sessions} sessions left "
                  f"were removed:")
        for role, before, now, under in getattr(self, "settled", []):
            total = f"{sum(before.values())}→{sum(now.values())}"
            parts = [f"{k} {before.get(k, 0)}→{now.get(k, 0)}" for k in sorted(set(before) | set(now))
                     if before.get(k, 0) != now.get(k, 0)]
            print(f"  {role:<28} {total}: {', '.join(parts) or 'the same by kind'}; processes under it {under}")
        for row, kind, detail in st.failures[:30]:
            print(f"FAILED {row} {kind}: {detail}")
        if len(st.failures) > 30:
            print(f"… and {len(st.failures) - 30} more in {self.tmp}/soak.log")
        for err in st.harness:
            print(f"HARNESS ERROR: {err}")
        passed = not st.failed()
        print("soak " + ("passed" if passed else "FAILED"))
        if a.json:
            print(json.dumps({"minutes": a.minutes, "seed": a.seed, "agents": n_agents, "users": len(self.users),
                              "postgres": bool(self.pg), "mesh": bool(self.hs),
                              "calls": {r: dict(st.counts[r]) for r in ROWS},
                              "reasons": {r: [[c, w, n] for (c, w), n in st.reasons[r].most_common()] for r in ROWS},
                              "faults": dict(self.faults.counts), "worst_overrun_s": max(st.worst[0], 0.0),
                              "memory": rows, "failures": [list(f) for f in st.failures],
                              "harness_errors": st.harness, "passed": passed}))
        return 0 if passed else 1

    # -- the end --

    def cleanup(self, keep):
        """Ends every process the soak started, in an order that lets none start again."""
        self.stop.set()
        self.join("faults", 15)  # it heals what it broke before it ends
        for agent in self.agents:  # a frozen agent must not stay frozen
            agent.proc.signal(signal.SIGCONT)
        for proc in [a.proc for a in self.agents] + [p.proc for p in (self.cp, self.hs) if p]:
            proc.kill()
        self.join(None, 15)  # calls in flight now fail fast
        if self.mcp:
            self.mcp.stop()
        for user in self.users.values():
            user.run(["daemon", "stop"], 10)
        if self.pg:
            self.pg.stop()
        for pid in pids_with_env(f"{MARK}={self.tmp}".encode()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.link:
            self.link.remove()
        if self.mounted:
            sh(f"umount {self.tmp}/full || umount -l {self.tmp}/full", check=False)
        if keep:
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def join(self, name, seconds):
        """Waits up to `seconds` for the thread called `name` (None: every thread)."""
        deadline = time.monotonic() + seconds
        for t in self.threads:
            if name in (None, t.name):
                t.join(max(0.0, deadline - time.monotonic()))


def parse():
    p = argparse.ArgumentParser(description="A soak of openbox under faults (see the module's docstring).")
    p.add_argument("--minutes", type=float, required=True, help="how long the calls and faults go on")
    p.add_argument("--seed", type=int, default=None, help="seeds every random choice (default: the time)")
    p.add_argument("--debug", action="store_true", help="use target/debug (bench/soak builds it)")
    p.add_argument("--postgres", action=argparse.BooleanOptionalAction, default=None,
                   help="the registry on PostgreSQL (default: when /usr/lib/postgresql/*/bin/initdb exists)")
    p.add_argument("--mesh", action=argparse.BooleanOptionalAction, default=None,
                   help="a fifth agent on a Headscale tailnet (default: when scripts/test-headscale answers "
                        "within 10 s, i.e. its binary is built)")
    p.add_argument("--faults", type=lambda s: s.split(","), default=None,
                   help="only these kinds of fault, comma-separated (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory when the soak fails")
    p.add_argument("--json", action="store_true", help="also print the summary as one line of JSON")
    a = p.parse_args()
    unknown = set(a.faults or []) - set(FAULT_KINDS)
    if unknown:
        p.error(f"unknown faults {sorted(unknown)}; the kinds are {', '.join(FAULT_KINDS)}")
    if a.seed is None:
        a.seed = int(time.time())
    if a.postgres is None:
        a.postgres = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    explicit_mesh = a.mesh
    a.headscale = headscale_binary(600 if explicit_mesh else 10) if a.mesh is not False else None
    if explicit_mesh and not a.headscale:
        sys.exit("--mesh: scripts/test-headscale gave no Headscale binary")
    a.mesh = bool(a.headscale)
    print(f"soak: seed {a.seed}; postgres {'on' if a.postgres else 'off'}; mesh {'on' if a.mesh else 'off'}"
          f"{'' if explicit_mesh is not None else ' (by default)'}", flush=True)
    return a


def main():
    args = parse()
    if os.geteuid() != 0:
        sys.exit("bench/soak needs root: it makes a network namespace and mounts a tmpfs")

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    soak = Soak(args)
    code = 2
    try:
        soak.setup()
        soak.run()
        soak.settle()
        code = soak.report()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        code = 130
    except HarnessError as e:
        print(f"soak: {e}", flush=True)
        code = 2
    finally:
        soak.cleanup(keep=args.keep and code != 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
