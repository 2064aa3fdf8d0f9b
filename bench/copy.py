#!/usr/bin/env python3
"""`openbox cp` against `scp` through a warm ControlMaster, 1 GiB each way, in one run.

Sets up the bench's sshd (a user obbench logging in by key) and an `openbox up` fleet, as
bench/run does, makes a file of --mib MiB of random bytes, then times, --rounds times
each, the upload and the download with both tools (scp speaks SFTP too, OpenSSH >= 9),
checks every copy byte for byte, and prints the medians and their ratio.

Usage: bench/copy [--mib N] [--rounds N]   (needs root: it starts sshd)
"""

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, USER, Fleet, Sshd, ensure_user  # noqa: E402
from terminal import NoEngine  # noqa: E402


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def timed(cmd, env=None):
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({out.returncode}): {out.stderr}")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ensure_user()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        sshd = Sshd(tmp)
        fleet = Fleet(tmp, NoEngine())
        try:
            src = os.path.join(tmp, "src.bin")
            with open(src, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            os.chmod(src, 0o644)
            want = digest(src)
            there = os.path.join(tmp, "there")  # where both land on the "node"
            os.makedirs(there)
            shutil.chown(there, USER)
            back = os.path.join(tmp, "back.bin")
            ssh = sshd.ssh(True)
            opts = ssh[1:-1]  # the ssh options, for scp (-p is -P there)
            opts = [("-P" if o == "-p" else o) for o in opts if o != "-q"]
            subprocess.run(ssh + ["true"], check=True)  # the master, warm
            host = ssh[-1]
            results = {}
            for name, up, down in [
                ("scp", ["scp", "-q", *opts, src, f"{host}:{there}/up.bin"],
                 ["scp", "-q", *opts, f"{host}:{there}/up.bin", back]),
                ("openbox cp", [f"{BIN}/openbox", "cp", src, f"tag:local:{there}/up.bin"],
                 [f"{BIN}/openbox", "cp", f"tag:local:{there}/up.bin", back]),
            ]:
                ups, downs = [], []
                for _ in range(args.rounds):
                    ups.append(timed(up, fleet.env))
                    assert digest(os.path.join(there, "up.bin")) == want, f"{name}: the upload differs"
                    downs.append(timed(down, fleet.env))
                    assert digest(back) == want, f"{name}: the download differs"
                    os.remove(back)
                    os.remove(os.path.join(there, "up.bin"))
                results[name] = (statistics.median(ups), statistics.median(downs))
        finally:
            fleet.stop()
            sshd.stop()
    mib = args.mib
    print(f"{mib} MiB, median of {args.rounds}      upload         download")
    for name, (u, dn) in results.items():
        print(f"  {name:<22} {u:6.2f} s {mib / u:6.0f} MiB/s {dn:6.2f} s {mib / dn:6.0f} MiB/s")
    (su, sd), (ou, od) = results["scp"], results["openbox cp"]
    print(f"  ratio openbox/scp (time)  {ou / su:6.2f}x          {od / sd:6.2f}x")


if __name__ == "__main__":
    main()
