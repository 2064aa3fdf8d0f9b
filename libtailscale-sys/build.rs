//! Builds `go/` (our libtailscale over tsnet) as a c-archive into OUT_DIR and links it —
//! only with the `mesh` feature. Cargo reruns this only when the Go sources change, and Go's
//! own build cache makes a rebuild cheap.
//!
//! On Linux the archive's constructor is then turned into plain data (see
//! [`defer_go_runtime`]): Go's runtime starts on the first tailnet call instead of when the
//! process loads, so a process without a tailnet never runs or pages in Go.

use std::path::PathBuf;
use std::process::Command;

/// The Tailscale features left out of the build, one `ts_omit_` tag each: see
/// `go/omitted.txt` for why.
fn omitted_tags(go_dir: &std::path::Path) -> String {
    let list = std::fs::read_to_string(go_dir.join("omitted.txt")).expect("libtailscale-sys/go/omitted.txt");
    let names = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    names.map(|name| format!("ts_omit_{name}")).collect::<Vec<_>>().join(",")
}

fn main() {
    let go_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("go");
    println!("cargo:rerun-if-changed={}", go_dir.display());
    println!("cargo:rerun-if-env-changed=GO");
    println!("cargo:rerun-if-env-changed=TARGET_CC");
    if std::env::var_os("CARGO_FEATURE_MESH").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // Built from a copy in OUT_DIR: a C compiler run by cgo may leave files where it runs.
    let src = out.join("go");
    let _ = std::fs::remove_dir_all(&src); // a file removed from go/ goes here too
    std::fs::create_dir_all(&src).expect("OUT_DIR/go");
    for entry in std::fs::read_dir(&go_dir).expect("libtailscale-sys/go") {
        let path = entry.expect("a file of go/").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".go") || name.ends_with(".h") || name == "go.mod" || name == "go.sum" {
            std::fs::copy(&path, src.join(name)).expect("copying go/");
        }
    }
    let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
    check_go(&go);
    let mut build = Command::new(&go);
    cross_compile(&mut build);
    let status = build
        .args(["build", "-buildmode=c-archive", "-trimpath", "-tags", &omitted_tags(&go_dir)])
        .arg("-o")
        .arg(out.join("libopenbox_tailscale.a"))
        .arg(".")
        .current_dir(&src)
        .env("CGO_ENABLED", "1")
        // Every module is pinned in go.mod/go.sum: never resolve versions, never fetch a
        // toolchain.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{go}` ({e}): the mesh needs Go >= 1.25 with cgo (see README)"));
    assert!(status.success(), "building the Go side of the mesh failed (see above)");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        defer_go_runtime(&out.join("libopenbox_tailscale.a"));
    }
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=openbox_tailscale");
    println!("cargo:rustc-link-lib=dylib=pthread");
    println!("cargo:rustc-link-lib=dylib=resolv");
    println!("cargo:include={}", go_dir.display());
}

/// Building for another platform (`cargo build --target …`, as packaging/build does for
/// aarch64): Go is told the target's OS and architecture, and cgo the target's C compiler —
/// the one the `cc` crate would use, `CC_<target>` or `TARGET_CC`.
fn cross_compile(go: &mut Command) {
    let (target, host) = (std::env::var("TARGET").unwrap_or_default(), std::env::var("HOST").unwrap_or_default());
    if target == host {
        return;
    }
    let cc_var = format!("CC_{}", target.replace('-', "_"));
    println!("cargo:rerun-if-env-changed={cc_var}");
    let cc = std::env::var(&cc_var).or_else(|_| std::env::var("TARGET_CC")).unwrap_or_else(|_| {
        panic!("building the mesh for {target} needs that target's C compiler for cgo: set {cc_var} (e.g. aarch64-linux-gnu-gcc)")
    });
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default().as_str() {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("the mesh is not built for the {other} architecture"),
    };
    let os = match std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default().as_str() {
        "macos" => "darwin".to_owned(),
        other => other.to_owned(),
    };
    go.env("GOOS", os).env("GOARCH", arch).env("CC", cc);
}

/// Fails the build with a clear message unless `go` is at least 1.25.
fn check_go(go: &str) {
    let text = Command::new(go)
        .args(["env", "GOVERSION"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| panic!("`{go}` was not found: the mesh needs Go >= 1.25 with cgo (see README), or build with --no-default-features"));
    let minor = text
        .strip_prefix("go1.")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 25 => {}
        _ => panic!("{text} is too old: the mesh needs Go >= 1.25 with cgo (see README)"),
    }
}

/// The section a c-archive's constructor (Go's `_rt0_*_lib`, which starts Go's runtime and
/// runs every package's initializer) is moved to; `src/lib.rs` calls it on first use.
/// Exactly as long as `.init_array`, so the name is rewritten in place.
const DEFERRED_SECTION: &[u8; 11] = b"openbox_rt0";

/// Renames the `.init_array` section of the archive's Go object to [`DEFERRED_SECTION`]
/// and makes it plain data the linker keeps (`SHF_GNU_RETAIN`), in place: the loader no
/// longer calls Go's constructor, and `__start_openbox_rt0` still finds the pointer to it. Without this, every process linking the tailnet pays Go's start (and
/// ~13 MiB of its code and tables paged in) whether or not it ever joins a tailnet.
fn defer_go_runtime(archive: &std::path::Path) {
    let mut bytes = std::fs::read(archive).expect("reading the Go archive");
    let (start, len) =
        ar_member(&bytes, b"go.o/").expect("the Go archive has no go.o: has the c-archive layout changed?");
    let renamed = rename_init_array(&mut bytes[start..start + len]);
    assert!(renamed.is_ok(), "deferring Go's runtime start: {}", renamed.unwrap_err());
    std::fs::write(archive, bytes).expect("writing the Go archive");
}

/// The offset and length of the archive member named `name` (GNU `ar` format).
fn ar_member(ar: &[u8], name: &[u8]) -> Option<(usize, usize)> {
    let mut at = ar.strip_prefix(b"!<arch>\n").map(|_| 8)?;
    while at + 60 <= ar.len() {
        let header = &ar[at..at + 60];
        let size: usize = std::str::from_utf8(&header[48..58]).ok()?.trim().parse().ok()?;
        let data = at + 60;
        if header[..16].starts_with(name) {
            return Some((data, size));
        }
        at = data + size + size % 2;
    }
    None
}

/// Renames the one `SHT_INIT_ARRAY` section of a 64-bit little-endian ELF object and makes
/// it `SHT_PROGBITS`, kept by the linker's garbage collection.
fn rename_init_array(elf: &mut [u8]) -> Result<(), String> {
    const SHT_PROGBITS: u32 = 1;
    const SHT_INIT_ARRAY: u32 = 14;
    const SHF_GNU_RETAIN: u64 = 0x20_0000;
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("go.o is not a 64-bit little-endian ELF object".into());
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c), u16_at(elf, 0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(elf, header(shstrndx) + 24);
    let mut found = Vec::new();
    for i in 0..shnum {
        let name = strtab + u32_at(elf, header(i)) as usize;
        if u32_at(elf, header(i) + 4) == SHT_INIT_ARRAY && elf.get(name..name + 12) == Some(b".init_array\0") {
            found.push((header(i), name));
        }
    }
    let [(at, name)] = found[..] else {
        return Err(format!("expected one .init_array section in go.o, found {}", found.len()));
    };
    elf[name..name + DEFERRED_SECTION.len()].copy_from_slice(DEFERRED_SECTION);
    elf[at + 4..at + 8].copy_from_slice(&SHT_PROGBITS.to_le_bytes());
    let flags = u64_at(elf, at + 8) as u64 | SHF_GNU_RETAIN;
    elf[at + 8..at + 16].copy_from_slice(&flags.to_le_bytes());
    Ok(())
}
