//! The Unix-socket JSON-RPC server (see `docs/rpc.md`): one JSON object per line each way.
//! File descriptors for `cli` and fd-mode `run` arrive with the request (SCM_RIGHTS).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use base64::Engine as _;
use proto::request::Request as CallRequest;
use proto::rpc::{
    self, CliParams, CliResult, Hello, HelloReply, Mismatch, NodesParams, Request, Response, RunParams, RunResult,
    StdioMode, Stopping, code, method,
};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use serde_json::Value;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixListener;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, watch};

use net::halt::{Halt, HaltSender, Halts};

use crate::io::{CallInput, CallIo, CallOutput, FrameSink, fd_input};
use crate::terminal::Terminal;
use crate::{Daemon, handle};

/// Received descriptors are close-on-exec from the start where the kernel can do that.
#[cfg(target_os = "linux")]
const RECV_FLAGS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
#[cfg(not(target_os = "linux"))]
const RECV_FLAGS: RecvFlags = RecvFlags::empty();

/// Serves the socket until `shutdown` completes or a client calls `shutdown`; then stops
/// accepting and gives open connections a few seconds to finish (so a stop request is
/// answered, and short calls complete).
pub async fn serve(listener: UnixListener, d: Arc<Daemon>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let me = rustix::process::getuid().as_raw();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == me => {}
                        Ok(cred) => {
                            tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "refused a connection whose peer is unknown");
                            continue;
                        }
                    }
                    connections.spawn(connection(stream, d.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = d.shutdown.notified() => break,
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), drain).await.is_err() {
        tracing::warn!("stopping with calls still running");
    }
}

/// The longest request line openboxd reads (stdin goes in notifications of any number).
pub const MAX_LINE: usize = 1 << 20;
/// The most descriptors a client may have sent that no request has taken yet.
const MAX_PENDING_FDS: usize = 48;

/// Reads newline-delimited messages, keeping any file descriptors that came along.
struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    eof: bool,
    /// Why reading stopped early: the client broke a limit.
    broke: Option<&'static str>,
}

impl Reader {
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                return Some(self.buf.drain(..=pos).collect());
            }
            if self.buf.len() > MAX_LINE {
                self.broke = Some("a request line longer than 1 MiB (send stdin in `stdin` notifications)");
                return None;
            }
            if self.fds.len() > MAX_PENDING_FDS {
                self.broke = Some("more descriptors than requests take (send three with each `cli` or fds call)");
                return None;
            }
            if self.eof {
                return None;
            }
            let stream = self.half.as_ref();
            if stream.readable().await.is_err() {
                return None;
            }
            let got = stream.try_io(Interest::READABLE, || {
                let mut data = vec![0u8; 64 * 1024];
                let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = recvmsg(stream, &mut [IoSliceMut::new(&mut data)], &mut control, RECV_FLAGS)?;
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                // macOS cannot set close-on-exec as they arrive: set it now, so that no
                // process openboxd starts inherits a caller's terminal or files.
                #[cfg(not(target_os = "linux"))]
                for fd in &fds {
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
                }
                data.truncate(msg.bytes);
                Ok((data, fds))
            });
            match got {
                Ok((data, fds)) => {
                    if data.is_empty() && fds.is_empty() {
                        self.eof = true;
                    }
                    self.buf.extend_from_slice(&data);
                    self.fds.extend(fds);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    }
}

fn line(resp: &Response) -> String {
    serde_json::to_string(resp).expect("responses serialize")
}

async fn connection(stream: tokio::net::UnixStream, d: Arc<Daemon>) {
    let (read, mut write) = stream.into_split();
    let (lines, mut outbox) = mpsc::channel::<String>(64);
    let writer = tokio::spawn(async move {
        while let Some(mut l) = outbox.recv().await {
            l.push('\n');
            if write.write_all(l.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    // Flips to true when the client goes away: running commands are then stopped.
    let (gone_tx, gone) = watch::channel(false);
    // Each running call's halts, by request id: a `signal` notification names one, and
    // the client going away stops them all.
    let mut halt_senders: HashMap<String, HaltSender> = HashMap::new();
    let mut reader = Reader { half: read, buf: Vec::new(), fds: VecDeque::new(), eof: false, broke: None };
    let mut greeted = false;
    let mut stdin_routes: HashMap<String, mpsc::Sender<Vec<u8>>> = HashMap::new();

    while let Some(raw) = reader.next_line().await {
        let req: Request = match serde_json::from_slice(&raw) {
            Ok(r) => r,
            Err(e) => {
                let _ = lines
                    .send(line(&Response::err(Value::Null, code::PARSE_ERROR, format!("not a JSON-RPC request: {e}"))))
                    .await;
                continue;
            }
        };
        let id = req.id.clone().unwrap_or(Value::Null);
        let reply = |resp: Response| {
            let lines = lines.clone();
            async move {
                let _ = lines.send(line(&resp)).await;
            }
        };
        if !greeted && req.method != method::HELLO && req.method != method::SHUTDOWN {
            reply(Response::err(id, code::PROTOCOL_MISMATCH, "send `hello` with the protocol version first")).await;
            break;
        }
        match req.method.as_str() {
            method::HELLO => {
                let hello: Hello = match serde_json::from_value(req.params) {
                    Ok(h) => h,
                    Err(e) => {
                        reply(Response::err(id, code::INVALID_PARAMS, format!("hello: {e}"))).await;
                        break;
                    }
                };
                let other_release = hello.release.as_deref().filter(|r| *r != proto::VERSION);
                if hello.protocol != rpc::PROTOCOL || other_release.is_some() {
                    let msg = match other_release {
                        Some(release) if hello.protocol == rpc::PROTOCOL => {
                            format!("openboxd is release {}, the client {release}", proto::VERSION)
                        }
                        _ => format!("openboxd speaks protocol {}, the client {}", rpc::PROTOCOL, hello.protocol),
                    };
                    let mut resp = Response::err(id, code::PROTOCOL_MISMATCH, msg);
                    if let Some(e) = resp.error.as_mut() {
                        let me = me();
                        e.data = Some(to_value(&Mismatch {
                            protocol: me.protocol,
                            version: Some(me.version),
                            pid: Some(me.pid),
                        }));
                    }
                    reply(resp).await;
                    break;
                }
                greeted = true;
                reply(Response::ok(id, to_value(&me()))).await;
            }
            method::CLI => {
                let params: CliParams = match params(req.params, "cli") {
                    Ok(p) => p,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                let Some((stdin, stdout, stderr)) = take_three(&mut reader.fds) else {
                    reply(Response::err(
                        id,
                        code::INVALID_PARAMS,
                        "cli needs stdin, stdout and stderr sent with the request (SCM_RIGHTS)",
                    ))
                    .await;
                    continue;
                };
                // A run in a terminal: the terminal is its stdin, and a fourth descriptor
                // may carry its resizes.
                let wants_tty = matches!(&params.call.request, CallRequest::Run(r) if r.tty.is_some());
                let terminal = match wants_tty {
                    true => match stdin.try_clone() {
                        Ok(tty) => Some(Terminal::from_caller(tty, reader.fds.pop_front())),
                        Err(e) => {
                            reply(Response::err(id, code::FAILED, format!("cannot use the terminal: {e}"))).await;
                            continue;
                        }
                    },
                    false => None,
                };
                let halts = halts_for(&mut halt_senders, &id);
                let (d, lines) = (d.clone(), lines.clone());
                tokio::spawn(async move {
                    let verbosity = params.call.verbosity;
                    let log_to = (verbosity > 0).then(|| stderr.try_clone().ok().map(Into::into)).flatten();
                    let (input, output) = (fd_input(stdin), CallOutput::fds(stdout, stderr));
                    let call = handle(&d, params.call, CallIo { input, terminal, output, halts });
                    let exit_code = crate::call_log::scope(verbosity, log_to, true, call).await;
                    let _ = lines.send(line(&Response::ok(id, to_value(&CliResult { exit_code })))).await;
                });
            }
            method::RUN => {
                let params: RunParams = match params(req.params, "run") {
                    Ok(p) => p,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                let (input, output, terminal) = match params.stdio {
                    StdioMode::Fds => {
                        let Some((stdin, stdout, stderr)) = take_three(&mut reader.fds) else {
                            reply(Response::err(
                                id,
                                code::INVALID_PARAMS,
                                "stdio \"fds\" needs three descriptors sent with the request",
                            ))
                            .await;
                            continue;
                        };
                        // With `tty`, stdin is the terminal (a fourth descriptor may carry
                        // its resizes, as from the CLI).
                        let terminal = match params.run.tty {
                            Some(_) => stdin.try_clone().ok().map(|t| Terminal::from_caller(t, reader.fds.pop_front())),
                            None => None,
                        };
                        (fd_input(stdin), CallOutput::fds(stdout, stderr), terminal)
                    }
                    StdioMode::Frames => {
                        let input = if params.stdin {
                            let (tx, rx) = mpsc::channel(16);
                            stdin_routes.insert(id.to_string(), tx);
                            CallInput::Chunks(rx)
                        } else {
                            CallInput::Empty
                        };
                        (input, CallOutput::Frames(FrameSink { id: id.clone(), lines: lines.clone() }), None)
                    }
                };
                let run = params.run;
                let halts = halts_for(&mut halt_senders, &id);
                let (d, lines) = (d.clone(), lines.clone());
                tokio::spawn(async move {
                    let mut io = CallIo { input, terminal, output, halts };
                    let outcome = crate::run::run(&d, run, &mut io).await;
                    let exit_code = crate::io::conclude(io.output, outcome.exit_code).await;
                    let result = RunResult { exit_code, signal: outcome.signal, truncated: outcome.truncated };
                    let _ = lines.send(line(&Response::ok(id, to_value(&result)))).await;
                });
            }
            method::FILE | method::COPY => {
                let call = match req.method.as_str() {
                    method::FILE => params(req.params, method::FILE).map(Transfer::File),
                    _ => params(req.params, method::COPY).map(Transfer::Copy),
                };
                let call = match call {
                    Ok(call) => call,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                // A write's bytes come in `stdin` notifications.
                let (tx, rx) = mpsc::channel(16);
                stdin_routes.insert(id.to_string(), tx);
                let input = CallInput::Chunks(rx);
                let output = CallOutput::Frames(FrameSink { id: id.clone(), lines: lines.clone() });
                let halts = halts_for(&mut halt_senders, &id);
                let (d, lines) = (d.clone(), lines.clone());
                tokio::spawn(async move {
                    let mut io = CallIo { input, terminal: None, output, halts };
                    let done = match call {
                        Transfer::File(p) => crate::files::file(&d, p, &mut io).await,
                        Transfer::Copy(req) => crate::copy::copy(&d, req, &mut io).await.map(|r| r.json),
                    };
                    let resp = match done {
                        Ok(value) => Response::ok(id, value),
                        Err(e) => Response::err(id, code::FAILED, format!("{e:#}")),
                    };
                    let _ = lines.send(line(&resp)).await;
                });
            }
            method::JOB_START
            | method::JOBS
            | method::JOB_READ
            | method::JOB_WAIT
            | method::JOB_STOP
            | method::JOB_SEND
            | method::JOB_FORGET
            | method::JOB_SCREEN => {
                let call = match job_call(req.method.as_str(), req.params) {
                    Ok(call) => call,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                let input = if matches!(call, JobCall::Send(_)) {
                    let (tx, rx) = mpsc::channel(16);
                    stdin_routes.insert(id.to_string(), tx);
                    CallInput::Chunks(rx)
                } else {
                    CallInput::Empty
                };
                let (d, lines) = (d.clone(), lines.clone());
                tokio::spawn(async move {
                    let resp = match job(&d, call, input).await {
                        Ok(value) => Response::ok(id, value),
                        Err(e) => Response::err(id, code::FAILED, format!("{e:#}")),
                    };
                    let _ = lines.send(line(&resp)).await;
                });
            }
            method::SIGNAL => {
                let Ok(params) = serde_json::from_value::<rpc::CallSignal>(req.params) else { continue };
                let Some(name) = rpc::CALL_SIGNALS.iter().find(|s| **s == params.signal) else { continue };
                if let Some(tx) = halt_senders.get(&params.id.to_string()) {
                    tx.send_replace(Some(Halt::Signal(name)));
                }
            }
            method::STDIN => {
                let Ok(params) = serde_json::from_value::<rpc::Stdin>(req.params) else { continue };
                let key = params.id.to_string();
                if let Some(data) = params.data.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    && let Some(tx) = stdin_routes.get(&key)
                {
                    let _ = tx.send(data).await;
                }
                if params.eof {
                    stdin_routes.remove(&key);
                }
            }
            method::NODES => {
                let params: NodesParams = match params(req.params, method::NODES) {
                    Ok(p) => p,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                reply(reply_of(id, crate::commands::nodes(&d, params.tag.as_deref()).await)).await;
            }
            method::WHOAMI => reply(reply_of(id, crate::commands::whoami(&d).await)).await,
            method::SESSIONS => reply(reply_of(id, crate::commands::sessions(&d).await)).await,
            method::SESSION_END => {
                let params: rpc::SessionEndParams = match params(req.params, method::SESSION_END) {
                    Ok(p) => p,
                    Err(msg) => {
                        reply(Response::err(id, code::INVALID_PARAMS, msg.to_string())).await;
                        continue;
                    }
                };
                reply(reply_of(id, crate::commands::session_remove(&d, &params.id).await)).await;
            }
            method::SUBSCRIBE => {
                if let Err(e) = d.login() {
                    reply(Response::err(id, code::FAILED, format!("{e:#}"))).await;
                    continue;
                }
                let (now, events) = d.subscribe();
                reply(Response::ok(id.clone(), to_value(&now))).await;
                tokio::spawn(forward_events(id, events, lines.clone(), went_away(gone.clone())));
            }
            method::STATUS => reply(Response::ok(id, to_value(&d.status()))).await,
            method::SHUTDOWN => {
                reply(Response::ok(id, to_value(&Stopping { stopping: true }))).await;
                d.shutdown.notify_one();
            }
            other => reply(Response::err(id, code::METHOD_NOT_FOUND, format!("no method {other:?}"))).await,
        }
    }
    if let Some(why) = reader.broke {
        tracing::warn!(why, "closed a connection that broke a limit");
        let _ = lines.send(line(&Response::err(Value::Null, code::INVALID_REQUEST, format!("refused: {why}")))).await;
    }
    let _ = gone_tx.send(true);
    for tx in halt_senders.values() {
        tx.send_replace(Some(Halt::Gone));
    }
    drop(lines);
    let _ = writer.await;
}

/// Sends each fleet event to a subscriber as an `event` notification until it goes away;
/// one that falls behind is told how many it missed rather than blocking the others.
async fn forward_events(
    id: Value,
    mut events: tokio::sync::broadcast::Receiver<rpc::FleetEvent>,
    lines: mpsc::Sender<String>,
    gone: impl Future<Output = ()>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let forward = async {
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(count)) => rpc::FleetEvent::Missed { count },
                Err(RecvError::Closed) => return,
            };
            let note = Request::new(None, method::EVENT, to_value(&rpc::EventNote { id: id.clone(), event }));
            if lines.send(serde_json::to_string(&note).unwrap_or_default()).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = forward => {}
        () = gone => {}
    }
}

/// A job request, its parameters read.
enum JobCall {
    Start(Box<proto::jobs::JobStartParams>),
    List,
    Read(proto::jobs::JobReadParams),
    Wait(proto::jobs::JobWaitParams),
    Stop(proto::jobs::JobParams),
    Send(proto::jobs::JobSendParams),
    Forget(proto::jobs::JobParams),
    Screen(proto::jobs::JobParams),
}

fn job_call(name: &str, value: Value) -> Result<JobCall, BadParams> {
    Ok(match name {
        method::JOB_START => JobCall::Start(Box::new(params(value, name)?)),
        method::JOB_READ => JobCall::Read(params(value, name)?),
        method::JOB_WAIT => JobCall::Wait(params(value, name)?),
        method::JOB_STOP => JobCall::Stop(params(value, name)?),
        method::JOB_SEND => JobCall::Send(params(value, name)?),
        method::JOB_FORGET => JobCall::Forget(params(value, name)?),
        method::JOB_SCREEN => JobCall::Screen(params(value, name)?),
        _ => JobCall::List,
    })
}

/// Carries out a job request; its answer as JSON.
async fn job(d: &Arc<Daemon>, call: JobCall, input: CallInput) -> anyhow::Result<Value> {
    let jobs = d.jobs()?;
    Ok(match call {
        JobCall::Start(p) => {
            let p = *p;
            to_value(&jobs.start(d, p.run, p.stdin, p.terminal).await?)
        }
        JobCall::List => to_value(&jobs.list()),
        JobCall::Read(p) => {
            let max = p.max_bytes.unwrap_or(64 << 10).min(16 << 20) as usize;
            to_value(&jobs.read(&p.id, p.stdout_offset, p.stderr_offset, max)?)
        }
        JobCall::Wait(p) => to_value(&jobs.wait(&p.id, p.timeout_secs.map(|t| t.0)).await?),
        JobCall::Stop(p) => to_value(&jobs.stop(d, &p.id).await?),
        JobCall::Send(p) => to_value(&jobs.send(d, &p.id, input, p.close).await?),
        JobCall::Screen(p) => to_value(&jobs.screen(d, &p.id).await?),
        JobCall::Forget(p) => {
            jobs.forget(d, &p.id).await?;
            serde_json::json!({ "removed": p.id })
        }
    })
}

/// A `file` or `copy` request.
enum Transfer {
    File(proto::files::FileParams),
    Copy(proto::request::CopyRequest),
}

/// Parameters that do not fit their method.
#[derive(Debug, thiserror::Error)]
#[error("{method}: {error}")]
struct BadParams {
    method: String,
    error: serde_json::Error,
}

/// A method's parameters, or why they do not fit.
fn params<T: serde::de::DeserializeOwned>(value: Value, method: &str) -> Result<T, BadParams> {
    // Parameters left out altogether are no parameters.
    let value = if value.is_null() { Value::Object(Default::default()) } else { value };
    serde_json::from_value(value).map_err(|error| BadParams { method: method.to_owned(), error })
}

/// This daemon, as `hello` describes it.
fn me() -> HelloReply {
    HelloReply { protocol: rpc::PROTOCOL, version: proto::VERSION.into(), pid: std::process::id() }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("openboxd's answers serialize")
}

fn take_three(fds: &mut VecDeque<OwnedFd>) -> Option<(OwnedFd, OwnedFd, OwnedFd)> {
    if fds.len() < 3 {
        return None;
    }
    Some((fds.pop_front()?, fds.pop_front()?, fds.pop_front()?))
}

/// The halts of a new call `id`, its sender kept for `signal` notifications (and the
/// client going away). Senders of calls that have ended are dropped as new ones come.
fn halts_for(senders: &mut HashMap<String, HaltSender>, id: &Value) -> Halts {
    senders.retain(|_, tx| tx.receiver_count() > 0);
    let (tx, halts) = Halts::channel();
    senders.insert(id.to_string(), tx);
    halts
}

async fn went_away(mut gone: watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await;
}

fn reply_of(id: Value, r: anyhow::Result<crate::commands::Reply>) -> Response {
    match r {
        Ok(reply) => Response::ok(id, reply.json),
        Err(e) => Response::err(id, code::FAILED, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

    use super::*;

    fn reader(half: OwnedReadHalf) -> Reader {
        Reader { half, buf: Vec::new(), fds: VecDeque::new(), eof: false, broke: None }
    }

    #[tokio::test]
    async fn lines_are_split_wherever_the_bytes_break_and_descriptors_are_kept() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (read, _write) = tokio::net::UnixStream::from_std({
            ours.set_nonblocking(true).unwrap();
            ours
        })
        .unwrap()
        .into_split();
        let mut r = reader(read);

        // Two requests and the start of a third in one message, with three descriptors.
        let file = tempfile_fd();
        let fds = [file.as_fd(), file.as_fd(), file.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(&theirs, &[IoSlice::new(b"{\"a\":1}\n{\"b\":2}\n{\"c\"")], &mut control, SendFlags::empty()).unwrap();
        assert_eq!(r.next_line().await.unwrap(), b"{\"a\":1}\n");
        assert_eq!(r.fds.len(), 3, "the descriptors arrive with the first bytes");
        assert_eq!(r.next_line().await.unwrap(), b"{\"b\":2}\n");

        // The rest of the third, later.
        rustix::io::write(&theirs, b":3}\n").unwrap();
        assert_eq!(r.next_line().await.unwrap(), b"{\"c\":3}\n");
        drop(theirs);
        assert_eq!(r.next_line().await, None, "end of stream ends the lines");
    }

    #[test]
    fn take_three_needs_all_three() {
        let mut fds: VecDeque<OwnedFd> = VecDeque::new();
        fds.push_back(tempfile_fd());
        fds.push_back(tempfile_fd());
        assert!(take_three(&mut fds).is_none());
        fds.push_back(tempfile_fd());
        assert!(take_three(&mut fds).is_some());
        assert!(fds.is_empty());
    }

    fn tempfile_fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }
}
