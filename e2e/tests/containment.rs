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

    // The same in a session's container.
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
    // The engine bounds his processes, and he is told which limit and flag.
    let out = bob.run(&["-t", "t", "--docker", image, "for i in $(seq 1 100); do sleep 3 & done; wait"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("reached the node's limit of 40 processes"), "{out:?}");
}

/// A port below 1024 that nothing listens on here.
fn free_low_port() -> u16 {
    (900..1000).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 1000")
}

#[test]
fn a_mapped_account_starts_in_a_fresh_environment_and_binds_only_what_it_could_itself() {
    let cp = openbox_e2e::ControlPlane::start();
    let admin = openbox_e2e::Cli::admin(&cp);
    let token = admin.enroll_token(&["mapped"]);
    let agent = openbox_e2e::Agent::enroll_env(
        &cp,
        &token,
        &["--run-as", "bob=nobody", "--run-as", "admin=root"],
        &[("AGENT_DB_PASSWORD", "planted-in-the-agent")],
    );
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();

    // As sshd starts a session: the account's own variables and openbox's, nothing of the
    // agent's — in a one-shot and in a session's shell alike.
    for extra in [&[][..], &["-s", "env"][..]] {
        let mut args = vec!["-t", "mapped"];
        args.extend(extra);
        args.push("env");
        let env = bob.run(&args).ok().stdout;
        assert!(!env.contains("planted-in-the-agent") && !env.contains("AGENT_DB_PASSWORD"), "{env}");
        for want in ["USER=nobody", "LOGNAME=nobody", "OPENBOX_USER=bob", "PATH=/usr/local/bin:/usr/bin:/bin"] {
            assert!(env.lines().any(|l| l == want), "{want} in {env}");
        }
        assert!(env.lines().any(|l| l.starts_with("HOME=")) && env.lines().any(|l| l.starts_with("SHELL=")), "{env}");
    }

    // -R on a port only root may bind: refused for the account that is not root, as the
    // account itself would be; the admin's commands run as root there, so his is bound.
    let low = free_low_port();
    let spec = format!("{low}:127.0.0.1:9");
    let out = bob.run(&["-t", "mapped", "-R", &spec, "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(&format!("would not listen on 127.0.0.1:{low}")), "{out:?}");
    assert!(agent.log().contains(&format!("port {low} needs root on this node, and your commands here run as nobody")));
    admin.run(&["-t", "mapped", "-R", &spec, "true"]).ok();
}

#[test]
fn a_mapped_accounts_commands_are_held_to_the_process_limit_and_say_so() {
    let cp = openbox_e2e::ControlPlane::start();
    let admin = openbox_e2e::Cli::admin(&cp);
    let token = admin.enroll_token(&["mapped"]);
    // `daemon`: an account nothing else here runs much as, so the count is this test's.
    let agent = openbox_e2e::Agent::enroll_with(&cp, &token, &["--run-as", "bob=daemon", "--max-processes", "40"]);
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    let out = bob.run(&["-t", "mapped", "for i in $(seq 1 100); do sleep 3 & done; wait"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("reached the node's limit of 40 processes"), "{out:?}");
    assert!(out.stderr.contains("--max-processes"), "{out:?}");
    assert_eq!(bob.run(&["-t", "mapped", "echo fine"]).ok().stdout, "fine\n");
}

#[test]
fn a_remote_forward_whose_accepts_fail_backs_off_instead_of_spinning() {
    let cp = openbox_e2e::ControlPlane::start();
    let admin = openbox_e2e::Cli::admin(&cp);
    let token = admin.enroll_token(&["t"]);
    // Few descriptors, so that connections to the forward use them up.
    let agent = openbox_e2e::Agent::enroll_under(&cp, &token, &["prlimit", "--nofile=64:64", "--"], &[]);
    let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let here_port = here.local_addr().unwrap().port();
    let there = openbox_e2e::free_port();
    let spec = format!("{there}:127.0.0.1:{here_port}");
    let (mut call, _) = admin.start_until_line(&["-n", &agent.name, "-R", &spec, "echo listening; sleep 10"]);
    let held: Vec<std::net::TcpStream> =
        (0..200).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", there)).ok()).collect();
    // Out of descriptors, each failed accept waits twice as long as the last, up to a
    // second: a handful of tries by the time the pause is a second, not a spinning loop.
    let failed = "accepting a forwarded connection (-R) failed";
    wait_until("the pause after failed accepts to grow to a second", || agent.log().contains("pause_ms=1000"));
    let log = agent.log();
    let before_a_second = &log[..log.find("pause_ms=1000").expect("seen above")];
    let tries = before_a_second.matches(failed).count();
    assert!((1..=12).contains(&tries), "{tries} failed accepts before the pause reached a second");
    drop(held);
    let _ = call.kill();
    let _ = call.wait();
}

#[test]
fn a_node_that_reports_what_a_node_cannot_is_refused_with_its_reason() {
    let cp = openbox_e2e::ControlPlane::start();
    let admin = openbox_e2e::Cli::admin(&cp);
    // At enrollment: an address with an escape sequence in it.
    let token = admin.enroll_token(&["t"]);
    let out = openbox_e2e::Agent::run_to_end(&[
        "--server",
        &cp.url,
        "--token",
        &token,
        "--advertise",
        "10.0.0.1:22\u{1b}[2J",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("is not a HOST:PORT address"), "{out:?}");
    // In a heartbeat, signed with a real node's secret.
    let agent = openbox_e2e::Agent::enroll(&cp, &admin, &["t"]);
    let identity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.identity_file()).unwrap()).unwrap();
    let secret = identity["heartbeat_secret"].as_str().unwrap();
    for (field, platform, version) in [("platform", "linux\u{1b}[31m", "1"), ("version", "linux", "1 \u{7}beep")] {
        let hb = serde_json::json!({
            "node_id": agent.node_id, "addr": agent.addr, "platform": {"os": platform, "arch": "x86_64"},
            "version": version, "host_cert_valid_before": 0,
        });
        let resp = openbox_e2e::post_raw(&cp.addr, "/v1/heartbeat", Some(secret), &hb.to_string());
        assert!(resp.starts_with("HTTP/1.1 400") && resp.contains(field), "{field}: {resp}");
    }
    assert!(cp.log().contains("heartbeat refused: it reports what a node cannot"), "{}", cp.log());
    let listed = admin.run(&["nodes"]).ok().stdout;
    assert!(!listed.contains('\u{1b}'), "{listed:?}");
}

/// The host pid of the first process of this fleet's nspawn session container.
fn session_container_init(f: &IsolatedFleet) -> u32 {
    let node = format!("--setenv=OPENBOX_NODE={}", f.agent.node_id);
    let pids =
        || std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    let nspawn = pids()
        .find(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            words.first().is_some_and(|w| w.ends_with(b"systemd-nspawn")) && words.contains(&node.as_bytes())
        })
        .expect("the session's container");
    pids()
        .find(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim);
            let inner = status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last());
            ppid == Some(&nspawn.to_string()) && inner == Some("1")
        })
        .expect("the container's first process")
}

/// A process here that is given `pid` (the kernel hands out the pid after
/// `ns_last_pid`), or none when others keep taking it first.
fn host_process_with_pid(pid: u32) -> Option<std::process::Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A session's container ends, and a process on the host is given its first process's
/// pid: a file transfer into the session must not take that process's root (the host's)
/// for the container's.
#[test]
fn a_file_transfer_never_takes_a_process_that_reused_a_containers_pid_for_the_container() {
    let f = IsolatedFleet::nspawn(&[]);
    f.run(&["-s", "box"], "echo inside > /root/mine").ok();
    let init = session_container_init(&f);
    rustix::process::kill_process(rustix::process::Pid::from_raw(init as i32).unwrap(), rustix::process::Signal::KILL)
        .unwrap();
    wait_until("the container's first process to be gone", || !Path::new(&format!("/proc/{init}")).exists());
    let mut taker = host_process_with_pid(init).expect("a host process with the container's old pid");
    let dest = tempfile::tempdir().unwrap();
    let copied = dest.path().join("shadow");
    let out = f.cli.run(&["cp", "-s", "box", &format!("{}:/etc/shadow", f.agent.name), copied.to_str().unwrap()]);
    let _ = taker.kill();
    let _ = taker.wait();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!copied.exists(), "the host's /etc/shadow must not come out of a session's container");
}
