//! openboxd's socket, from an async client: one connection per call (so that dropping a
//! call's connection is how a command is stopped), `hello` first, then one request.

use std::time::Duration;

use base64::Engine as _;
use proto::request::RunRequest;
use proto::rpc::{Hello, Output, Request, RpcError, RunParams, RunResult, Stdin, StdioMode, Truncated};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// Makes sure this process's context's openboxd runs (the `openbox` CLI starts it when it
/// does not; it is told which context, since left to itself it takes the one `openbox
/// context use` chose). A bad OPENBOX_CONTEXT stops the server here.
pub async fn ensure_running() -> Result<(), String> {
    let context = paths::Context::from_env()?;
    if UnixStream::connect(context.daemon_socket()).await.is_ok() {
        return Ok(());
    }
    let status = tokio::process::Command::new(paths::sibling_binary("openbox"))
        .args(["daemon", "status"])
        .env(paths::CONTEXT_ENV, context.name())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| format!("cannot start openboxd: {e}"))?;
    if status.success() { Ok(()) } else { Err("openboxd did not start; run `openbox daemon status`".into()) }
}

/// Stops this context's openboxd (`openbox daemon stop`), as a server that started it for
/// itself alone does when it ends.
pub async fn stop() {
    let Ok(context) = paths::Context::from_env() else { return };
    let _ = tokio::process::Command::new(paths::sibling_binary("openbox"))
        .args(["daemon", "stop"])
        .env(paths::CONTEXT_ENV, context.name())
        .stdout(std::process::Stdio::null())
        .status()
        .await;
}

struct Conn {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

async fn open(method: &str, params: impl serde::Serialize) -> Result<Conn, String> {
    let stream = match UnixStream::connect(paths::daemon_socket()).await {
        Ok(stream) => stream,
        // openboxd went away since this server started (killed, upgraded): start it again,
        // as the next `openbox` call would.
        Err(_) => {
            ensure_running().await?;
            UnixStream::connect(paths::daemon_socket()).await.map_err(|e| format!("cannot reach openboxd: {e}"))?
        }
    };
    let (read, mut write) = stream.into_split();
    let hello = Hello {
        protocol: proto::rpc::PROTOCOL,
        client: format!("openbox mcp {}", proto::VERSION),
        release: Some(proto::VERSION.to_owned()),
    };
    let request = |id: u64, method: &str, params: Value| Request {
        jsonrpc: "2.0".into(),
        id: Some(id.into()),
        method: method.to_owned(),
        params,
    };
    let hello = request(0, proto::rpc::method::HELLO, to_value(&hello));
    let call = request(1, method, to_value(&params));
    let text = format!("{}\n{}\n", to_value(&hello), to_value(&call));
    write.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
    Ok(Conn { lines: BufReader::new(read).lines(), write })
}

/// `value` as JSON (what is sent here always serializes).
fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("serializable")
}

/// A message from openboxd: an answer (with an id) or a notification (with a method).
#[derive(serde::Deserialize)]
struct Message {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

impl Conn {
    /// The next message, or why there is none.
    async fn next(&mut self) -> Result<Message, String> {
        match self.lines.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line).map_err(|e| format!("unreadable answer from openboxd: {e}")),
            Ok(None) => Err("openboxd closed the connection".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The answer to request 1 (the `hello` answer is checked on the way); notifications
    /// go to `on_note` as (method, params).
    async fn answer(&mut self, mut on_note: impl FnMut(&str, Value)) -> Result<Value, String> {
        loop {
            let msg = self.next().await?;
            match msg.id.as_ref().and_then(Value::as_i64) {
                Some(0 | 1) if msg.error.is_some() => return Err(msg.error.map(|e| e.message).unwrap_or_default()),
                Some(0) => {}
                Some(1) => return Ok(msg.result.unwrap_or(Value::Null)),
                _ => {
                    if let Some(method) = &msg.method {
                        on_note(method, msg.params);
                    }
                }
            }
        }
    }
}

impl Conn {
    /// The answer to request 1, the call's `output` notifications passed to `sink` on the way.
    async fn answer_with_output(&mut self, sink: &mut impl Sink) -> Result<Value, String> {
        self.answer(|method, params| {
            if method != proto::rpc::method::OUTPUT {
                return;
            }
            let Ok(out) = serde_json::from_value::<Output>(params) else { return };
            if let Ok(data) = base64::engine::general_purpose::STANDARD.decode(&out.data) {
                sink.output(out.stream == "stderr", &data);
            }
        })
        .await
    }
}

/// A request that answers at once (`nodes`, `sessions`, …).
pub async fn call(method: &str, params: impl serde::Serialize) -> Result<Value, String> {
    let mut conn = open(method, params).await?;
    let answer = tokio::time::timeout(Duration::from_secs(60), conn.answer(|_, _| {})).await;
    drop(conn.write);
    answer.map_err(|_| "openboxd did not answer within 60s".to_owned())?
}

/// Where a running command's output goes, as it arrives.
pub trait Sink: Send {
    fn output(&mut self, stderr: bool, bytes: &[u8]);
}

/// Runs `req` through openboxd, passing output to `sink` as it arrives.
pub async fn run(req: &RunRequest, sink: &mut impl Sink) -> Result<(u8, Option<String>, Truncated), String> {
    let params = RunParams { run: req.clone(), stdio: StdioMode::Frames, stdin: false };
    let mut conn = open(proto::rpc::method::RUN, params).await?;
    let result = conn.answer_with_output(sink).await?;
    let r: RunResult = serde_json::from_value(result).map_err(|e| format!("unreadable run result: {e}"))?;
    Ok((r.exit_code, r.signal, r.truncated))
}

/// A `file` or `copy` request: `data` (a write's bytes) goes as `stdin` notifications;
/// the answer comes with what the call sent as output (a read's bytes).
pub async fn transfer(
    method: &str,
    params: impl serde::Serialize,
    data: Option<&[u8]>,
) -> Result<(Value, Vec<u8>), String> {
    let mut conn = open(method, params).await?;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // Pieces well under the socket's 1 MiB line, base64 included.
    for piece in data.unwrap_or_default().chunks(256 << 10) {
        let note = Request::new(
            None,
            proto::rpc::method::STDIN,
            to_value(&Stdin { id: 1.into(), data: Some(encode(piece)), eof: false }),
        );
        // openboxd stops reading a write it refused: its answer says why.
        if conn.write.write_all(format!("{}\n", to_value(&note)).as_bytes()).await.is_err() {
            break;
        }
    }
    let eof = Request::new(None, proto::rpc::method::STDIN, to_value(&Stdin { id: 1.into(), data: None, eof: true }));
    let _ = conn.write.write_all(format!("{}\n", to_value(&eof)).as_bytes()).await;
    let mut out = Collected::default();
    let answer = conn.answer_with_output(&mut out).await?;
    Ok((answer, out.stdout))
}

/// Output collected whole.
#[derive(Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Sink for Collected {
    fn output(&mut self, stderr: bool, bytes: &[u8]) {
        if stderr { self.stderr.extend_from_slice(bytes) } else { self.stdout.extend_from_slice(bytes) }
    }
}

/// The nodes carrying every one of `tags`, by name, with whether each is online.
pub async fn nodes_with(tags: &[String]) -> Result<Vec<(String, bool)>, String> {
    let nodes = call(proto::rpc::method::NODES, proto::rpc::NodesParams::default()).await?;
    let nodes: Vec<proto::api::Node> =
        serde_json::from_value(nodes).map_err(|e| format!("unreadable node list from openboxd: {e}"))?;
    let mut found: Vec<(String, bool)> =
        nodes.into_iter().filter(|n| tags.iter().all(|t| n.tags.contains(t))).map(|n| (n.name, n.online)).collect();
    found.sort();
    Ok(found)
}
