//! The embedded tailnet, end to end through the real binaries against a real Headscale:
//! an agent on the tailnet only (no TCP listener), openboxd holding its own tailnet node,
//! commands and sessions between them — and a clear refusal from an openboxd that is not
//! on the tailnet.

use openbox_e2e::{Agent, Cli, ControlPlane, Headscale, MESH_TEST_ENV, process_running, wait_until};
use rustix::process::{Pid, Signal, kill_process};

/// A CLI whose openboxd joins `hs`'s tailnet (it starts with the login call).
fn meshed_admin(cp: &ControlPlane, hs: &Headscale, key: &str) -> Cli {
    let cli = Cli::new();
    let out = cli
        .cmd()
        .args(["login", "--server", &cp.url, "--token", &cp.admin_token])
        .env("OPENBOX_MESH_CONTROL", &hs.url)
        .env("OPENBOX_MESH_AUTHKEY", key)
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cli
}

#[test]
fn a_tailnet_only_node_serves_commands_and_sessions_to_a_meshed_openboxd() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    let admin = meshed_admin(&cp, &hs, &key);
    let agent = Agent::enroll_mesh(&cp, &admin.enroll_token(&["meshtag"]), &hs, &key, &["--name", "meshy"]);
    assert!(agent.addr.starts_with("100.64."), "it serves on its tailnet address: {}", agent.addr);

    let node = admin.node(&agent.node_id).expect("listed");
    assert_eq!(node["addr"], "", "no direct address: {node}");
    assert_eq!(node["mesh_addr"], agent.addr.as_str());

    let out = admin.run(&["-t", "meshtag", "echo", "over", "the", "tailnet;", "echo $OPENBOX_NODE"]).ok();
    assert_eq!(out.stdout, format!("over the tailnet\n{}\n", agent.node_id));
    let key_seen = admin.run(&["-n", "meshy", "echo ${OPENBOX_MESH_AUTHKEY:-none}"]).ok();
    assert_eq!(key_seen.stdout, "none\n", "commands never see the node's tailnet key");
    let big = admin.run(&["-n", "meshy", "head -c 3000000 /dev/zero | wc -c"]).ok();
    assert_eq!(big.stdout.trim(), "3000000");

    admin.run(&["-t", "meshtag", "-s", "s1", "cd /tmp && export X=kept"]).ok();
    assert_eq!(admin.run(&["-t", "meshtag", "-s", "s1", "echo $(pwd) $X"]).ok().stdout, "/tmp kept\n");

    let status = admin.daemon_status();
    assert_eq!(status["mesh"]["up"], true, "{status}");
    assert!(status["mesh"]["ips"][0].as_str().unwrap().starts_with("100.64."), "{status}");

    // Someone whose openboxd is not on the tailnet is told so, in one line.
    let bob = admin.add_user(&cp, "bob");
    admin.run(&["user", "grant", "bob", "--node", "meshy"]).ok();
    bob.run(&["-t", "meshtag", "true"])
        .fails_with(255, "reachable only on the tailnet, and this openboxd is not on it");

    // Go's runtime starts with a process's tailnet, not when the process loads: bob's
    // openboxd, not on the tailnet, never started it (nor paged in Go's code).
    let pid = |cli: &Cli| cli.daemon_status()["pid"].as_u64().expect("openboxd's pid");
    assert!(go_runtime_started(pid(&admin)), "the meshed openboxd runs Go");
    assert!(!go_runtime_started(pid(&bob)), "an openboxd without a tailnet never starts Go's runtime");
}

/// Whether Go's runtime runs in a process: it catches SIGURG (preempting goroutines with
/// it), which nothing else in openbox does.
fn go_runtime_started(pid: u64) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).expect("SigCgt");
    let mask = u64::from_str_radix(caught.trim(), 16).expect("a hexadecimal mask");
    mask & (1 << (Signal::URG.as_raw() - 1)) != 0
}

/// What a Go runtime prints when it crashes.
fn crashed(log: &str) -> bool {
    log.contains("fatal error") || log.contains("goroutine ") || log.contains("SIGSEGV")
}

#[test]
fn a_meshed_fleet_recovers_from_restarts_and_stops_cleanly_on_signals() {
    let mut hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    let admin = meshed_admin(&cp, &hs, &key);
    let mut agent = Agent::enroll_mesh(&cp, &admin.enroll_token(&["m"]), &hs, &key, &[]);
    let first_addr = agent.addr.clone();
    admin.run(&["-t", "m", "true"]).ok();

    // The agent restarted: the same tailnet node (no key needed now), and calls resume.
    agent.restart();
    assert_eq!(agent.addr, first_addr, "it keeps its tailnet identity");
    wait_until("the restarted agent to serve over the tailnet", || admin.run(&["-t", "m", "true"]).code == 0);

    // Headscale restarted under the running fleet: calls resume.
    hs.restart();
    wait_until("calls to resume after Headscale restarted", || admin.run(&["-t", "m", "echo", "back"]).code == 0);

    // openboxd restarted (killed): the next call starts one that rejoins from what it
    // remembered, with no mesh variables in its environment.
    let pid = admin.daemon_status()["pid"].as_i64().unwrap() as i32;
    kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
    let socket = admin.home.path().join("run/openboxd.sock");
    wait_until("the killed daemon to be gone", || std::os::unix::net::UnixStream::connect(&socket).is_err());
    let out = admin.cmd().args(["-t", "m", "echo", "rejoined"]).env(MESH_TEST_ENV.0, MESH_TEST_ENV.1).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rejoined\n", "{}", String::from_utf8_lossy(&out.stderr));

    // SIGINT to a meshed openboxd and SIGTERM to a meshed agent: clean exits, no Go crash.
    let pid = admin.daemon_status()["pid"].as_i64().unwrap() as i32;
    kill_process(Pid::from_raw(pid).unwrap(), Signal::INT).unwrap();
    // It stops listening first, then leaves the tailnet and writes its last line.
    wait_until("openboxd to stop on SIGINT", || !process_running(pid));
    let log = std::fs::read_to_string(admin.home.path().join("logs/openboxd.log")).unwrap();
    assert!(log.contains("openboxd stopped") && !crashed(&log), "{log}");

    let status = agent.signal_and_wait(Signal::TERM);
    assert!(status.success(), "{status:?}:\n{}", agent.log());
    assert!(agent.log().contains("agent stopped") && !crashed(&agent.log()), "{}", agent.log());
}

#[test]
fn a_bad_or_expired_tailnet_key_is_refused_with_a_clear_line() {
    let hs = Headscale::start();
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.enroll_token(&["m"]);
    let agent_with = |key: &str| {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(openbox_e2e::bin("openbox-agent"))
            .env("OPENBOX_HOME", home.path())
            .env("OPENBOX_MESH_AUTHKEY", key)
            .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
            .args(["--server", &cp.url, "--token", &token, "--mesh-control", &hs.url])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let made_up = agent_with("hskey-auth-notarealkey");
    assert!(made_up.contains("joining the tailnet at") && made_up.contains("auth key is not valid"), "{made_up}");
    let expired = agent_with(&hs.expired_auth_key("fleet"));
    assert!(expired.contains("joining the tailnet at") && expired.contains("auth key has expired"), "{expired}");
    // Nothing was enrolled: the token is still unused.
    assert!(admin.nodes().is_empty());
}

#[test]
fn meshed_agent_openboxd_and_control_plane_send_nothing_beyond_loopback() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let traces = tempfile::tempdir().unwrap();
    let (agent_trace, daemon_trace, control_trace) =
        (traces.path().join("agent"), traces.path().join("openboxd"), traces.path().join("control"));
    let key_file = traces.path().join("authkey");
    std::fs::write(&key_file, &key).unwrap();
    // The control plane holds the tailnet and serves on it too.
    let mut cp = ControlPlane::start_traced(
        &["--mesh-control", &hs.url, "--mesh-authkey-file", key_file.to_str().unwrap(), "--mesh"],
        &control_trace,
    );
    let line = cp.wait_line("on the tailnet at");
    let on_tailnet = line.split_whitespace().last().unwrap().to_owned();

    // openboxd in the foreground under strace, before any call would start one.
    let cli = Cli::new();
    let mut daemon = std::process::Command::new("strace")
        .args(openbox_e2e::STRACE_NETWORK)
        .arg("-o")
        .arg(&daemon_trace)
        .arg(openbox_e2e::bin("openboxd"))
        .env("OPENBOX_HOME", cli.home.path())
        .env("OPENBOX_MESH_CONTROL", &hs.url)
        .env("OPENBOX_MESH_AUTHKEY", &key)
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("strace is needed for this test (scripts/setup-test-env installs it)");
    let socket = cli.home.path().join("run/openboxd.sock");
    wait_until("openboxd under strace to listen", || std::os::unix::net::UnixStream::connect(&socket).is_ok());
    // Logged in at the control plane's tailnet address: every control call crosses it.
    cli.run(&["login", "--server", &on_tailnet, "--token", &cp.admin_token]).ok();

    let mut agent = Agent::enroll_mesh_traced(&cp, &cli.enroll_token(&["m"]), &hs, &key, &agent_trace);
    assert_eq!(cli.run(&["-t", "m", "echo", "traced"]).ok().stdout, "traced\n");
    cli.run(&["-t", "m", "-s", "t", "cd /tmp"]).ok();

    agent.stop();
    cli.run(&["daemon", "stop"]).ok();
    let _ = daemon.wait();
    cp.stop();
    for (what, trace) in [("agent", &agent_trace), ("openboxd", &daemon_trace), ("control plane", &control_trace)] {
        let text = std::fs::read_to_string(trace).unwrap();
        assert!(text.contains("127.0.0.1"), "the {what} trace must show the traffic that did happen");
        let outside = openbox_e2e::beyond_loopback(&text);
        assert!(outside.is_empty(), "the {what} sent beyond 127.0.0.0/8:\n{}", outside.join("\n"));
    }
}

#[test]
fn a_node_with_a_direct_address_is_not_kept_waiting_for_a_tailnet_still_joining() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    // This openboxd's tailnet cannot come up: nothing answers at its control URL.
    let cli = Cli::new();
    let out = cli
        .cmd()
        .args(["login", "--server", &cp.url, "--token", &cp.admin_token])
        .env("OPENBOX_MESH_CONTROL", "http://127.0.0.1:1")
        .env("OPENBOX_MESH_AUTHKEY", &key)
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A node on the tailnet and on TCP.
    let token = cli.enroll_token(&["both"]);
    let agent = Agent::enroll_env(
        &cp,
        &token,
        &["--mesh-control", &hs.url, "--addr", "127.0.0.1:0"],
        &[("OPENBOX_MESH_AUTHKEY", &key), MESH_TEST_ENV],
    );
    let node = cli.node(&agent.node_id).expect("listed");
    assert!(node["mesh_addr"].as_str().is_some_and(|a| a.starts_with("100.64.")), "{node}");
    assert_eq!(cli.daemon_status()["mesh"]["up"], false, "the tailnet is still joining");

    let started = std::time::Instant::now();
    assert_eq!(cli.run(&["-t", "both", "echo", "direct"]).ok().stdout, "direct\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "it waited {:?}", started.elapsed());
}

/// A laptop away from the node's LAN: the node's direct address refuses, its tailnet
/// address answers once this openboxd has joined.
#[test]
fn a_node_whose_direct_address_refuses_is_reached_over_the_tailnet_and_that_way_is_remembered() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    let admin = meshed_admin(&cp, &hs, &key);
    let closed = format!("127.0.0.1:{}", openbox_e2e::free_port());
    let token = admin.enroll_token(&["both"]);
    let agent = Agent::enroll_env(
        &cp,
        &token,
        &["--mesh-control", &hs.url, "--addr", "127.0.0.1:0", "--advertise", &closed],
        &[("OPENBOX_MESH_AUTHKEY", &key), MESH_TEST_ENV],
    );
    let node = admin.node(&agent.node_id).expect("listed");
    assert_eq!(node["addr"], closed.as_str(), "{node}");
    assert!(node["mesh_addr"].as_str().is_some_and(|a| a.starts_with("100.64.")), "{node}");

    // A laptop whose openboxd is still joining (its coordination server is not answering
    // yet) tries the direct address first; refused, it waits for the tailnet instead.
    let token = admin.run(&["user", "add", "away", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    admin.run(&["user", "grant", "away", "--node", &agent.name]).ok();
    hs.pause();
    let laptop = Cli::with_env(&[("OPENBOX_MESH_CONTROL", &hs.url), ("OPENBOX_MESH_AUTHKEY", &key), MESH_TEST_ENV])
        .log_in(&cp, &token);
    let daemon_log = laptop.home.path().join("logs/openboxd.log");
    let call = std::thread::scope(|s| {
        let call = s.spawn(|| laptop.run(&["-t", "both", "--timeout", "60s", "echo", "carried"]));
        wait_until("the direct address to be refused", || {
            std::fs::read_to_string(&daemon_log).is_ok_and(|l| l.contains("not reached this way; trying the other"))
        });
        hs.resume();
        call.join().unwrap()
    });
    assert_eq!(call.ok().stdout, "carried\n");
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(log.contains("reached over another way than the first tried"), "{log}");

    // The next call goes over the tailnet first: nothing is refused on the way.
    assert_eq!(laptop.run(&["-t", "both", "echo", "again"]).ok().stdout, "again\n");
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    assert_eq!(log.matches("not reached this way").count(), 1, "{log}");
}

#[test]
fn a_control_plane_holding_the_tailnet_puts_nodes_and_laptops_on_it_with_no_settings_of_their_own() {
    let hs = Headscale::start();
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("authkey");
    std::fs::write(&key_file, format!("{}\n", hs.auth_key("fleet"))).unwrap();
    let cp = ControlPlane::start_with(&["--mesh-control", &hs.url, "--mesh-authkey-file", key_file.to_str().unwrap()]);

    // `openbox login` alone: openboxd learns the tailnet and starts again to join it.
    let admin = Cli::new();
    let out = admin
        .cmd()
        .args(["login", "--server", &cp.url, "--token", &cp.admin_token])
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("Joining the fleet's tailnet at"), "{said}");

    // `openbox agent --server … --token …` alone: joins first, then enrolls on the tailnet
    // only (no TCP listener, since none was asked for).
    let agent = Agent::enroll_env(&cp, &admin.enroll_token(&["zc"]), &[], &[MESH_TEST_ENV]);
    assert!(agent.addr.starts_with("100.64."), "it serves on its tailnet address: {}", agent.addr);
    let node = admin.node(&agent.node_id).expect("listed");
    assert_eq!(node["addr"], "", "no direct address: {node}");

    let out = admin
        .cmd()
        .args(["-t", "zc", "echo", "zero", "config"])
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zero config\n", "{}", String::from_utf8_lossy(&out.stderr));
    let status = admin.daemon_status();
    assert_eq!(status["mesh"]["up"], true, "{status}");
    assert_eq!(status["mesh"]["control_url"], hs.url.as_str(), "{status}");
    admin.run(&["-t", "zc", "-s", "zs", "cd /tmp"]).ok();
    assert_eq!(admin.run(&["-t", "zc", "-s", "zs", "pwd"]).ok().stdout, "/tmp\n");

    // The key was kept only until the join: neither side keeps it afterwards.
    assert!(!agent.home.path().join("agent/tailnet/pending-authkey").exists());
    assert!(!admin.home.path().join("tailnet/pending-authkey").exists());

    // A key the control plane cannot hand out is refused at its start, with one line.
    let empty = secrets.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = std::process::Command::new(openbox_e2e::bin("openbox-control"))
        .env("OPENBOX_HOME", secrets.path())
        .args(["--addr", "127.0.0.1:0", "--mesh-control", &hs.url, "--mesh-authkey-file", empty.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains(&format!("{} is empty", empty.display())), "{said}");
}

#[test]
fn a_control_plane_on_the_tailnet_serves_nodes_and_laptops_there() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let secrets = tempfile::tempdir().unwrap();
    let key_file = secrets.path().join("authkey");
    std::fs::write(&key_file, &key).unwrap();
    let mut cp = ControlPlane::start_with(&[
        "--mesh-control",
        &hs.url,
        "--mesh-authkey-file",
        key_file.to_str().unwrap(),
        "--mesh",
        "--mesh-port",
        "7683",
    ]);
    let line = cp.wait_line("on the tailnet at");
    let on_tailnet = line.split_whitespace().last().unwrap().to_owned();
    assert!(on_tailnet.starts_with("http://100.64.") && on_tailnet.ends_with(":7683"), "{line}");

    // A laptop logs in at the control plane's tailnet address: its openboxd reaches it
    // through its own tailnet node (never through the host's network).
    let admin = Cli::new();
    let out = admin
        .cmd()
        .args(["login", "--server", &on_tailnet, "--token", &cp.admin_token])
        .env("OPENBOX_MESH_CONTROL", &hs.url)
        .env("OPENBOX_MESH_AUTHKEY", &key)
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A node enrolls and heartbeats there too, over its tailnet node.
    let token = admin.enroll_token(&["tn"]);
    let agent = Agent::enroll_at(
        &on_tailnet,
        &token,
        &["--mesh-control", &hs.url],
        &[("OPENBOX_MESH_AUTHKEY", &key), MESH_TEST_ENV],
    );
    assert_eq!(admin.run(&["-t", "tn", "echo", "all", "on", "the", "tailnet"]).ok().stdout, "all on the tailnet\n");
    let node = admin.node(&agent.node_id).expect("listed");
    assert_eq!(node["online"], true, "its heartbeats arrive over the tailnet: {node}");

    // Someone not on the tailnet is told so, and nothing is sent to that address.
    let outsider = Cli::new();
    outsider
        .run(&["login", "--server", &on_tailnet, "--token", &cp.admin_token])
        .fails_with(1, "that is an address on a tailnet, and this process is not on one");
}

#[test]
fn an_unreachable_tailnet_fails_the_agent_within_its_deadline_with_one_line() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let home = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // Nothing listens on port 1 of 127.0.0.1.
    let out = std::process::Command::new(openbox_e2e::bin("openbox-agent"))
        .env("OPENBOX_HOME", home.path())
        .env("OPENBOX_MESH_AUTHKEY", "hskey-auth-whatever")
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .args(["--server", &cp.url, "--token", &admin.enroll_token(&["m"])])
        .args(["--mesh-control", "http://127.0.0.1:1", "--mesh-timeout", "3s"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "it took {:?}", started.elapsed());
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.contains("joining the tailnet at http://127.0.0.1:1") && last.contains("did not come up within 3s"),
        "{said}"
    );
    assert!(admin.nodes().is_empty(), "nothing enrolled");
}

#[test]
fn openboxd_keeps_trying_a_tailnet_it_could_not_join() {
    let hs = Headscale::start();
    let key = hs.auth_key("fleet");
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let _agent = Agent::enroll_mesh(&cp, &admin.enroll_token(&["r"]), &hs, &key, &[]);

    // The coordination server is away when this openboxd starts: its first try times out.
    hs.pause();
    let cli = Cli::new();
    let out = cli
        .cmd()
        .args(["login", "--server", &cp.url, "--token", &cp.admin_token])
        .env("OPENBOX_MESH_CONTROL", &hs.url)
        .env("OPENBOX_MESH_AUTHKEY", &key)
        .env("OPENBOX_MESH_TIMEOUT", "2s")
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let failed_try = |s: &serde_json::Value| {
        s["mesh"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not come up within 2s") && e.contains("trying again"))
    };
    wait_until("the first try to fail", || failed_try(&cli.daemon_status()));
    // Meanwhile a call that needs the tailnet fails at once, saying why.
    cli.run(&["-t", "r", "true"]).fails_with(255, "could not join the tailnet");

    // The server is back: a later try joins, with no restart.
    hs.resume();
    wait_until("openboxd to join on a later try", || cli.daemon_status()["mesh"]["up"] == true);
    assert_eq!(cli.run(&["-t", "r", "echo", "joined"]).ok().stdout, "joined\n");
}

/// `GET /v1/mesh` as the holder of `token`: the status line and the body.
fn mesh_for(cp: &ControlPlane, token: &str) -> (String, String) {
    let resp = openbox_e2e::http_raw(&cp.addr, "GET", "/v1/mesh", &[format!("Authorization: Bearer {token}")], "");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// Headscale's devices, as its CLI lists them.
fn devices(hs: &Headscale) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&hs.cli(&["nodes", "list", "-o", "json"]))
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn tagged<'a>(devices: &'a [serde_json::Value], prefix: &str) -> Vec<&'a serde_json::Value> {
    devices
        .iter()
        .filter(|d| {
            d["tags"].as_array().into_iter().flatten().any(|t| t.as_str().unwrap_or_default().starts_with(prefix))
        })
        .collect()
}

/// A CLI logged in with `token`, whose openboxd joins the fleet's tailnet as the login
/// tells it to.
fn meshed_login(cp: &ControlPlane, token: &str) -> (Cli, std::process::Output) {
    let cli = Cli::new();
    let out = cli
        .cmd()
        .args(["login", "--server", &cp.url, "--token", token])
        .env(MESH_TEST_ENV.0, MESH_TEST_ENV.1)
        .output()
        .unwrap();
    (cli, out)
}

/// A control plane holding `hs`'s tailnet (a reusable key for user `fleet`), with a
/// Headscale API key when `minting`: it, the reusable key, and the directory of the files.
fn control_plane_holding_the_tailnet(hs: &Headscale, minting: bool) -> (ControlPlane, String, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let fleet_key = hs.auth_key("fleet");
    let key_file = secrets.path().join("authkey");
    std::fs::write(&key_file, &fleet_key).unwrap();
    let mut args = vec!["--mesh-control".to_owned(), hs.url.clone(), "--mesh-authkey-file".to_owned()];
    args.push(key_file.display().to_string());
    if minting {
        let api_file = secrets.path().join("apikey");
        std::fs::write(&api_file, hs.cli(&["apikeys", "create", "-e", "1h"]).trim()).unwrap();
        args.extend(["--mesh-api-key-file".to_owned(), api_file.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (ControlPlane::start_with(&args), fleet_key, secrets)
}

#[test]
fn each_laptop_and_node_gets_a_one_time_tagged_key_and_a_removed_users_devices_leave_the_tailnet() {
    let hs = Headscale::start();
    let (cp, fleet_key, _secrets) = control_plane_holding_the_tailnet(&hs, true);
    // The admin's openboxd joins with a key minted for it at login.
    let (admin, out) = meshed_login(&cp, &cp.admin_token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();

    // Every ask is a new key, never the fleet's reusable one — an admin's too.
    let key = |token: &str| {
        let (status, body) = mesh_for(&cp, token);
        assert!(status.contains("200"), "{status} {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["auth_key"].as_str().unwrap().to_owned()
    };
    let (first, second, admins) = (key(&bob_token), key(&bob_token), key(&cp.admin_token));
    assert!(first != second && first != fleet_key && second != fleet_key && admins != fleet_key);
    let keys: serde_json::Value = serde_json::from_str(&hs.cli(&["preauthkeys", "list", "-o", "json"])).unwrap();
    let minted: Vec<&serde_json::Value> =
        keys.as_array().unwrap().iter().filter(|k| k["acl_tags"].as_array().is_some_and(|t| !t.is_empty())).collect();
    assert_eq!(minted.len(), 4, "the admin's login and the three asked for: {keys}");
    for k in &minted {
        assert_ne!(k["reusable"], true, "one use: {k}");
        let tags: Vec<&str> = k["acl_tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert!(tags.contains(&"tag:openbox-user") && tags.iter().any(|t| t.starts_with("tag:openbox-user-")), "{k}");
        let expires = k["expiration"]["seconds"].as_u64().unwrap();
        assert!(expires <= openbox_e2e::now() + 15 * 60, "minutes, not hours: {k}");
    }

    // His laptop joins with a key of its own; a node enrolls with one tagged as a node's.
    let (bob, out) = meshed_login(&cp, &bob_token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("bob's openboxd on the tailnet", || bob.daemon_status()["mesh"]["up"] == true);
    let agent = Agent::enroll_env(&cp, &admin.enroll_token(&["zc"]), &[], &[MESH_TEST_ENV]);
    let all = devices(&hs);
    assert_eq!(tagged(&all, "tag:openbox-user-").len(), 2, "the admin's laptop and bob's: {all:?}");
    assert_eq!(tagged(&all, "tag:openbox-node").len(), 1, "{all:?}");

    // Removed, his devices leave the tailnet; so does a removed node's.
    admin.run(&["user", "rm", "bob"]).ok();
    wait_until("bob's device to be deleted from the tailnet", || tagged(&devices(&hs), "tag:openbox-user-").len() == 1);
    admin.run(&["node", "rm", &agent.name]).ok();
    wait_until("the node's device to be deleted from the tailnet", || {
        tagged(&devices(&hs), "tag:openbox-node").is_empty()
    });
}

#[test]
fn without_an_api_key_only_admins_are_handed_the_fleets_reusable_tailnet_key() {
    let hs = Headscale::start();
    let (cp, fleet_key, _secrets) = control_plane_holding_the_tailnet(&hs, false);
    let (admin, out) = meshed_login(&cp, &cp.admin_token);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let (status, body) = mesh_for(&cp, &bob_token);
    assert!(status.contains("403"), "{status} {body}");
    assert!(body.contains("--mesh-api-key-file") && !body.contains(&fleet_key), "{body}");
    let (status, body) = mesh_for(&cp, &cp.admin_token);
    assert!(status.contains("200") && body.contains(&fleet_key), "{status} {body}");
    // His login stands, and says why he is not on the tailnet.
    let (bob, out) = meshed_login(&cp, &bob_token);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on the fleet's tailnet"), "{out:?}");
    assert_eq!(bob.run(&["whoami", "--json"]).ok().json()["user"], "bob");
}
