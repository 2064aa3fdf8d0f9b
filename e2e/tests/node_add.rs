//! `openbox node add`: a machine reachable only over SSH — OpenSSH's sshd in a network
//! namespace the test makes — becomes a node, its host key checked.

use std::path::Path;

use openbox_e2e::{Cli, ControlPlane, Out, SshHost};

/// A control plane the machine can reach (on this side of its link; HTTPS, as it is not
/// loopback) and its admin.
fn fleet_for(host: &SshHost) -> (ControlPlane, Cli) {
    let cp = ControlPlane::start_with(&["--addr", &format!("{}:0", host.gateway())]);
    assert!(cp.url.starts_with("https://"), "{}", cp.url);
    let admin = Cli::admin(&cp);
    (cp, admin)
}

/// `openbox node add TARGET --password-stdin ARGS…` with `password` on stdin.
fn add_with_password(cli: &Cli, host: &SshHost, password: &str, args: &[&str]) -> Out {
    let target = host.target();
    let mut all = vec!["node", "add", target.as_str(), "--password-stdin"];
    all.extend(args);
    cli.run_stdin(&all, format!("{password}\n").as_bytes())
}

#[test]
fn a_machine_reached_by_password_becomes_a_node_and_adding_it_again_changes_nothing() {
    let host = SshHost::start();
    let (_cp, admin) = fleet_for(&host);
    let kh = host.dir.path().join("known_hosts");
    let kh_arg = kh.to_str().unwrap();

    let args = ["--accept-new", "--known-hosts", kh_arg, "--tag", "ssh", "--json"];
    let out = add_with_password(&admin, &host, host.password, &args).ok();
    let added = out.json();
    let (id, name) = (added["node_id"].as_str().unwrap().to_owned(), added["name"].as_str().unwrap().to_owned());
    assert_eq!(added["already"], false);
    assert_eq!(added["service"], "nohup", "no service manager in the test's namespace");
    assert!(
        out.stderr.contains("started the agent with nohup") && out.stderr.contains("after a reboot"),
        "said out loud: {out:?}"
    );
    assert!(out.stderr.contains("uploading") && out.stderr.contains("100%"), "progress: {out:?}");
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert!(recorded.starts_with(&format!("{} ssh-ed25519 ", host.addr())), "{recorded}");

    let node = admin.node(&id).expect("listed");
    assert_eq!(node["online"], true);
    assert_eq!(node["tags"], serde_json::json!(["ssh"]));
    assert_eq!(node["addr"], format!("{}:7684", host.addr()));
    let who = admin.run(&["-n", &name, "id", "-un"]).ok();
    assert_eq!(who.stdout, "obnode\n", "commands run there, as the account that installed it");
    let hostname = admin.run(&["-n", &name, "hostname"]).ok();
    assert!(!hostname.stdout.trim().is_empty());
    // The token was handed over by file, and that file is gone.
    assert!(!host.home_file(".local/state/openbox/enroll.token").exists());

    let again = add_with_password(&admin, &host, host.password, &["--known-hosts", kh_arg]).ok();
    assert!(again.stdout.contains(&format!("already node {name} ({id}); nothing changed")), "{again:?}");
    assert_eq!(admin.nodes().len(), 1, "no second node");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), recorded, "known_hosts unchanged");

    // --reinstall installs again: the old agent stops, the new one is the same node.
    let pid = |h: &SshHost| std::fs::read_to_string(h.home_file(".local/state/openbox/agent.pid")).unwrap();
    let before = pid(&host);
    let re = add_with_password(&admin, &host, host.password, &["--reinstall", "--known-hosts", kh_arg, "--json"]).ok();
    assert_eq!(re.json()["node_id"], id.as_str());
    assert_ne!(pid(&host), before, "a new agent process");
    assert_eq!(host.processes().len(), 1, "one agent runs: {:?}", host.processes());
    assert_eq!(admin.run(&["-n", &name, "echo", "again"]).ok().stdout, "again\n");
}

#[test]
fn key_and_ssh_agent_logins_work_with_a_pinned_host_key() {
    let host = SshHost::start();
    let (_cp, admin) = fleet_for(&host);
    let key = host.dir.path().join("id_ed25519");
    let made =
        std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status();
    assert!(made.unwrap().success());
    host.authorize(&std::fs::read_to_string(key.with_extension("pub")).unwrap());
    let kh = host.dir.path().join("known_hosts");
    let (kh_arg, fp) = (kh.to_str().unwrap(), host.fingerprint());

    // Through an SSH agent holding the key, the host key pinned by its fingerprint.
    let sock = host.dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    openbox_e2e::wait_until("ssh-agent listening", || sock.exists());
    let loaded = std::process::Command::new("ssh-add").arg(&key).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(loaded.status.success(), "{loaded:?}");
    let target = host.target();
    let args = ["node", "add", target.as_str(), "--host-key-fingerprint", &fp, "--known-hosts", kh_arg, "--json"];
    let out = Out::from(admin.cmd().env("SSH_AUTH_SOCK", &sock).args(args).output().unwrap()).ok();
    let id = out.json()["node_id"].as_str().unwrap().to_owned();
    assert!(std::fs::read_to_string(&kh).unwrap().contains("ssh-ed25519"), "a pinned key is recorded too");
    let _ = agent.kill();
    let _ = agent.wait();

    // With the key file (the host key known now): the machine is that node already.
    let key_arg = key.to_str().unwrap();
    let again = admin.run(&["node", "add", &target, "--key", key_arg, "--known-hosts", kh_arg, "--json"]).ok();
    assert_eq!(again.json()["already"], true);
    assert_eq!(again.json()["node_id"], id.as_str());
}

#[test]
fn unknown_and_changed_host_keys_and_a_wrong_password_are_refused_and_leave_nothing_behind() {
    let mut host = SshHost::start();
    let (_cp, admin) = fleet_for(&host);
    let kh = host.dir.path().join("known_hosts");
    let kh_arg = kh.to_str().unwrap();
    let fp = host.fingerprint();

    // An address nothing answers at.
    let nobody = format!("obnode@{}", host.unused_addr());
    let args = ["node", "add", nobody.as_str(), "--password-stdin", "--accept-new", "--known-hosts", kh_arg];
    admin.run_stdin(&args, b"x\n").fails_with(1, "cannot reach");

    let unknown = add_with_password(&admin, &host, host.password, &["--known-hosts", kh_arg]);
    let unknown = unknown.fails_with(1, "is not known");
    assert!(unknown.stderr.contains(&format!("--host-key-fingerprint {fp}")), "{unknown:?}");
    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    add_with_password(&admin, &host, host.password, &["--host-key-fingerprint", other, "--known-hosts", kh_arg])
        .fails_with(1, "not the SHA256:AAAA");
    let wrong = add_with_password(&admin, &host, "not it", &["--accept-new", "--known-hosts", kh_arg]);
    let wrong = wrong.fails_with(1, "refused the password");
    let errors: Vec<&str> = wrong.stderr.lines().filter(|l| l.starts_with("openbox:")).collect();
    assert_eq!(errors.len(), 1, "one clear line: {wrong:?}");
    assert!(!kh.exists(), "nothing recorded for a login that failed");
    assert!(!host.home_file(".local").exists(), "nothing installed");
    assert!(admin.nodes().is_empty());

    // Known now; then the machine's key changes: refused, even with --accept-new.
    add_with_password(&admin, &host, host.password, &["--host-key-fingerprint", &fp, "--known-hosts", kh_arg]).ok();
    host.swap_host_key();
    let changed =
        add_with_password(&admin, &host, host.password, &["--accept-new", "--reinstall", "--known-hosts", kh_arg]);
    let changed = changed.fails_with(1, "REMOTE HOST IDENTIFICATION HAS CHANGED");
    assert!(changed.stderr.contains(&format!("{kh_arg}:1")), "names the line: {changed:?}");
}

#[test]
fn the_agent_from_a_release_directory_is_checked_against_its_checksums_then_installed() {
    let host = SshHost::start();
    let (_cp, admin) = fleet_for(&host);
    let kh = host.dir.path().join("known_hosts");
    let args = |from: &Path| {
        ["--accept-new", "--known-hosts", kh.to_str().unwrap(), "--from", from.to_str().unwrap()].map(str::to_owned)
    };
    let release = openbox_e2e::release_dir();
    let tarball = format!("openbox-{}-linux-{}.tar.gz", proto::VERSION, std::env::consts::ARCH);

    // A copy of the release whose tarball changed after its checksums were made: refused
    // before anything reaches the machine.
    let tampered = tempfile::tempdir().unwrap();
    std::fs::copy(release.join("SHA256SUMS"), tampered.path().join("SHA256SUMS")).unwrap();
    let mut bytes = std::fs::read(release.join(&tarball)).unwrap();
    bytes.push(0);
    std::fs::write(tampered.path().join(&tarball), bytes).unwrap();
    let a = args(tampered.path());
    let out = add_with_password(&admin, &host, host.password, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = out.fails_with(1, "checksum mismatch");
    assert!(out.stderr.contains("choosing the agent for the machine") && out.stderr.contains(&tarball), "{out:?}");
    assert!(!host.home_file(".local/bin/openbox-agent").exists(), "nothing was uploaded");

    // The release as published: its agent, not this openbox's own, runs the node.
    let a = args(&release);
    let out = add_with_password(
        &admin,
        &host,
        host.password,
        &[&a.iter().map(String::as_str).collect::<Vec<_>>()[..], &["--json"]].concat(),
    )
    .ok();
    let name = out.json()["name"].as_str().unwrap().to_owned();
    // At once: an agent node add starts heartbeats every 10 s, and this control plane
    // counts a node offline 2 s after the last.
    assert_eq!(admin.run(&["-n", &name, "echo", "released"]).ok().stdout, "released\n");
    let unpacked = tempfile::tempdir().unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(release.join(&tarball))
        .arg("-C")
        .arg(unpacked.path())
        .status();
    assert!(tar.unwrap().success());
    let shipped = unpacked.path().join(tarball.trim_end_matches(".tar.gz")).join("bin/openbox-agent");
    let installed = std::fs::read(host.home_file(".local/bin/openbox-agent")).unwrap();
    assert!(installed == std::fs::read(shipped).unwrap(), "the release's agent was installed");
}

#[test]
fn a_bootstrap_that_fails_says_which_step_and_removes_what_it_installed() {
    let host = SshHost::start();
    // A control plane the machine cannot reach (loopback here): its agent cannot enroll.
    let cp = ControlPlane::start_with(&["--tls"]);
    let admin = Cli::admin(&cp);
    let kh = host.dir.path().join("known_hosts");
    let out = add_with_password(&admin, &host, host.password, &["--accept-new", "--known-hosts", kh.to_str().unwrap()]);
    let out = out.fails_with(1, "the agent stopped");
    assert!(
        out.stderr.contains("waiting for the node") && out.stderr.contains("nothing was left installed"),
        "{out:?}"
    );
    assert!(!host.home_file(".local/bin/openbox-agent").exists(), "the binary it brought is gone");
    assert!(!host.home_file(".local/state/openbox/enroll.token").exists());
    assert!(!host.home_file(".local/state/openbox/agent.pid").exists());
    openbox_e2e::wait_until("no agent left running", || host.processes().is_empty());
    assert!(admin.nodes().is_empty());
}

#[test]
fn the_dashboard_writes_the_node_add_command_and_shows_the_node_once_it_is_online() {
    let host = SshHost::start();
    let (cp, admin) = fleet_for(&host);
    let mut b = openbox_e2e::Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    b.goto(&format!("{}/#/add-node", cp.url));
    let (target, fp) = (host.target(), host.fingerprint());
    b.fill("#ssh-target", &target);
    b.select("#ssh-login", "password");
    b.fill("#ssh-fingerprint", &fp);
    b.fill("#ssh-tags", "web ssh");
    let command = b.wait_text("#ssh-command pre", "--tag ssh");
    assert_eq!(
        command.trim(),
        format!("openbox node add {target} --password --host-key-fingerprint {fp} --tag web --tag ssh")
    );

    // Run as shown, the password given on stdin where a terminal would ask for it.
    let kh = host.dir.path().join("known_hosts");
    let mut words: Vec<&str> =
        command.split_whitespace().skip(1).map(|w| if w == "--password" { "--password-stdin" } else { w }).collect();
    words.extend(["--known-hosts", kh.to_str().unwrap()]);
    admin.run_stdin(&words, format!("{}\n", host.password).as_bytes()).ok();
    let shown = b.wait_text("#ssh-wait", "is online");
    let node = &admin.nodes()[0];
    assert!(shown.contains(node["name"].as_str().unwrap()), "{shown}");
    assert_eq!(node["tags"], serde_json::json!(["web", "ssh"]));
}
