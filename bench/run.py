#!/usr/bin/env python3
"""openbox against OpenSSH, measured in the same run on this machine.

Sets up, all on 127.0.0.1 and under a temporary directory:
  - a second OpenSSH sshd logging in a user whose shell is /bin/sh, reached through a
    ControlMaster socket and with fresh connections;
  - an openbox fleet: control plane, one agent, a logged-in CLI with its openboxd;
  - the container engines (scripts/test-engines): podman's Docker-API service, which the
    agent uses and the ssh user reaches with `podman --remote`, and an nspawn tree.
Then prints latency (median, p99), throughput, concurrent calls per second, container
runs, openboxd's memory after all that and, fresh, with 50 pooled connections, and the CLI's size and start time,
with ratios.

Usage: bench/run [--calls N] [--bytes N] [--seconds S]   (needs root: it starts sshd)
"""

import argparse
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where `cargo build --release` put the binaries: CARGO_TARGET_DIR when set (relative to
# the workspace root, where bench/run builds), else target/.
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")
USER = "obbench"
# The cipher openbox prefers; OpenSSH's default is chacha20-poly1305.
AES = "aes256-gcm@openssh.com"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of(cmdline):
    """Processes whose command line is exactly `cmdline`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").decode(errors="replace").strip() == cmdline:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def alive(pid):
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid, seconds=10):
    """Waits until process `pid` has exited; SIGKILL if it has not after `seconds`."""
    deadline = time.monotonic() + seconds
    killed = False
    while alive(pid):
        if time.monotonic() > deadline and not killed:
            os.kill(pid, 9)
            killed = True
        time.sleep(0.02)


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def ensure_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        sh("useradd", "--create-home", "--shell", "/bin/sh", USER)
    # Key login only: a '*' password unlocks the account without allowing passwords.
    sh("usermod", "-p", "*", USER)


class Sshd:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "sshd")
        os.makedirs(self.dir)
        os.chmod(tmp, 0o755)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/host_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{self.dir}/user_key")
        shutil.copy(f"{self.dir}/user_key.pub", f"{self.dir}/authorized_keys")
        os.chmod(f"{self.dir}/authorized_keys", 0o644)
        with open(f"{self.dir}/sshd_config", "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir}/host_key\n"
                f"PidFile {self.dir}/sshd.pid\nAuthorizedKeysFile {self.dir}/authorized_keys\n"
                "UsePAM no\nStrictModes no\nUseDNS no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nMaxSessions 100\nMaxStartups 100\n"
                "Subsystem sftp internal-sftp\n"
            )
        os.makedirs("/run/sshd", exist_ok=True)
        sh("/usr/sbin/sshd", "-f", f"{self.dir}/sshd_config", "-E", f"{self.dir}/sshd.log")
        self.control = f"{self.dir}/cm.sock"

    def ssh(self, master, cipher=None):
        base = ["ssh", "-q", "-F", "/dev/null", "-i", f"{self.dir}/user_key", "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
        if cipher:
            base += ["-c", cipher]
        if master:
            path = self.control + (f".{cipher}" if cipher else "")
            base += ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}", "-o", "ControlPersist=600"]
        else:
            base += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return base + [f"{USER}@127.0.0.1"]

    def stop(self):
        for cipher in (None, AES):
            subprocess.run(self.ssh(True, cipher)[:-1] + ["-O", "exit", f"{USER}@127.0.0.1"], capture_output=True)
        try:
            with open(f"{self.dir}/sshd.pid") as f:
                pid = int(f.read().strip())
            os.kill(pid, 15)
            wait_gone(pid)
        except (OSError, ValueError):
            pass


class Engines:
    """A podman API service of the bench's own, open to the ssh user, and an nspawn tree."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "engines")
        out = subprocess.run([os.path.join(ROOT, "scripts", "test-engines")], capture_output=True, text=True,
                             env=dict(os.environ, OPENBOX_TEST_ENGINES=self.dir))
        if out.returncode != 0:
            sys.exit(f"scripts/test-engines failed: {out.stderr}")
        found = dict(line.split("=", 1) for line in out.stdout.split())
        self.docker_host, self.image, self.tree = found["DOCKER_HOST"], found["OPENBOX_TEST_IMAGE"], found["OPENBOX_TEST_TREE"]
        self.sock = self.docker_host.removeprefix("unix://")
        os.chmod(self.dir, 0o755)
        os.chmod(self.sock, 0o666)  # the ssh user's `podman --remote` uses the same engine

    def podman(self, ssh):
        return ssh + ["podman", "--remote", "--url", self.docker_host]

    def stop(self):
        for pid in pids_of(f"podman system service --time=0 {self.docker_host}"):
            try:
                os.kill(pid, 15)
                wait_gone(pid)
            except OSError:
                pass


class Fleet:
    def __init__(self, tmp, engines):
        self.home = os.path.join(tmp, "openbox")
        # The agent `openbox up` starts inherits DOCKER_HOST through openboxd.
        self.env = dict(os.environ, OPENBOX_HOME=self.home, DOCKER_HOST=engines.docker_host)
        self.addr = f"127.0.0.1:{free_port()}"
        out = subprocess.run([f"{BIN}/openbox", "up", "--addr", self.addr], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            self.stop()  # whatever `up` did start
            sys.exit(f"openbox up failed: {out.stderr}")
        self.openbox = [f"{BIN}/openbox", "-t", "local"]
        self.extra = []

    def enroll_agent(self, tag, name, home, log, flags, procs, env=None):
        """Starts another openbox-agent enrolled with `tag`, its identity under `home`, into
        `procs` (so that it is stopped on every way out), and waits until it serves."""
        token = json.loads(subprocess.run([f"{BIN}/openbox", "node", "token", "--tag", tag, "--json"],
                                          env=self.env, capture_output=True, text=True, check=True).stdout)["token"]
        agent = subprocess.Popen([f"{BIN}/openbox-agent", "--server", f"http://{self.addr}", "--token", token,
                                  "--name", name, *flags], env=dict(env or os.environ, OPENBOX_HOME=home),
                                 stdout=open(log, "a"), stderr=subprocess.STDOUT)
        procs.append(agent)
        wait_for(lambda: "serving on" in open(log).read() or agent.poll() is not None)

    def sessions_agent(self, tmp, sessions):
        """A second agent on this machine (tag `benchsessions`) that allows each user
        `sessions` sessions: more than an agent's default, for the pooled-connections row."""
        self.enroll_agent("benchsessions", "benchsessions", os.path.join(tmp, "sessions-agent"),
                          os.path.join(tmp, "sessions-agent.log"),
                          ["--addr", "127.0.0.1:0", "--max-sessions", str(sessions)], self.extra)
        return [f"{BIN}/openbox", "-t", "benchsessions"]

    def daemon_pid(self):
        out = subprocess.run([f"{BIN}/openbox", "daemon", "status", "--json"], env=self.env, capture_output=True, text=True)
        return json.loads(out.stdout)["pid"]

    def stop(self):
        stop_processes(self.extra)
        subprocess.run([f"{BIN}/openbox", "down"], env=self.env, capture_output=True)
        subprocess.run([f"{BIN}/openbox", "daemon", "stop"], env=self.env, capture_output=True)



# Tailnet processes here must not offer each other the machine's own interface address.
MESH_ENV = {"TS_DEBUG_OMIT_LOCAL_ADDRS": "true", "TS_NO_LOGS_NO_SUPPORT": "true"}


class Mesh:
    """A Headscale on 127.0.0.1 and, on its tailnet, an agent with no TCP listener
    (tagged `meshtag`) and a second openbox identity whose openboxd holds a tailnet node."""

    def __init__(self, tmp, fleet):
        self.procs = []
        self.env = None
        try:
            self.start(tmp, fleet)
        except BaseException:
            self.stop()  # whatever did start
            raise

    def start(self, tmp, fleet):
        self.dir = os.path.join(tmp, "headscale")
        os.makedirs(self.dir)
        hs = subprocess.run([os.path.join(ROOT, "scripts", "test-headscale")], capture_output=True, text=True)
        if hs.returncode != 0:
            sys.exit(f"scripts/test-headscale failed: {hs.stderr}")
        self.hs = hs.stdout.strip()
        http, grpc, stun = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{http}"
        cfg = os.path.join(self.dir, "config.yaml")
        with open(cfg, "w") as f:
            template = open(os.path.join(ROOT, "scripts", "headscale.yaml")).read()
            f.write(template.format(url=self.url, http=http, grpc=grpc, stun=stun, d=self.dir))
        self.cfg = cfg
        self.spawn([self.hs, "-c", cfg, "serve"], os.path.join(self.dir, "log"))
        wait_for(lambda: subprocess.run(["curl", "-fs", "-o", "/dev/null", f"{self.url}/health"]).returncode == 0)
        user = json.loads(self.headscale("users", "create", "bench", "-o", "json"))
        key = json.loads(self.headscale("preauthkeys", "create", "-u", str(user["id"]), "--reusable", "-e", "1h",
                                        "-o", "json"))["key"]

        self.key = key
        fleet.enroll_agent("meshtag", "meshnode", os.path.join(tmp, "mesh-agent"), os.path.join(tmp, "mesh-agent.log"),
                           ["--mesh-control", self.url], self.procs,
                           env=dict(os.environ, OPENBOX_MESH_AUTHKEY=key, **MESH_ENV))

        login = json.loads(subprocess.run([f"{BIN}/openbox", "user", "token", "admin", "--json"], env=fleet.env,
                                          capture_output=True, text=True, check=True).stdout)["token"]
        self.env = dict(os.environ, OPENBOX_HOME=os.path.join(tmp, "mesh-cli"), OPENBOX_MESH_CONTROL=self.url,
                        OPENBOX_MESH_AUTHKEY=key, **MESH_ENV)
        subprocess.run([f"{BIN}/openbox", "login", "--server", f"http://{fleet.addr}", "--token", login],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)
        self.openbox = [f"{BIN}/openbox", "-t", "meshtag"]

    def tsnet_alone(self, tmp, nbytes):
        """tsnet between two nodes on this tailnet, with nothing of openbox's in between
        (libtailscale-sys/go/cmd/tsnetbench): one-byte round trips (`rtt_median_ms`,
        `rtt_p99_ms`), then `nbytes` over one TCP connection (`mb_per_s`)."""
        exe = os.path.join(tmp, "tsnetbench")
        subprocess.run([os.path.join(ROOT, "scripts", "tailnet-go"), "build", "-trimpath", "-o", exe, "./cmd/tsnetbench"],
                       check=True)
        env = dict(os.environ, **MESH_ENV)
        common = ["-control", self.url, "-authkey", self.key]
        server = subprocess.Popen([exe, "-role", "serve", "-dir", os.path.join(tmp, "tsnet-serve"), "-bytes", str(nbytes)]
                                  + common, env=env, stdout=subprocess.PIPE, text=True)
        self.procs.append(server)
        ready = server.stdout.readline().split()
        if ready[:1] != ["ready"]:
            sys.exit("tsnetbench did not join the tailnet")
        out = subprocess.run([exe, "-role", "fetch", "-dir", os.path.join(tmp, "tsnet-fetch"), "-addr", ready[1]] + common,
                             env=env, capture_output=True, text=True, check=True)
        got = json.loads(out.stdout)
        if got["bytes"] != nbytes:
            sys.exit(f"tsnetbench moved {got['bytes']} bytes, not {nbytes}")
        return got

    def spawn(self, argv, log, env=None):
        p = subprocess.Popen(argv, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def headscale(self, *args):
        return subprocess.run([self.hs, "-c", self.cfg, *args], capture_output=True, text=True, check=True).stdout

    def daemon_pid(self):
        out = subprocess.run([f"{BIN}/openbox", "daemon", "status", "--json"], env=self.env, capture_output=True,
                             text=True)
        return json.loads(out.stdout)["pid"]

    def stop(self):
        if self.env:
            subprocess.run([f"{BIN}/openbox", "daemon", "stop"], env=self.env, capture_output=True)
        stop_processes(self.procs)


def stop_processes(procs):
    """Stops what was started, last first: SIGTERM, and SIGKILL for what takes over 10 s."""
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_for(check, seconds=60):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            sys.exit("bench: something did not become ready in time")
        time.sleep(0.05)


def cold_start(mesh, runs=5):
    """Seconds from no openboxd to a finished `true` over the tailnet (openboxd starts,
    rejoins the tailnet from its saved state, dispatches and dials), median of `runs`."""
    times = []
    for _ in range(runs):
        subprocess.run([f"{BIN}/openbox", "daemon", "stop"], env=mesh.env, capture_output=True)
        sock = os.path.join(mesh.env["OPENBOX_HOME"], "run", "openboxd.sock")
        wait_for(lambda: not os.path.exists(sock))
        start = time.perf_counter()
        subprocess.run(mesh.openbox + ["true"], env=mesh.env, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_calls(argv, n, env=None):
    """Wall-clock seconds of each of n runs of argv (output discarded)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def p99(times):
    return sorted(times)[max(0, int(len(times) * 0.99) - 1)]


def throughput(argv, nbytes, env=None):
    start = time.perf_counter()
    subprocess.run(argv + [f"head -c {nbytes} /dev/zero"], env=env, stdout=subprocess.DEVNULL, check=True)
    return nbytes / (time.perf_counter() - start) / 1e6


def stdin_throughput(argv, nbytes, env=None):
    """MB/s of `head -c N /dev/zero` piped into a remote `cat > /dev/null`."""
    start = time.perf_counter()
    head = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
    subprocess.run(argv + ["cat > /dev/null"], env=env, stdin=head.stdout, check=True)
    head.stdout.close()
    head.wait()
    return nbytes / (time.perf_counter() - start) / 1e6


def echo_throughput(argv, nbytes, env=None):
    """MB/s (each way) of `head -c N /dev/zero` through a remote `cat` and back into
    `wc -c`: both directions at once, checked complete."""
    start = time.perf_counter()
    head = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
    remote = subprocess.Popen(argv + ["cat"], env=env, stdin=head.stdout, stdout=subprocess.PIPE)
    head.stdout.close()
    counted = subprocess.run(["wc", "-c"], stdin=remote.stdout, capture_output=True, text=True, check=True)
    remote.stdout.close()
    if remote.wait() != 0 or head.wait() != 0 or int(counted.stdout) != nbytes:
        sys.exit(f"{argv}: {counted.stdout.strip()} bytes came back through cat, not {nbytes}")
    return nbytes / (time.perf_counter() - start) / 1e6


def make_tree(root):
    os.makedirs(os.path.join(root, "small"))
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(os.urandom(200_000_000))
    for i in range(500):
        with open(os.path.join(root, "small", f"f{i}.txt"), "w") as f:
            f.write(f"file {i}\n" * (i + 1))
    for dirpath, _, files in os.walk(root):  # readable by the ssh user
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    os.chmod(os.path.dirname(root), 0o755)


def rsync_pull(args, tmp, env=None):
    """Seconds for one `rsync -a` of the tree into a fresh directory (checked complete)."""
    dst = tempfile.mkdtemp(dir=tmp)
    start = time.perf_counter()
    subprocess.run(["rsync", "-a"] + args + [dst + "/"], env=env, check=True)
    took = time.perf_counter() - start
    if os.path.getsize(os.path.join(dst, "big.bin")) != 200_000_000 or len(os.listdir(os.path.join(dst, "small"))) != 500:
        sys.exit(f"rsync into {dst} is incomplete")
    shutil.rmtree(dst)
    return took


def concurrent_rate(argv, loops, seconds, env=None):
    count = [0] * loops
    deadline = time.perf_counter() + seconds

    def loop(i):
        while time.perf_counter() < deadline:
            subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            count[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(loops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / seconds


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss(pid):
    """Resident memory, and how much of it is the process's own (anonymous) rather than
    pages of its binary and libraries, which the kernel shares and may drop at any time."""
    return f"{rss_kib(pid) / 1024:.1f} MiB ({rss_kib(pid, 'RssAnon') / 1024:.1f} own)"


def ms(s):
    return f"{s * 1000:.2f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--bytes", type=int, default=1_000_000_000)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run needs root (it starts a second sshd and adds the user obbench)")

    tmp = tempfile.mkdtemp(prefix="openbox-bench-")
    ensure_user()
    # Everything started is stopped again, on every path out (a failed start included).
    started = []
    rows = []
    try:
        sshd = Sshd(tmp)
        started.append(sshd)
        engines = Engines(tmp)
        started.append(engines)
        fleet = Fleet(tmp, engines)
        started.append(fleet)
        mesh = Mesh(tmp, fleet)
        started.append(mesh)
        master, fresh, ob = sshd.ssh(True), sshd.ssh(False), fleet.openbox
        env = fleet.env
        # Warm both paths: the ControlMaster connection and openboxd's pool.
        for _ in range(5):
            subprocess.run(master + ["true"], check=True)
            subprocess.run(ob + ["true"], env=env, check=True)

        t_ob = time_calls(ob + ["true"], args.calls, env)
        t_cm = time_calls(master + ["true"], args.calls)
        t_fresh = time_calls(fresh + ["true"], args.calls)
        med = statistics.median
        rows.append(("latency of `true`, median", ms(med(t_ob)), ms(med(t_cm)), ms(med(t_fresh)),
                     f"{med(t_ob) / med(t_cm):.2f}x ControlMaster"))
        rows.append(("latency of `true`, p99", ms(p99(t_ob)), ms(p99(t_cm)), ms(p99(t_fresh)),
                     f"{p99(t_ob) / p99(t_cm):.2f}x ControlMaster"))

        # A session: three calls in one shell (cd, then two commands there), repeated.
        sess = ob[:1] + ["-t", "local", "-s", "bench-session"]
        subprocess.run(sess + ["true"], env=env, check=True)
        def three(argv, env=None):
            start = time.perf_counter()
            for cmd in (["cd", "/tmp"], ["pwd"], ["true"]):
                subprocess.run(argv + cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - start
        s_ob = [three(sess, env) for _ in range(max(50, args.calls // 3))]
        s_cm = [three(master) for _ in range(max(50, args.calls // 3))]
        rows.append(("3 calls in one session, median", ms(med(s_ob)), ms(med(s_cm)), "", f"{med(s_ob) / med(s_cm):.2f}x ControlMaster"))

        # Containers on one engine: openbox's agent through bollard, against the engine's
        # own client over the ControlMaster connection.
        n = max(20, args.calls // 10)
        ob_docker = ob + ["--docker", engines.image, "true"]
        cm_docker = engines.podman(master) + ["run", "--rm", engines.image, "true"]
        subprocess.run(ob_docker, env=env, check=True)
        subprocess.run(cm_docker, check=True)
        d_ob, d_cm = time_calls(ob_docker, n, env), time_calls(cm_docker, n)
        rows.append(("`true` in a fresh container, median", ms(med(d_ob)), ms(med(d_cm)), "",
                     f"{med(d_ob) / med(d_cm):.2f}x ssh + podman run --rm"))
        ob_dsess = ob + ["-s", "bench-docker", "--docker", engines.image, "true"]
        subprocess.run(ob_dsess, env=env, check=True)
        subprocess.run(engines.podman(master) + ["run", "-d", "--name", "obbench-session", engines.image, "sleep", "86400"],
                       check=True, stdout=subprocess.DEVNULL)
        cm_exec = engines.podman(master) + ["exec", "obbench-session", "true"]
        e_ob, e_cm = time_calls(ob_dsess, args.calls, env), time_calls(cm_exec, n)
        subprocess.run(engines.podman(master) + ["rm", "-f", "obbench-session"], stdout=subprocess.DEVNULL)
        rows.append(("`true` in a session's container, median", ms(med(e_ob)), ms(med(e_cm)), "",
                     f"{med(e_ob) / med(e_cm):.2f}x ssh + podman exec"))
        # nspawn needs root, which the ssh user is not: the baseline is nspawn run locally.
        ob_nspawn = ob + ["--nspawn", engines.tree, "true"]
        local_nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "--volatile=overlay",
                        "--directory", engines.tree, "--", "/bin/true"]
        subprocess.run(ob_nspawn, env=env, check=True)
        n_ob, n_local = time_calls(ob_nspawn, n, env), time_calls(local_nspawn, n)
        rows.append(("`true` in an nspawn container, median", ms(med(n_ob)), "", "",
                     f"{med(n_ob) / med(n_local):.2f}x local systemd-nspawn ({ms(med(n_local))})"))

        mb_ob = throughput(ob, args.bytes, env)
        mb_cm = throughput(master, args.bytes)
        rows.append((f"stdout throughput, {args.bytes / 1e6:.0f} MB", f"{mb_ob:.0f} MB/s", f"{mb_cm:.0f} MB/s", "",
                     f"{mb_ob / mb_cm:.2f}x ControlMaster"))
        master_aes = sshd.ssh(True, AES)
        subprocess.run(master_aes + ["true"], check=True)
        mb_aes = throughput(master_aes, args.bytes)
        rows.append((f"stdout throughput, both {AES}", f"{mb_ob:.0f} MB/s", f"{mb_aes:.0f} MB/s", "",
                     f"{mb_ob / mb_aes:.2f}x ControlMaster"))
        # Input flows only as fast as the command uses it (the agent reopens the SSH window
        # as its stdin is written), so this row is where that pacing would show.
        in_ob = stdin_throughput(ob, args.bytes, env)
        in_cm = stdin_throughput(master, args.bytes)
        rows.append((f"stdin throughput, {args.bytes / 1e6:.0f} MB", f"{in_ob:.0f} MB/s", f"{in_cm:.0f} MB/s", "",
                     f"{in_ob / in_cm:.2f}x ControlMaster"))
        # Both directions at once: each end writes while the other has unread data waiting.
        echo_ob = echo_throughput(ob, args.bytes, env)
        echo_cm = echo_throughput(master, args.bytes)
        rows.append((f"stdin through `cat` to stdout, {args.bytes / 1e6:.0f} MB", f"{echo_ob:.0f} MB/s",
                     f"{echo_cm:.0f} MB/s", "", f"{echo_ob / echo_cm:.2f}x ControlMaster"))

        # rsync pulling a tree (one 200 MB file and 500 small ones), openbox as its remote
        # shell against ssh through the ControlMaster: a real client on non-blocking stdio.
        src = os.path.join(tmp, "rsync-src")
        make_tree(src)
        ob_shell = f"{BIN}/openbox -t"
        cm_shell = " ".join(master[:-1])
        t_rs_ob = rsync_pull(["-e", ob_shell, f"local:{src}/"], tmp, env)
        t_rs_cm = rsync_pull(["-e", cm_shell, f"{USER}@127.0.0.1:{src}/"], tmp)
        rows.append(("rsync pull, 200 MB + 500 files", ms(t_rs_ob), ms(t_rs_cm), "",
                     f"{t_rs_ob / t_rs_cm:.2f}x ControlMaster"))

        # The tailnet: the same calls to a node that is on the tailnet only.
        for _ in range(5):
            subprocess.run(mesh.openbox + ["true"], env=mesh.env, check=True)
        t_mesh = time_calls(mesh.openbox + ["true"], args.calls, mesh.env)
        rows.append(("latency of `true` over the tailnet, median", ms(med(t_mesh)), ms(med(t_cm)), "",
                     f"{med(t_mesh) / med(t_ob):.2f}x TCP, {med(t_mesh) / med(t_cm):.2f}x ControlMaster"))
        rows.append(("openboxd RSS with the tailnet up", rss(mesh.daemon_pid()), "", "", ""))
        mb_mesh = throughput(mesh.openbox, args.bytes // 4, mesh.env)
        tsnet = mesh.tsnet_alone(tmp, args.bytes // 4)
        mb_tsnet = tsnet["mb_per_s"]
        rows.append((f"stdout throughput over the tailnet, {args.bytes // 4 / 1e6:.0f} MB", f"{mb_mesh:.0f} MB/s",
                     "", "", f"{mb_mesh / mb_ob:.2f}x TCP, {mb_mesh / mb_tsnet:.2f}x tsnet alone"))
        rows.append((f"tsnet alone: one TCP connection between two nodes, {args.bytes // 4 / 1e6:.0f} MB",
                     f"{mb_tsnet:.0f} MB/s", "", "", f"{mb_tsnet / mb_ob:.2f}x openbox over TCP"))
        # A warm call is two round trips on its pooled connection (channel open, then exec
        # to exit status): over the tailnet, at best the same call over TCP plus two of
        # tsnet's own round trips.
        rtt = tsnet["rtt_median_ms"] / 1000
        rows.append(("tsnet alone: one-byte round trip between two nodes, median / p99",
                     f"{ms(rtt)} / {ms(tsnet['rtt_p99_ms'] / 1000)}", "", "",
                     f"the tailnet adds {(med(t_mesh) - med(t_ob)) / rtt:.1f} of them to a call"))
        floor_mesh = med(t_ob) + 2 * rtt
        rows.append(("floor of a warm call over the tailnet: the call over TCP + 2 of those", ms(floor_mesh),
                     ms(med(t_cm)), "", f"{floor_mesh / med(t_cm):.2f}x ControlMaster; the call is "
                     f"{ms(med(t_mesh) - floor_mesh)} above it"))
        rows.append(("openboxd RSS with the tailnet up, after that stream", rss(mesh.daemon_pid()), "", "", ""))
        # The tailnet gives back what a stream grew once its connections have been quiet
        # for 5 to 10 seconds (libtailscale-sys/go, releaseWhenQuiet).
        time.sleep(12)
        rows.append(("openboxd RSS with the tailnet up, 12 s after that stream", rss(mesh.daemon_pid()), "", "", ""))
        t_cold = cold_start(mesh)
        rows.append(("cold start over the tailnet (openboxd start to `true` done)", ms(t_cold), "", "", ""))

        r_ob = concurrent_rate(ob + ["true"], 8, args.seconds, env)
        r_cm = concurrent_rate(master + ["true"], 8, args.seconds)
        rows.append((f"8 loops of `true` for {args.seconds:.0f}s", f"{r_ob:.0f} calls/s", f"{r_cm:.0f} calls/s", "",
                     f"{r_ob / r_cm:.2f}x ControlMaster"))

        # What the rows above left in openboxd (gigabytes streamed, thousands of calls); then
        # a fresh openboxd for the pooled connections, so that row measures them alone.
        rows.append(("openboxd RSS after the rows above", rss(fleet.daemon_pid()), "", "", ""))
        subprocess.run([f"{BIN}/openbox", "daemon", "stop"], env=env, check=True, capture_output=True)
        # 50 pooled connections: one per session id (each certificate binds its session), on
        # an agent that allows that many sessions.
        many = fleet.sessions_agent(tmp, 64)
        for i in range(50):
            subprocess.run(many + ["-s", f"bench{i}", "true"], env=env, check=True, stdout=subprocess.DEVNULL)
        status = json.loads(subprocess.run([f"{BIN}/openbox", "daemon", "status", "--json"], env=env,
                                           capture_output=True, text=True).stdout)
        rows.append((f"openboxd RSS, {status['connections']} pooled connections", rss(fleet.daemon_pid()), "", "", ""))

        size = os.path.getsize(f"{BIN}/openbox")
        t_ver = time_calls([f"{BIN}/openbox", "--version"], args.calls)
        t_true = time_calls(["/bin/true"], args.calls)
        rows.append(("CLI binary size", f"{size / 1e6:.2f} MB", "", "", ""))
        for name in ("openboxd", "openbox-agent", "openbox-control"):
            rows.append((f"{name} binary size", f"{os.path.getsize(f'{BIN}/{name}') / 1e6:.1f} MB", "", "", ""))
        rows.append(("`openbox --version` start, median", ms(med(t_ver)), "", "", f"{med(t_ver) / med(t_true):.2f}x /bin/true ({ms(med(t_true))})"))
        # The floor of a warm call in this design: two processes start — the CLI here and
        # the node's `sh -c` — whatever openboxd and the agent do between them.
        t_sh = time_calls(["/bin/sh", "-c", "true"], args.calls)
        floor = med(t_ver) + med(t_sh)
        rows.append(("`sh -c true` start, median (what the agent runs)", ms(med(t_sh)), "", "", ""))
        rows.append(("floor of a warm call: CLI start + `sh -c true`", ms(floor), ms(med(t_cm)), "",
                     f"{floor / med(t_cm):.2f}x ControlMaster; the call is {ms(med(t_ob) - floor)} above it"))
    finally:
        for thing in reversed(started):
            thing.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    head = ("measure", "openbox", "ssh ControlMaster", "ssh fresh", "ratio")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
