//! The web dashboard in headless Chromium, against the real control plane and real agents.

use std::path::PathBuf;

use openbox_e2e::{Agent, Browser, Cli, ControlPlane, free_port, http_raw, wait_until};
use serde_json::json;

/// The session cookie the browser holds (`openbox_session`, or over HTTPS
/// `__Host-openbox_session`).
fn session_cookie(b: &mut Browser) -> serde_json::Value {
    let cookies = b.cookies();
    assert_eq!(cookies.len(), 1, "one cookie: {cookies:?}");
    assert!(cookies[0]["name"].as_str().unwrap().ends_with("openbox_session"), "{cookies:?}");
    cookies[0].clone()
}

/// The session secret the page keeps (from the login's answer).
fn session_secret(b: &mut Browser) -> String {
    let kept = b.eval("JSON.parse(localStorage.getItem('openbox.session')).secret");
    kept.as_str().expect("the page keeps a session secret").to_owned()
}

/// `fetch` options for a JSON request with `body` (JavaScript) and the session secret.
fn with_secret(method: &str, secret: &str, body: &str) -> String {
    format!(
        "{{method: {method:?}, headers: {{'Content-Type': 'application/json', 'X-Openbox-Session': {secret:?}}}, body: {body}}}"
    )
}

/// Two nodes that look like other machines (so a tag grant reaches them), and bob, granted
/// the first by its tag: (his node, the other, his login token).
fn bob_granted_one_of_two(cp: &ControlPlane) -> (Agent, Agent, String) {
    let admin = Cli::admin(cp);
    let theirs = Agent::enroll_elsewhere(cp, &admin, &["bobs"]);
    let other = Agent::enroll_elsewhere(cp, &admin, &["others"]);
    let token = admin.run(&["user", "add", "bob", "--json"]).ok().json()["token"].as_str().unwrap().to_owned();
    admin.run(&["user", "grant", "bob", "--tag", "bobs"]).ok();
    (theirs, other, token)
}

/// A control plane with one node tagged `web`, and the admin's browser on the console with
/// that node chosen.
fn console_on_a_node() -> (ControlPlane, Cli, Agent, Browser) {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["web"]);
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    open_console(&mut b, &cp, &agent.name);
    (cp, admin, agent, b)
}

/// The console page with `node` chosen, once the fleet has loaded.
fn open_console(b: &mut Browser, cp: &ControlPlane, node: &str) {
    b.goto(&format!("{}/#/console/{node}", cp.url));
    b.call("wait", json!({"selector": format!("#console-target option[value=\"node:{node}\"]"), "state": "attached"}));
}

/// `fetch` in the page, answering `[status, body text]`.
fn fetch(b: &mut Browser, path: &str, init: &str) -> (u64, String) {
    let js = format!("fetch({path:?}, {init}).then(async r => [r.status, await r.text()])");
    let v = b.eval(&js);
    (v[0].as_u64().expect("a status"), v[1].as_str().unwrap_or_default().to_owned())
}

#[test]
fn logging_in_and_out_sets_and_clears_a_strict_http_only_cookie() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut b = Browser::start();
    b.goto(&cp.url);
    b.fill("#token", "obx_not-a-real-token");
    b.click("form button[type=submit]");
    b.wait_text("form .error", "not valid");
    assert!(b.cookies().is_empty(), "no cookie for a bad token");

    b.log_in(&cp.url, &cp.admin_token);
    assert!(b.text("#top").contains("admin (admin)"));
    let cookie = session_cookie(&mut b);
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    assert_eq!(cookie["secure"], false, "plain http on loopback");
    let lifetime = cookie["expires"].as_f64().unwrap() - proto::time::now() as f64;
    assert!((11.0 * 3600.0..=12.0 * 3600.0 + 5.0).contains(&lifetime), "expires in 12 hours: {lifetime}");
    assert_eq!(b.eval("document.cookie"), "", "the page's scripts cannot read it");
    let value = cookie["value"].as_str().unwrap().to_owned();
    let secret = session_secret(&mut b);
    let both = [format!("Cookie: openbox_session={value}"), format!("X-Openbox-Session: {secret}")];
    let live = http_raw(&cp.addr, "GET", "/web/session", &both, "");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(!live.contains(&secret), "the secret is never given again: {live}");

    b.click("#logout");
    b.wait("#token");
    assert!(b.cookies().is_empty(), "logging out clears the cookie");
    assert!(b.eval("localStorage.getItem('openbox.session')").is_null(), "and the page forgets the secret");
    let after = http_raw(&cp.addr, "GET", "/web/session", &both, "");
    assert!(after.starts_with("HTTP/1.1 401"), "the old cookie no longer works: {after}");
    let audit = admin.run(&["audit", "--json"]).ok().json();
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "web.login" && e["user"] == "admin"), "{audit}");
}

#[test]
fn over_https_the_session_cookie_is_secure() {
    let cp = ControlPlane::start_with(&["--tls"]);
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    let cookie = session_cookie(&mut b);
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["name"], "__Host-openbox_session", "held to this host, every path, HTTPS only");
    assert_eq!(cookie["path"], "/");
}

/// The review's theft: browsers send a cookie for 127.0.0.1 to every port, so a listener of
/// any local user that the admin's browser visits has it. With it alone nothing is read,
/// nothing changes, and nothing hands out the session's secret.
#[test]
fn a_stolen_session_cookie_alone_reads_and_changes_nothing() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    let cookie = session_cookie(&mut b)["value"].as_str().unwrap().to_owned();
    let stolen = [format!("Cookie: openbox_session={cookie}")];
    for (method, path, body) in [
        ("GET", "/web/session", ""),
        ("GET", "/v1/nodes", ""),
        ("GET", "/v1/audit", ""),
        ("GET", "/v1/events", ""),
        ("POST", "/v1/users", r#"{"name":"mallory"}"#),
        ("POST", "/v1/users/admin/tokens", "{}"),
        ("POST", "/v1/users/mallory/grants", r#"{"on":{"tag":"t"},"isolation":[]}"#),
        ("POST", "/v1/enroll-tokens", r#"{"tags":[],"ttl_secs":60}"#),
    ] {
        let resp = http_raw(&cp.addr, method, path, &stolen, body);
        assert!(resp.starts_with("HTTP/1.1 401"), "{method} {path} with the cookie alone: {resp}");
        assert!(resp.contains("session secret"), "{resp}");
    }
    // The page itself, sending the cookie but not the secret, is refused the same way.
    let add = |name: &str| format!("JSON.stringify({{name: {name:?}}})");
    let (status, body) = fetch(
        &mut b,
        "/v1/users",
        &format!("{{method: 'POST', headers: {{'Content-Type': 'application/json'}}, body: {}}}", add("mallory")),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(fetch(&mut b, "/v1/nodes", "{}").0, 401);
    // With the secret the page keeps, it works.
    let secret = session_secret(&mut b);
    assert_eq!(fetch(&mut b, "/v1/users", &with_secret("POST", &secret, &add("carol"))).0, 200);
    assert_eq!(fetch(&mut b, "/v1/nodes", &with_secret("GET", &secret, "undefined")).0, 200);

    // The cookie and the secret, but sent from another site's page: refused too.
    let headers = [
        format!("Cookie: openbox_session={cookie}"),
        format!("X-Openbox-Session: {secret}"),
        "Origin: http://elsewhere.example".to_owned(),
    ];
    let resp = http_raw(&cp.addr, "POST", "/v1/users", &headers, r#"{"name":"trudy"}"#);
    assert!(resp.starts_with("HTTP/1.1 403") && resp.contains("another site"), "{resp}");
    let users = admin.run(&["user", "ls"]).ok().stdout;
    assert!(users.contains("carol") && !users.contains("mallory") && !users.contains("trudy"), "{users}");
}

#[test]
fn the_fleet_follows_nodes_going_offline_and_arriving_without_a_reload() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut first = Agent::enroll(&cp, &admin, &["web"]);
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    let row = format!("#nodes tr[data-name={:?}]", first.name);
    b.wait_text(&row, "online");
    b.wait_text("#counts", "1 online");
    b.eval("window.stillThisPage = true");

    first.kill();
    b.wait_text(&row, "offline");
    b.wait_text("#counts", "0 online · 1 offline");
    let second = Agent::enroll_with(&cp, &admin.enroll_token(&["other"]), &["--name", "second"]);
    b.wait_text("#nodes tr[data-name=\"second\"]", "online");
    assert_eq!(b.eval("window.stillThisPage"), true, "no reload");

    // Filter by tag and search by name.
    b.select("#tag-filter", "other");
    assert_eq!(b.count("#nodes tbody tr"), 1);
    assert_eq!(b.text("#nodes tbody tr td").trim(), second.name);
    b.select("#tag-filter", "");
    b.fill("#search", &first.name);
    assert_eq!(b.count("#nodes tbody tr"), 1);
    b.fill("#search", "no-such-node");
    b.wait_text(".empty", "No node matches");
}

#[test]
fn the_drawer_renames_tags_and_removes_a_node_as_the_cli_sees_it() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["web"]);
    admin.run(&["-n", &agent.name, "true"]).ok();
    wait_until("the node to report what it ran", || {
        admin.run(&["audit", "--json"]).ok().json().as_array().unwrap().iter().any(|e| e["action"] == "exec")
    });
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    b.click(&format!("#nodes tr[data-name={:?}]", agent.name));
    b.wait_text("#drawer h2", &agent.name);
    b.wait_text("#drawer .ran", "admin");
    let ran = b.text("#drawer .ran");
    assert!(ran.contains(&format!("sha256:{}", &trust::token::hash("true")[..12])) && ran.contains("exit 0"), "{ran}");

    b.fill("#rename", "renamed");
    b.click("#drawer form:has(#rename) button");
    wait_until("the new name in `openbox nodes`", || admin.node(&agent.node_id).unwrap()["name"] == "renamed");
    b.wait_text("#drawer h2", "renamed");
    b.fill("#add-tag", "gpu");
    b.press("#add-tag", "Enter");
    wait_until("the tag in `openbox nodes`", || {
        admin.node(&agent.node_id).unwrap()["tags"].as_array().unwrap().iter().any(|t| t == "gpu")
    });
    b.click("#drawer button[aria-label=\"Remove tag web\"]");
    wait_until("the tag gone from `openbox nodes`", || {
        !admin.node(&agent.node_id).unwrap()["tags"].as_array().unwrap().iter().any(|t| t == "web")
    });

    b.click("#remove-node");
    b.click("dialog button[value=ok]");
    wait_until("the node gone from `openbox nodes`", || admin.node(&agent.node_id).is_none());
    b.wait_gone(&format!("#nodes tr[data-id={:?}]", agent.node_id));
}

#[test]
fn a_node_added_in_the_browser_enrolls_with_the_command_shown_and_appears_live() {
    let cp = ControlPlane::start();
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    b.goto(&format!("{}/#/add-node", cp.url));
    b.fill("#enroll-tags", "fresh, linux");
    b.click("form button[type=submit]");
    let command = b.wait_text("#enroll-result pre", "openbox agent");
    assert!(
        command.contains(&format!("--server {}", cp.url)) && command.contains("--tag fresh --tag linux"),
        "{command}"
    );
    let token = command.split_whitespace().find_map(|w| w.strip_prefix("OPENBOX_ENROLL_TOKEN=")).expect("a token");
    let agent = Agent::enroll_with(&cp, token, &["--tag", "fresh"]);
    let done = b.wait_text("#enroll-wait", "enrolled");
    assert!(done.contains(&agent.name), "{done}");
    b.goto(&format!("{}/#/tokens", cp.url));
    b.wait_text("#tokens", "No enrollment tokens outstanding");
}

#[test]
fn the_console_streams_output_shows_the_exit_code_and_stops_a_command() {
    let (_cp, admin, agent, mut b) = console_on_a_node();
    b.fill("#console-command", "echo hi; echo oops >&2; exit 3");
    b.click("#console-run");
    b.wait_text("#console-exit", "exit 3");
    let output = b.text("#console-output");
    assert!(output.contains("hi\n") && output.contains("oops"), "{output}");
    assert_eq!(b.text("#console-output .stderr"), "oops\n", "stderr is marked");
    let audit = admin.run(&["audit", "--json"]).ok().json();
    let entry = audit.as_array().unwrap().iter().find(|e| e["detail"] == "web console").cloned();
    let entry = entry.unwrap_or_else(|| panic!("a web console dispatch in {audit}"));
    assert_eq!((entry["action"].as_str(), entry["user"].as_str()), (Some("dispatch"), Some("admin")));
    assert_eq!(entry["node_id"], agent.node_id.as_str());

    // In a session: the directory is kept from one command to the next, as with `-s`.
    b.fill("#console-session", "web");
    b.fill("#console-command", "cd /tmp");
    b.click("#console-run");
    b.wait_text("#console-exit", "exit 0");
    b.fill("#console-command", "pwd");
    b.click("#console-run");
    b.wait_text("#console-output", "/tmp");
    assert_eq!(admin.run(&["-n", &agent.name, "-s", "web", "pwd"]).ok().stdout, "/tmp\n");
    b.fill("#console-session", "");

    // Stop: the browser drops the call, and the node ends the command.
    b.fill("#console-command", "echo started; sleep 4711; echo never");
    b.click("#console-run");
    b.wait_text("#console-output", "started");
    b.click("#console-stop");
    b.wait_text("#console-exit", "stopped");
    wait_until("the command ended on the node", || {
        std::process::Command::new("pgrep").args(["-f", "sleep 4711"]).status().is_ok_and(|s| !s.success())
    });
    assert!(!b.text("#console-output").contains("never"));
}

#[test]
fn a_user_who_is_not_an_admin_sees_and_does_only_what_the_policy_lets_them() {
    let cp = ControlPlane::start();
    let (theirs, other, token) = bob_granted_one_of_two(&cp);
    let mut b = Browser::start();
    b.log_in(&cp.url, &token);
    b.wait_text(&format!("#nodes tr[data-name={:?}]", theirs.name), "online");
    assert_eq!(b.count("#nodes tbody tr"), 1, "only the granted node");
    assert_eq!(b.count("nav a[href=\"#/users\"]"), 0);
    assert_eq!(b.count("nav a[href=\"#/add-node\"]"), 0);
    b.goto(&format!("{}/#/users", cp.url));
    b.wait_text("main h1", "Admins only");

    let secret = session_secret(&mut b);
    assert_eq!(fetch(&mut b, "/v1/users", &with_secret("GET", &secret, "undefined")).0, 403);
    let mint = with_secret("POST", &secret, "JSON.stringify({tags: [], ttl_secs: 60})");
    assert_eq!(fetch(&mut b, "/v1/enroll-tokens", &mint).0, 403);
    let run_there =
        with_secret("POST", &secret, &format!("JSON.stringify({{target: {{node: {:?}}}, command: 'id'}})", other.name));
    let (status, body) = fetch(&mut b, "/v1/console", &run_there);
    assert_eq!(status, 403, "{body}");
}

#[test]
fn openbox_dashboard_prints_a_link_that_logs_in_once() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let text = admin.run(&["dashboard", "--no-open"]).ok().stdout;
    assert!(text.contains("Open the dashboard") && text.contains(&format!("{}/web/link/", cp.url)), "{text}");
    let url = admin.run(&["dashboard", "--no-open", "--json"]).ok().json()["url"].as_str().unwrap().to_owned();
    let mut b = Browser::start();
    b.goto(&url);
    b.wait("#counts");
    assert!(b.text("#top").contains("admin (admin)"));
    b.fresh(1280, 800, false);
    b.goto(&url);
    b.wait_text("main", "used already or has expired");
    assert!(b.cookies().is_empty());
}

/// Login CSRF: a link someone else sent must not quietly swap the session the browser
/// holds for theirs.
#[test]
fn a_link_followed_while_someone_is_logged_in_asks_before_it_switches() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let bob = admin.add_user(&cp, "bob");
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    let link = || bob.run(&["dashboard", "--no-open", "--json"]).ok().json()["url"].as_str().unwrap().to_owned();

    b.goto(&link());
    b.wait_text("dialog", "You are logged in as admin");
    b.click("dialog button[value=cancel]");
    b.wait("#counts");
    assert!(b.text("#top").contains("admin (admin)"), "still the admin");

    b.goto(&link());
    b.wait_text("dialog", "You are logged in as admin");
    b.click("dialog button[value=ok]");
    b.wait_text("#top", "bob");
    assert!(!b.text("#top").contains("(admin)"), "{}", b.text("#top"));
}

#[test]
fn the_pages_come_from_the_control_plane_alone_work_by_keyboard_and_fit_a_phone() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["web", "linux"]);
    let _second = Agent::enroll(&cp, &admin, &["web"]);
    admin.run(&["-n", &agent.name, "-s", "build", "true"]).ok();
    // Screenshots for the docs when asked (scripts/screenshots), else to a temporary place.
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("OPENBOX_SCREENSHOTS").map_or_else(|| tmp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = Browser::start();
    for (width, height, dark, suffix) in [(1280, 800, false, ""), (390, 844, true, "-phone-dark")] {
        b.fresh(width, height, dark);
        b.log_in(&cp.url, &cp.admin_token);
        b.wait_text(&format!("#nodes tr[data-name={:?}]", agent.name), "online");
        for page in ["fleet", "sessions", "console", "add-node", "users", "tokens"] {
            b.goto(&format!("{}/#/{page}", cp.url));
            b.wait("main h1");
            if page == "sessions" {
                b.wait("#sessions tr[data-id=build]");
            }
            if page == "console" {
                b.fill("#console-command", "echo hello from the console; uname -sm; ls /nonexistent");
                b.click("#console-run");
                b.wait_text("#console-exit", "exit 2");
            }
            let fits = b.eval("document.documentElement.scrollWidth <= window.innerWidth");
            assert_eq!(fits, true, "{page} fits {width} px");
            let shot = dir.join(format!("{page}{suffix}.png"));
            b.screenshot(&shot);
            assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
            if page == "console" {
                b.click("#console-terminal");
                b.wait_text("#console-status", "Terminal open");
                type_line(&mut b, "echo $TERM; ls --color=always /");
                b.wait_text("#terminal .xterm-rows", "xterm-256color");
                let fits = b.eval("document.documentElement.scrollWidth <= window.innerWidth");
                assert_eq!(fits, true, "the terminal fits {width} px");
                b.screenshot(&dir.join(format!("terminal{suffix}.png")));
                b.click("#console-stop");
                b.wait_text("#terminal-exit", "terminal closed");
            }
        }
        b.goto(&format!("{}/#/fleet/{}", cp.url, agent.node_id));
        b.wait_text("#drawer h2", &agent.name);
        b.screenshot(&dir.join(format!("drawer{suffix}.png")));
        let outside: Vec<String> = b.requests().into_iter().filter(|u| !u.starts_with(&cp.url)).collect();
        assert!(outside.is_empty(), "requests beyond the control plane: {outside:?}");
    }

    // By keyboard: a row opens its drawer with Enter, Escape closes it.
    b.fresh(1280, 800, false);
    b.log_in(&cp.url, &cp.admin_token);
    let row = format!("#nodes tr[data-name={:?}]", agent.name);
    b.wait(&row);
    b.call("press", json!({"selector": row, "key": "Enter"}));
    b.wait_text("#drawer h2", &agent.name);
    assert_eq!(b.call("focused", json!({})), "drawer", "the drawer takes the focus");
    b.call("press", json!({"selector": "#drawer", "key": "Escape"}));
    b.call("wait", json!({"selector": "#drawer", "state": "hidden"}));
}

#[test]
fn the_dashboard_of_openbox_up_is_one_printed_url_away_and_says_when_it_is_cut_off() {
    let me = Cli::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = me.run(&["up", "--addr", &addr]).ok();
    assert!(out.stdout.contains(&format!("dashboard      http://{addr}/")), "{out:?}");
    assert_eq!(me.run(&["up", "--addr", &addr, "--json"]).ok().json()["dashboard"], format!("http://{addr}/"));
    let link = me.run(&["dashboard", "--no-open", "--json"]).ok().json()["url"].as_str().unwrap().to_owned();
    let mut b = Browser::start();
    b.goto(&link);
    b.wait_text("#nodes tbody tr", "local");

    // The control plane goes away: the page says so, and comes back with it.
    me.run(&["down"]).ok();
    b.wait_text("#banner", "Control plane unreachable — retrying");
    me.run(&["up", "--addr", &addr]).ok();
    b.call("wait", json!({"selector": "#banner", "state": "hidden"}));
    b.wait_text("#nodes tbody tr", "online");
    me.run(&["down"]).ok();
}

#[test]
fn sessions_are_listed_and_ended_from_the_browser() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["web"]);
    admin.run(&["-n", &agent.name, "-s", "build", "cd /tmp"]).ok();
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    b.goto(&format!("{}/#/sessions", cp.url));
    let row = b.wait_text("#sessions tr[data-id=build]", &agent.name);
    assert!(row.contains("native") && row.contains("active"), "{row}");
    b.click("#sessions tr[data-id=build] button");
    b.click("dialog button[value=ok]");
    b.wait_text("#sessions", "No sessions");
    assert_eq!(admin.run(&["sessions", "--json"]).ok().json(), json!([]));
}

#[test]
fn users_grants_and_tokens_are_managed_from_the_browser() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let ci = Agent::enroll_elsewhere(&cp, &admin, &["ci"]);
    let mut b = Browser::start();
    b.log_in(&cp.url, &cp.admin_token);
    b.goto(&format!("{}/#/users", cp.url));
    b.fill("#new-user", "dave");
    b.click("form:has(#new-user) button");
    let command = b.wait_text("#user-added pre", "openbox login");
    let dave = Cli::new();
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    assert!(dave.run(&words).ok().stdout.contains("as dave"), "the command shown logs dave in");
    dave.run(&["-t", "ci", "true"]).fails_with(255, "grant");

    let user_row = "#users tr[data-user=dave]";
    b.wait(user_row);
    b.fill(&format!("{user_row} form.grant input"), "ci");
    b.click(&format!("{user_row} form.grant button"));
    b.wait_text(user_row, "tag:ci");
    dave.run(&["-t", "ci", "true"]).ok();
    assert!(admin.run(&["user", "ls"]).ok().stdout.contains("tag:ci"));
    b.click(&format!("{user_row} button[aria-label=\"Revoke tag:ci\"]"));
    b.wait_text(user_row, "nothing yet");
    dave.run(&["-t", "ci", "true"]).fails_with(255, "grant");
    b.click(&format!("{user_row} button.danger"));
    b.click("dialog button[value=ok]");
    b.wait_gone(user_row);
    dave.run(&["whoami"]).fails_with(1, "invalid or was revoked");
    drop(ci);

    // An outstanding enrollment token is listed, and withdrawn it enrolls nothing.
    let token = admin.enroll_token(&["later"]);
    b.goto(&format!("{}/#/tokens", cp.url));
    b.wait_text("#tokens", "later");
    assert_eq!(b.count("#tokens tbody tr"), 1);
    b.click("#tokens button[aria-label^=\"Withdraw token\"]");
    b.wait_text("#tokens", "No enrollment tokens outstanding");
    Agent::run_to_end(&["--server", &cp.url, "--token", &token]).fails_with(1, "enrollment failed");
}

/// The size the page's terminal has, as `stty size` prints it (rows, then columns).
fn terminal_size(b: &mut Browser) -> String {
    let size =
        b.eval("[document.querySelector('#terminal').dataset.rows, document.querySelector('#terminal').dataset.cols]");
    format!("{} {}", size[0].as_str().unwrap(), size[1].as_str().unwrap())
}

/// Sends a WebSocket handshake; answers the response's head and body so far (a refusal's
/// whole text; an accepted socket is left once its head is read).
fn handshake(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the control plane");
    s.write_all(request.as_bytes()).expect("write request");
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = s.read(&mut buf).expect("read response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(head) = text.find("\r\n\r\n") else {
            assert!(n > 0, "the connection closed before the response's head: {text}");
            continue;
        };
        let length = text[..head].lines().find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        });
        if n == 0 || text.starts_with("HTTP/1.1 101") || length.is_some_and(|len| got.len() >= head + 4 + len) {
            return text;
        }
    }
}

/// Whether a process with this command line runs on this machine (where the nodes are).
fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep").args(["-f", pattern]).status().is_ok_and(|s| s.success())
}

/// Types a line into the page's terminal.
fn type_line(b: &mut Browser, line: &str) {
    let input = "#terminal .xterm-helper-textarea";
    b.call("type", json!({"selector": input, "text": line}));
    b.press(input, "Enter");
}

#[test]
fn the_console_opens_a_terminal_on_the_node_that_follows_the_window_and_stops() {
    let (cp, admin, _agent, mut b) = console_on_a_node();
    b.click("#console-terminal");
    b.wait_text("#console-status", "Terminal open");
    // The shell is a login shell in a terminal of the page's size.
    let size = terminal_size(&mut b);
    type_line(&mut b, "echo web-$((40+2)) $(stty size) $TERM $(tty)");
    b.wait_text("#terminal .xterm-rows", &format!("web-42 {size} xterm-256color /dev/pts/"));

    // A narrower window: the terminal fits it again, and the node hears of it.
    b.call("viewport", json!({"width": 640, "height": 700}));
    b.call("waitFor", json!({"js": format!("document.querySelector('#terminal').dataset.cols !== {:?}", size.split(' ').nth(1).unwrap())}));
    let narrower = terminal_size(&mut b);
    type_line(&mut b, "clear; echo now $(stty size)");
    b.wait_text("#terminal .xterm-rows", &format!("now {narrower}"));
    let fits = b.eval("document.documentElement.scrollWidth <= window.innerWidth");
    assert_eq!(fits, true, "the terminal fits 640 px");

    type_line(&mut b, "exit 7");
    b.wait_text("#terminal-exit", "exit 7");
    let audit = admin.run(&["audit", "--json"]).ok().json();
    assert!(audit.as_array().unwrap().iter().any(|e| e["detail"] == "web terminal"), "{audit}");

    // Stop closes the terminal, and the node ends what ran in it.
    b.click("#console-terminal");
    b.wait_text("#console-status", "Terminal open");
    type_line(&mut b, "sleep 4713");
    wait_until("sleep 4713 runs on the node", || pgrep("sleep 4713"));
    b.click("#console-stop");
    b.wait_text("#terminal-exit", "terminal closed");
    wait_until("sleep 4713 ends", || !pgrep("sleep 4713"));

    // So does leaving the page.
    b.click("#console-terminal");
    b.wait_text("#console-status", "Terminal open");
    type_line(&mut b, "sleep 4714");
    wait_until("sleep 4714 runs on the node", || pgrep("sleep 4714"));
    b.goto(&format!("{}/#/fleet", cp.url));
    wait_until("sleep 4714 ends", || !pgrep("sleep 4714"));
}

#[test]
fn a_terminal_opens_only_from_the_dashboard_and_only_where_the_policy_allows() {
    let cp = ControlPlane::start();
    let (theirs, other, token) = bob_granted_one_of_two(&cp);
    let mut b = Browser::start();
    b.log_in(&cp.url, &token);

    // Elsewhere than the grant: the socket says no, and the page shows it.
    b.goto(&format!("{}/#/console/{}", cp.url, other.name));
    b.call("waitFor", json!({"js": "document.querySelector('#console-target').options.length > 0"}));
    b.eval(&format!("(() => {{ const s = document.querySelector('#console-target'); s.append(new Option('x', 'node:{}')); s.value = 'node:{}'; }})()", other.name, other.name));
    b.click("#console-terminal");
    b.wait_text("#console-status", "no node \"bob\" may use matches");

    // The handshake itself: the page's session secret and this site's Origin, or no socket.
    let cookie = session_cookie(&mut b)["value"].as_str().unwrap().to_owned();
    let secret = session_secret(&mut b);
    let upgrade = |origin: Option<&str>, secret: &str| {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /v1/console/terminal?target=node:{}&cols=80&rows=24&secret={secret} HTTP/1.1\r\nHost: {}\r\n\
             Cookie: openbox_session={cookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n",
            theirs.name, cp.addr
        );
        handshake(&cp.addr, &request)
    };
    let resp = upgrade(Some(&cp.url), &secret);
    assert!(resp.starts_with("HTTP/1.1 101"), "the page's own socket opens: {resp}");
    let resp = upgrade(None, &secret);
    assert!(resp.starts_with("HTTP/1.1 403") && resp.contains("dashboard"), "{resp}");
    let resp = upgrade(Some("http://elsewhere.example"), &secret);
    assert!(resp.starts_with("HTTP/1.1 403") && resp.contains("another site"), "{resp}");
    let resp = upgrade(Some(&cp.url), "forged");
    assert!(resp.starts_with("HTTP/1.1 401") && resp.contains("session secret"), "{resp}");
}
