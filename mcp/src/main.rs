//! `openbox-mcp` (also `openbox mcp`): openbox as an MCP server on stdio.
//!
//! Every tool goes through openboxd over its socket, so each call is warm and obeys the
//! same access policy as the CLI. Output is capped (1 MiB per stream by default: head and
//! tail, with a mark), and a command that may outlast a client's tool-call timeout runs in
//! the background: `start`, then `read` / `wait` / `stop`.

mod daemon;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::api::Target;
use proto::request::RunRequest;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

/// Awaits `work` unless the client cancels the request (`notifications/cancelled`, sent by
/// hand or at its own time limit) first: then `work` is dropped — its connections to
/// openboxd with it, which stops the commands on their nodes.
async fn until_cancelled<T>(ctx: &RequestContext<RoleServer>, work: impl Future<Output = T>) -> Result<T, ErrorData> {
    tokio::select! {
        done = work => Ok(done),
        () = ctx.ct.cancelled() => Err(ErrorData::internal_error("the request was cancelled; its command was stopped", None)),
    }
}

/// What the MCP client sees of a run's output at most, per stream, unless it asks.
const DEFAULT_MAX_OUTPUT: u64 = 1 << 20;
/// A `run` gives up after this long unless told otherwise (clients time out near 60 s).
const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// What a background command keeps of each stream for `read`.
const JOB_KEEP: usize = 64 << 20;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunArgs {
    /// Run on an online node carrying this tag (give `tag` or `node`).
    tag: Option<String>,
    /// Run on this node, by name or id.
    node: Option<String>,
    /// The command line, run by the node's `sh -c` (quote as for a shell).
    command: String,
    /// A persistent session: same node, same shell; `cd` and exported variables carry over.
    session: Option<String>,
    /// `native` (default), `docker:IMAGE` or `nspawn:DIR`.
    isolation: Option<String>,
    /// Stop the command after this many seconds (exit 124). Default 60 for `run`; none for `start`.
    timeout_secs: Option<u64>,
    /// Keep at most this many bytes of each stream (head and tail). Default 1048576.
    max_output: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct RunAllArgs {
    /// Run on every online node carrying all of these tags.
    tags: Vec<String>,
    command: String,
    /// Per node, in seconds. Default 60.
    timeout_secs: Option<u64>,
    /// Per node and stream, in bytes. Default 1048576.
    max_output: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct NodesArgs {
    /// Only nodes carrying this tag.
    tag: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SessionArgs {
    /// The session's name.
    id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct JobArgs {
    /// The job id `start` returned.
    job: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ReadArgs {
    /// The job id `start` returned.
    job: String,
    /// Byte offset in stdout to read from (the `stdout_next` of the last read). Default 0.
    stdout_offset: Option<usize>,
    /// Byte offset in stderr to read from. Default 0.
    stderr_offset: Option<usize>,
    /// At most this many bytes of each stream. Default 65536.
    max_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct WaitArgs {
    /// The job id `start` returned.
    job: String,
    /// Wait at most this many seconds (at most 50, so the tool call itself never times out). Default 50.
    seconds: Option<u64>,
}

/// A command running in the background.
#[derive(Default)]
struct Job {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes not kept past [`JOB_KEEP`].
    dropped: bool,
    /// `(exit code, signal)` once it ended, or why it could not run.
    ended: Option<Result<(u8, Option<String>), String>>,
    started: Option<Instant>,
    duration_ms: u64,
}

/// A background job and the handle that stops its task.
type Running = (Arc<Mutex<Job>>, tokio::task::AbortHandle);

struct JobSink(Arc<Mutex<Job>>);

impl daemon::Sink for JobSink {
    fn output(&mut self, stderr: bool, bytes: &[u8]) {
        let mut job = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keep = JOB_KEEP.saturating_sub(if stderr { job.stderr.len() } else { job.stdout.len() });
        job.dropped |= bytes.len() > keep;
        let take = &bytes[..bytes.len().min(keep)];
        if stderr { job.stderr.extend_from_slice(take) } else { job.stdout.extend_from_slice(take) }
    }
}

#[derive(Clone)]
struct Openbox {
    jobs: Arc<Mutex<HashMap<String, Running>>>,
    next_job: Arc<Mutex<u64>>,
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

fn target(tag: Option<String>, node: Option<String>) -> Result<Target, ErrorData> {
    match (tag, node) {
        (Some(t), None) => Ok(Target::Tag(t)),
        (None, Some(n)) => Ok(Target::Node(n)),
        _ => Err(ErrorData::invalid_params("give exactly one of `tag` and `node`", None)),
    }
}

fn request(args: RunArgs, default_timeout: Option<u64>) -> Result<RunRequest, ErrorData> {
    let isolation = args
        .isolation
        .as_deref()
        .unwrap_or("native")
        .parse()
        .map_err(|e: proto::Invalid| ErrorData::invalid_params(e.to_string(), None))?;
    Ok(RunRequest {
        target: target(args.tag, args.node)?,
        session: args.session,
        isolation,
        command: vec![args.command],
        timeout_secs: args.timeout_secs.or(default_timeout),
        max_output: Some(args.max_output.unwrap_or(DEFAULT_MAX_OUTPUT)),
        tty: None,
        forwards: Vec::new(),
    })
}

/// A finished run as a tool result: an error result when it did not exit 0.
fn ran(
    result: Result<(u8, Option<String>, proto::rpc::Truncated), String>,
    out: daemon::Collected,
    took: Duration,
) -> CallToolResult {
    match result {
        Ok((exit_code, signal, truncated)) => {
            let value = json!({
                "exit_code": exit_code,
                "signal": signal,
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
                "truncated": truncated,
                "duration_ms": took.as_millis() as u64,
            });
            if exit_code == 0 { CallToolResult::structured(value) } else { CallToolResult::structured_error(value) }
        }
        Err(why) => CallToolResult::structured_error(json!({"error": why})),
    }
}

fn value_result(v: Result<Value, String>) -> CallToolResult {
    match v {
        Ok(v) => CallToolResult::structured(json!({ "result": v })),
        Err(why) => CallToolResult::structured_error(json!({ "error": why })),
    }
}

#[tool_router]
impl Openbox {
    fn new() -> Openbox {
        Openbox { jobs: Arc::default(), next_job: Arc::default(), tool_router: Self::tool_router() }
    }

    #[tool(
        description = "Run a shell command on a node of the openbox fleet (by tag or node name) and return its exit code, stdout and stderr. \
        Output is capped (max_output, default 1 MiB per stream: head and tail kept, with a '[… N bytes omitted …]' mark; `truncated` says which). \
        A non-zero exit is a result with isError set. Default timeout 60 s (exit 124); for longer work use `start`."
    )]
    async fn run(
        &self,
        Parameters(args): Parameters<RunArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let req = request(args, Some(DEFAULT_TIMEOUT_SECS))?;
        let started = Instant::now();
        let mut out = daemon::Collected::default();
        let result = until_cancelled(&ctx, daemon::run(&req, &mut out)).await?;
        Ok(ran(result, out, started.elapsed()))
    }

    #[tool(description = "Run a shell command on every online node carrying all of the given tags, at once. \
        Returns one result per node (node, exit_code, stdout, stderr, truncated, duration_ms; offline nodes with an error). \
        isError is set when any node failed or could not be reached.")]
    async fn run_all(
        &self,
        Parameters(args): Parameters<RunAllArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let nodes = match daemon::nodes_with(&args.tags).await {
            Ok(n) if n.is_empty() => {
                return Ok(CallToolResult::structured_error(
                    json!({"error": format!("no node carries {}", args.tags.join(", "))}),
                ));
            }
            Ok(n) => n,
            Err(why) => return Ok(CallToolResult::structured_error(json!({ "error": why }))),
        };
        let runs = nodes.into_iter().map(|(name, online)| {
            let (command, timeout, cap) = (args.command.clone(), args.timeout_secs, args.max_output);
            async move {
                if !online {
                    return (json!({"node": name, "error": "offline"}), false);
                }
                let req = RunRequest {
                    target: Target::Node(name.clone()),
                    session: None,
                    isolation: proto::Isolation::default(),
                    command: vec![command],
                    timeout_secs: Some(timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)),
                    max_output: Some(cap.unwrap_or(DEFAULT_MAX_OUTPUT)),
                    tty: None,
                    forwards: Vec::new(),
                };
                let started = Instant::now();
                let mut out = daemon::Collected::default();
                match daemon::run(&req, &mut out).await {
                    Ok((code, signal, truncated)) => (
                        json!({"node": name, "exit_code": code, "signal": signal,
                            "stdout": String::from_utf8_lossy(&out.stdout), "stderr": String::from_utf8_lossy(&out.stderr),
                            "truncated": truncated, "duration_ms": started.elapsed().as_millis() as u64}),
                        code == 0,
                    ),
                    Err(why) => (json!({"node": name, "error": why}), false),
                }
            }
        });
        let results: Vec<(Value, bool)> = until_cancelled(&ctx, futures_util::future::join_all(runs)).await?;
        let all_ok = results.iter().all(|(_, ok)| *ok);
        let value = json!({ "results": results.into_iter().map(|(v, _)| v).collect::<Vec<_>>() });
        Ok(if all_ok { CallToolResult::structured(value) } else { CallToolResult::structured_error(value) })
    }

    #[tool(
        description = "List the fleet's nodes you may use: name, id, online, tags, platform, isolation kinds offered."
    )]
    async fn list_nodes(&self, Parameters(args): Parameters<NodesArgs>) -> Result<CallToolResult, ErrorData> {
        Ok(value_result(daemon::call(proto::rpc::method::NODES, proto::rpc::NodesParams { tag: args.tag }).await))
    }

    #[tool(description = "List your persistent sessions: id, node, isolation, created, last used, state.")]
    async fn list_sessions(&self) -> Result<CallToolResult, ErrorData> {
        Ok(value_result(daemon::call(proto::rpc::method::SESSIONS, ()).await))
    }

    #[tool(description = "End a persistent session: its shell (and container) stops.")]
    async fn end_session(&self, Parameters(args): Parameters<SessionArgs>) -> Result<CallToolResult, ErrorData> {
        Ok(value_result(
            daemon::call(proto::rpc::method::SESSION_END, proto::rpc::SessionEndParams { id: args.id }).await,
        ))
    }

    #[tool(
        description = "Start a command in the background (for work longer than a tool call may take, e.g. a build). \
        Returns a job id at once; then use `read` for its output (by offsets), `wait` until it ends, `stop` to end it. \
        No timeout unless timeout_secs is given."
    )]
    async fn start(&self, Parameters(args): Parameters<RunArgs>) -> Result<CallToolResult, ErrorData> {
        let req = request(args, None)?;
        let id = {
            let mut n = self.next_job.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("job{n}")
        };
        let job = Arc::new(Mutex::new(Job { started: Some(Instant::now()), ..Job::default() }));
        let task = {
            let job = job.clone();
            tokio::spawn(async move {
                let mut sink = JobSink(job.clone());
                let result = daemon::run(&req, &mut sink).await;
                let mut j = job.lock().unwrap_or_else(|e| e.into_inner());
                j.duration_ms = j.started.map_or(0, |s| s.elapsed().as_millis() as u64);
                j.ended = Some(result.map(|(code, signal, _)| (code, signal)));
            })
        };
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), (job, task.abort_handle()));
        Ok(CallToolResult::structured(json!({ "job": id })))
    }

    #[tool(
        description = "Read a background job's output from the given offsets; returns the bytes, the next offsets, and whether it is still running (with its exit code once it ended)."
    )]
    async fn read(&self, Parameters(args): Parameters<ReadArgs>) -> Result<CallToolResult, ErrorData> {
        let job = self.job(&args.job)?;
        let j = job.lock().unwrap_or_else(|e| e.into_inner());
        let max = args.max_bytes.unwrap_or(64 << 10);
        let slice = |buf: &[u8], from: Option<usize>| {
            let from = from.unwrap_or(0).min(buf.len());
            let to = (from + max).min(buf.len());
            (String::from_utf8_lossy(&buf[from..to]).into_owned(), to)
        };
        let (stdout, stdout_next) = slice(&j.stdout, args.stdout_offset);
        let (stderr, stderr_next) = slice(&j.stderr, args.stderr_offset);
        let mut value = json!({"stdout": stdout, "stdout_next": stdout_next, "stderr": stderr, "stderr_next": stderr_next,
            "more": stdout_next < j.stdout.len() || stderr_next < j.stderr.len(), "dropped": j.dropped});
        status_into(&j, &mut value);
        Ok(CallToolResult::structured(value))
    }

    #[tool(
        description = "Wait until a background job ends, at most `seconds` (default and at most 50). Returns whether it is still running, and its exit code once it ended."
    )]
    async fn wait(&self, Parameters(args): Parameters<WaitArgs>) -> Result<CallToolResult, ErrorData> {
        let job = self.job(&args.job)?;
        let deadline = Instant::now() + Duration::from_secs(args.seconds.unwrap_or(50).min(50));
        loop {
            let done = job.lock().unwrap_or_else(|e| e.into_inner()).ended.is_some();
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let j = job.lock().unwrap_or_else(|e| e.into_inner());
        let mut value = json!({"stdout_bytes": j.stdout.len(), "stderr_bytes": j.stderr.len()});
        status_into(&j, &mut value);
        let failed = matches!(&j.ended, Some(Ok((code, _))) if *code != 0) || matches!(j.ended, Some(Err(_)));
        Ok(if failed { CallToolResult::structured_error(value) } else { CallToolResult::structured(value) })
    }

    #[tool(description = "Stop a background job: the command on the node is ended.")]
    async fn stop(&self, Parameters(args): Parameters<JobArgs>) -> Result<CallToolResult, ErrorData> {
        let (job, abort) = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&args.job)
            .cloned()
            .ok_or_else(|| ErrorData::invalid_params(format!("no job {:?}", args.job), None))?;
        abort.abort();
        let mut j = job.lock().unwrap_or_else(|e| e.into_inner());
        if j.ended.is_none() {
            j.ended = Some(Err("stopped".into()));
        }
        Ok(CallToolResult::structured(json!({"job": args.job, "stopped": true})))
    }
}

impl Openbox {
    fn job(&self, id: &str) -> Result<Arc<Mutex<Job>>, ErrorData> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(j, _)| j.clone())
            .ok_or_else(|| ErrorData::invalid_params(format!("no job {id:?}; `start` returns job ids"), None))
    }
}

/// `running`, and `exit_code`/`signal`/`error` and `duration_ms` once it ended.
fn status_into(j: &Job, value: &mut Value) {
    value["running"] = (j.ended.is_none()).into();
    match &j.ended {
        Some(Ok((code, signal))) => {
            value["exit_code"] = (*code).into();
            value["signal"] = json!(signal);
            value["duration_ms"] = j.duration_ms.into();
        }
        Some(Err(why)) => value["error"] = why.clone().into(),
        None => {}
    }
}

#[tool_handler]
impl ServerHandler for Openbox {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("openbox", proto::VERSION))
            .with_instructions(
                "openbox runs commands on the user's machines (nodes, found by tag or name) through their logged-in openboxd. \
                 Use `run` for commands under a minute, `start`/`read`/`wait` for longer ones, `run_all` for every node of a tag, \
                 sessions (`session`) to keep a shell's directory and variables between calls.",
            )
    }
}

fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            println!(
                "openbox mcp: an MCP server on stdio. Tools: run, run_all, list_nodes, list_sessions, end_session, start, read, wait, stop.\n\
                 Configure your MCP client to start `openbox mcp` (see docs/agents.md). Every call goes through openboxd."
            );
            return std::process::ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("openbox mcp {}", proto::VERSION);
            return std::process::ExitCode::SUCCESS;
        }
        // A client told to pass flags it does not take would otherwise get a server that
        // quietly ignores them.
        Some(other) => {
            eprintln!("openbox mcp: unexpected argument '{other}': it takes none but --help and --version");
            return std::process::ExitCode::from(2);
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let served = rt.block_on(async {
        daemon::ensure_running().await.map_err(anyhow::Error::msg)?;
        let service = Openbox::new().serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        anyhow::Ok(())
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openbox mcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
