//! `openbox -t TAG --all CMD`: one command on every node carrying the tags, at most
//! `fanout` at once, as pdsh runs one over many hosts.
//!
//! Lines are written as they complete, `name: line` (whole lines only, so two nodes never
//! interleave inside a line); with `--group` each node's output waits for the end and
//! nodes with identical output are printed once, as `dshbak -c` does. Offline nodes are
//! reported, never waited for. The exit code is the largest remote one, 255 when any node
//! could not be reached.

use std::time::Instant;

use futures_util::{FutureExt as _, StreamExt as _};
use net::halt::{Halts, Stops as _};
use net::ssh::{NoInput, Output as _, SshError};
use proto::api::{Node, Target};
use proto::request::FanOutRequest;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Daemon;
use crate::cap::{Capped, Truncated};
use crate::connect::Want;
use crate::io::{CallIo, CallOutput};
use crate::run::{FAILED, TIMED_OUT};

/// What one node did.
#[derive(Serialize)]
struct NodeResult {
    node: String,
    /// The remote exit code (128+N for a signal, 124 after `--timeout`); none when the
    /// command did not run to its end.
    exit_code: Option<u8>,
    /// The signal that ended the command, if one did (`KILL`, …).
    signal: Option<String>,
    /// Why it did not run (offline, unreachable, refused).
    error: Option<String>,
    stdout: String,
    stderr: String,
    /// Which streams `--max-output` cut.
    truncated: Truncated,
    duration_ms: u64,
}

impl NodeResult {
    fn outcome(&self) -> &'static str {
        match (self.exit_code, &self.error) {
            (_, Some(_)) => "unreachable",
            (Some(0), _) => "ok",
            (Some(TIMED_OUT), _) => "timed out",
            _ => "failed",
        }
    }
}

/// A finished line (or, with grouping, nothing) for the call's stdout or stderr.
struct Line {
    stderr: bool,
    bytes: Vec<u8>,
}

/// Runs the command on every node; `halts` reach each of them: a signal is passed on to
/// every node's command, the caller gone stops them all, and the deadline (`--timeout`,
/// for the whole call) ends every node still running with 124 — a frozen node never
/// holds back the others or the summary.
pub async fn run(d: &Daemon, req: FanOutRequest, json: bool, io: &mut CallIo) -> u8 {
    let (output, halts) = (&mut io.output, io.halts.clone());
    match run_inner(d, req, json, output, halts).await {
        Ok(code) => code,
        Err(e) => {
            output.eprint(&format!("openbox: {e:#}\n")).await;
            FAILED
        }
    }
}

async fn run_inner(
    d: &Daemon,
    req: FanOutRequest,
    json: bool,
    output: &mut CallOutput,
    halts: Halts,
) -> anyhow::Result<u8> {
    let halts = halts.with_deadline(crate::run::deadline(req.timeout_secs));
    let acct = d.account()?;
    let all: Vec<Node> = acct.login.client()?.call::<proto::routes::ListNodes>(&[], &Default::default()).await?;
    let mut nodes: Vec<Node> = all.into_iter().filter(|n| req.tags.iter().all(|t| n.tags.contains(t))).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    if nodes.is_empty() {
        anyhow::bail!("no node you may use carries {}", tags_shown(&req.tags));
    }
    let command = req.command.join(" ");
    let keep = json || req.group;
    let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
    let (isolation, prefix_lines, max_output) = (&req.isolation, req.prefix && !keep, req.max_output);

    // Each node's run as a boxed future, built before the stream takes them: the
    // compiler then proves them `Send` one by one.
    let jobs: Vec<futures_util::future::BoxFuture<'_, NodeResult>> = nodes
        .iter()
        .map(|node| {
            let (tx, command, acct) = (tx.clone(), &command, &acct);
            let mut halts = halts.clone();
            let prefix = prefix_lines.then(|| format!("{}: ", node.name));
            async move {
                let began = Instant::now();
                let mut result = NodeResult {
                    node: node.name.clone(),
                    exit_code: None,
                    signal: None,
                    error: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    truncated: Truncated::default(),
                    duration_ms: 0,
                };
                if !node.online {
                    result.error = Some("offline".into());
                    return result;
                }
                // A node whose turn comes after the call was stopped is not started.
                if halts.said().is_some() {
                    result.error = Some("not started: the call was stopped".into());
                    return result;
                }
                let target = Target::Node(node.id.clone());
                let want = Want { target: &target, session: None, isolation };
                let mut lines =
                    Lines { tx, prefix, keep, out: Vec::new(), err: Vec::new(), kept: (Vec::new(), Vec::new()) };
                let what = crate::connect::What { command: Some(command), pty: None, subsystem: None };
                match on_node(d, acct, want, what, &mut halts, &mut lines, max_output).await {
                    Ended::Status(status, truncated) => {
                        result.exit_code = Some(status.exit_code());
                        if let net::ssh::ExitStatus::Signal { name, .. } = &status {
                            result.signal = Some(name.clone());
                        }
                        result.truncated = truncated;
                    }
                    Ended::Halted(SshError::TimedOut, truncated) => {
                        result.exit_code = Some(TIMED_OUT);
                        result.truncated = truncated;
                    }
                    Ended::Halted(SshError::Interrupted(name), truncated) => {
                        result.exit_code = Some(proto::exec::signal_exit_code(name));
                        result.truncated = truncated;
                    }
                    Ended::Halted(e, _) => result.error = Some(e.to_string()),
                    Ended::NotRun(why) => result.error = Some(why),
                }
                lines.flush();
                result.stdout = String::from_utf8_lossy(&lines.kept.0).into_owned();
                result.stderr = String::from_utf8_lossy(&lines.kept.1).into_owned();
                result.duration_ms = began.elapsed().as_millis() as u64;
                result
            }
            .boxed()
        })
        .collect();
    let work = futures_util::stream::iter(jobs).buffer_unordered(req.fanout.max(1)).collect::<Vec<NodeResult>>();

    // Lines are written as they come, while the nodes run; each node hears the halts
    // itself, so this ends when they have.
    tokio::pin!(work);
    let mut results = loop {
        tokio::select! {
            Some(line) = rx.recv() => write(output, &line).await,
            results = &mut work => break results,
        }
    };
    // Nobody to tell: the caller is gone.
    if halts.said() == Some(net::halt::Halt::Gone) {
        output.abandon();
        return Ok(FAILED);
    }
    while let Ok(line) = rx.try_recv() {
        write(output, &line).await;
    }
    results.sort_by(|a, b| a.node.cmp(&b.node));

    if json {
        output.print(&format!("{}\n", serde_json::to_string_pretty(&results).unwrap_or_default())).await;
    } else if req.group {
        print_groups(output, &results).await;
    }
    output.eprint(&summary(&results)).await;
    let unreachable = results.iter().any(|r| r.error.is_some());
    let worst = results.iter().filter_map(|r| r.exit_code).max().unwrap_or(0);
    Ok(if unreachable { 255 } else { worst })
}

/// How the command ended on one node.
enum Ended {
    Status(net::ssh::ExitStatus, Truncated),
    /// Stopped by a halt (the deadline, a signal, the caller gone) after it started.
    Halted(SshError, Truncated),
    /// It never ran: the node could not be reached or refused, or the call was stopped
    /// before it started.
    NotRun(String),
}

/// Starts `what` on one node and runs it to its end, or until `halts` stop it.
async fn on_node(
    d: &Daemon,
    acct: &crate::account::Account,
    want: Want<'_>,
    what: crate::connect::What<'_>,
    halts: &mut Halts,
    lines: &mut Lines,
    max_output: Option<u64>,
) -> Ended {
    let timeout = crate::run::agent_timeout(halts.deadline());
    let env: Vec<(&str, &str)> = timeout.iter().map(|t| (proto::exec::TIMEOUT_ENV, t.as_str())).collect();
    let begun = tokio::select! {
        started = crate::connect::start(d, acct, want, what, &env) => match started {
            Ok((_, begun)) => begun,
            Err(e) => return Ended::NotRun(e.to_string()),
        },
        halt = halts.next() => return match crate::run::halt_error(halt) {
            SshError::Cancelled => Ended::NotRun("not started: the caller is gone".into()),
            stopped => Ended::Halted(stopped, Truncated::default()),
        },
    };
    let mut capped = Capped::new(lines, max_output);
    let ended = begun.finish_until(NoInput, &mut capped, halts).await;
    let truncated = capped.finish().await;
    match ended {
        Ok(status) => Ended::Status(status, truncated),
        Err(e) => Ended::Halted(e, truncated),
    }
}

async fn write(output: &mut CallOutput, line: &Line) {
    let _ = if line.stderr { output.stderr(&line.bytes).await } else { output.stdout(&line.bytes).await };
}

fn tags_shown(tags: &[String]) -> String {
    match tags {
        [one] => format!("tag {one:?}"),
        many => format!("all of the tags {}", many.join(", ")),
    }
}

/// `openbox: 4 nodes: 2 ok, 1 failed (b: exit 3), 1 unreachable (c: offline)`.
fn summary(results: &[NodeResult]) -> String {
    let mut parts = Vec::new();
    for outcome in ["ok", "failed", "timed out", "unreachable"] {
        let these: Vec<&NodeResult> = results.iter().filter(|r| r.outcome() == outcome).collect();
        if these.is_empty() {
            continue;
        }
        let detail: Vec<String> = these
            .iter()
            .map(|r| match (&r.error, r.exit_code) {
                (Some(why), _) => format!("{}: {why}", r.node),
                (None, Some(c)) => format!("{}: exit {c}", r.node),
                (None, None) => r.node.clone(),
            })
            .collect();
        parts.push(match outcome {
            "ok" => format!("{} ok", these.len()),
            _ => format!("{} {outcome} ({})", these.len(), detail.join("; ")),
        });
    }
    let n = results.len();
    format!("openbox: {n} node{}: {}\n", if n == 1 { "" } else { "s" }, parts.join(", "))
}

/// Each distinct output once, under the names of the nodes that printed it.
async fn print_groups(output: &mut CallOutput, results: &[NodeResult]) {
    for stderr in [false, true] {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for r in results {
            let text = if stderr { &r.stderr } else { &r.stdout };
            if text.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(t, _)| t == text) {
                Some((_, names)) => names.push(&r.node),
                None => groups.push((text.clone(), vec![&r.node])),
            }
        }
        for (text, names) in groups {
            let rule = "-".repeat(16);
            let mut block = format!("{rule}\n{}\n{rule}\n{text}", names.join(","));
            if !block.ends_with('\n') {
                block.push('\n');
            }
            let _ = if stderr { output.stderr(block.as_bytes()).await } else { output.stdout(block.as_bytes()).await };
        }
    }
}

/// One node's output: whole lines, prefixed, sent to the writer — or kept for the end.
struct Lines {
    tx: mpsc::UnboundedSender<Line>,
    prefix: Option<String>,
    keep: bool,
    out: Vec<u8>,
    err: Vec<u8>,
    kept: (Vec<u8>, Vec<u8>),
}

impl Lines {
    fn take(&mut self, stderr: bool, data: &[u8]) {
        if self.keep {
            let kept = if stderr { &mut self.kept.1 } else { &mut self.kept.0 };
            kept.extend_from_slice(data);
            return;
        }
        let buf = if stderr { &mut self.err } else { &mut self.out };
        buf.extend_from_slice(data);
        if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
            let done: Vec<u8> = buf.drain(..=end).collect();
            self.send(stderr, &done);
        }
    }

    /// Sends whole lines, each with the prefix.
    fn send(&self, stderr: bool, lines: &[u8]) {
        let bytes = match &self.prefix {
            None => lines.to_vec(),
            Some(p) => {
                lines.split_inclusive(|b| *b == b'\n').flat_map(|l| p.as_bytes().iter().chain(l)).copied().collect()
            }
        };
        let _ = self.tx.send(Line { stderr, bytes });
    }

    /// A last line without its newline gets one.
    fn flush(&mut self) {
        for stderr in [false, true] {
            let buf = std::mem::take(if stderr { &mut self.err } else { &mut self.out });
            if !buf.is_empty() {
                let mut line = buf;
                line.push(b'\n');
                self.send(stderr, &line);
            }
        }
    }
}

impl net::ssh::Output for Lines {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.take(false, data);
        Ok(())
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.take(true, data);
        Ok(())
    }
}
