//! `openbox mcp`, driven by an independent client: the official MCP Python SDK over stdio
//! (`e2e/mcp/client.py`, installed by scripts/setup-test-env into `e2e/mcp/.venv`).

use openbox_e2e::{Agent, Cli, ControlPlane, bin, wait_until};

#[test]
fn the_python_sdk_runs_commands_sessions_and_background_jobs_through_openbox_mcp() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup-test-env", python.display());
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcp"]);
    let out = std::process::Command::new(&python)
        .arg(dir.join("client.py"))
        .args([bin("openbox").to_str().unwrap(), &agent.name, "mcp"])
        .env("OPENBOX_HOME", admin.home.path())
        .output()
        .expect("python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.ends_with("ok\n"), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "protocol 2026-07-28\nprotocol 2025-11-25\nok\n", "both revisions");

    // A client of an older revision still is answered in it.
    let mut server = mcp_server(&admin);
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"older","version":"1"}}}"#;
    use std::io::{BufRead as _, Write as _};
    writeln!(server.stdin.as_mut().unwrap(), "{init}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).expect("a JSON-RPC answer");
    assert_eq!(reply["result"]["protocolVersion"], "2025-06-18", "{reply}");
    assert_eq!(reply["result"]["serverInfo"]["name"], "openbox");
    let _ = server.kill();
    let _ = server.wait();
    // The command a stopped job ran is gone from the node.
    wait_until("the stopped job's command ended", || {
        std::process::Command::new("pgrep").args(["-f", "sleep 300"]).status().is_ok_and(|s| !s.success())
    });
}

/// Runs `script` (in e2e/mcp) with the Python SDK's interpreter: `openbox`, then `args`.
fn python_sdk(cli: &Cli, script: &str, args: &[&str]) -> (String, String) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup-test-env", python.display());
    let out = std::process::Command::new(&python)
        .arg(dir.join(script))
        .arg(bin("openbox"))
        .args(args)
        .env("OPENBOX_HOME", cli.home.path())
        .output()
        .expect("python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.ends_with("ok\n"), "stdout: {stdout}\nstderr: {stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

#[test]
fn the_python_sdk_reads_writes_edits_and_copies_files_with_strict_tools_and_progress() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcpfiles"]);
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("files");
    std::fs::create_dir_all(dir.join("sub/inner")).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    std::fs::write(top.path().join("png"), PNG).unwrap();
    python_sdk(&admin, "files.py", &[&agent.name, "mcpfiles", dir.to_str().unwrap()]);

    // What the tools wrote is on the node, exactly, with its mode.
    use std::os::unix::fs::PermissionsExt as _;
    let a = std::fs::read_to_string(dir.join("a.txt")).unwrap();
    assert_eq!(a, "one\nTWO\nthree ünï\nfour\nfive\n");
    assert_eq!(std::fs::metadata(dir.join("a.txt")).unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(dir.join("dot.png")).unwrap(), PNG);
    assert_eq!(std::fs::read_to_string(dir.join("b.txt")).unwrap(), "x = 2\nx = 2\n");
    // No temporary file is left beside the files replaced.
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".openbox-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The file tools are in the audit, as `openbox cp` is: the node's record of SFTP.
    let log = admin.run(&["audit", "--json", "--node", &agent.name]).ok().stdout;
    assert!(log.contains("sftp"), "{log}");
}

#[test]
fn a_job_started_over_mcp_outlives_the_server_and_openboxd_and_is_read_to_its_last_byte() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcpjobs"]);
    let marker = tempfile::tempdir().unwrap();
    let (started, _) = python_sdk(&admin, "jobs.py", &["start", &agent.name, marker.path().to_str().unwrap()]);
    let id = started.lines().next().unwrap().to_owned();
    // The MCP server is gone; now openboxd goes too, while the job runs on.
    let pid = admin.daemon_status()["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
    wait_until("openboxd to be gone", || !openbox_e2e::process_running(pid));
    wait_until("the job to finish on its node", || marker.path().join("done").exists());
    python_sdk(&admin, "jobs.py", &["finish", &id]);
}

/// A server process, stopped however the test ends.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openbox mcp --http 127.0.0.1:0`, and where it serves (from its first line on stderr).
fn mcp_over_http(cli: &Cli, token_file: &std::path::Path) -> (Served, String) {
    use std::io::BufRead as _;
    let mut server = cli
        .cmd()
        .args(["mcp", "--http", "127.0.0.1:0", "--token-file", token_file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openbox mcp --http");
    let mut first = String::new();
    std::io::BufReader::new(server.stderr.take().unwrap()).read_line(&mut first).unwrap();
    let served = Served(server);
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("{first}"));
    (served, url.to_owned())
}

/// Runs e2e/mcp/ts/client.mjs (the TypeScript SDK) against `url` with `token`.
fn typescript_sdk(url: &str, token: &str, node: &str) {
    let ts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/ts");
    assert!(ts.join("node_modules").exists(), "{} has no node_modules: run scripts/setup-test-env", ts.display());
    let out =
        std::process::Command::new("node").arg(ts.join("client.mjs")).args([url, token, node]).output().expect("node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.ends_with("ok\n"), "stdout: {stdout}\nstderr: {stderr}");
}

#[test]
fn the_python_and_typescript_sdks_use_openbox_mcp_over_streamable_http_with_a_bearer_token() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcphttp"]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (server, url) = mcp_over_http(&admin, &token_file);
    python_sdk(&admin, "over_http.py", &[&url, "s3cret-token", &agent.name]);

    typescript_sdk(&url, "s3cret-token", &agent.name);
    drop(server);

    // Beyond loopback it is refused; a named token file must be there.
    let far = admin.run(&["mcp", "--http", "0.0.0.0:0"]);
    assert_eq!(far.code, 1, "{far:?}");
    assert!(far.stderr.contains("loopback only"), "{far:?}");
    let missing = admin.run(&["mcp", "--http", "127.0.0.1:0", "--token-file", "/nonexistent/token"]);
    assert!(missing.code == 1 && missing.stderr.contains("/nonexistent/token"), "{missing:?}");
    admin.run(&["mcp", "--token-file", "x"]).fails_with(2, "--token-file goes with --http");
}

#[test]
fn the_python_sdk_reads_and_writes_files_inside_a_sessions_container() {
    let f = openbox_e2e::IsolatedFleet::nspawn(&[]);
    let isolation = format!("nspawn:{}", f.e.tree);
    python_sdk(&f.cli, "files.py", &[&f.agent.name, "t", "/obx-mcp-files", "box", &isolation]);
    assert!(!std::path::Path::new("/obx-mcp-files").exists(), "the files went into the container, not the host");
}

/// A 1×1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xff, 0xff, 0x3f, 0x00, 0x05, 0xfe, 0x02, 0xfe, 0xa7, 0xd6, 0xa4, 0xa8,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

#[test]
fn openbox_mcp_answers_version_and_refuses_arguments_it_does_not_take() {
    let cli = Cli::new();
    let out = cli.run(&["mcp", "--version"]).ok();
    assert_eq!(out.stdout, format!("openbox mcp {}\n", proto::VERSION));
    let out = cli.run(&["mcp", "--stdio"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unexpected argument '--stdio'"), "{out:?}");
    cli.run(&["mcp", "--hosted"]).fails_with(2, "--hosted goes with --http ADDR");
}

#[test]
fn openbox_mcp_starts_openboxd_again_when_it_was_killed_under_it() {
    use std::io::{BufRead as _, Write as _};
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcp"]);
    let mut server = mcp_server(&admin);
    let mut input = server.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut ask = |id: u64, method: &str, params: serde_json::Value| -> serde_json::Value {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(input, "{msg}").unwrap();
        if method == "initialize" {
            writeln!(input, r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#).unwrap();
        }
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).expect("a JSON-RPC answer")
    };
    let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    ask(1, "initialize", init);
    let run = |word: &str| serde_json::json!({"name": "run", "arguments": {"node": agent.name, "command": format!("echo {word}")}});
    let first = ask(2, "tools/call", run("first"));
    assert_eq!(first["result"]["structuredContent"]["stdout"], "first\n", "{first}");

    let pid = admin.daemon_status()["pid"].as_i64().unwrap() as i32;
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL).unwrap();
    wait_until("openboxd to be gone", || !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists());

    let second = ask(3, "tools/call", run("second"));
    assert_eq!(second["result"]["structuredContent"]["stdout"], "second\n", "{second}");
    assert_ne!(admin.daemon_status()["pid"].as_i64().unwrap() as i32, pid, "a new openboxd");
    drop(input);
    let _ = server.wait();
}

/// `openbox mcp` for `cli`, its stdin and stdout piped.
fn mcp_server(cli: &Cli) -> std::process::Child {
    cli.cmd()
        .arg("mcp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openbox mcp")
}

#[test]
fn the_control_plane_serves_mcp_to_each_user_as_themselves_over_streamable_http() {
    let mut cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["hosted"]);
    let url = format!("{}/mcp", cp.url);
    // The admin, with their login token as the bearer token: the Python and TypeScript SDKs.
    python_sdk(&admin, "over_http.py", &[&url, &cp.admin_token, &agent.name]);
    typescript_sdk(&url, &cp.admin_token, &agent.name);

    // Bob, not an admin: his grants hold, and he runs as himself.
    let bob = admin.new_user_token("bob");
    python_sdk(&admin, "hosted.py", &[&url, &bob, &agent.name, "ungranted"]);
    admin.run(&["user", "grant", "bob", "--node", &agent.name]).ok();
    python_sdk(&admin, "hosted.py", &[&url, &bob, &agent.name, "granted"]);

    // The audit log has what his MCP server did as his, marked `mcp`; the CLI's is not.
    admin.run(&["-n", &agent.name, "true"]).ok();
    let log = admin.run(&["audit", "--json"]).ok().json();
    let entries = log.as_array().unwrap();
    let of = |user: &str, action: &str| -> Vec<&serde_json::Value> {
        entries.iter().filter(|e| e["user"] == user && e["action"] == action).collect()
    };
    assert!(!of("bob", "dispatch").is_empty() && of("bob", "dispatch").iter().all(|e| e["detail"] == "mcp"), "{log}");
    assert_eq!(of("bob", "mcp.start").len(), 1, "one server for bob: {log}");
    let admins = of("admin", "dispatch");
    assert!(admins.iter().any(|e| e["detail"] == "mcp") && admins.iter().any(|e| e["detail"].is_null()), "{log}");

    // The servers and their openboxds stop with the control plane.
    let sockets = openboxd_sockets(cp.home.path());
    assert_eq!(sockets.len(), 2, "an openboxd for each user: {sockets:?}");
    cp.stop();
    wait_until("the MCP servers' openboxds to stop", || {
        sockets.iter().all(|s| std::os::unix::net::UnixStream::connect(s).is_err())
    });
}

/// Every openboxd socket under `dir`.
fn openboxd_sockets(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (path, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_dir() {
                todo.push(path);
            } else if path.file_name().is_some_and(|n| n == "openboxd.sock") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn the_python_sdk_drives_an_interactive_program_in_a_terminal_job_by_its_screen_and_keys() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let agent = Agent::enroll(&cp, &admin, &["mcptty"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typed.txt");
    python_sdk(&admin, "terminal.py", &[&agent.name, file.to_str().unwrap()]);
}
