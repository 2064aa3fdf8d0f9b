#!/bin/sh
# Installs openbox from a release: a tarball's URL or file, or the release directory that
# holds the tarballs (this machine's is picked). The checksum is checked against the
# SHA256SUMS published beside the tarball, and SHA256SUMS against its signature
# (SHA256SUMS.sig) when the release key is known; on any mismatch nothing is installed.
#
#   install.sh --from https://…/releases/0.1.0/                (this machine's tarball)
#   install.sh --from ./openbox-0.1.0-linux-x86_64.tar.gz --prefix /opt/openbox
#   curl -fsSL https://…/releases/0.1.0/install.sh | sh -s -- --from https://…/releases/0.1.0/
#
# --prefix DIR  where to install [default: ~/.local, or /usr/local as root]
# --key KEY     the release's public key (an OpenSSH key line, or a file holding one); the
#               install.sh published with a release carries it already
# --insecure    allow a plain http:// source (anyone on the way could change what arrives)
# Running it again installs again (an upgrade); a running openboxd is stopped cleanly, and
# the next openbox call starts the new one.
set -eu

# The key the release's SHA256SUMS is signed with (`packaging/build --sign-key` writes it
# here); empty: the checksums are checked, their origin is not.
release_key=""

say() { printf 'install.sh: %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

from=""
prefix=""
insecure=""
while [ $# -gt 0 ]; do
  case "$1" in
    --key) [ $# -ge 2 ] || fail "--key needs a key or a file"; release_key=$2; shift 2 ;;
    --key=*) release_key=${1#--key=}; shift ;;
    --insecure) insecure=1; shift ;;
    --from) [ $# -ge 2 ] || fail "--from needs a URL or a file"; from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --prefix) [ $# -ge 2 ] || fail "--prefix needs a directory"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$from" ] || fail "say where the release is: --from URL|FILE (a tarball, or the directory holding them)"
case "$from" in
  http://*) [ -n "$insecure" ] \
    || fail "$from is plain http: anyone on the way could change what is installed; use https://, or --insecure on a network that is yours" ;;
esac
# A key given as a file is read from it.
if [ -n "$release_key" ] && [ -f "$release_key" ]; then release_key=$(cat "$release_key"); fi
if [ -z "$prefix" ]; then
  if [ "$(id -u)" -eq 0 ]; then prefix=/usr/local; else prefix="${HOME:?HOME is not set}/.local"; fi
fi

# Which tarball: linux-x86_64, linux-aarch64, macos-arm64 or macos-x86_64.
machine=$(uname -m)
case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin)
    os=macos
    # A shell under Rosetta says x86_64 on Apple silicon: the arm64 build is the one to run.
    [ "$(sysctl -n sysctl.proc_translated 2>/dev/null || echo 0)" = 1 ] && machine=arm64 ;;
  *) fail "openbox is built for Linux and macOS, not $(uname -s)" ;;
esac
case "$os-$machine" in
  linux-x86_64|linux-amd64) arch=x86_64 ;;
  linux-aarch64|linux-arm64) arch=aarch64 ;;
  macos-arm64|macos-aarch64) arch=arm64 ;;
  macos-x86_64) arch=x86_64 ;;
  *) fail "no build for $os on $machine: Linux x86_64 and aarch64, macOS arm64 and x86_64 are published" ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

is_url() { case "$1" in http://*|https://*) return 0 ;; *) return 1 ;; esac; }
fetch() { # SOURCE DEST: a URL or a local file
  if is_url "$1"; then
    if command -v curl >/dev/null 2>&1; then curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
    else fail "neither curl nor wget is installed to fetch $1"; fi
  else
    cp "$1" "$2"
  fi
}
sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# Where the release is: the tarball's directory, and the tarball's name.
if is_url "$from"; then
  case "$from" in
    */) dir=${from%/}; name="" ;;
    *) dir=${from%/*}; name=${from##*/} ;;
  esac
elif [ -d "$from" ]; then
  dir=$from; name=""
elif [ -f "$from" ]; then
  dir=$(dirname "$from"); name=$(basename "$from")
else
  fail "$from: no such file or directory"
fi

fetch "$dir/SHA256SUMS" "$tmp/SHA256SUMS" 2>/dev/null \
  || fail "no SHA256SUMS beside the release in $dir: refusing to install what cannot be checked"
# SHA256SUMS is only as good as where it came from: with the release key, its signature
# says that; without one, say what is not checked.
if [ -n "$release_key" ]; then
  command -v ssh-keygen >/dev/null 2>&1 \
    || fail "checking the release's signature needs ssh-keygen (OpenSSH's client: apt-get install openssh-client)"
  fetch "$dir/SHA256SUMS.sig" "$tmp/SHA256SUMS.sig" 2>/dev/null \
    || fail "SHA256SUMS in $dir is not signed (no SHA256SUMS.sig), and this install.sh knows the release key: refusing to install"
  printf 'openbox-release %s\n' "$release_key" >"$tmp/allowed_signers"
  ssh-keygen -Y verify -f "$tmp/allowed_signers" -I openbox-release -n openbox-release \
    -s "$tmp/SHA256SUMS.sig" <"$tmp/SHA256SUMS" >/dev/null 2>&1 \
    || fail "the signature of SHA256SUMS in $dir does not match the release key: refusing to install"
  say "SHA256SUMS is signed by the release key $(printf '%s\n' "$release_key" | ssh-keygen -l -f - 2>/dev/null | cut -d' ' -f2)"
else
  say "no release key known: checksums are checked, not who made them (--key KEY checks the signature)"
fi
if [ -z "$name" ]; then
  name=$(sed -n "s/^[0-9a-f]\{64\}  \(openbox-[^ ]*-$os-$arch\.tar\.gz\)\$/\1/p" "$tmp/SHA256SUMS" | tail -n 1)
  [ -n "$name" ] || fail "the release in $dir has no $os-$arch tarball"
fi
expected=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$tmp/SHA256SUMS")
[ -n "$expected" ] || fail "SHA256SUMS in $dir does not list $name: refusing to install it"

say "fetching $name"
fetch "$dir/$name" "$tmp/$name" || fail "cannot fetch $dir/$name"
actual=$(sha256 "$tmp/$name")
[ "$actual" = "$expected" ] \
  || fail "checksum mismatch for $name: SHA256SUMS says $expected, the file is $actual; refusing to install it"

mkdir "$tmp/x"
tar -xzf "$tmp/$name" -C "$tmp/x" || fail "$name is not a tarball openbox can read"
top=$(find "$tmp/x" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -x "$top/bin/openbox" ] || fail "$name holds no bin/openbox: not an openbox release"

# Each file goes in as a new file renamed over the old one: a running binary keeps its old
# inode, and no one ever sees half a file.
put() { # SRC DEST MODE
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.new.$$"
  chmod "$3" "$2.new.$$"
  mv -f "$2.new.$$" "$2"
}
old_version=""
[ -x "$prefix/bin/openbox" ] && old_version=$("$prefix/bin/openbox" --version 2>/dev/null || true)
for b in "$top"/bin/*; do put "$b" "$prefix/bin/$(basename "$b")" 0755; done
for f in $(cd "$top/share" && find . -type f); do put "$top/share/$f" "$prefix/share/${f#./}" 0644; done
# macOS: a tarball a browser downloaded passes its quarantine mark to what it holds, and
# Gatekeeper would then refuse the binaries as from an unidentified developer. Their
# checksums (and, with the release key, their origin) were checked above.
if [ "$os" = macos ] && command -v xattr >/dev/null 2>&1; then
  for b in "$top"/bin/*; do xattr -d com.apple.quarantine "$prefix/bin/$(basename "$b")" 2>/dev/null || true; done
fi
new_version=$("$prefix/bin/openbox" --version) || fail "the installed $prefix/bin/openbox does not run on this machine"

# An upgrade: each context's openboxd stops cleanly; the next call starts the new one.
if [ -n "$old_version" ]; then
  for ctx in $("$prefix/bin/openbox" context ls --json 2>/dev/null | tr ',' '\n' | sed -n 's/.*"name": *"\([a-z0-9_-]*\)".*/\1/p'); do
    "$prefix/bin/openbox" --context "$ctx" daemon stop >/dev/null 2>&1 || true
  done
fi

if [ -n "$old_version" ] && [ "$old_version" != "$new_version" ]; then
  say "upgraded $old_version to $new_version in $prefix"
else
  say "installed $new_version in $prefix"
fi
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) say "$prefix/bin is not on your PATH: add it, e.g. export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
say "next: openbox up     (a personal fleet here; then: openbox -t local uname -a)"
