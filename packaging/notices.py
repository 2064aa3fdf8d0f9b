#!/usr/bin/env python3
"""Writes THIRD-PARTY.md: every Rust crate and Go module linked into the release binaries,
with its version and (for crates) its license, for the tarball's and the package's docs.

Usage: notices.py TARGET-TRIPLE > THIRD-PARTY.md   (run from the repository's top)
"""
import json
import subprocess
import sys

BINARIES = ["openbox-cli", "openboxd", "openbox-control", "openbox-agent", "openbox-mcp"]

triple = sys.argv[1]
meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", triple]))
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])

# Normal (linked) dependencies only, from the binaries' packages.
todo = [pid for pid, p in packages.items() if p["name"] in BINARIES and pid in members]
seen = set()
while todo:
    pid = todo.pop()
    if pid in seen:
        continue
    seen.add(pid)
    for dep in nodes[pid]["deps"]:
        if any(k["kind"] is None for k in dep["dep_kinds"]):
            todo.append(dep["pkg"])

crates = sorted((packages[p]["name"], packages[p]["version"], packages[p].get("license") or "see its repository")
                for p in seen if p not in members)
# With the features libtailscale-sys/build.rs leaves out left out, so the same modules linked.
go = subprocess.check_output(
    ["scripts/tailnet-go", "list", "-deps", "-f", "{{with .Module}}{{.Path}} {{.Version}}{{end}}", "."], text=True)
modules = sorted({line for line in go.splitlines() if line.strip() and not line.startswith("openbox/")})

print("# Third-party software in openbox's binaries\n")
print("openbox is licensed under the Apache License 2.0 (LICENSE). Its binaries contain the")
print("following software, each under its own license.\n")
print(f"## Rust crates ({len(crates)})\n")
print("| crate | version | license |\n|---|---|---|")
for name, version, lic in crates:
    print(f"| {name} | {version} | {lic} |")
print(f"\n## Go modules in the embedded Tailscale node ({len(modules)})\n")
print("Each module's license is in its source (`go mod download -json MODULE@VERSION`); the Go")
print("standard library is BSD-3-Clause.\n")
for m in modules:
    print(f"- {m}")
print("\n## In the dashboard\n")
print("- xterm.js and its fit add-on (MIT), in web/vendor/xterm/")
