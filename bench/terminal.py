#!/usr/bin/env python3
"""Keystroke echo through a terminal: `openbox -t local -i cat` against `ssh -tt HOST cat`
through a warm ControlMaster, measured in the same run.

Each side runs under a pseudo-terminal of this script's own; one byte is written, and
the time until the remote terminal's echo of it comes back is taken, --keys times after
a warm-up. Prints the median and p99 of each and their ratio.

Usage: bench/terminal [--keys N]   (needs root: it starts sshd)
"""

import argparse
import os
import pty
import select
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, Fleet, Sshd, ensure_user  # noqa: E402


class NoEngine:
    """The fleet needs no container engine here."""
    docker_host = "unix:///nonexistent"


def read_until(fd, want, seconds=30):
    got = b""
    deadline = time.monotonic() + seconds
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {want!r} in {got[-200:]!r}")
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, 4096)
    return got


def echo_latencies(argv, env, keys):
    """Milliseconds from writing a key to reading its echo, `keys` times."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    try:
        # Ready when a line typed now comes back from the remote `cat`.
        os.write(fd, b"ready\r")
        read_until(fd, b"ready\r\n" + b"ready")
        for _ in range(20):  # warm-up
            os.write(fd, b"x")
            read_until(fd, b"x")
        out = []
        for _ in range(keys):
            t = time.perf_counter()
            os.write(fd, b"k")
            read_until(fd, b"k")
            out.append((time.perf_counter() - t) * 1000)
        return out
    finally:
        os.write(fd, b"\x03")  # Ctrl-C ends the remote cat
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(fd)


def summary(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[int(len(xs) * 0.99) - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=500)
    args = ap.parse_args()
    ensure_user()
    with tempfile.TemporaryDirectory() as tmp:
        sshd = Sshd(tmp)
        fleet = Fleet(tmp, NoEngine())
        try:
            env = dict(fleet.env, TERM="xterm")
            ssh = sshd.ssh(True)
            # Warm the master first, as a ControlMaster user's would be.
            os.system(" ".join(ssh) + " true")
            ssh_ms = echo_latencies(ssh[:1] + ["-tt"] + ssh[1:] + ["cat"], dict(os.environ, TERM="xterm"), args.keys)
            ob_ms = echo_latencies([f"{BIN}/openbox", "-t", "local", "-i", "cat"], env, args.keys)
        finally:
            fleet.stop()
            sshd.stop()
    (sm, s99), (om, o99) = summary(ssh_ms), summary(ob_ms)
    print(f"keystroke echo, {args.keys} keys (ms)    median    p99")
    print(f"  ssh -tt (ControlMaster)          {sm:7.3f} {s99:7.3f}")
    print(f"  openbox -i                       {om:7.3f} {o99:7.3f}")
    print(f"  ratio openbox/ssh                {om / sm:7.2f}x {o99 / s99:6.2f}x")


if __name__ == "__main__":
    main()
