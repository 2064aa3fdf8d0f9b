#!/usr/bin/env python3
"""Writes link-time stubs (.tbd, Apple's text interface files) of the macOS system
libraries openbox's binaries link, into DIR: `DIR/Frameworks/NAME.framework/NAME.tbd` and
`DIR/lib/libNAME.tbd`. Each lists the symbols in symbols.txt that belong to it, by prefix.
Linking from Linux needs them (no macOS SDK here); a Mac loads its own libraries at run
time, so a stub only has to name what the binaries use.

Usage: packaging/macos-stubs/stubs.py DIR   (then link with -F DIR/Frameworks -L DIR/lib)
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Library, where it is on a Mac, the prefixes of its symbols.
LIBRARIES = [
    ("Frameworks/CoreFoundation.framework/CoreFoundation.tbd",
     "/System/Library/Frameworks/CoreFoundation.framework/Versions/A/CoreFoundation", ("_CF", "_kCF")),
    ("Frameworks/Security.framework/Security.tbd",
     "/System/Library/Frameworks/Security.framework/Versions/A/Security", ("_Sec", "_kSec")),
    ("Frameworks/SystemConfiguration.framework/SystemConfiguration.tbd",
     "/System/Library/Frameworks/SystemConfiguration.framework/Versions/A/SystemConfiguration", ("_SC", "_kSC")),
    ("lib/libresolv.tbd", "/usr/lib/libresolv.9.dylib", ("_res_", "_dn_")),
]
TARGETS = "[ x86_64-macos, arm64-macos ]"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    with open(os.path.join(HERE, "symbols.txt")) as f:
        symbols = sorted({ln.strip() for ln in f if ln.strip() and not ln.startswith("#")})
    unplaced = [s for s in symbols if not any(s.startswith(p) for _, _, ps in LIBRARIES for p in ps)]
    if unplaced:
        sys.exit(f"stubs.py: no library takes {', '.join(unplaced)}: add its prefix to LIBRARIES")
    for path, install_name, prefixes in LIBRARIES:
        mine = [s for s in symbols if s.startswith(prefixes)]
        # A library must export something to be a library at all.
        listed = ", ".join(mine) or f"_openbox_{os.path.basename(path).split('.')[0]}_unused"
        os.makedirs(os.path.join(out, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(out, path), "w") as f:
            f.write(f"--- !tapi-tbd\ntbd-version:     4\ntargets:         {TARGETS}\n"
                    f"install-name:    '{install_name}'\nexports:\n"
                    f"  - targets:         {TARGETS}\n    symbols:         [ {listed} ]\n...\n")


if __name__ == "__main__":
    main()
