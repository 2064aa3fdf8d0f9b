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
    let mut server = admin
        .cmd()
        .arg("mcp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openbox mcp");
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

#[test]
fn openbox_mcp_answers_version_and_refuses_arguments_it_does_not_take() {
    let cli = Cli::new();
    let out = cli.run(&["mcp", "--version"]).ok();
    assert_eq!(out.stdout, format!("openbox mcp {}\n", proto::VERSION));
    let out = cli.run(&["mcp", "--stdio"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unexpected argument '--stdio'"), "{out:?}");
}
