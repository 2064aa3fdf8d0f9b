//! `openbox cp`: files and trees to and from a node over SFTP, byte-exact, modes kept, in
//! constant memory, with clear errors — a missing path, a directory without -r, a full disk.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use openbox_e2e::{Agent, Cli, ControlPlane};

fn fleet() -> (ControlPlane, Cli, Agent) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["t"]);
    (cp, admin, agent)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

const MIB: u64 = 1 << 20;

#[test]
fn a_gigabyte_goes_up_and_comes_back_byte_exact_in_constant_memory() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap();
    let big = here.path().join("big.bin");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 1073741824 /dev/urandom > {}", big.display()))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let remote = format!("{}:{}/", agent.name, there.path().display());
    admin.run(&["cp", big.to_str().unwrap(), &remote]).ok();
    let up = there.path().join("big.bin");
    assert_eq!(sha256(&up), sha256(&big));
    assert_eq!(mode(&up), 0o640);

    let back = here.path().join("back.bin");
    admin.run(&["cp", &format!("{}:{}", agent.name, up.display()), back.to_str().unwrap()]).ok();
    assert_eq!(sha256(&back), sha256(&big));
    assert_eq!(mode(&back), 0o640);
    let pid = admin.daemon_status()["pid"].as_u64().unwrap() as u32;
    let peak = openbox_e2e::peak_memory(pid);
    assert!(peak < 100 * MIB, "openboxd peaked at {} MiB", peak / MIB);
    let peak = openbox_e2e::peak_memory(agent.pid());
    assert!(peak < 100 * MIB, "the agent peaked at {} MiB", peak / MIB);
}

#[test]
fn a_tree_goes_both_ways_with_its_modes_and_a_tag_picks_the_node() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let src = here.path().join("tree");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("sub/secret"), "s3cret").unwrap();
    std::fs::set_permissions(src.join("sub/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("sub/deeper/empty"), "").unwrap();
    std::fs::set_permissions(src.join("sub/deeper"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let there = tempfile::tempdir().unwrap();

    // Without -r a directory is refused, and nothing is made.
    let remote = format!("tag:t:{}/", there.path().display());
    admin.run(&["cp", src.to_str().unwrap(), &remote]).fails_with(1, "is a directory: add -r");
    assert!(!there.path().join("tree").exists());

    admin.run(&["cp", "-r", src.to_str().unwrap(), &remote]).ok();
    let up = there.path().join("tree");
    let diff = Command::new("diff").args(["-r"]).arg(&src).arg(&up).output().unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    for p in ["run.sh", "sub/secret", "sub/deeper"] {
        assert_eq!(mode(&up.join(p)), mode(&src.join(p)), "{p}");
    }

    let back = here.path().join("back");
    admin.run(&["cp", "-r", &format!("{}:{}", agent.name, up.display()), back.to_str().unwrap()]).ok();
    let diff = Command::new("diff").args(["-r"]).arg(&src).arg(&back).output().unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    for p in ["run.sh", "sub/secret", "sub/deeper"] {
        assert_eq!(mode(&back.join(p)), mode(&src.join(p)), "{p}");
    }
    // The JSON says what was copied.
    let json = admin.run(&["cp", "-r", "--json", src.to_str().unwrap(), &remote]).ok().json();
    assert_eq!((json["files"].as_u64(), json["directories"].as_u64()), (Some(3), Some(3)), "{json}");
}

#[test]
fn a_missing_path_and_bad_places_are_clear_errors() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let missing = format!("{}:/nonexistent/file", agent.name);
    admin.run(&["cp", &missing, here.path().to_str().unwrap()]).fails_with(1, "/nonexistent/file");
    admin
        .run(&["cp", here.path().join("nope").to_str().unwrap(), &format!("{}:/tmp/", agent.name)])
        .fails_with(1, "nope");
    admin.run(&["cp", "a", "b"]).fails_with(2, "both places are here");
    admin.run(&["cp", &missing, &missing]).fails_with(2, "both places are on nodes");
}

#[test]
fn several_sources_go_into_a_directory_and_a_missing_one_is_named() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap(); // the node's side (the same machine)
    let (a, b) = (here.path().join("a.txt"), here.path().join("b.txt"));
    std::fs::write(&a, "alpha").unwrap();
    std::fs::write(&b, "beta").unwrap();
    let node_dir = format!("{}:{}/", agent.name, there.path().display());
    let up = admin.run(&["cp", a.to_str().unwrap(), b.to_str().unwrap(), &node_dir, "--json"]).ok().json();
    assert_eq!(up["files"], 2, "{up}");
    assert_eq!(std::fs::read_to_string(there.path().join("a.txt")).unwrap(), "alpha");
    assert_eq!(std::fs::read_to_string(there.path().join("b.txt")).unwrap(), "beta");
    // And back, from one node into a local directory.
    let back = tempfile::tempdir().unwrap();
    let remote = |name: &str| format!("{}:{}/{name}", agent.name, there.path().display());
    admin.run(&["cp", &remote("a.txt"), &remote("b.txt"), back.path().to_str().unwrap()]).ok();
    assert_eq!(std::fs::read_to_string(back.path().join("b.txt")).unwrap(), "beta");

    // Into a directory that is not there: named, with how to make it, and nothing copied.
    let missing = format!("{}/new", there.path().display());
    let out = admin
        .run(&["cp", a.to_str().unwrap(), &format!("{}:{missing}/", agent.name)])
        .fails_with(1, &format!("{}:{missing}: no such directory there", agent.name));
    assert!(out.stderr.contains(&format!("mkdir -p {missing}")), "{out:?}");
    admin
        .run(&["cp", a.to_str().unwrap(), &format!("{}:{missing}/deeper/a.txt", agent.name)])
        .fails_with(1, &format!("{}:{missing}/deeper: no such directory there", agent.name));
    admin
        .run(&["cp", a.to_str().unwrap(), b.to_str().unwrap(), &format!("{}:{missing}", agent.name)])
        .fails_with(1, "several sources go into a directory that exists");
    assert!(!Path::new(&missing).exists());
    let nowhere = back.path().join("no/such");
    admin
        .run(&["cp", &remote("a.txt"), nowhere.join("a.txt").to_str().unwrap()])
        .fails_with(1, &format!("{}: no such directory here", nowhere.display()));
    // Sources on two sides, or two nodes, are refused before anything is copied.
    admin
        .run(&["cp", a.to_str().unwrap(), &remote("a.txt"), back.path().to_str().unwrap()])
        .fails_with(2, "both places are here");
    admin.run(&["cp", &remote("a.txt"), "other:/x", back.path().to_str().unwrap()]).fails_with(2, "different nodes");
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok =
            Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "mounting a tmpfs (the tests run as root)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_on_either_side_fails_the_copy() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let four = here.path().join("four.bin");
    std::fs::write(&four, vec![7u8; 4 << 20]).unwrap();
    let disk = SmallDisk::new();
    let remote = format!("{}:{}/four.bin", agent.name, disk.0.path().display());
    admin.run(&["cp", four.to_str().unwrap(), &remote]).fails_with(1, "No space left on device");

    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("four.bin"), vec![7u8; 4 << 20]).unwrap();
    let from = format!("{}:{}/four.bin", agent.name, source.path().display());
    let into = disk.0.path().join("down.bin");
    admin.run(&["cp", &from, into.to_str().unwrap()]).fails_with(1, "No space left on device");
}

/// Copies a file into session `box`'s container and one out of it, and checks that the
/// session's commands see the one and made the other — and that neither is on the host.
fn check_copy_through_a_session(f: &openbox_e2e::IsolatedFleet) {
    let dir = "/obx-copy-session";
    f.run(&["-s", "box"], &format!("mkdir -p {dir} && echo made-inside > {dir}/made")).ok();
    let here = tempfile::tempdir().unwrap();
    std::fs::write(here.path().join("in.txt"), "sent-in\n").unwrap();
    let node = &f.agent.name;
    f.cli.run(&["cp", "-s", "box", here.path().join("in.txt").to_str().unwrap(), &format!("{node}:{dir}/")]).ok();
    assert_eq!(f.run(&["-s", "box"], &format!("cat {dir}/in.txt")).ok().stdout, "sent-in\n");
    f.cli.run(&["cp", "-s", "box", &format!("{node}:{dir}/made"), here.path().to_str().unwrap()]).ok();
    assert_eq!(std::fs::read_to_string(here.path().join("made")).unwrap(), "made-inside\n");
    assert!(!Path::new(dir).exists(), "the copy went into the container, not the host");
    // A session's node is the one named.
    f.cli
        .run(&["cp", "-s", "box", here.path().join("in.txt").to_str().unwrap(), "elsewhere:/tmp/"])
        .fails_with(1, "is on node");
}

#[test]
fn a_copy_goes_into_and_out_of_a_docker_sessions_container() {
    check_copy_through_a_session(&openbox_e2e::IsolatedFleet::docker(&[]));
}

#[test]
fn a_copy_goes_into_and_out_of_an_nspawn_sessions_container() {
    check_copy_through_a_session(&openbox_e2e::IsolatedFleet::nspawn(&[]));
}

#[test]
fn a_relative_path_on_the_node_starts_at_home_as_commands_do() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let name = format!("obx-rel-{}.txt", std::process::id());
    std::fs::write(here.path().join("f"), "relative\n").unwrap();
    admin.run(&["cp", here.path().join("f").to_str().unwrap(), &format!("{}:{name}", agent.name)]).ok();
    assert_eq!(admin.run(&["-n", &agent.name, &format!("cat {name} && rm {name}")]).ok().stdout, "relative\n");
}

#[test]
fn a_terminal_sees_the_copy_progress_and_a_pipe_does_not() {
    let (_cp, admin, agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let file = here.path().join("eight.bin");
    std::fs::write(&file, vec![1u8; 8 << 20]).unwrap();
    let dest = format!("{}:{}/copied.bin", agent.name, here.path().display());
    let cp = format!("{} cp {} {dest}", openbox_e2e::bin("openbox").display(), file.display());
    // `script` runs it with a terminal for stdout and stderr.
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cp, "/dev/null"])
        .env("OPENBOX_HOME", admin.home.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("8.0 MiB / 8.0 MiB  100%") && shown.contains("/s"), "{shown}");
    // On a terminal with -q: no progress line.
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cp.replacen(" cp ", " cp -q ", 1), "/dev/null"])
        .env("OPENBOX_HOME", admin.home.path())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !shown.contains("MiB"), "{shown}");
    // Through a pipe, nothing but errors.
    let quiet = admin.run(&["cp", file.to_str().unwrap(), &dest]).ok();
    assert_eq!((quiet.stdout.as_str(), quiet.stderr.as_str()), ("", ""));
}

#[test]
fn a_copy_right_after_its_agent_restarted_arrives_and_a_node_out_of_reach_is_255() {
    let (_cp, admin, mut agent) = fleet();
    let here = tempfile::tempdir().unwrap();
    let file = here.path().join("f");
    std::fs::write(&file, "pooled\n").unwrap();
    let name = agent.name.clone();
    let to = |file: &str| format!("{name}:{}", here.path().join(file).display());
    admin.run(&["cp", file.to_str().unwrap(), &to("first")]).ok();
    // The same address: openboxd's pooled connection to it is dead, a new one is opened.
    let addr = agent.addr.clone();
    agent.kill();
    agent.restart_with(&["--addr", &addr]);
    admin.run(&["cp", file.to_str().unwrap(), &to("second")]).ok();
    assert_eq!(std::fs::read_to_string(here.path().join("second")).unwrap(), "pooled\n");
    // A node that cannot be reached is said as for a command.
    agent.kill();
    let out = admin.run(&["cp", "--timeout", "20s", file.to_str().unwrap(), &to("third")]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains(&name) || out.stderr.contains(&agent.node_id), "{}", out.stderr);
}
