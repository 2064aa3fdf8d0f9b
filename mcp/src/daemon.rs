//! openboxd's socket, from an async client: one connection per call (so that dropping a
//! call's connection is how a command is stopped), `hello` first, then one request.

use std::time::Duration;

use base64::Engine as _;
use proto::request::RunRequest;
use proto::rpc::{RunResult, Truncated};
use serde_json::{Value, json};
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

struct Conn {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

async fn open(method: &str, params: Value) -> Result<Conn, String> {
    let stream =
        UnixStream::connect(paths::daemon_socket()).await.map_err(|e| format!("cannot reach openboxd: {e}"))?;
    let (read, mut write) = stream.into_split();
    let hello = json!({"jsonrpc": "2.0", "id": 0, "method": "hello",
        "params": {"protocol": proto::rpc::PROTOCOL, "client": "openbox mcp"}});
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    write.write_all(format!("{hello}\n{request}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    Ok(Conn { lines: BufReader::new(read).lines(), write })
}

impl Conn {
    /// The next message, or why there is none.
    async fn next(&mut self) -> Result<Value, String> {
        match self.lines.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line).map_err(|e| format!("unreadable answer from openboxd: {e}")),
            Ok(None) => Err("openboxd closed the connection".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The answer to request 1 (the `hello` answer is checked on the way).
    async fn answer(&mut self, mut on_note: impl FnMut(&Value)) -> Result<Value, String> {
        loop {
            let msg = self.next().await?;
            match msg.get("id").and_then(Value::as_i64) {
                Some(0) => {
                    if let Some(err) = msg.get("error") {
                        return Err(err["message"].as_str().unwrap_or("openboxd refused the connection").to_owned());
                    }
                }
                Some(1) => {
                    if let Some(err) = msg.get("error") {
                        return Err(err["message"].as_str().unwrap_or("openboxd failed").to_owned());
                    }
                    return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
                }
                _ => on_note(&msg),
            }
        }
    }
}

/// A request that answers at once (`nodes`, `sessions`, …).
pub async fn call(method: &str, params: Value) -> Result<Value, String> {
    let mut conn = open(method, params).await?;
    let answer = tokio::time::timeout(Duration::from_secs(60), conn.answer(|_| {})).await;
    drop(conn.write);
    answer.map_err(|_| "openboxd did not answer within 60s".to_owned())?
}

/// Where a running command's output goes, as it arrives.
pub trait Sink: Send {
    fn output(&mut self, stderr: bool, bytes: &[u8]);
}

/// Runs `req` through openboxd, passing output to `sink` as it arrives.
pub async fn run(req: &RunRequest, sink: &mut impl Sink) -> Result<(u8, Option<String>, Truncated), String> {
    let mut params = serde_json::to_value(req).map_err(|e| e.to_string())?;
    params["stdio"] = "frames".into();
    let mut conn = open(proto::rpc::method::RUN, params).await?;
    let result = conn
        .answer(|note| {
            if note.get("method").and_then(Value::as_str) == Some(proto::rpc::method::OUTPUT) {
                let p = &note["params"];
                if let Some(data) =
                    p["data"].as_str().and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                {
                    sink.output(p["stream"] == "stderr", &data);
                }
            }
        })
        .await?;
    let r: RunResult = serde_json::from_value(result).map_err(|e| format!("unreadable run result: {e}"))?;
    Ok((r.exit_code, r.signal, r.truncated))
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
    let nodes = call(proto::rpc::method::NODES, json!({})).await?;
    let mut found: Vec<(String, bool)> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| tags.iter().all(|t| n["tags"].as_array().is_some_and(|have| have.iter().any(|h| h == t))))
        .filter_map(|n| Some((n["name"].as_str()?.to_owned(), n["online"].as_bool().unwrap_or(false))))
        .collect();
    found.sort();
    Ok(found)
}
