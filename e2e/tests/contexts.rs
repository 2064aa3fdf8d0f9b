//! Contexts: one CLI logged in to several control planes side by side, each context with
//! its own login, key pair and openboxd; chosen by --context, OPENBOX_CONTEXT, or
//! `openbox context use`.

use openbox_e2e::{Agent, Cli, ControlPlane, Out, wait_until};

/// One CLI and two fleets: the default context logged in to the first (its node `alpha`),
/// context `second` to the other (its node `beta`).
struct TwoFleets {
    cli: Cli,
    first: ControlPlane,
    second: ControlPlane,
    _alpha: Agent,
    _beta: Agent,
}

fn two_fleets() -> TwoFleets {
    let first = ControlPlane::start();
    let second = ControlPlane::start();
    let cli = Cli::admin(&first);
    let alpha = Agent::enroll_with(&first, &cli.enroll_token(&["t"]), &["--name", "alpha"]);
    cli.run(&["login", "--context", "second", "--server", &second.url, "--token", &second.admin_token]).ok();
    let token = cli.run(&["--context", "second", "node", "token", "--tag", "t", "--json"]).ok().json()["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let beta = Agent::enroll_with(&second, &token, &["--name", "beta"]);
    TwoFleets { cli, first, second, _alpha: alpha, _beta: beta }
}

/// The names in a `nodes --json` listing.
fn names(out: Out) -> Vec<String> {
    let nodes = out.ok().json();
    nodes.as_array().expect("a list").iter().map(|n| n["name"].as_str().expect("a name").to_owned()).collect()
}

/// `openbox ARGS` with OPENBOX_CONTEXT set.
fn with_env(cli: &Cli, context: &str, args: &[&str]) -> Out {
    Out::from(cli.cmd().env("OPENBOX_CONTEXT", context).args(args).output().expect("run openbox"))
}

/// The current context per `context ls --json`, and every context's name.
fn listed(cli: &Cli) -> (Vec<String>, Vec<String>) {
    let list = cli.run(&["context", "ls", "--json"]).ok().json();
    let list = list.as_array().expect("a list").clone();
    let name = |c: &serde_json::Value| c["name"].as_str().expect("a name").to_owned();
    (list.iter().filter(|c| c["current"] == true).map(name).collect(), list.iter().map(name).collect())
}

#[test]
fn a_login_in_a_context_leaves_the_default_login_where_and_as_it_was() {
    let first = ControlPlane::start();
    let second = ControlPlane::start();
    let cli = Cli::admin(&first);
    let home = cli.home.path();
    let (login, key) =
        (std::fs::read(home.join("login.json")).unwrap(), std::fs::read(home.join("id_ed25519")).unwrap());

    let out = cli.run(&["login", "--context", "second", "--server", &second.url, "--token", &second.admin_token]).ok();
    assert!(out.stdout.contains("in context second") && out.stdout.contains("openbox context use second"), "{out:?}");
    assert_eq!(std::fs::read(home.join("login.json")).unwrap(), login, "the default login is untouched");
    assert_eq!(std::fs::read(home.join("id_ed25519")).unwrap(), key);
    let theirs = home.join("contexts/second");
    assert!(std::fs::read_to_string(theirs.join("login.json")).unwrap().contains(&second.url));
    assert_ne!(std::fs::read(theirs.join("id_ed25519")).unwrap(), key, "each context has its own key pair");

    let me = cli.run(&["whoami", "--json"]).ok().json();
    assert_eq!((me["server"].as_str(), me["context"].as_str()), (Some(first.url.as_str()), Some("default")));
    let them = cli.run(&["--context", "second", "whoami", "--json"]).ok().json();
    assert_eq!((them["server"].as_str(), them["context"].as_str()), (Some(second.url.as_str()), Some("second")));
    assert!(cli.run(&["--context", "second", "whoami"]).ok().stdout.contains("(context second)"));

    // Each context has its own openboxd, on its own socket.
    let ours = cli.daemon_status();
    let theirs = cli.run(&["--context", "second", "daemon", "status", "--json"]).ok().json();
    assert_eq!(ours["socket"].as_str().map(std::path::PathBuf::from), Some(home.join("run/openboxd.sock")));
    let socket = theirs["socket"].as_str().map(std::path::PathBuf::from);
    assert_eq!(socket, Some(home.join("run/contexts/second/openboxd.sock")));
    assert_eq!((ours["context"].as_str(), theirs["context"].as_str()), (Some("default"), Some("second")));
    assert_ne!(ours["pid"], theirs["pid"]);
    assert!(cli.run(&["--context", "second", "daemon", "status"]).ok().stdout.contains("context     second"));
}

#[test]
fn the_context_flag_and_openbox_context_pick_the_fleet_and_the_flag_wins() {
    let f = two_fleets();
    assert_eq!(names(f.cli.run(&["nodes", "--json"])), ["alpha"]);
    assert_eq!(names(f.cli.run(&["--context", "second", "nodes", "--json"])), ["beta"]);
    assert_eq!(names(f.cli.run(&["nodes", "--json", "--context", "second"])), ["beta"], "anywhere on the line");
    assert_eq!(names(f.cli.run(&["--context=second", "nodes", "--json"])), ["beta"]);
    assert_eq!(names(with_env(&f.cli, "second", &["nodes", "--json"])), ["beta"]);
    assert_eq!(names(with_env(&f.cli, "second", &["--context", "default", "nodes", "--json"])), ["alpha"]);
}

#[test]
fn context_use_switches_later_calls_and_ls_marks_it_current() {
    let f = two_fleets();
    assert_eq!(listed(&f.cli), (vec!["default".to_owned()], vec!["default".to_owned(), "second".to_owned()]));
    assert!(f.cli.run(&["context", "ls"]).ok().stdout.contains("default *"));

    assert_eq!(f.cli.run(&["context", "use", "second", "--json"]).ok().json()["current"], "second");
    assert_eq!(names(f.cli.run(&["nodes", "--json"])), ["beta"]);
    assert_eq!(listed(&f.cli).0, ["second"]);
    let ls = f.cli.run(&["context", "ls"]).ok().stdout;
    let row = ls.lines().find(|l| l.starts_with("second")).expect("a row for second");
    assert!(row.starts_with("second *") && row.contains(&f.second.url), "{ls}");
    assert_eq!(f.cli.run(&["context", "show"]).ok().stdout, "second\n");
    // What a call says beats what `context use` chose.
    assert_eq!(names(with_env(&f.cli, "default", &["nodes", "--json"])), ["alpha"]);
    assert_eq!(names(f.cli.run(&["--context", "default", "nodes", "--json"])), ["alpha"]);

    f.cli.run(&["context", "use", "default"]).ok();
    assert_eq!(names(f.cli.run(&["nodes", "--json"])), ["alpha"]);
    assert_eq!(listed(&f.cli).0, ["default"]);
    assert!(!f.cli.home.path().join("current-context").exists(), "the default is the absence of a choice");
    assert!(f.cli.run(&["whoami"]).ok().stdout.contains(&f.first.url));
}

#[test]
fn commands_run_on_each_contexts_own_nodes() {
    let f = two_fleets();
    assert_eq!(f.cli.run(&["-n", "alpha", "echo", "one"]).ok().stdout, "one\n");
    assert_eq!(f.cli.run(&["--context", "second", "-n", "beta", "echo", "two"]).ok().stdout, "two\n");
    assert_eq!(with_env(&f.cli, "second", &["-t", "t", "echo", "three"]).ok().stdout, "three\n");
    f.cli.run(&["context", "use", "second"]).ok();
    assert_eq!(f.cli.run(&["-n", "beta", "echo", "four"]).ok().stdout, "four\n");
    // Neither fleet knows the other's node.
    assert_eq!(f.cli.run(&["-n", "alpha", "true"]).code, 255);
    assert_eq!(f.cli.run(&["--context", "default", "-n", "beta", "true"]).code, 255);
}

#[test]
fn an_unknown_context_is_an_error_that_lists_the_contexts() {
    let f = two_fleets();
    let out = f.cli.run(&["--context", "nope", "nodes"]).fails_with(2, r#"no context "nope" (named by --context)"#);
    assert!(out.stderr.contains("the contexts are default, second"), "{out:?}");
    with_env(&f.cli, "nope", &["nodes"]).fails_with(2, "(named by OPENBOX_CONTEXT); the contexts are default, second");
    with_env(&f.cli, "nope", &["-t", "t", "true"]).fails_with(2, "no context \"nope\"");
    f.cli.run(&["context", "use", "nope"]).fails_with(1, "the contexts are default, second");
    f.cli.run(&["context", "rm", "nope"]).fails_with(1, "the contexts are default, second");
    f.cli.run(&["--context", "No/pe", "nodes"]).fails_with(2, "is not a context name");
    with_env(&f.cli, "No/pe", &["nodes"]).fails_with(2, "is not a context name");
    assert!(!f.cli.home.path().join("contexts/nope").exists(), "asking made nothing");
}

#[test]
fn a_failed_first_login_leaves_no_context_behind() {
    let cp = ControlPlane::start();
    let cli = Cli::new();
    cli.run(&["login", "--context", "typo", "--server", &cp.url, "--token", "obx_wrong"]).fails_with(1, "login failed");
    assert_eq!(listed(&cli).1, ["default"]);
    for dir in ["contexts", "run/contexts", "logs/contexts"] {
        assert!(!cli.home.path().join(dir).exists(), "{dir} was left behind");
    }
    cli.run(&["login", "--context", "typo", "--server", &cp.url, "--token", &cp.admin_token]).ok();
    assert_eq!(listed(&cli).1, ["default", "typo"]);
}

#[test]
fn context_rm_refuses_the_current_one_and_removes_another_with_its_daemon() {
    let f = two_fleets();
    f.cli.run(&["context", "rm", "default"]).fails_with(1, "the default context cannot be removed");
    f.cli.run(&["context", "use", "second"]).ok();
    f.cli.run(&["context", "rm", "second"]).fails_with(1, "context use default");
    with_env(&f.cli, "second", &["--context", "default", "context", "rm", "second"])
        .fails_with(1, "it is the current context");
    assert_eq!(names(f.cli.run(&["nodes", "--json"])), ["beta"], "still there");

    f.cli.run(&["context", "use", "default"]).ok();
    with_env(&f.cli, "second", &["context", "rm", "second"]).fails_with(1, "OPENBOX_CONTEXT names it");
    let pid = f.cli.run(&["--context", "second", "daemon", "status", "--json"]).ok().json()["pid"].as_i64().unwrap();
    let removed = f.cli.run(&["context", "rm", "second", "--json"]).ok().json();
    assert_eq!((removed["removed"].as_str(), removed["daemon_stopped"].as_bool()), (Some("second"), Some(true)));
    wait_until("second's openboxd to exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    });
    for dir in ["contexts", "run/contexts", "logs/contexts"] {
        assert!(!f.cli.home.path().join(dir).exists(), "{dir} is left: the last context takes its directory along");
    }
    assert_eq!(listed(&f.cli).1, ["default"]);
    f.cli.run(&["--context", "second", "nodes"]).fails_with(2, "no context \"second\"");
    assert_eq!(names(f.cli.run(&["nodes", "--json"])), ["alpha"], "the default is untouched");
}
