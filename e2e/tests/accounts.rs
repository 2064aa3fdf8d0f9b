//! Users and tokens: login, whoami, logout, and admin-only user management.

use std::os::unix::fs::PermissionsExt;

use openbox_e2e::{Cli, ControlPlane, Link};

#[test]
fn login_creates_a_local_key_pair_and_whoami_reports_the_user() {
    let cp = ControlPlane::start();
    let admin = Cli::new();
    let out = admin.run(&["login", "--server", &cp.url, "--token", &cp.admin_token]).ok();
    assert!(out.stdout.contains("Logged in"), "{out:?}");
    let key = admin.home.path().join("id_ed25519");
    assert!(std::fs::read_to_string(&key).unwrap().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(key.with_extension("pub")).unwrap().starts_with("ssh-ed25519 "));
    let text = admin.run(&["whoami"]).ok();
    assert!(text.stdout.contains("admin") && text.stdout.contains(&cp.url), "{text:?}");
}

#[test]
fn logout_forgets_the_login_and_revokes_the_token() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let bob_token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let bob = Cli::logged_in(&cp, &bob_token);
    bob.run(&["logout"]).ok();
    bob.run(&["whoami"]).fails_with(1, "not logged in");
    // The same token no longer logs in anywhere.
    Cli::new().run(&["login", "--server", &cp.url, "--token", &bob_token]).fails_with(1, "invalid or was revoked");
}

#[test]
fn an_admin_adds_lists_and_removes_users() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let added = admin.run(&["user", "add", "dave"]).ok();
    assert!(added.stdout.contains("openbox login --server"), "user add prints the login command: {added:?}");
    assert!(added.stdout.contains("They can run nothing until you grant them nodes"), "{added:?}");
    let token = added.stdout.split_whitespace().find(|w| w.starts_with("obx_")).unwrap().to_owned();
    assert!(token.starts_with("obx_"));
    let dave = Cli::logged_in(&cp, &token);
    let names: Vec<String> = admin
        .run(&["user", "ls", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["admin", "dave"]);
    admin.run(&["user", "add", "dave"]).fails_with(1, "already exists");
    admin.run(&["user", "rm", "dave"]).ok();
    dave.run(&["whoami"]).fails_with(1, "invalid or was revoked");
    admin.run(&["user", "rm", "admin"]).fails_with(1, "last admin");
}

#[test]
fn an_admin_issues_a_new_token_to_a_user_who_logged_out() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let first = admin.run(&["user", "add", "fay", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let fay = Cli::logged_in(&cp, &first);
    fay.run(&["logout"]).ok();
    fay.run(&["login", "--server", &cp.url, "--token", &first]).fails_with(1, "openbox user token NAME");
    let out = admin.run(&["user", "token", "fay"]).ok();
    let second = out.stdout.split_whitespace().find(|w| w.starts_with("obx_")).expect("the token").to_owned();
    assert!(out.stdout.contains("openbox login --server"), "{out:?}");
    fay.run(&["login", "--server", &cp.url, "--token", &second]).ok();
    assert_eq!(fay.run(&["whoami", "--json"]).ok().json()["user"], "fay");
    admin.run(&["user", "token", "nobody"]).fails_with(1, "no user named");
    fay.run(&["user", "token", "fay"]).fails_with(1, "not an admin");
}

#[test]
fn people_who_are_not_admins_cannot_manage_users_or_nodes() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.run(&["user", "add", "erin", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    let erin = Cli::logged_in(&cp, &token);
    erin.run(&["user", "add", "mallory"]).fails_with(1, "not an admin");
    erin.run(&["user", "ls"]).fails_with(1, "not an admin");
    erin.run(&["node", "token"]).fails_with(1, "not an admin");
    erin.run(&["nodes"]).ok();
}

#[test]
fn bad_tokens_and_unreachable_control_planes_get_one_clear_line() {
    let cp = ControlPlane::start();
    let cli = Cli::new();
    cli.run(&["login", "--server", &cp.url, "--token", "obx_0000"]).fails_with(1, "invalid or was revoked");
    cli.run(&["login", "--server", &cp.url, "--token", "hello"]).fails_with(1, "not a login token");
    cli.run(&["login", "--server", "http://127.0.0.1:9", "--token", "obx_1"])
        .fails_with(1, "cannot reach the control plane");
    cli.run(&["whoami"]).fails_with(1, "not logged in");
    // The control plane still serves after the bad requests.
    Cli::admin(&cp).run(&["whoami"]).ok();
}

#[test]
fn a_login_token_comes_from_the_environment_and_without_one_the_cli_says_where_to_put_it() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let token = admin.new_user_token("uma");
    let uma = Cli::new();
    // Not on a terminal, and no token anywhere: refused, saying where it may come from.
    uma.run(&["login", "--server", &cp.url]).fails_with(2, "give --token-file FILE or OPENBOX_LOGIN_TOKEN");
    let out = uma.cmd().args(["login", "--server", &cp.url]).env("OPENBOX_LOGIN_TOKEN", &token).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(uma.run(&["whoami", "--json"]).ok().json()["user"], "uma");
}

#[test]
fn the_login_commands_printed_work_as_printed_with_http_https_and_insecure_http() {
    let link = Link::new("cp"); // an address beyond loopback that this test made
    let beyond = format!("{}:0", link.gateway());
    for (mode, args, flag) in [
        ("http on loopback", vec![], None),
        ("https", vec!["--tls"], Some("--fingerprint")),
        ("plain http beyond loopback", vec!["--insecure-http", "--addr", beyond.as_str()], Some("--insecure-http")),
    ] {
        let cp = ControlPlane::start_with(&args);
        if let Some(flag) = flag {
            assert!(cp.login_command.contains(flag), "{mode}: {}", cp.login_command);
        }
        // The control plane's first start: a token file and the command that reads it.
        let admin = Cli::new();
        let words: Vec<&str> = cp.login_command.split_whitespace().skip(1).collect();
        admin.run(&words).ok();
        assert_eq!(admin.run(&["whoami", "--json"]).ok().json()["user"], "admin", "{mode}");
        // `user add` prints the token apart from a command that takes it from the environment.
        let added = admin.run(&["user", "add", "bob", "--json"]).ok().json();
        let command = added["command"].as_str().expect("a login command");
        let token = added["token"].as_str().expect("a token");
        assert!(!command.contains(token) && !command.contains("--token"), "{mode}: {command}");
        let bob = Cli::with_env(&[("OPENBOX_LOGIN_TOKEN", token)]);
        let words: Vec<&str> = command.split_whitespace().skip(1).collect();
        bob.run(&words).ok();
        assert_eq!(bob.run(&["whoami", "--json"]).ok().json()["user"], "bob", "{mode}");
        let text = admin.run(&["user", "token", "bob"]).ok().stdout;
        assert!(!text.lines().any(|l| l.contains("openbox login") && l.contains("obx_")), "{mode}: {text}");
    }
}
