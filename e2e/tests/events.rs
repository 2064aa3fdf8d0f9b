//! Fleet events over openboxd's socket (`subscribe`): what scripts see when nodes come and
//! go and sessions end, and the Python example in docs/rpc.md that prints them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

use openbox_e2e::{Agent, Cli, ControlPlane, READY_TIMEOUT};

/// Lines as they arrive from a reader, each on a channel.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line for which `pick` gives a value, skipping others; panics after the
/// readiness timeout, naming `what`.
#[track_caller]
fn next<T>(lines: &Receiver<String>, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|e| panic!("no line with {what}: {e}"));
        if let Some(v) = pick(&line) {
            return v;
        }
    }
}

/// A raw subscriber on the socket: the `subscribe` answer, then its events as JSON.
struct Subscriber {
    _conn: UnixStream,
    lines: Receiver<String>,
    now: serde_json::Value,
}

impl Subscriber {
    fn start(cli: &Cli) -> Subscriber {
        let socket = cli.daemon_status()["socket"].as_str().expect("socket").to_owned();
        let mut conn = UnixStream::connect(socket).expect("connect to openboxd");
        conn.write_all(
            format!(
                "{}\n{}\n",
                serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": proto::rpc::PROTOCOL, "client": "events-test"}}),
                r#"{"jsonrpc":"2.0","id":"sub","method":"subscribe"}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let lines = lines_of(conn.try_clone().unwrap());
        let now = next(&lines, "the subscribe answer", |l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["id"] == "sub").then(|| v["result"].clone())
        });
        Subscriber { _conn: conn, lines, now }
    }

    /// The next event of `kind` (others are skipped).
    #[track_caller]
    fn event(&self, kind: &str) -> serde_json::Value {
        next(&self.lines, kind, |l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["method"], "event", "only events follow the answer: {v}");
            assert_eq!(v["params"]["id"], "sub", "{v}");
            (v["params"]["type"] == kind).then(|| v["params"].clone())
        })
    }
}

/// Waits until openboxd's mirror has heard from the control plane, so a subscription
/// starts from the current fleet.
fn mirror_live(cli: &Cli, nodes: usize) {
    openbox_e2e::wait_until("the registry mirror", || {
        let s = cli.daemon_status();
        s["registry_live"] == true && s["nodes"] == nodes
    });
}

#[test]
fn a_subscriber_sees_nodes_change_and_sessions_end() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut a = Agent::enroll(&cp, &admin, &["t"]);
    mirror_live(&admin, 1);
    let sub = Subscriber::start(&admin);
    assert_eq!(sub.now["live"], true);
    assert_eq!(sub.now["nodes"][0]["id"], a.node_id.as_str(), "the answer holds the fleet now: {}", sub.now);

    admin.run(&["node", "tag", &a.node_id, "+gpu"]).ok();
    let e = sub.event("node_tags_changed");
    assert_eq!(e["previous_tags"], serde_json::json!(["t"]));
    assert_eq!(e["node"]["tags"], serde_json::json!(["t", "gpu"]));

    let b = Agent::enroll(&cp, &admin, &["t"]);
    assert_eq!(sub.event("node_joined")["node"]["id"], b.node_id.as_str());

    // A session whose shell exits, and one that is removed.
    admin.run(&["-n", &a.node_id, "-s", "quits", "true"]).ok();
    admin.run(&["-n", &a.node_id, "-s", "removed", "true"]).ok();
    admin.run(&["-n", &a.node_id, "-s", "quits", "exit 7"]);
    let e = sub.event("session_ended");
    assert_eq!((e["session"]["id"].as_str(), e["session"]["state"].as_str()), (Some("quits"), Some("exited")));
    admin.run(&["session", "rm", "removed"]).ok();
    let e = sub.event("session_ended");
    assert_eq!(e["session"]["id"], "removed");

    a.stop();
    assert_eq!(sub.event("node_offline")["node"]["id"], a.node_id.as_str());
    admin.run(&["node", "rm", &b.node_id]).ok();
    assert_eq!(sub.event("node_left")["node"]["id"], b.node_id.as_str());
}

#[test]
fn a_subscriber_sees_only_the_nodes_it_may_use() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let bob = admin.add_user(&cp, "bob");
    let a = Agent::enroll(&cp, &admin, &["mine"]);
    mirror_live(&bob, 0);
    let sub = Subscriber::start(&bob);
    assert_eq!(sub.now["nodes"], serde_json::json!([]));
    let _other = Agent::enroll(&cp, &admin, &["theirs"]);
    // By name: these agents share the control plane's machine and user.
    admin.run(&["user", "grant", "bob", "--node", &a.name]).ok();
    // The first event bob sees is the node granted to him, not the one enrolled before it.
    let e = sub.event("node_joined");
    assert_eq!(e["node"]["tags"], serde_json::json!(["mine"]));
}

#[test]
fn not_logged_in_subscribe_says_what_to_do() {
    let cli = Cli::new();
    let socket = cli.daemon_status()["socket"].as_str().expect("socket").to_owned();
    let mut conn = UnixStream::connect(socket).unwrap();
    let hello =
        serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": proto::rpc::PROTOCOL}});
    conn.write_all(format!("{hello}\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"subscribe\"}}\n").as_bytes()).unwrap();
    let lines = lines_of(conn.try_clone().unwrap());
    let err = next(&lines, "the answer", |l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        (v["id"] == 1).then(|| v["error"].clone())
    });
    assert_eq!(err["code"], -32001);
    assert!(err["message"].as_str().unwrap().contains("openbox login"), "{err}");
}

/// The block after "Saved as `openbox_events.py`" in docs/rpc.md.
fn events_example() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rpc.md");
    let text = std::fs::read_to_string(path).unwrap();
    let after = &text[text.find("Saved as `openbox_events.py`").expect("the example")..];
    let start = after.find("```python\n").expect("its code") + "```python\n".len();
    after[start..start + after[start..].find("```").unwrap()].to_owned()
}

struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_python_example_in_the_rpc_docs_sees_an_agent_go_offline() {
    let cp = ControlPlane::start();
    let admin = Cli::admin(&cp);
    let mut agent = Agent::enroll(&cp, &admin, &["t"]);
    mirror_live(&admin, 1);
    let script = admin.home.path().join("openbox_events.py");
    std::fs::write(&script, events_example()).unwrap();
    let mut child = Script(
        Command::new("python3")
            .arg(&script)
            .env("OPENBOX_HOME", admin.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3"),
    );
    let lines = lines_of(child.0.stdout.take().unwrap());
    assert_eq!(next(&lines, "its first line", |l| Some(l.to_owned())), "watching 1 nodes");
    let name = admin.node(&agent.node_id).expect("listed")["name"].as_str().unwrap().to_owned();
    agent.stop();
    assert_eq!(next(&lines, "the agent going offline", |l| Some(l.to_owned())), format!("node_offline {name}"));
}
