//! The MCP tools. Every one goes through openboxd over its socket, so each call is warm and
//! obeys the same access policy and audit as the CLI. Every failure is a tool result with
//! `isError` set and `{"error": "…"}` saying what to send instead — never a protocol
//! error — so a model reads and acts on it the same way each time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::api::Target;
use proto::request::RunRequest;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ProgressNotificationParam,
    ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;
use serde_json::{Value, json};

use crate::args::*;
use crate::content;
use crate::daemon;

/// A quiet `run` still tells a client with a progress token that it is alive this often.
const PROGRESS_BEAT: Duration = Duration::from_secs(10);
/// Output for progress notifications is gathered this long before it is sent.
const PROGRESS_BATCH: Duration = Duration::from_millis(200);

/// A failed call, as every tool says it: `{"error": "…"}` as the result's text, with
/// `isError`. (Not as structured content, which clients check against the tool's output
/// schema — the shape of a success.)
fn failed(why: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(json!({ "error": why.to_string() }).to_string())])
}

fn ok(value: impl Serialize) -> CallToolResult {
    CallToolResult::structured(serde_json::to_value(value).expect("answers serialize"))
}

/// The JSON Schema of a tool's answer.
fn schema<T: rmcp::schemars::JsonSchema + std::any::Any>() -> Arc<rmcp::model::JsonObject> {
    rmcp::handler::server::tool::schema_for_output::<T>()
}

/// Awaits `work` unless the client cancels the request (`notifications/cancelled`, sent by
/// hand or at its own time limit) first: then `work` is dropped — its connections to
/// openboxd with it, which stops the commands on their nodes.
async fn until_cancelled<T>(
    ctx: &RequestContext<RoleServer>,
    work: impl Future<Output = T>,
) -> Result<T, CallToolResult> {
    tokio::select! {
        done = work => Ok(done),
        () = ctx.ct.cancelled() => Err(failed("the request was cancelled; its command was stopped")),
    }
}

#[derive(Clone)]
pub struct Openbox {
    tool_router: ToolRouter<Self>,
}

fn run_request(args: RunArgs, default_timeout: Option<u64>) -> Result<RunRequest, String> {
    let isolation = isolation(args.isolation.as_deref())?;
    let target = match target(args.tag, args.node, args.session.is_some())? {
        Some(t) => t,
        // A session remembers its node: any name reaches it.
        None => Target::Tag(String::new()),
    };
    Ok(RunRequest {
        target,
        session: args.session,
        isolation,
        command: vec![args.command],
        timeout_secs: timeout(args.timeout_secs, default_timeout),
        max_output: Some(args.max_output.unwrap_or(DEFAULT_MAX_OUTPUT)),
        tty: None,
        forwards: Vec::new(),
    })
}

/// A finished run's answer.
fn run_out(
    (exit_code, signal, truncated): (u8, Option<String>, proto::rpc::Truncated),
    out: &daemon::Collected,
    took: Duration,
    timeout_secs: Option<proto::time::Seconds>,
) -> RunOut {
    let mut streams = serde_json::Map::new();
    content::stream_fields("stdout", &out.stdout, &mut streams);
    content::stream_fields("stderr", &out.stderr, &mut streams);
    let text = |k: &str| streams.get(k).and_then(Value::as_str).map(str::to_owned);
    let hint = (exit_code == crate::TIMED_OUT && timeout_secs.is_some()).then(|| {
        format!(
            "if it was stopped at timeout_secs ({}): run it as a background job instead — `start` with the same arguments, then `read` and `wait` — or give a larger timeout_secs",
            timeout_secs.unwrap_or_default()
        )
    });
    RunOut {
        exit_code,
        signal,
        stdout: text("stdout"),
        stdout_base64: text("stdout_base64"),
        stderr: text("stderr"),
        stderr_base64: text("stderr_base64"),
        truncated: Truncated { stdout: truncated.stdout, stderr: truncated.stderr },
        duration_ms: took.as_millis() as u64,
        hint,
    }
}

/// A run's answer: an error result when it did not exit 0.
fn ran(out: RunOut) -> CallToolResult {
    let failed = out.exit_code != 0;
    let value = serde_json::to_value(out).expect("answers serialize");
    if failed { CallToolResult::structured_error(value) } else { CallToolResult::structured(value) }
}

/// Output collected whole, and passed on as progress notifications when the client asked
/// for them (a progress token): so a long `run` shows its output as it comes and a client
/// that cuts quiet calls keeps waiting.
struct Progress {
    collected: daemon::Collected,
    pending: Vec<u8>,
}

impl daemon::Sink for Arc<Mutex<Progress>> {
    fn output(&mut self, stderr: bool, bytes: &[u8]) {
        let mut p = self.lock().unwrap_or_else(|e| e.into_inner());
        p.collected.output(stderr, bytes);
        p.pending.extend_from_slice(bytes);
    }
}

/// Runs `req`, sending progress to the client while it runs when it gave a token.
async fn run_with_progress(
    ctx: &RequestContext<RoleServer>,
    req: &RunRequest,
) -> (Result<(u8, Option<String>, proto::rpc::Truncated), String>, daemon::Collected) {
    let progress = Arc::new(Mutex::new(Progress { collected: daemon::Collected::default(), pending: Vec::new() }));
    let Some(token) = ctx.meta.get_progress_token() else {
        let mut out = daemon::Collected::default();
        let result = daemon::run(req, &mut out).await;
        return (result, out);
    };
    let mut sink = progress.clone();
    let run = daemon::run(req, &mut sink);
    tokio::pin!(run);
    let (mut sent, mut last_note) = (0u64, Instant::now());
    let mut tick = tokio::time::interval(PROGRESS_BATCH);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = tick.tick() => {
                let pending = std::mem::take(&mut progress.lock().unwrap_or_else(|e| e.into_inner()).pending);
                // Whole characters only: an unfinished one waits for the next batch.
                let text = content::as_text(&pending, false, true);
                let (message, used) = match &text {
                    Some(t) if !t.text.is_empty() => (Some(t.text.clone()), pending.len() - t.back),
                    Some(_) => (None, 0),
                    None => (Some(format!("[{} bytes of binary output]", pending.len())), pending.len()),
                };
                progress.lock().unwrap_or_else(|e| e.into_inner()).pending.splice(0..0, pending[used..].iter().copied());
                if message.is_none() && last_note.elapsed() < PROGRESS_BEAT {
                    continue;
                }
                sent += used as u64;
                let mut note = ProgressNotificationParam::new(token.clone(), sent as f64);
                note.message = message;
                let _ = ctx.peer.notify_progress(note).await;
                last_note = Instant::now();
            }
        }
    };
    let collected = std::mem::take(&mut progress.lock().unwrap_or_else(|e| e.into_inner()).collected);
    (result, collected)
}

fn file_params(
    tag: Option<String>,
    node: Option<String>,
    session: Option<String>,
    op: proto::files::FileOp,
    timeout_secs: Option<u64>,
) -> Result<proto::files::FileParams, String> {
    let target = target(tag, node, session.is_some())?;
    Ok(proto::files::FileParams {
        target,
        session,
        op,
        timeout_secs: timeout_secs.map(proto::time::Seconds::from_secs),
    })
}

/// openboxd's answer as `T`.
fn answer<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("unreadable answer from openboxd: {e}"))
}

/// A path on this machine, absolute (as openboxd takes it).
fn local_path(path: &str) -> Result<String, String> {
    let p = std::path::Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("no working directory to resolve {path:?} from: {e}"))?.join(p)
    };
    abs.to_str().map(str::to_owned).ok_or_else(|| format!("{path:?} is not UTF-8"))
}

#[tool_router]
impl Openbox {
    pub fn new() -> Openbox {
        Openbox { tool_router: Self::tool_router() }
    }

    /// The tools a control plane serves to a remote user: none that reach the files of the
    /// machine the server runs on (`upload`, `download`), which is not the user's.
    pub fn hosted() -> Openbox {
        let mut tool_router = Self::tool_router();
        for local in ["upload", "download"] {
            tool_router.remove_route(local);
        }
        Openbox { tool_router }
    }

    #[tool(
        description = "Run a shell command on a node of the openbox fleet (by `node` name, `tag`, or `session`) and return its exit code, stdout and stderr. \
        Output is capped (max_output, default 1 MiB per stream: head and tail kept, with a '[… N bytes omitted …]' mark; `truncated` says which); \
        output that is not UTF-8 text comes as `stdout_base64`/`stderr_base64`. A non-zero exit is a result with isError set. \
        Default timeout 60 s (exit 124); for longer work use `start`. With a progress token, output arrives in progress notifications as it comes.",
        output_schema = schema::<RunOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn run(&self, Parameters(args): Parameters<RunArgs>, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let req = match run_request(args, Some(DEFAULT_TIMEOUT_SECS)) {
            Ok(req) => req,
            Err(why) => return failed(why),
        };
        let started = Instant::now();
        let (result, out) = match until_cancelled(&ctx, run_with_progress(&ctx, &req)).await {
            Ok(done) => done,
            Err(cancelled) => return cancelled,
        };
        match result {
            Ok(r) => ran(run_out(r, &out, started.elapsed(), req.timeout_secs)),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Run a shell command on every online node carrying all of the given tags, at once. \
        Returns one result per node (node, exit_code, stdout, stderr, truncated, duration_ms; offline or unreachable nodes with `error`). \
        isError is set when any node failed or could not be reached.",
        output_schema = schema::<RunAllOut>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn run_all(
        &self,
        Parameters(args): Parameters<RunAllArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if args.tags.is_empty() || args.tags.iter().any(String::is_empty) {
            return failed(
                "`tags` is empty: give at least one tag (list_nodes shows them); to run on one node use `run`",
            );
        }
        let isolation = match isolation(args.isolation.as_deref()) {
            Ok(i) => i,
            Err(why) => return failed(why),
        };
        let nodes = match daemon::nodes_with(&args.tags).await {
            Ok(n) if n.is_empty() => return failed(format!("no node carries {}", args.tags.join(", "))),
            Ok(n) => n,
            Err(why) => return failed(why),
        };
        let timeout_secs = timeout(args.timeout_secs, Some(DEFAULT_TIMEOUT_SECS));
        let runs = nodes.into_iter().map(|(name, online)| {
            let req = RunRequest {
                target: Target::Node(name.clone()),
                session: None,
                isolation: isolation.clone(),
                command: vec![args.command.clone()],
                timeout_secs,
                max_output: Some(args.max_output.unwrap_or(DEFAULT_MAX_OUTPUT)),
                tty: None,
                forwards: Vec::new(),
            };
            async move {
                if !online {
                    return NodeRun { node: name, error: Some("offline".into()), run: None };
                }
                let started = Instant::now();
                let mut out = daemon::Collected::default();
                match daemon::run(&req, &mut out).await {
                    Ok(r) => NodeRun {
                        node: name,
                        error: None,
                        run: Some(run_out(r, &out, started.elapsed(), req.timeout_secs)),
                    },
                    Err(why) => NodeRun { node: name, error: Some(why), run: None },
                }
            }
        });
        let results = match until_cancelled(&ctx, futures_util::future::join_all(runs)).await {
            Ok(results) => results,
            Err(cancelled) => return cancelled,
        };
        let all_ok = results.iter().all(|r| r.run.as_ref().is_some_and(|r| r.exit_code == 0));
        let value = serde_json::to_value(RunAllOut { results }).expect("answers serialize");
        if all_ok { CallToolResult::structured(value) } else { CallToolResult::structured_error(value) }
    }

    #[tool(
        description = "List the fleet's nodes you may use: name, id, online, tags, platform, isolation kinds offered.",
        output_schema = schema::<NodesOut>(),
        annotations(read_only_hint = true, open_world_hint = true)
    )]
    async fn list_nodes(&self, Parameters(args): Parameters<NodesArgs>) -> CallToolResult {
        match daemon::call(proto::rpc::method::NODES, proto::rpc::NodesParams { tag: args.tag }).await.and_then(answer)
        {
            Ok(nodes) => ok(NodesOut { nodes }),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "List your persistent sessions: id, node, isolation, created, last used, state.",
        output_schema = schema::<SessionsOut>(),
        annotations(read_only_hint = true, open_world_hint = true)
    )]
    async fn list_sessions(&self, Parameters(_): Parameters<NoArgs>) -> CallToolResult {
        match daemon::call(proto::rpc::method::SESSIONS, ()).await.and_then(answer) {
            Ok(sessions) => ok(SessionsOut { sessions }),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "End a persistent session: its shell (and container) stops.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn end_session(&self, Parameters(args): Parameters<SessionArgs>) -> CallToolResult {
        match daemon::call(proto::rpc::method::SESSION_END, proto::rpc::SessionEndParams { id: args.id }).await {
            Ok(v) => ok(v),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Read a file on a node (or in a session's container): text as text, an image as image content, other binary as a base64 resource. \
        By bytes (`offset`, `length`, default the first 1 MiB) or by lines (`line`, `count`). Returns the file's size, the range read, `next_offset` and `eof` to go on from, \
        and its total line count when the read saw all of it. Text is never cut inside a character.",
        output_schema = schema::<FileRead>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn read_file(&self, Parameters(a): Parameters<ReadFileArgs>) -> CallToolResult {
        if a.line.is_some() && a.offset.is_some() {
            return failed("give `offset` (bytes) or `line` (lines), not both");
        }
        if a.count.is_some() && a.line.is_none() {
            return failed("`count` is a number of lines: give `line` too (1 is the first)");
        }
        let length = Some(a.length.unwrap_or(DEFAULT_READ));
        let op = proto::files::FileOp::Read { path: a.path, offset: a.offset, length, line: a.line, count: a.count };
        let params = match file_params(a.tag, a.node, a.session, op, None) {
            Ok(p) => p,
            Err(why) => return failed(why),
        };
        let (value, bytes) = match daemon::transfer(proto::rpc::method::FILE, &params, None).await {
            Ok(done) => done,
            Err(why) => return failed(why),
        };
        let read: proto::files::ReadResult = match answer(value) {
            Ok(r) => r,
            Err(why) => return failed(why),
        };
        file_read(read, &bytes)
    }

    #[tool(
        description = "Write a file on a node (or in a session's container): `content` (text) or `content_base64` (bytes), up to 128 MiB (`upload` takes any size). \
        `how`: overwrite (default; the file is replaced whole, never left half-written), create (fail if it exists) or append. `mode` like \"0755\".",
        output_schema = schema::<proto::files::Written>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn write_file(&self, Parameters(a): Parameters<WriteFileArgs>) -> CallToolResult {
        let data = match (a.content, a.content_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                    Ok(bytes) => bytes,
                    Err(e) => return failed(format!("`content_base64` is not base64: {e}")),
                }
            }
            _ => return failed("give `content` (text) or `content_base64` (bytes), one of them"),
        };
        let how = match a.how.as_deref().unwrap_or("overwrite") {
            "overwrite" => proto::files::WriteHow::Overwrite,
            "create" => proto::files::WriteHow::Create,
            "append" => proto::files::WriteHow::Append,
            other => return failed(format!("`how` is overwrite, create or append, not {other:?}")),
        };
        let mode = match a.mode.as_deref().map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8)) {
            None => None,
            Some(Ok(m)) if m <= 0o7777 => Some(m),
            Some(_) => return failed("`mode` is octal permission bits, like \"0644\" or \"0755\""),
        };
        let op = proto::files::FileOp::Write { path: a.path, how, mode };
        file_call(a.tag, a.node, a.session, op, Some(&data), |v| answer::<proto::files::Written>(v).map(ok)).await
    }

    #[tool(
        description = "Edit a text file on a node (or in a session's container): replace `old_text`, which must occur exactly once \
        (or say how often it occurs; include more surrounding lines to make it unique), by `new_text`. `replace_all` replaces every occurrence. \
        The file is replaced whole, keeping its mode.",
        output_schema = schema::<proto::files::Written>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn edit_file(&self, Parameters(a): Parameters<EditFileArgs>) -> CallToolResult {
        let op = proto::files::FileOp::Edit {
            path: a.path,
            old: a.old_text,
            new: a.new_text,
            all: a.replace_all.unwrap_or(false),
        };
        file_call(a.tag, a.node, a.session, op, None, |v| answer::<proto::files::Written>(v).map(ok)).await
    }

    #[tool(
        description = "List a directory on a node (or in a session's container): names, types, sizes, modes, modification times; `depth` levels down (default 1).",
        output_schema = schema::<proto::files::Listing>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn list_dir(&self, Parameters(a): Parameters<ListDirArgs>) -> CallToolResult {
        let op = proto::files::FileOp::List { path: a.path, depth: a.depth };
        file_call(a.tag, a.node, a.session, op, None, |v| answer::<proto::files::Listing>(v).map(ok)).await
    }

    #[tool(
        description = "What a path on a node is: type (file, dir, symlink, other), size, mode, modification time, a link's target.",
        output_schema = schema::<proto::files::FileStat>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn stat(&self, Parameters(a): Parameters<StatArgs>) -> CallToolResult {
        let op = proto::files::FileOp::Stat { path: a.path };
        file_call(a.tag, a.node, a.session, op, None, |v| answer::<proto::files::FileStat>(v).map(ok)).await
    }

    #[tool(
        description = "Copy a file (or with `recursive` a directory) from this machine, where the MCP server runs, to a node or a session's container: as `openbox cp`, modes kept, any size.",
        output_schema = schema::<Copied>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn upload(&self, Parameters(a): Parameters<CopyArgs>) -> CallToolResult {
        copy(a, true).await
    }

    #[tool(
        description = "Copy a file (or with `recursive` a directory) from a node or a session's container to this machine, where the MCP server runs: as `openbox cp`, modes kept, any size.",
        output_schema = schema::<Copied>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn download(&self, Parameters(a): Parameters<CopyArgs>) -> CallToolResult {
        copy(a, false).await
    }

    #[tool(
        description = "Start a command as a job (for builds and anything longer than a tool call may take): it returns a job id at once, \
        and the command runs on the node whether or not anyone is connected — this server or openboxd may restart — its output kept by openboxd \
        (head and tail of very long output). Then `read` its output by offsets, `wait` until it ends, `stop` it, `write_stdin` to it \
        (with `stdin: true`); `list_jobs` lists all, including those started by the CLI. No timeout unless timeout_secs is given. \
        With `terminal: {rows, cols}` it runs in a terminal, for interactive programs: `screen` shows its screen, `send_keys` types.",
        output_schema = schema::<proto::jobs::JobInfo>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn start(&self, Parameters(args): Parameters<StartArgs>) -> CallToolResult {
        let (run, stdin, terminal) = args.run();
        let req = match run_request(run, None) {
            Ok(req) => req,
            Err(why) => return failed(why),
        };
        let params = proto::jobs::JobStartParams { run: req, stdin, terminal };
        match daemon::call(proto::rpc::method::JOB_START, params).await.and_then(answer::<proto::jobs::JobInfo>) {
            Ok(info) => ok(info),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "List the jobs openboxd keeps (started here or by `openbox --detach`): id, node, state (running, exited, lost), exit code, bytes of output.",
        output_schema = schema::<JobsOut>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_jobs(&self, Parameters(_): Parameters<NoArgs>) -> CallToolResult {
        match daemon::call(proto::rpc::method::JOBS, ()).await.and_then(answer) {
            Ok(jobs) => ok(JobsOut { jobs }),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Read a job's output from byte offsets (0 at first, then the `*_next` of the last read); returns the text \
        (whole characters only; output that is not text as `*_base64`), the next offsets, `more` when more is there now, and the job's state \
        (`running`, or `exited` with `exit_code`). Where a very long output's middle was dropped, `*_skipped` says how many bytes.",
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn read(&self, Parameters(args): Parameters<ReadArgs>) -> CallToolResult {
        let params = proto::jobs::JobReadParams {
            id: args.job,
            stdout_offset: args.stdout_offset.unwrap_or(0),
            stderr_offset: args.stderr_offset.unwrap_or(0),
            max_bytes: args.max_bytes,
        };
        let read =
            match daemon::call(proto::rpc::method::JOB_READ, &params).await.and_then(answer::<proto::jobs::JobRead>) {
                Ok(read) => read,
                Err(why) => return failed(why),
            };
        let mut value = serde_json::Map::new();
        let streams = [
            ("stdout", &read.stdout, params.stdout_offset, read.stdout_from, read.stdout_next, read.job.stdout_bytes),
            ("stderr", &read.stderr, params.stderr_offset, read.stderr_from, read.stderr_next, read.job.stderr_bytes),
        ];
        let mut more = read.more;
        for (name, b64, asked, from, next, total) in streams {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
            // Whole characters: one cut at the end is left for the next read.
            let (next, shown) = match content::as_text(&bytes, false, next < total) {
                Some(t) => (next - t.back as u64, Value::from(t.text)),
                None => (next, Value::Null),
            };
            if shown.is_null() {
                value.insert(format!("{name}_base64"), content::base64(&bytes).into());
            } else {
                value.insert(name.to_owned(), shown);
            }
            value.insert(format!("{name}_next"), next.into());
            if from > asked {
                value.insert(format!("{name}_skipped"), (from - asked).into());
            }
            more |= next < total;
        }
        value.insert("more".into(), more.into());
        job_state_into(&read.job, &mut value);
        CallToolResult::structured(Value::Object(value))
    }

    #[tool(
        description = "Wait until a job ends, at most `seconds` (default and at most 50, so the tool call itself never times out). \
        Returns the job: `state` running, or exited with `exit_code` (isError when not 0), or lost with `error`.",
        output_schema = schema::<proto::jobs::JobInfo>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn wait(&self, Parameters(args): Parameters<WaitArgs>) -> CallToolResult {
        let params = proto::jobs::JobWaitParams {
            id: args.job,
            timeout_secs: Some(proto::time::Seconds::from_secs(args.seconds.unwrap_or(50).min(50))),
        };
        match daemon::call(proto::rpc::method::JOB_WAIT, params).await.and_then(answer::<proto::jobs::JobInfo>) {
            Ok(info) => {
                let bad = info.state == "lost" || info.exit_code.is_some_and(|c| c != 0);
                let value = serde_json::to_value(&info).expect("answers serialize");
                if bad { CallToolResult::structured_error(value) } else { CallToolResult::structured(value) }
            }
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Stop a job: its command on the node is interrupted, then ended. Returns the job.",
        output_schema = schema::<proto::jobs::JobInfo>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn stop(&self, Parameters(args): Parameters<JobArgs>) -> CallToolResult {
        match daemon::call(proto::rpc::method::JOB_STOP, proto::jobs::JobParams { id: args.job })
            .await
            .and_then(answer::<proto::jobs::JobInfo>)
        {
            Ok(info) => ok(info),
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Write to a running job's stdin (a job started with `stdin: true`): `text`, or `data_base64` for bytes; \
        `close` then closes its stdin (the program reads end of input).",
        output_schema = schema::<proto::jobs::JobInfo>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn write_stdin(&self, Parameters(args): Parameters<StdinArgs>) -> CallToolResult {
        let data = match (args.text, args.data_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                    Ok(bytes) => bytes,
                    Err(e) => return failed(format!("`data_base64` is not base64: {e}")),
                }
            }
            (None, None) if args.close.unwrap_or(false) => Vec::new(),
            _ => return failed("give `text` or `data_base64` (or just `close: true`)"),
        };
        send_to_job(args.job, &data, args.close.unwrap_or(false)).await
    }

    #[tool(
        description = "Type into a job that runs in a terminal (started with `terminal`): text and named keys, in order \
        (e.g. [\"i\", \"hello\", \"Escape\", \":wq\", \"Enter\"]). Then `screen` shows the result.",
        output_schema = schema::<proto::jobs::JobInfo>(),
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = true)
    )]
    async fn send_keys(&self, Parameters(args): Parameters<KeysArgs>) -> CallToolResult {
        if args.keys.is_empty() {
            return failed("give `keys`: text and key names, e.g. [\"ls\", \"Enter\"]");
        }
        match key_bytes(&args.keys) {
            Ok(bytes) => send_to_job(args.job, &bytes, false).await,
            Err(why) => failed(why),
        }
    }

    #[tool(
        description = "Show the screen of a job that runs in a terminal (started with `terminal`), as a person at it would see it: \
        its lines, and where the cursor is. After the job ended: its last screen.",
        output_schema = schema::<proto::jobs::Screen>(),
        annotations(read_only_hint = true, idempotent_hint = true, open_world_hint = true)
    )]
    async fn screen(&self, Parameters(args): Parameters<JobArgs>) -> CallToolResult {
        let params = proto::jobs::JobParams { id: args.job };
        match daemon::call(proto::rpc::method::JOB_SCREEN, params).await.and_then(answer::<proto::jobs::Screen>) {
            Ok(screen) => ok(screen),
            Err(why) => failed(why),
        }
    }
}

/// Sends `data` to a job's stdin (a terminal job's: its keys); with `close`, closes it.
async fn send_to_job(id: String, data: &[u8], close: bool) -> CallToolResult {
    let params = proto::jobs::JobSendParams { id, close };
    match daemon::transfer(proto::rpc::method::JOB_SEND, &params, Some(data)).await {
        Ok((value, _)) => answer::<proto::jobs::JobInfo>(value).map(ok).unwrap_or_else(failed),
        Err(why) => failed(why),
    }
}

/// The bytes a terminal gets for `keys` (see [`KeysArgs`]), or the first name not known.
fn key_bytes(keys: &[String]) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for key in keys {
        let named: &[u8] = match key.as_str() {
            "Enter" => b"\r",
            "Tab" => b"\t",
            "Escape" | "Esc" => b"\x1b",
            "Backspace" => b"\x7f",
            "Space" => b" ",
            "Up" => b"\x1b[A",
            "Down" => b"\x1b[B",
            "Right" => b"\x1b[C",
            "Left" => b"\x1b[D",
            "Home" => b"\x1b[H",
            "End" => b"\x1b[F",
            "PageUp" => b"\x1b[5~",
            "PageDown" => b"\x1b[6~",
            "Delete" => b"\x1b[3~",
            other => match other.strip_prefix("Ctrl-").map(str::as_bytes) {
                Some([c]) if c.is_ascii_alphabetic() => {
                    bytes.push(c.to_ascii_uppercase() - b'@');
                    continue;
                }
                Some(_) => return Err(format!("{other:?} is no key: Ctrl- takes one letter, e.g. Ctrl-C")),
                None => other.as_bytes(),
            },
        };
        bytes.extend_from_slice(named);
    }
    Ok(bytes)
}

/// A job's state in a `read` answer: `running`, and `exit_code` or `error` once it ended.
fn job_state_into(job: &proto::jobs::JobInfo, value: &mut serde_json::Map<String, Value>) {
    value.insert("running".into(), (job.state == "running").into());
    value.insert("state".into(), job.state.clone().into());
    if let Some(code) = job.exit_code {
        value.insert("exit_code".into(), code.into());
    }
    if let Some(why) = &job.error {
        value.insert("error".into(), why.clone().into());
    }
}

/// A `file` call whose answer `shown` turns into the tool's result.
async fn file_call(
    tag: Option<String>,
    node: Option<String>,
    session: Option<String>,
    op: proto::files::FileOp,
    data: Option<&[u8]>,
    shown: impl FnOnce(Value) -> Result<CallToolResult, String>,
) -> CallToolResult {
    let params = match file_params(tag, node, session, op, None) {
        Ok(p) => p,
        Err(why) => return failed(why),
    };
    match daemon::transfer(proto::rpc::method::FILE, &params, data).await {
        Ok((value, _)) => shown(value).unwrap_or_else(failed),
        Err(why) => failed(why),
    }
}

/// A read's bytes as the client takes them: text; an image whole as image content; any
/// other bytes as a base64 resource.
fn file_read(r: proto::files::ReadResult, bytes: &[u8]) -> CallToolResult {
    let path = r.path.clone();
    let (mid_start, mid_end, whole) = (r.offset > 0, !r.eof, r.offset == 0 && r.eof);
    let mut out = FileRead { read: r, text: None, mime_type: None };
    if let Some(t) = content::as_text(bytes, mid_start, mid_end) {
        out.read.offset += t.front as u64;
        out.read.length -= (t.front + t.back) as u64;
        out.read.next_offset -= t.back as u64;
        out.text = Some(t.text.clone());
        let mut result = ok(out);
        result.content = vec![ContentBlock::text(t.text)];
        return result;
    }
    let image = content::image_type(bytes).filter(|_| whole);
    let mime = image.unwrap_or("application/octet-stream");
    out.mime_type = Some(mime.to_owned());
    let summary = serde_json::to_string(&out).expect("answers serialize");
    let mut result = ok(out);
    let data = content::base64(bytes);
    result.content = match image {
        Some(mime) => vec![ContentBlock::image(data, mime), ContentBlock::text(summary)],
        None => vec![
            ContentBlock::resource(ResourceContents::BlobResourceContents {
                uri: format!("file://{path}"),
                mime_type: Some(mime.to_owned()),
                blob: data,
                meta: None,
            }),
            ContentBlock::text(summary),
        ],
    };
    result
}

async fn copy(a: CopyArgs, upload: bool) -> CallToolResult {
    let target = match target(a.tag, a.node, a.session.is_some()) {
        Ok(t) => t.unwrap_or(Target::Tag(String::new())),
        Err(why) => return failed(why),
    };
    let local = match local_path(&a.local_path) {
        Ok(p) => proto::request::Place::Local { path: p },
        Err(why) => return failed(why),
    };
    let remote = proto::request::Place::Remote { target, path: a.remote_path };
    let (from, to) = if upload { (local, remote) } else { (remote, local) };
    let req = proto::request::CopyRequest {
        from: vec![from],
        to,
        recursive: a.recursive.unwrap_or(false),
        progress: false,
        session: a.session,
        timeout_secs: timeout(a.timeout_secs, None),
    };
    match daemon::transfer(proto::rpc::method::COPY, &req, None).await.and_then(|(v, _)| answer::<Copied>(v)) {
        Ok(copied) => ok(copied),
        Err(why) => failed(why),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Openbox {
    /// Every tool's failure in one shape: arguments that do not fit (an unknown one, a
    /// wrong type) come back as `{"error": …}` with `isError`, as the tools' own do.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.clone();
        let known = self.tool_router.has_route(&name);
        if !known {
            let tools: Vec<String> = self.tool_router.list_all().into_iter().map(|t| t.name.into_owned()).collect();
            return Ok(failed(format!("there is no tool {name:?} here; the tools are: {}", tools.join(", "))).into());
        }
        let result = self.tool_router.call(ToolCallContext::new(self, request, context)).await;
        match result {
            // rmcp's own word on arguments that do not fit: plain text, not yet our shape.
            Ok(CallToolResponse::Complete(r))
                if r.is_error == Some(true)
                    && r.structured_content.is_none()
                    && !r.content.iter().any(|c| c.as_text().is_some_and(|t| t.text.starts_with("{\"error\""))) =>
            {
                let why: Vec<String> = r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
                Ok(failed(format!("{name}: {} ({})", why.join(" "), argument_help(self, &name))).into())
            }
            Err(e) => Ok(failed(format!("{name}: {} ({})", e.message, argument_help(self, &name))).into()),
            other => other,
        }
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("openbox", proto::VERSION))
            .with_instructions(
                "openbox runs commands on the user's machines (nodes, found by tag or name) through their logged-in openboxd. \
                 Use `run` for commands under a minute, jobs (`start`, then `read`/`wait`) for builds and longer ones, `run_all` for every node of a tag, \
                 sessions (`session`) to keep a shell's directory and variables between calls, and the file tools \
                 (read_file, write_file, edit_file, list_dir, stat, upload, download) rather than cat and sed through `run`.",
            )
    }
}

/// "it takes: a, b, c" for a tool, from its input schema.
fn argument_help(server: &Openbox, tool: &str) -> String {
    let Some(t) = server.tool_router.get(tool) else { return String::new() };
    let props = t.input_schema.get("properties").and_then(Value::as_object);
    let required: Vec<&str> = t
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let names: Vec<String> = props
        .map(|p| {
            p.keys()
                .map(|k| if required.contains(&k.as_str()) { format!("{k} (required)") } else { k.clone() })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() { format!("{tool} takes no arguments") } else { format!("{tool} takes: {}", names.join(", ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_typed_as_text_or_named() {
        let keys = |k: &[&str]| key_bytes(&k.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(keys(&["i", "hé", "Escape", ":wq", "Enter"]).unwrap(), "ihé\x1b:wq\r".as_bytes());
        assert_eq!(keys(&["Up", "Ctrl-C", "Ctrl-d", "Tab"]).unwrap(), b"\x1b[A\x03\x04\t");
        // A name that is not a key is typed as text, except a Ctrl- that names no letter.
        assert_eq!(keys(&["Enterprise"]).unwrap(), b"Enterprise");
        assert!(keys(&["Ctrl-Shift"]).unwrap_err().contains("one letter"));
        assert!(keys(&["Ctrl-1"]).is_err());
    }
}
