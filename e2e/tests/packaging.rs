//! The release as a user gets it (packaging/build's tarballs, .debs and SHA256SUMS, which the
//! test command builds into target/packages first): install.sh into a fresh prefix and from
//! a URL, its refusal of a corrupted tarball, `dpkg -i` in a throw-away root, and the
//! services installed and started by one command under a real systemd — each throw-away
//! root a podman container over an overlay of this machine's own Debian, with loopback only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openbox_e2e::{Out, bin, free_port, podman, process_running};
use sha2::Digest as _;

use openbox_e2e::release_dir as release;

fn sh(script: &str, env: &[(&str, &Path)]) -> Out {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Out::from(cmd.output().unwrap())
}

fn install_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh")
}

/// The ELF machine of a binary: 62 is x86_64, 183 aarch64.
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is an ELF binary", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn the_release_has_tarballs_and_debs_for_both_architectures_with_their_checksums() {
    let dir = release();
    let v = proto::VERSION;
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let names = [
        format!("openbox-{v}-linux-x86_64.tar.gz"),
        format!("openbox-{v}-linux-aarch64.tar.gz"),
        format!("openbox-fleet_{v}_amd64.deb"),
        format!("openbox-fleet_{v}_arm64.deb"),
    ];
    for name in &names {
        let line =
            sums.lines().find(|l| l.ends_with(&format!("  {name}"))).unwrap_or_else(|| panic!("{name} in SHA256SUMS"));
        let out = Command::new("sha256sum").arg(dir.join(name)).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).split(' ').next(), line.split(' ').next(), "{name}");
    }
    assert!(dir.join("install.sh").exists(), "install.sh is published beside the tarballs");

    let work = tempfile::tempdir().unwrap();
    for (arch, machine) in [("x86_64", 62), ("aarch64", 183)] {
        let tar = dir.join(format!("openbox-{v}-linux-{arch}.tar.gz"));
        let out = Command::new("tar").arg("-xzf").arg(&tar).arg("-C").arg(work.path()).output().unwrap();
        assert!(out.status.success());
        let top = work.path().join(format!("openbox-{v}-linux-{arch}"));
        for b in ["openbox", "openboxd", "openbox-control", "openbox-agent", "openbox-mcp"] {
            assert_eq!(elf_machine(&top.join("bin").join(b)), machine, "{arch} {b}");
        }
        // The control plane's and the agent's pages are their own binaries' (every flag).
        for (page, flag) in [("openbox-control.1.gz", "metrics\\-token\\-file"), ("openbox-agent.1.gz", "run\\-as")] {
            let text = Command::new("zcat").arg(top.join("share/man/man1").join(page)).output().unwrap();
            assert!(String::from_utf8_lossy(&text.stdout).contains(flag), "{arch}: {page} documents --{flag}");
        }
        for f in [
            "share/man/man1/openbox.1.gz",
            "share/man/man1/openbox-control-migrate.1.gz",
            "share/man/man1/openbox-service-install.1.gz",
            "share/man/man1/openbox-node-add.1.gz",
            "share/bash-completion/completions/openbox",
            "share/zsh/site-functions/_openbox",
            "share/fish/vendor_completions.d/openbox.fish",
            "share/openbox/systemd/openbox-control.service",
            "share/openbox/systemd/openbox-agent.service",
            "share/openbox/systemd/openboxd.service",
            "share/openbox/launchd/dev.openbox.openboxd.plist",
            "share/doc/openbox/LICENSE",
            "share/doc/openbox/THIRD-PARTY.md",
        ] {
            assert!(top.join(f).is_file(), "{arch}: {f}");
        }
    }
    // The aarch64 build runs (under qemu's user-mode emulator, on its own C library).
    let top = work.path().join(format!("openbox-{v}-linux-aarch64/bin"));
    for (b, name) in
        [("openbox", "openbox"), ("openbox-control", "openbox control"), ("openbox-agent", "openbox agent")]
    {
        let out = Command::new("qemu-aarch64-static")
            .args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(top.join(b))
            .arg("--version")
            .output()
            .expect("qemu-user-static (scripts/setup-test-env installs it)");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name} {v}"), "{out:?}");
    }

    // The package: its files, and a postinst that starts nothing.
    let deb = dir.join(format!("openbox-fleet_{v}_amd64.deb"));
    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "./usr/lib/openbox-fleet/bin/openbox",
        "./usr/lib/openbox-fleet/bin/openbox-agent",
        "./usr/bin/openbox-agent -> ../lib/openbox-fleet/bin/openbox-agent",
        "./usr/bin/obx -> ../lib/openbox-fleet/bin/openbox",
        "./usr/lib/openbox-fleet/man/openbox.1.gz",
        "./usr/share/man/man1/openbox-service-install.1.gz",
        "./usr/share/bash-completion/completions/openbox",
        "./usr/share/zsh/vendor-completions/_openbox",
        "./usr/lib/systemd/system/openbox-control.service",
        "./usr/lib/systemd/user/openboxd.service",
        "./usr/share/doc/openbox-fleet/copyright",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(f)), "{f} in the .deb:\n{listing}");
    }
    // Nothing where Debian's openbox (the window manager) has files: /usr/bin/openbox and
    // its manual pages are an alternative, made at install.
    for f in ["./usr/bin/openbox", "./usr/share/man/man1/openbox.1.gz", "./usr/share/man/man1/openbox-session.1.gz"] {
        assert!(!listing.lines().any(|l| l.ends_with(f) || l.contains(&format!("{f} -> "))), "{f} in the .deb");
    }
    let postinst = Command::new("dpkg-deb").arg("--info").arg(&deb).arg("postinst").output().unwrap();
    let postinst = String::from_utf8_lossy(&postinst.stdout);
    assert!(!postinst.contains("enable") && !postinst.contains("systemctl start"), "{postinst}");
    let info = Command::new("dpkg-deb").args(["--field"]).arg(&deb).args(["Architecture", "Depends"]).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Architecture: amd64") && info.contains("libc6 (>= 2."), "{info}");
}

/// Checks a Mach-O binary's code signature as a Mac checks it before running it: its
/// code directory's hash of each page (SHA-256) matches the page. Returns the signature's
/// flags (0x2: ad hoc), or None when the binary is not signed.
fn code_signature(bytes: &[u8]) -> Option<u32> {
    let le = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(le(0), 0xfeed_facf, "a 64-bit Mach-O file");
    let mut at = 32; // after the header: the load commands
    let mut signature = None;
    for _ in 0..le(16) {
        if le(at) == 0x1d {
            signature = Some((le(at + 8) as usize, le(at + 12) as usize)); // LC_CODE_SIGNATURE
        }
        at += le(at + 4) as usize;
    }
    let (offset, size) = signature?;
    let blob = &bytes[offset..offset + size];
    let be = |at: usize| u32::from_be_bytes(blob[at..at + 4].try_into().unwrap());
    assert_eq!(be(0), 0xfade_0cc0, "an embedded signature");
    let directory = (0..be(8) as usize).map(|i| be(16 + 8 * i) as usize).find(|&o| be(o) == 0xfade_0c02);
    let cd = &blob[directory.expect("a code directory")..];
    let cd_u32 = |at: usize| u32::from_be_bytes(cd[at..at + 4].try_into().unwrap());
    let (flags, hashes, pages, limit) = (cd_u32(12), cd_u32(16) as usize, cd_u32(28) as usize, cd_u32(32) as usize);
    let (hash_size, hash_type, page_size) = (cd[36] as usize, cd[37], 1usize << cd[39]);
    assert_eq!((hash_size, hash_type), (32, 2), "SHA-256 page hashes");
    for page in 0..pages {
        let code = &bytes[page * page_size..((page + 1) * page_size).min(limit)];
        let want = &cd[hashes + page * 32..hashes + (page + 1) * 32];
        assert!(sha2::Sha256::digest(code).as_slice() == want, "page {page} matches its hash");
    }
    Some(flags)
}

#[test]
fn the_mac_tarballs_hold_mach_o_binaries_for_their_cpu_signed_for_apple_silicon_with_launchd_services() {
    let dir = release();
    let v = proto::VERSION;
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (platform, cpu) in [("arm64", "arm64"), ("x86_64", "x86_64")] {
        let name = format!("openbox-{v}-macos-{platform}");
        let tar = dir.join(format!("{name}.tar.gz"));
        let line = sums.lines().find(|l| l.ends_with(&format!("  {name}.tar.gz")));
        let out = Command::new("sha256sum").arg(&tar).output().unwrap();
        let sum = String::from_utf8_lossy(&out.stdout).split(' ').next().map(str::to_owned);
        assert_eq!(line.and_then(|l| l.split(' ').next()).map(str::to_owned), sum, "{name} in SHA256SUMS");

        let listing = Command::new("tar").arg("-tzf").arg(&tar).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let mut want: Vec<String> = ["openbox", "openboxd", "openbox-control", "openbox-agent", "openbox-mcp"]
            .iter()
            .map(|b| format!("bin/{b}"))
            .collect();
        want.extend(
            [
                "share/man/man1/openbox-node-add.1.gz",
                "share/bash-completion/completions/openbox",
                "share/zsh/site-functions/_openbox",
                "share/fish/vendor_completions.d/openbox.fish",
                "share/openbox/launchd/dev.openbox.openboxd.plist",
                "share/openbox/launchd/dev.openbox.agent.plist",
                "share/openbox/launchd/dev.openbox.control.plist",
                "share/doc/openbox/LICENSE",
                "share/doc/openbox/THIRD-PARTY.md",
            ]
            .map(str::to_owned),
        );
        for f in &want {
            assert!(listing.lines().any(|l| l == format!("{name}/{f}")), "{name}: {f} in\n{listing}");
        }
        assert!(!listing.contains("systemd"), "a Mac has no systemd: {listing}");

        let out = Command::new("tar").arg("-xzf").arg(&tar).arg("-C").arg(work.path()).output().unwrap();
        assert!(out.status.success());
        for b in ["openbox", "openboxd", "openbox-control", "openbox-agent", "openbox-mcp"] {
            let path = work.path().join(&name).join("bin").join(b);
            let kind = Command::new("file").arg("-b").arg(&path).output().expect("file(1)");
            let kind = String::from_utf8_lossy(&kind.stdout);
            assert!(kind.starts_with(&format!("Mach-O 64-bit {cpu} executable")), "{name} {b}: {kind}");
            // Apple silicon runs no binary without a valid signature: ad hoc is enough, and
            // the linker makes one. An Intel Mac runs unsigned binaries.
            let bytes = std::fs::read(&path).unwrap();
            if cpu == "arm64" {
                let flags = code_signature(&bytes).unwrap_or_else(|| panic!("{name} {b} is signed"));
                assert!(flags & 0x2 != 0, "{name} {b}: signed ad hoc ({flags:#x})");
            }
            // The tailnet is in the binaries that hold it (Go keeps its functions' names, for
            // its own tracebacks, when the symbols are stripped).
            if b != "openbox" && b != "openbox-mcp" {
                assert!(bytes.windows(9).any(|w| w == b"tailscale"), "{name} {b} embeds the tailnet");
            }
        }
        let third = std::fs::read_to_string(work.path().join(&name).join("share/doc/openbox/THIRD-PARTY.md")).unwrap();
        assert!(third.contains("| kqueue |") && third.contains("tailscale"), "the Mac's own dependencies: {third}");
    }
}

/// A directory of stand-ins for a Mac's `uname`, `sysctl` and `xattr`, put first on PATH:
/// install.sh's choices, checked here. `xattr` records what it was asked.
fn pretend_mac(dir: &Path, machine: &str, rosetta: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let script = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    script("uname", &format!(r#"case "$1" in -s) echo Darwin ;; -m) echo {machine} ;; *) echo Darwin ;; esac"#));
    script("sysctl", &format!("echo {}", u8::from(rosetta)));
    script("xattr", &format!(r#"echo "$*" >>"{}/xattr.log""#, dir.display()));
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

#[test]
fn install_sh_on_a_mac_takes_the_mac_tarball_for_its_cpu_and_lifts_the_quarantine() {
    let dir = release();
    let v = proto::VERSION;
    for (machine, rosetta, platform, cpu) in [
        ("arm64", false, "arm64", "arm64"),
        ("x86_64", true, "arm64", "arm64"), // a shell under Rosetta on Apple silicon
        ("x86_64", false, "x86_64", "x86_64"),
    ] {
        let work = tempfile::tempdir().unwrap();
        let prefix = work.path().join("prefix");
        let path = pretend_mac(&work.path().join("mac"), machine, rosetta);
        let out = Command::new("sh")
            .arg(install_sh())
            .arg("--from")
            .arg(format!("{}/", dir.display()))
            .arg("--prefix")
            .arg(&prefix)
            .env("PATH", &path)
            .env("HOME", work.path())
            .output()
            .unwrap();
        let out = Out::from(out);
        assert!(out.stderr.contains(&format!("fetching openbox-{v}-macos-{platform}.tar.gz")), "{machine}: {out:?}");
        // Installed, then found not to run here: this is not a Mac.
        let kind = Command::new("file").arg("-b").arg(prefix.join("bin/openbox-agent")).output().unwrap();
        assert!(String::from_utf8_lossy(&kind.stdout).starts_with(&format!("Mach-O 64-bit {cpu}")), "{machine}");
        let lifted = std::fs::read_to_string(work.path().join("mac/xattr.log")).unwrap();
        assert!(lifted.contains(&format!("-d com.apple.quarantine {}/bin/openboxd", prefix.display())), "{lifted}");
        assert_eq!(lifted.lines().count(), 5, "each binary: {lifted}");
        out.fails_with(1, "does not run on this machine");
    }
}

#[test]
fn install_sh_installs_into_a_fresh_prefix_where_the_fleet_runs_and_upgrades_in_place() {
    let dir = release();
    let work = tempfile::tempdir().unwrap();
    let (prefix, home) = (work.path().join("prefix"), work.path().join("home"));
    std::fs::create_dir_all(&home).unwrap();
    let env = [("HOME", home.as_path()), ("P", prefix.as_path()), ("R", dir.as_path()), ("I", &install_sh())];

    // From the release directory: this machine's tarball is picked.
    let out = sh(r#"sh "$I" --from "$R/" --prefix "$P""#, &env).ok();
    assert!(out.stderr.contains(&format!("installed openbox {}", proto::VERSION)), "{out:?}");
    assert!(out.stderr.contains("next: openbox up"), "{out:?}");
    let v = sh(r#""$P/bin/openbox" --version"#, &env).ok();
    assert_eq!(v.stdout.trim(), format!("openbox {}", proto::VERSION));
    assert!(prefix.join("share/man/man1/openbox-up.1.gz").exists());

    // Its completions load in bash.
    let c = sh(r#"bash -c '. "$P/share/bash-completion/completions/openbox" && complete -p openbox'"#, &env).ok();
    assert!(c.stdout.contains("-F _openbox openbox"), "{c:?}");

    // A personal fleet from the installed binaries, and a first command on it.
    let port = free_port();
    let state = work.path().join("state");
    let env_up = [("HOME", home.as_path()), ("P", prefix.as_path()), ("OPENBOX_HOME", state.as_path())];
    let up = sh(&format!(r#""$P/bin/openbox" up --addr 127.0.0.1:{port}"#), &env_up).ok();
    assert!(up.stdout.contains("openbox -t local uname -a"), "{up:?}");
    let first = sh(r#""$P/bin/openbox" -t local echo first command from the prefix"#, &env_up).ok();
    assert_eq!(first.stdout.trim(), "first command from the prefix");

    // Installing again while openboxd runs: it is stopped cleanly, the next call starts the
    // (new) one, and the fleet answers as before.
    let status = sh(r#""$P/bin/openbox" daemon status --json"#, &env_up).ok();
    let pid =
        serde_json::from_str::<serde_json::Value>(&status.stdout).unwrap()["pid"].as_u64().expect("openboxd's pid");
    let again = sh(
        r#"OPENBOX_HOME="$S" sh "$I" --from "$R/" --prefix "$P""#,
        &[
            ("HOME", home.as_path()),
            ("P", prefix.as_path()),
            ("R", dir.as_path()),
            ("I", &install_sh()),
            ("S", state.as_path()),
        ],
    )
    .ok();
    assert!(again.stderr.contains("installed openbox"), "{again:?}");
    let gone = wait_for(Duration::from_secs(30), || !process_running(pid));
    assert!(gone, "the old openboxd ({pid}) stopped");
    let after = sh(r#""$P/bin/openbox" -t local echo still here"#, &env_up).ok();
    assert_eq!(after.stdout.trim(), "still here");
    sh(r#""$P/bin/openbox" down"#, &env_up).ok();
    // And its openboxd, which outlives the fleet (the next call would use it).
    sh(r#""$P/bin/openbox" daemon stop"#, &env_up).ok();

    // From a URL: a release served over HTTP (on loopback).
    let port = free_port();
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "the HTTP server answers"
    );
    let url_prefix = work.path().join("from-url");
    let url = format!("http://127.0.0.1:{port}/openbox-{}-linux-x86_64.tar.gz", proto::VERSION);
    let url_env = [("HOME", home.as_path()), ("P", url_prefix.as_path()), ("I", &dir.join("install.sh"))];
    // Plain http only when asked for: anyone on the way could change what arrives.
    let out = sh(&format!(r#"sh "$I" --from {url} --prefix "$P""#), &url_env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is plain http") && out.stderr.contains("--insecure"), "{out:?}");
    assert!(!url_prefix.exists());
    // The published install.sh checks the signature there too.
    let out = sh(&format!(r#"sh "$I" --insecure --from {url} --prefix "$P""#), &url_env).ok();
    assert!(out.stderr.contains("SHA256SUMS is signed by the release key"), "{out:?}");
    assert!(out.stderr.contains("installed openbox"), "{out:?}");
    assert!(url_prefix.join("bin/openbox-agent").exists());
    server.kill().ok();
    server.wait().ok();
}

/// The public half of the key the test release is signed with (scripts/test makes it).
fn release_public_key() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release-test-key.pub");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; scripts/test signs the release with a key it makes", path.display()))
}

/// A copy of the release in a directory of its own, with one tarball's bytes changed and
/// SHA256SUMS made to match them, as someone who controls the mirror would.
fn tampered_release(dir: &Path, into: &Path) {
    std::fs::create_dir(into).unwrap();
    for f in ["SHA256SUMS", "SHA256SUMS.sig", "install.sh"] {
        std::fs::copy(dir.join(f), into.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let name = format!("openbox-{}-linux-x86_64.tar.gz", proto::VERSION);
    let mut bytes = std::fs::read(dir.join(&name)).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x55;
    std::fs::write(into.join(&name), &bytes).unwrap();
    let sum = Command::new("sha256sum").arg(into.join(&name)).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout).split(' ').next().unwrap().to_owned();
    let sums = std::fs::read_to_string(into.join("SHA256SUMS")).unwrap();
    let sums: String = sums
        .lines()
        .map(|l| if l.ends_with(&format!("  {name}")) { format!("{sum}  {name}\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(into.join("SHA256SUMS"), sums).unwrap();
}

#[test]
fn install_sh_checks_the_signature_of_the_checksums_with_the_release_key() {
    let dir = release();
    let key = release_public_key();
    let published = std::fs::read_to_string(dir.join("install.sh")).unwrap();
    let carried = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert!(published.contains(&format!("release_key=\"{carried}\"")), "the published install.sh carries the key");
    let work = tempfile::tempdir().unwrap();
    let prefix = work.path().join("prefix");

    // The checksums and the tarball agree, but SHA256SUMS is not what the release key signed.
    let tampered = work.path().join("tampered");
    tampered_release(&dir, &tampered);
    let env = [("HOME", work.path()), ("P", prefix.as_path()), ("D", tampered.as_path())];
    let out = sh(r#"sh "$D/install.sh" --from "$D/" --prefix "$P""#, &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not match the release key") && out.stderr.contains("refusing"), "{out:?}");
    assert!(!prefix.exists(), "nothing was installed");
    // Without the signature at all, a key that is known refuses too.
    std::fs::remove_file(tampered.join("SHA256SUMS.sig")).unwrap();
    let out = sh(r#"sh "$D/install.sh" --from "$D/" --prefix "$P""#, &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is not signed"), "{out:?}");
    // install.sh without a key of its own takes one with --key, and refuses another's.
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("release-key.pub"), &key).unwrap();
    let other = work.path().join("other");
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&other).status().unwrap();
    let env = [
        ("HOME", work.path()),
        ("P", prefix.as_path()),
        ("I", &install_sh()),
        ("R", dir.as_path()),
        ("K", &src.join("release-key.pub")),
        ("O", &other.with_extension("pub")),
    ];
    let out = sh(r#"sh "$I" --key "$O" --from "$R/" --prefix "$P""#, &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("does not match the release key"), "{out:?}");
    let out = sh(r#"sh "$I" --key "$K" --from "$R/" --prefix "$P""#, &env).ok();
    assert!(out.stderr.contains("SHA256SUMS is signed by the release key SHA256:"), "{out:?}");
    assert!(prefix.join("bin/openbox").exists());
    // With no key at all it says what it did not check.
    let bare = work.path().join("bare");
    let env = [("HOME", work.path()), ("P", bare.as_path()), ("I", &install_sh()), ("R", dir.as_path())];
    let out = sh(r#"sh "$I" --from "$R/" --prefix "$P""#, &env).ok();
    assert!(out.stderr.contains("no release key known"), "{out:?}");
}

#[test]
fn install_sh_refuses_a_corrupted_tarball_or_one_without_checksums() {
    let dir = release();
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("release");
    std::fs::create_dir(&copy).unwrap();
    let name = format!("openbox-{}-linux-x86_64.tar.gz", proto::VERSION);
    std::fs::copy(dir.join("SHA256SUMS"), copy.join("SHA256SUMS")).unwrap();
    let mut bytes = std::fs::read(dir.join(&name)).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(copy.join(&name), &bytes).unwrap();

    let prefix = work.path().join("prefix");
    let env = [("HOME", work.path()), ("P", prefix.as_path()), ("I", &install_sh()), ("T", &copy.join(&name))];
    let out = sh(r#"sh "$I" --from "$T" --prefix "$P""#, &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("checksum mismatch") && out.stderr.contains("refusing to install"), "{out:?}");
    assert!(!prefix.exists(), "nothing was installed");

    std::fs::remove_file(copy.join("SHA256SUMS")).unwrap();
    std::fs::write(copy.join(&name), std::fs::read(dir.join(&name)).unwrap()).unwrap();
    let out = sh(r#"sh "$I" --from "$T" --prefix "$P""#, &env);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no SHA256SUMS"), "{out:?}");
    assert!(!prefix.exists(), "nothing was installed");
}

/// A throw-away root: this machine's own Debian under an overlay that is dropped afterwards,
/// with loopback only. `systemd` boots a real systemd in it.
struct Root {
    name: String,
}

impl Root {
    /// `release` is seen at /release in the root (this machine's /tmp is not: a fresh one is).
    fn start(systemd: bool, release: &Path) -> Root {
        Root::start_with(systemd, release, None)
    }

    /// As [`Root::start`], with `more` seen at /more too.
    fn start_with(systemd: bool, release: &Path, more: Option<&Path>) -> Root {
        let name = format!("openbox-root-{}-{}", std::process::id(), free_port());
        let volume = format!("{}:/release:ro", release.display());
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &name, "-v", &volume];
        let more = more.map(|m| format!("{}:/more:ro", m.display()));
        if let Some(m) = &more {
            args.extend(["-v", m]);
        }
        if systemd {
            // /tmp and /run start empty (copying this machine's up would race with its files).
            args.extend(["--systemd=always", "--tmpfs", "/tmp:rw,notmpcopyup", "--tmpfs", "/run:rw,notmpcopyup"]);
            args.extend(["--rootfs", "/:O", "/lib/systemd/systemd"]);
        } else {
            args.extend(["--tmpfs", "/tmp:rw,notmpcopyup", "--rootfs", "/:O", "sleep", "infinity"]);
        }
        let out = podman(&args);
        assert_eq!(out.code, 0, "podman run: {out:?}");
        Root { name }
    }

    /// Runs a shell script in the root, as root.
    fn sh(&self, script: &str) -> Out {
        podman(&["exec", &self.name, "sh", "-c", script])
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

#[test]
fn the_deb_installs_with_dpkg_in_a_throwaway_root_and_a_first_command_runs() {
    let dir = release();
    let deb = format!("/release/openbox-fleet_{}_amd64.deb", proto::VERSION);
    let root = Root::start(false, &dir);
    let out = root.sh(&format!(
        "set -e
        if command -v openbox; then echo 'openbox was there before the package'; exit 9; fi
        dpkg -i {deb}
        openbox --version
        bash -c '. /usr/share/bash-completion/completions/openbox && complete -p openbox'
        # Installing started nothing.
        if pgrep -x openbox-control || pgrep -x openbox-agent; then echo 'a service started'; exit 8; fi
        export HOME=/tmp/home; mkdir -p $HOME
        openbox up --addr 127.0.0.1:{port}
        openbox -t local echo first command from the deb
        openbox service install control --print | grep -q '^ExecStart=/usr/lib/openbox-fleet/bin/openbox-control'
        man -w openbox | grep -q /usr/lib/openbox-fleet/man/openbox.1.gz
        openbox down
        dpkg -r openbox-fleet
        if test -e /usr/bin/openbox; then echo 'still there after dpkg -r'; exit 7; fi",
        port = free_port(),
    ));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains(&format!("openbox {}", proto::VERSION)), "{out:#?}");
    assert!(out.stdout.contains("-F _openbox openbox"), "{out:#?}");
    assert!(out.stdout.contains("first command from the deb"), "{out:#?}");
}

/// Debian's openbox (the window manager) and what it needs that this machine lacks, as
/// scripts/setup-test-env downloads them.
const WINDOW_MANAGER_DEBS: &str = "/var/cache/openbox-test/window-manager";

#[test]
fn the_deb_and_debians_openbox_window_manager_install_side_by_side_in_either_order() {
    let wm = Path::new(WINDOW_MANAGER_DEBS);
    let has_wm = std::fs::read_dir(wm)
        .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("openbox_3")));
    assert!(has_wm, "scripts/setup-test-env downloads Debian's openbox into {WINDOW_MANAGER_DEBS}");
    let root = Root::start_with(false, &release(), Some(wm));
    let out = root.sh(&format!(
        "set -ex
        ours=/release/openbox-fleet_{v}_amd64.deb
        # Ours first: /usr/bin/openbox is ours.
        dpkg -i $ours >/dev/null
        openbox --version | grep -qx 'openbox {v}'
        # Then the window manager: its files take their places, and ours is obx.
        dpkg -i /more/*.deb >/dev/null 2>&1
        test \"$(dpkg -S /usr/bin/openbox)\" = 'openbox: /usr/bin/openbox'
        openbox --version | grep -q '^Openbox 3'
        obx --version | grep -qx 'openbox {v}'
        # Ours removed and installed again: the window manager keeps its files.
        dpkg -r openbox-fleet >/dev/null
        test -x /usr/bin/openbox && ! command -v obx
        dpkg -i $ours >/tmp/install.log
        grep -q 'another program.s (package openbox): run this one as obx' /tmp/install.log
        openbox --version | grep -q '^Openbox 3'
        export HOME=/tmp/home; mkdir -p $HOME
        obx up --addr 127.0.0.1:{port}
        obx -t local echo beside the window manager
        obx down
        # apt keeps the two apart: an upgrade touches neither.
        apt-get -s -o Debug::NoLocking=1 upgrade >/tmp/upgrade.txt
        if grep -E '^(Inst|Remv|Conf) openbox' /tmp/upgrade.txt; then exit 6; fi
        dpkg-query -W -f='${{Package}} ${{Version}}\n' openbox openbox-fleet",
        v = proto::VERSION,
        port = free_port(),
    ));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("beside the window manager"), "{out:#?}");
    assert!(
        out.stdout.contains("openbox 3.6") && out.stdout.contains(&format!("openbox-fleet {}", proto::VERSION)),
        "{out:#?}"
    );
}

#[test]
fn one_install_sh_line_then_one_command_per_service_gives_a_running_fleet_under_systemd() {
    let dir = release();
    let root = Root::start(true, &dir);
    let booted = wait_for(Duration::from_secs(120), || root.sh("systemctl is-active basic.target").code == 0);
    assert!(booted, "systemd booted in the throw-away root: {:?}", root.sh("systemctl list-jobs --no-pager"));

    let install = root.sh("sh /release/install.sh --from /release/");
    assert_eq!(install.code, 0, "{install:#?}");
    assert!(install.stderr.contains("in /usr/local"), "as root, into /usr/local: {install:#?}");

    // The control plane: one command writes, enables and starts it.
    let control = root.sh("openbox service install control -- --addr 127.0.0.1:7683");
    assert_eq!(control.code, 0, "{control:#?}");
    assert!(control.stdout.contains("enabled and started"), "{control:#?}");
    let verify = root.sh("systemd-analyze verify /etc/systemd/system/openbox-control.service");
    assert_eq!(verify.code, 0, "{verify:#?}");
    let security = root.sh("systemd-analyze security --no-pager openbox-control.service | tail -n 1");
    assert!(security.stdout.contains("OK") || security.stdout.contains("SAFE"), "the sandbox holds: {security:#?}");

    // Its first start logs the admin's login command (journalctl, as the installer said),
    // with the token in a file only root reads.
    let mut login = String::new();
    let logged = wait_for(Duration::from_secs(60), || {
        let log = root.sh("journalctl -u openbox-control -o cat --no-pager");
        login = log.stdout.lines().find(|l| l.trim_start().starts_with("openbox login")).unwrap_or_default().to_owned();
        !login.is_empty()
    });
    assert!(logged, "the login command in the journal: {:?}", root.sh("journalctl -u openbox-control --no-pager"));
    assert!(login.contains("--token-file /var/lib/openbox/control/admin-token"), "{login}");
    let journal = root.sh("journalctl -u openbox-control -o cat --no-pager").stdout;
    assert!(!journal.contains("obx_"), "no token in the journal: {journal}");
    assert_eq!(root.sh("stat -c %a /var/lib/openbox/control/admin-token").stdout.trim(), "600");
    let me = root.sh(&format!("export HOME=/tmp/me; mkdir -p $HOME; {}", login.trim()));
    assert_eq!(me.code, 0, "{me:#?}");

    // The agent: a token, then one command (the token goes into a file, not the unit).
    let token = root.sh("HOME=/tmp/me openbox node token --tag svc --json");
    let token: serde_json::Value = serde_json::from_str(&token.stdout).unwrap_or_else(|_| panic!("{token:#?}"));
    let token = token["token"].as_str().unwrap().to_owned();
    let agent = root.sh(&format!(
        "openbox service install agent -- --server http://127.0.0.1:7683 --token {token} --tag svc --addr 127.0.0.1:7684"
    ));
    assert_eq!(agent.code, 0, "{agent:#?}");
    let unit = root.sh("cat /etc/systemd/system/openbox-agent.service; stat -c %a /etc/openbox/enroll.token");
    assert!(
        !unit.stdout.contains(&token) && unit.stdout.contains("--token-file /etc/openbox/enroll.token"),
        "{unit:#?}"
    );
    assert!(unit.stdout.trim_end().ends_with("600"), "{unit:#?}");

    let ran = wait_for(Duration::from_secs(60), || {
        root.sh("HOME=/tmp/me openbox -t svc echo hello from a service").stdout.contains("hello from a service")
    });
    assert!(ran, "a command ran on the service's node: {:?}", root.sh("journalctl -u openbox-agent --no-pager"));
    let status = root.sh("openbox service status control; echo code=$?; openbox service status --json");
    assert!(status.stdout.contains("enabled, active") && status.stdout.contains("code=0"), "{status:#?}");

    // Uninstalled: stopped, disabled, unit and token gone; status says so (exit 4).
    let gone = root.sh(
        "openbox service uninstall agent && test ! -e /etc/systemd/system/openbox-agent.service \
         && test ! -e /etc/openbox/enroll.token && ! systemctl is-active openbox-agent; openbox service status agent; echo code=$?",
    );
    assert!(gone.stdout.contains("code=4"), "{gone:#?}");
}

#[test]
fn service_install_where_no_service_manager_runs_writes_the_unit_and_says_what_to_run() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let openbox = openbox_e2e::bin("openbox");
    let run = |args: &[&str]| {
        Out::from(
            Command::new(&openbox)
                .args(args)
                .env("HOME", home)
                .env_remove("XDG_CONFIG_HOME")
                .env_remove("XDG_RUNTIME_DIR")
                .output()
                .unwrap(),
        )
    };
    let out = run(&["service", "install", "daemon"]);
    assert_eq!(out.code, 3, "{out:#?}");
    assert!(
        out.stdout.contains("nothing was started") && out.stdout.contains("systemctl --user daemon-reload"),
        "{out:#?}"
    );
    let unit = home.join(".config/systemd/user/openboxd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains(&format!("ExecStart={}", openbox.with_file_name("openboxd").display())), "{text}");
    let runtime = work.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");

    let bad = run(&["service", "install", "agent", "--user", "--", "--no-such-flag"]);
    assert_eq!(bad.code, 1, "{bad:#?}");
    assert!(bad.stderr.contains("does not take these arguments") && bad.stderr.contains("--no-such-flag"), "{bad:#?}");
    assert!(!home.join(".config/systemd/user/openbox-agent.service").exists(), "nothing written for bad arguments");
    let daemon_system = run(&["service", "install", "daemon", "--system"]);
    assert!(daemon_system.stderr.contains("openboxd belongs to one user"), "{daemon_system:#?}");

    let status = run(&["service", "status", "daemon", "--json"]);
    assert_eq!(status.code, 3, "installed, not running: {status:#?}");
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(json[0]["installed"], true);
    run(&["service", "uninstall", "daemon"]);
    assert!(!unit.exists());
    assert_eq!(run(&["service", "status", "daemon"]).code, 4);
}

#[test]
fn packaging_build_honours_cargo_target_dir_and_packages_binaries_already_built() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build");
    let (arch, v) = (std::env::consts::ARCH, proto::VERSION);
    let built = bin("openbox").parent().unwrap().to_path_buf(); // the tests' own build
    let work = tempfile::tempdir().unwrap();
    let run = |target_dir: &Path, args: &[&str]| {
        Out::from(
            Command::new(&script)
                .env("CARGO_TARGET_DIR", target_dir)
                .args(["--profile", "dev", "--arch", arch])
                .args(args)
                .output()
                .unwrap(),
        )
    };
    // Binaries already built are packaged as they are: Cargo never runs.
    let given = work.path().join("bin");
    std::fs::create_dir(&given).unwrap();
    for b in ["openbox", "openboxd", "openbox-control", "openbox-agent", "openbox-mcp"] {
        std::fs::copy(built.join(b), given.join(b)).unwrap();
    }
    let nowhere = work.path().join("no-target");
    let out_dir = work.path().join("out");
    let out = run(&nowhere, &["--bin-dir", given.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]).ok();
    assert!(out.stderr.contains("nothing built") && !out.stderr.contains("building"), "{out:?}");
    assert!(!nowhere.exists(), "nothing was built");
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let tar = out_dir.join(format!("openbox-{v}-linux-{arch}.tar.gz"));
    assert!(Command::new("tar").arg("-xzf").arg(&tar).arg("-C").arg(&unpacked).status().unwrap().success());
    let packed = unpacked.join(format!("openbox-{v}-linux-{arch}/bin/openboxd"));
    assert!(std::fs::read(packed).unwrap() == std::fs::read(given.join("openboxd")).unwrap(), "the binary given");
    // Each step says when it ran.
    assert!(out.stderr.lines().any(|l| l.starts_with("packaging/build [0m")), "{out:?}");
    // One directory of binaries is one platform's.
    run(&nowhere, &["--arch", "x86_64,aarch64", "--bin-dir", given.to_str().unwrap()]).fails_with(2, "one platform");

    // CARGO_TARGET_DIR is where the build is (here, the tests' own, so nothing is rebuilt)
    // and where the packages go.
    let target = work.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&built, target.join("debug")).unwrap();
    let out = run(&target, &[]).ok();
    assert!(out.stderr.contains("building the dev binaries"), "{out:?}");
    assert!(target.join(format!("packages/openbox-{v}-linux-{arch}.tar.gz")).is_file(), "{out:?}");
}

#[test]
fn a_system_control_plane_from_a_home_directory_is_refused_and_uninstall_removes_what_install_made() {
    let dir = release();
    let root = Root::start(false, &dir);
    let out = root.sh(&format!(
        "set -e
        # openbox as install.sh puts it for a user: under their home.
        mkdir -p /home/alice/.local && tar -xzf /release/openbox-{v}-linux-$(uname -m).tar.gz -C /home/alice/.local --strip-components 1
        if /home/alice/.local/bin/openbox service install control 2>/tmp/err; then echo 'installed from a home'; exit 9; fi
        cat /tmp/err
        test ! -e /etc/systemd/system/openbox-control.service
        # From /usr/local, a file under a home is refused by the argument that names it.
        mkdir -p /usr/local && tar -xzf /release/openbox-{v}-linux-$(uname -m).tar.gz -C /usr/local --strip-components 1
        if openbox service install control -- --tls-cert /root/cert.pem --tls-key /etc/key.pem 2>/tmp/err; then exit 8; fi
        cat /tmp/err
        # What install makes, uninstall takes away: the unit, the token, /etc/openbox.
        set +e; openbox service install agent -- --server https://cp.example:7683 --token enroll_x >/dev/null; set -e
        test -f /etc/openbox/enroll.token && test -f /etc/systemd/system/openbox-agent.service
        openbox service uninstall agent >/dev/null
        test ! -e /etc/systemd/system/openbox-agent.service
        if test -e /etc/openbox; then echo '/etc/openbox left behind'; exit 7; fi
        # A directory with a file of the user's in it stays.
        set +e; openbox service install agent -- --server https://cp.example:7683 --token enroll_x >/dev/null; set -e
        echo DOCKER_HOST=unix:///run/podman/podman.sock >/etc/openbox/agent.env
        openbox service uninstall agent >/dev/null
        test -f /etc/openbox/agent.env && test ! -e /etc/openbox/enroll.token
        echo done",
        v = proto::VERSION
    ));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("its binary, /home/alice/.local/bin/openbox-control is in a home directory"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("openbox service install control --user"), "{out:#?}");
    assert!(out.stdout.contains("--tls-cert /root/cert.pem is in a home directory"), "{out:#?}");
    assert!(out.stdout.ends_with("done\n"), "{out:#?}");
}
