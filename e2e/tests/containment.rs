//! Containment for users who are not admins, through the real binaries on a real
//! systemd-nspawn and podman's Docker-API service: an nspawn grant never reaches the host's
//! root, host directories are mounted only where the agent allows, root in a container is
//! not root on the host, a setuid binary raises nothing, and processes and sessions are
//! bounded.

use std::path::{Path, PathBuf};
use std::process::Command;

use openbox_e2e::{IsolatedFleet, wait_until};

/// A directory bind-mounted somewhere for the length of a test, unmounted however the
/// test ends.
struct BindMount(PathBuf);

impl BindMount {
    fn new(src: &str, at: &Path) -> BindMount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["--bind", src]).arg(at).output().unwrap();
        assert!(out.status.success(), "mount --bind {src}: {}", String::from_utf8_lossy(&out.stderr));
        BindMount(at.to_owned())
    }

    fn proc_at(at: &Path) -> BindMount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "proc", "proc"]).arg(at).output().unwrap();
        assert!(out.status.success(), "mount proc: {}", String::from_utf8_lossy(&out.stderr));
        BindMount(at.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A copy of the test tree, to hold mounts of its own.
fn copy_of_tree(f: &IsolatedFleet, into: &Path) -> PathBuf {
    let tree = into.join("tree");
    let out = Command::new("cp").arg("-a").arg(&f.e.tree).arg(&tree).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    tree
}

#[test]
fn an_nspawn_grant_never_reaches_the_hosts_root_however_it_is_named() {
    let f = IsolatedFleet::nspawn(&[]);
    let bob = f.user("bob", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("root-link");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let proc_link = tmp.path().join("proc-link");
    std::os::unix::fs::symlink("/proc/self/root", &proc_link).unwrap();
    let _bound = BindMount::new("/", &tmp.path().join("bound-root"));
    let holding = copy_of_tree(&f, tmp.path());
    let _inner = BindMount::new("/", &holding.join("host"));
    let with_proc = tmp.path().join("with-proc");
    std::fs::create_dir(&with_proc).unwrap();
    let with_proc = copy_of_tree(&f, &with_proc);
    let _proc = BindMount::proc_at(&with_proc.join("hostproc"));

    let marker = format!("openbox-containment-{}", std::process::id());
    let spellings = [
        ("/proc/self/root".to_owned(), "reached through /proc"),
        ("/proc/thread-self/root".to_owned(), "reached through /proc"),
        ("/proc/1/root".to_owned(), "reached through /proc"),
        ("/proc/self/cwd".to_owned(), "reached through /proc"),
        (link.display().to_string(), "this node's own root directory"),
        (proc_link.display().to_string(), "this node's own root directory"),
        (tmp.path().join("bound-root").display().to_string(), "this node's own root directory"),
        (holding.display().to_string(), "which is this node's root directory"),
        (with_proc.display().to_string(), "which is this node's process filesystem"),
    ];
    for (tree, why) in &spellings {
        // The review's escalation: the host as the tree, and its / bound in read-write.
        let isolate = format!("nspawn:{tree};mount=/:/host");
        for who in [&bob, &f.cli] {
            let out = who.run(&["-t", "t", "--isolate", &isolate, &format!("touch /{marker} /host/{marker}")]);
            assert_eq!(out.code, 255, "{tree}: {out:?}");
            assert!(out.stderr.contains(why), "{tree}: {out:?}");
            assert!(out.stderr.contains("nothing was run"), "{out:?}");
        }
        let out = bob.run(&["-t", "t", "--nspawn", tree, &format!("touch /{marker}")]);
        assert!(out.stderr.contains(why), "{tree}: {out:?}");
        assert!(!Path::new("/").join(&marker).exists(), "{tree} reached the host's root");
    }
    // The real tree still serves him.
    assert_eq!(f.run_by(&bob, &[], "echo in the tree", b"").ok().stdout, "in the tree\n");
}

#[test]
fn a_user_who_is_not_an_admin_mounts_only_what_the_agent_allows_and_read_only_unless_it_says_rw() {
    let allowed = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();
    // Root in his container is an unprivileged user here: the directory must let such
    // users write, as /tmp does.
    std::fs::set_permissions(writable.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::write(allowed.path().join("in.txt"), "allowed\n").unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret"), "not for bob\n").unwrap();
    let allow = allowed.path().display().to_string();
    let allow_rw = format!("{}:rw", writable.path().display());
    let f = IsolatedFleet::nspawn(&["--mount-allow", &allow, "--mount-allow", &allow_rw]);
    let bob = f.user("bob", &[]);

    let ro = format!("{allow}:/data:ro");
    assert_eq!(f.run_by(&bob, &["--mount", &ro], "cat /data/in.txt", b"").ok().stdout, "allowed\n");
    let rw = format!("{allow}:/data");
    f.run_by(&bob, &["--mount", &rw], "true", b"").fails_with(255, "may only be mounted read-only here: add :ro");
    let w = format!("{}:/w", writable.path().display());
    f.run_by(&bob, &["--mount", &w], "echo hi > /w/out", b"").ok();
    assert_eq!(std::fs::read_to_string(writable.path().join("out")).unwrap(), "hi\n");

    // Anything else from the host, however it is named, is refused.
    let link = allowed.path().join("escape");
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
    for src in ["/".to_owned(), "/etc".to_owned(), elsewhere.path().display().to_string(), link.display().to_string()] {
        let m = format!("{src}:/x:ro");
        let out = f.run_by(&bob, &["--mount", &m], "cat /x/secret; ls /x", b"");
        assert_eq!(out.code, 255, "{src}: {out:?}");
        assert!(out.stderr.contains("is not one this node lets users mount"), "{src}: {out:?}");
        assert!(out.stderr.contains("--mount-allow"), "{out:?}");
        assert!(!out.stdout.contains("not for bob"));
    }
    // An admin keeps the freedom he had.
    let m = format!("{}:/x:ro", elsewhere.path().display());
    assert_eq!(f.run(&["--mount", &m], "cat /x/secret").ok().stdout, "not for bob\n");
}

#[test]
fn root_in_a_confined_nspawn_container_is_not_root_on_the_host() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let secret = shared.path().join("root-only");
    std::fs::write(&secret, "root's\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let allow = format!("{}:rw", shared.path().display());
    let f = IsolatedFleet::nspawn(&["--mount-allow", &allow]);
    let bob = f.user("bob", &[]);
    let m = format!("{}:/shared", shared.path().display());

    // Inside he is root, in a user namespace of his own: uid 0 there is another uid here.
    let out = f.run_by(
        &bob,
        &["--mount", &m],
        "id -u; cat /proc/self/uid_map; touch /shared/made; cat /shared/root-only",
        b"",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "0", "{out:?}");
    let map: Vec<u64> = lines[1].split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "container root must not be the host's root: {out:?}");
    assert_ne!(out.code, 0, "the host root's 0600 file must stay closed: {out:?}");
    assert!(!out.stdout.contains("root's"), "{out:?}");
    let made = std::fs::metadata(shared.path().join("made")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&made) as u64, map[1], "files he makes belong to his range");

    // The same in a session, and in a terminal opened into the session's container.
    f.run_by(&bob, &["-s", "box"], "cat /proc/self/uid_map", b"").ok();
    let uid_map = f.run_by(&bob, &["-s", "box"], "cat /proc/self/uid_map", b"").ok().stdout;
    assert_ne!(uid_map.split_whitespace().nth(1), Some("0"), "{uid_map}");

    // An admin's container is the host's root, as before.
    let admins = f.run(&[], "cat /proc/self/uid_map").ok().stdout;
    assert_eq!(admins.split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295"]);
}

#[test]
fn a_confined_command_tree_is_held_to_the_process_limit_and_says_so() {
    let f = IsolatedFleet::nspawn(&["--max-processes", "40"]);
    let bob = f.user("bob", &[]);
    let out = f.run_by(&bob, &[], "for i in $(seq 1 100); do sleep 3 & done; wait", b"");
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("reached the node's limit of 40 processes"), "{out:?}");
    assert!(out.stderr.contains("--max-processes"), "{out:?}");
    // A modest command is not bothered by it.
    assert_eq!(f.run_by(&bob, &[], "for i in 1 2 3; do sleep 0.1 & done; wait; echo done", b"").ok().stdout, "done\n");
}

#[test]
fn sessions_per_user_are_bounded_with_a_refusal_that_names_the_flag() {
    let f = IsolatedFleet::nspawn(&["--max-sessions", "2"]);
    let bob = f.user("bob", &["native"]);
    bob.run(&["-t", "t", "-s", "one", "true"]).ok();
    bob.run(&["-t", "t", "-s", "two", "true"]).ok();
    let out = bob.run(&["-t", "t", "-s", "three", "true"]);
    assert_eq!(out.code, 255, "{out:?}");
    assert!(out.stderr.contains("you have 2 sessions on this node"), "{out:?}");
    assert!(out.stderr.contains("--max-sessions"), "{out:?}");
    // Another user has sessions of his own; one ended makes room.
    f.cli.run(&["-t", "t", "-s", "admins", "true"]).ok();
    bob.run(&["session", "rm", "one"]).ok();
    wait_until("room for bob's third session", || bob.run(&["-t", "t", "-s", "three", "true"]).code == 0);
}

#[test]
fn a_confined_docker_container_raises_no_privileges_and_mounts_nothing_unless_allowed() {
    let f = IsolatedFleet::docker(&["--run-as", "bob=nobody", "--run-as", "admin=nobody", "--max-processes", "40"]);
    let bob = f.user("bob", &[]);
    let image = &f.e.suid_image;
    // The setuid-root program in his image: root for the admin's container (the control,
    // showing the program can raise), nothing for his.
    let admins = f.cli.run(&["-t", "t", "--docker", image, "/usr/local/bin/euid"]).ok();
    assert_eq!(admins.stdout, "0\n", "{admins:?}");
    let his = bob.run(&["-t", "t", "--docker", image, "id -u; /usr/local/bin/euid"]).ok();
    assert_eq!(his.stdout, "65534\n65534\n", "{his:?}");
    // Few capabilities, whoever runs inside (the bounding set), and never privileged.
    let caps = bob.run(&["-t", "t", "--docker", image, "grep CapBnd /proc/self/status"]).ok().stdout;
    let bounding = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(bounding & (1 << 21), 0, "no CAP_SYS_ADMIN: {caps}");
    assert_eq!(bounding & (1 << 13), 0, "no CAP_NET_RAW: {caps}");
    assert_ne!(bounding & 1, 0, "CAP_CHOWN is kept: {caps}");
    // No host mount unless the agent allows it.
    bob.run(&["-t", "t", "--docker", image, "--mount", "/etc:/x:ro", "cat /x/hostname"])
        .fails_with(255, "is not one this node lets users mount");
    // The engine bounds his processes.
    let out = bob.run(&["-t", "t", "--docker", image, "for i in $(seq 1 100); do sleep 3 & done; wait"]);
    assert_ne!(out.code, 0, "{out:?}");
}
