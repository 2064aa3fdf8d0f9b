//! The middle of the data path in one process, without any binary: a control plane and an
//! agent served here on 127.0.0.1:0, and openboxd's socket (`rpc::serve`) in front of
//! them, spoken to request by request as a script speaks to it.

use std::sync::Arc;
use std::time::Duration;

use openboxd::Daemon;
use openboxd::io::{CallInput, CallIo, CallOutput};
use proto::api::Target;
use proto::request::{Call, Request, RunRequest};
use proto::rpc::{self, RunParams, StdioMode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// A control plane, an agent tagged `t` enrolled with it, and openboxd logged in as the
/// admin, serving its socket; all in this process, under `home`.
struct Fleet {
    socket: std::path::PathBuf,
    _home: tempfile::TempDir,
}

async fn fleet() -> Fleet {
    let home = tempfile::TempDir::new_in(std::env::var_os("OPENBOX_HOME").expect("run by in_own_process")).unwrap();

    let store =
        openbox_control::Store::open(&openbox_control::store::Database::Sqlite(home.path().join("db"))).await.unwrap();
    let admin = openbox_control::bootstrap_admin(&store, "admin").await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = openbox_control::Config {
        public_url: url.clone(),
        fingerprint: None,
        offline_after_secs: 30,
        user_cert_ttl_secs: 300,
        audit_retention_secs: 3600,
        audit_commands: false,
        metrics_token: None,
        mesh_api_key: None,
        mcp_dir: None,
    };
    let app = openbox_control::App::new(config, store, trust::Ca::generate()).await;
    tokio::spawn(openbox_control::serve(listener, app, None, std::future::pending()));

    let endpoint = net::control::Endpoint::new(&url);
    let client = net::control::Client::new(&endpoint, Some(admin.clone())).unwrap();
    let enroll = proto::api::NewEnrollToken { tags: vec!["t".into()], ttl_secs: 600 };
    let token = client.call::<proto::routes::NewEnrollToken>(&[], &enroll).await.unwrap().token;
    let agent = openbox_agent::Config {
        dir: home.path().join("agent"),
        server: Some(endpoint),
        token: Some(token),
        listen: Some("127.0.0.1:0".into()),
        mesh: None,
        advertise: None,
        tags: Vec::new(),
        name: Some("inproc".into()),
        heartbeat_every: Duration::from_secs(1),
        session_idle: Duration::from_secs(600),
        run_as: openbox_agent::run_as::RunAs::default(),
        policy: openbox_agent::confine::Policy::default(),
        keepalive: net::ssh::Keepalive::from_env(),
    };
    // The agent's own runtime, on a thread of its own (its future stays on one thread).
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _ = rt.block_on(openbox_agent::run(agent, std::future::pending()));
    });
    for _ in 0..300 {
        let nodes = client.call::<proto::routes::ListNodes>(&[], &Default::default()).await.unwrap();
        if nodes.iter().any(|n| n.online) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // openboxd: logged in as the admin, its socket served.
    let d = Daemon::new(false, None);
    let null = || std::fs::File::create("/dev/null").unwrap().into();
    let io = CallIo {
        input: CallInput::Empty,
        terminal: None,
        output: CallOutput::fds(null(), null()),
        halts: net::halt::Halts::none(),
    };
    let login =
        Request::Login { server: url, token: admin.expose().to_owned(), fingerprint: None, insecure_http: false };
    assert_eq!(openboxd::handle(&d, Call { request: login, json: false, verbosity: 0 }, io).await, 0, "logged in");
    let socket = home.path().join("openboxd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(openboxd::serve(listener, Arc::clone(&d), std::future::pending()));
    Fleet { socket, _home: home }
}

/// One connection to openboxd: `hello`, then one request; every line it answers, until the
/// answer to the request.
async fn ask(socket: &std::path::Path, method: &str, params: Value) -> (Vec<Value>, Value) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let hello =
        json!({"jsonrpc": "2.0", "id": 0, "method": "hello", "params": {"protocol": rpc::PROTOCOL, "client": "test"}});
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    write.write_all(format!("{hello}\n{request}\n").as_bytes()).await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut notes = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
        let message: Value = serde_json::from_str(&line).unwrap();
        match message["id"].as_i64() {
            Some(1) => return (notes, message),
            Some(0) => assert!(message["error"].is_null(), "{message}"),
            _ => notes.push(message),
        }
    }
}

/// Runs `body` in a child process of this test binary whose `OPENBOX_HOME` is a fresh
/// directory (where openboxd keeps its login and key): set before that process starts, as
/// the environment of a running one is not to be changed.
fn in_own_process(test: &str, body: impl FnOnce()) {
    const CHILD: &str = "OPENBOX_IN_PROCESS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return body();
    }
    let home = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(CHILD, "1")
        .env("OPENBOX_HOME", home.path())
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed in its own process");
}

#[test]
fn a_run_over_the_socket_reaches_the_agent_and_its_output_comes_back_in_frames() {
    in_own_process("a_run_over_the_socket_reaches_the_agent_and_its_output_comes_back_in_frames", || {
        tokio::runtime::Runtime::new().unwrap().block_on(run_over_the_socket());
    });
}

async fn run_over_the_socket() {
    let fleet = fleet().await;

    let (_, nodes) = ask(&fleet.socket, rpc::method::NODES, json!({})).await;
    let listed = nodes["result"].as_array().unwrap();
    assert!(listed.iter().any(|n| n["name"] == "inproc" && n["online"] == true), "{nodes}");

    let run = RunRequest {
        target: Target::Tag("t".into()),
        session: None,
        isolation: proto::Isolation::Native,
        command: vec!["echo out; echo err >&2; exit 3".into()],
        timeout_secs: None,
        max_output: None,
        tty: None,
        forwards: Vec::new(),
    };
    let params = RunParams { run, stdio: StdioMode::Frames, stdin: false };
    let (frames, answer) = ask(&fleet.socket, rpc::method::RUN, serde_json::to_value(&params).unwrap()).await;
    assert_eq!(answer["result"]["exit_code"], 3, "{answer}");
    let stream = |name: &str| -> String {
        use base64::Engine as _;
        frames
            .iter()
            .filter(|f| f["method"] == rpc::method::OUTPUT && f["params"]["stream"] == name)
            .map(|f| base64::engine::general_purpose::STANDARD.decode(f["params"]["data"].as_str().unwrap()).unwrap())
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    };
    assert_eq!((stream("stdout"), stream("stderr")), ("out\n".to_owned(), "err\n".to_owned()));

    // A request openboxd cannot read is refused, and the socket serves on.
    let (_, refused) = ask(&fleet.socket, rpc::method::SESSION_END, json!({"id": 7})).await;
    assert_eq!(refused["error"]["code"], rpc::code::INVALID_PARAMS, "{refused}");
    let (_, status) = ask(&fleet.socket, rpc::method::STATUS, json!({})).await;
    assert_eq!(status["result"]["logged_in"], true, "{status}");
}
