//! HTTPS to the control plane: its own certificate made at first start (or the admin's),
//! clients that pin its key and check it before sending or saving anything, and plain
//! http only where nothing crosses a network.

use openbox_e2e::{Agent, Cli, ControlPlane, flag_value, wait_until};

/// `openbox ARGS` for a CLI with this environment (the first call starts its openboxd,
/// which keeps it).
fn run_with_env(cli: &Cli, env: &[(&str, &str)], args: &[&str]) -> openbox_e2e::Out {
    openbox_e2e::Out::from(cli.cmd().envs(env.iter().copied()).args(args).output().expect("run openbox"))
}

/// A fingerprint of the right form that is not the control plane's: its first base64
/// character changed (the last one also carries padding bits, which must stay zero).
fn other_fingerprint(right: &str) -> String {
    let b64 = right.strip_prefix("SHA256:").expect("SHA256:");
    let flipped = if b64.starts_with('A') { 'B' } else { 'A' };
    format!("SHA256:{flipped}{}", &b64[1..])
}

#[test]
fn a_control_plane_over_https_is_reached_only_with_its_pinned_key() {
    let mut cp = ControlPlane::start_with(&["--tls"]);
    assert!(cp.url.starts_with("https://127.0.0.1:"), "{}", cp.url);
    let fp = cp.fingerprint.clone().expect("the login command pins the key");

    // A wrong pin: refused before the token is sent, and nothing saved.
    let wrong = other_fingerprint(&fp);
    let stranger = Cli::new();
    let out = stranger.run(&["login", "--server", &cp.url, "--token", &cp.admin_token, "--fingerprint", &wrong]);
    let out = out.fails_with(1, "is not the one this machine trusts");
    assert!(out.stderr.contains(&format!("its certificate's key is {fp}, not the pinned {wrong}")), "{out:?}");
    stranger.run(&["whoami"]).fails_with(1, "not logged in");
    // No pin: its own certificate is signed by no authority this machine trusts.
    stranger.run(&["login", "--server", &cp.url, "--token", &cp.admin_token]).fails_with(1, "--fingerprint");
    // Plain http to an https port says what it is.
    let plain = format!("http://{}", cp.addr);
    stranger.run(&["login", "--server", &plain, "--token", &cp.admin_token]).fails_with(1, "use its https:// URL");
    stranger.run(&["whoami"]).fails_with(1, "not logged in");

    // The right pin: the admin logs in, and every command it prints carries the pin.
    let admin = Cli::admin(&cp);
    let added = admin.run(&["user", "add", "bob", "--json"]).ok().json();
    let command = added["command"].as_str().expect("a login command");
    assert_eq!(flag_value(command, "--fingerprint").as_deref(), Some(fp.as_str()), "{command}");
    let bob = Cli::with_env(&[("OPENBOX_LOGIN_TOKEN", added["token"].as_str().expect("a token"))]);
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    assert!(bob.run(&words).ok().stdout.contains("as bob"));
    let minted = admin.run(&["node", "token", "--tag", "tls", "--json"]).ok().json();
    let agent_command = minted["command"].as_str().expect("an agent command");
    assert_eq!(flag_value(agent_command, "--fingerprint").as_deref(), Some(fp.as_str()), "{agent_command}");

    // An agent with a wrong pin enrolls nowhere, and the token stays unused for the right one.
    let token = minted["token"].as_str().expect("token");
    let refused = Agent::run_to_end(&["--server", &cp.url, "--fingerprint", &wrong, "--token", token]);
    refused.fails_with(1, "not the one this machine trusts");
    let agent = Agent::enroll_with(&cp, token, &[]);
    let identity = std::fs::read_to_string(agent.identity_file()).expect("identity");
    assert!(identity.contains(&fp), "the agent keeps the pin: {identity}");
    let out = admin.run(&["-n", &agent.name, "echo", "over", "https"]).ok();
    assert_eq!(out.stdout, "over https\n");

    // A restart serves the same certificate: every pin holds.
    cp.restart();
    admin.run(&["daemon", "stop"]).ok();
    assert_eq!(admin.run(&["-n", &agent.name, "echo", "again"]).ok().stdout, "again\n");
    assert!(cp.wait_line("TLS certificate key").contains(&fp));
}

#[test]
fn a_fleet_moves_from_http_to_https_by_giving_its_nodes_and_users_the_new_url_and_pin() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["moving"]);
    cp.restart_with(&["--tls"]);
    let fp = cp.fingerprint.clone().expect("now over https");
    // The agent, given the new URL and pin, keeps its identity and heartbeats there.
    agent.restart_with(&["--server", &cp.url, "--fingerprint", &fp]);
    let identity = std::fs::read_to_string(agent.identity_file()).expect("identity");
    assert!(identity.contains(&cp.url) && identity.contains(&fp), "{identity}");
    let admin = Cli::logged_in(&cp, &cp.admin_token);
    assert_eq!(admin.run(&["-n", &agent.name, "echo", "moved"]).ok().stdout, "moved\n");
    // Restarted with no arguments, it reaches the control plane as it was told last.
    agent.restart();
    wait_until("the node back online over https", || admin.node(&agent.node_id).expect("enrolled")["online"] == true);
}

#[test]
fn plain_http_is_served_and_used_only_on_loopback_unless_asked() {
    // Listening beyond loopback, the control plane serves HTTPS by default...
    let cp = ControlPlane::start_with(&["--addr", "0.0.0.0:0"]);
    assert!(cp.url.starts_with("https://"), "{}", cp.url);
    let fp = cp.fingerprint.clone().expect("a pinned key");
    let port = cp.addr.rsplit_once(':').expect("a port").1;
    let url = format!("https://127.0.0.1:{port}");
    let admin = Cli::new();
    admin.run(&["login", "--server", &url, "--fingerprint", &fp, "--token", &cp.admin_token]).ok();
    // ...and plain HTTP only when told to.
    let insecure = ControlPlane::start_with(&["--addr", "0.0.0.0:0", "--insecure-http"]);
    assert!(insecure.url.starts_with("http://") && insecure.fingerprint.is_none(), "{}", insecure.url);
    // https:// to a plain-http port says what it is.
    let insecure_port = insecure.addr.rsplit_once(':').expect("a port").1;
    let mistaken = format!("https://127.0.0.1:{insecure_port}");
    let out = Cli::new()
        .run(&["login", "--server", &mistaken, "--token", &insecure.admin_token])
        .fails_with(1, "its answer is not TLS (received corrupt message");
    assert!(out.stderr.contains("if it serves plain HTTP, use its http:// URL"), "{out:?}");

    // Clients refuse plain http beyond loopback and the tailnet before dialling anything.
    let cli = Cli::new();
    let far = "http://192.0.2.1:7683";
    let out = cli.run(&["login", "--server", far, "--token", "obx_x"]).fails_with(1, "refusing plain http");
    assert!(out.stderr.contains("--insecure-http"), "{out:?}");
    Agent::run_to_end(&["--server", far, "--token", "enroll_x"]).fails_with(1, "refusing plain http");
    // A pin says https.
    let pinned_http = format!("http://127.0.0.1:{port}");
    cli.run(&["login", "--server", &pinned_http, "--fingerprint", &fp, "--token", "obx_x"])
        .fails_with(1, "pins an https:// control plane");
}

#[test]
fn an_admins_own_certificate_is_served_and_checked_against_the_trusted_authorities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test authority");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let (cert, key, authority) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&authority, ca.pem()).unwrap();

    let cp = ControlPlane::start_with(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(cp.url.starts_with("https://127.0.0.1:"), "{}", cp.url);
    let expected = tls::Fingerprint::of_certificate(leaf.der()).unwrap().to_string();
    assert_eq!(cp.fingerprint.as_deref(), Some(expected.as_str()), "the printed pin is of the given key");

    // Without a pin, a machine that trusts the authority logs in; one that does not, doesn't.
    let trusting = Cli::new();
    let env = [("SSL_CERT_FILE", authority.to_str().unwrap())];
    run_with_env(&trusting, &env, &["login", "--server", &cp.url, "--token", &cp.admin_token]).ok();
    assert!(trusting.run(&["whoami"]).ok().stdout.starts_with("admin"));
    let other = Cli::new();
    let out = other.run(&["login", "--server", &cp.url, "--token", &cp.admin_token]).fails_with(1, "--fingerprint");
    assert!(out.stderr.contains("not the one this machine trusts"), "{out:?}");
}
