//! Talking to openboxd: connect to its socket (starting it under a lock when it is not
//! running), say `hello`, and hand over the call with this process's stdin, stdout and
//! stderr (SCM_RIGHTS). openboxd writes the output straight into them; the CLI only waits
//! for the exit code. Each context has an openboxd of its own: every function here is
//! told which.

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paths::Context;
use proto::request::{CALL_ENV, Call};
use proto::rpc::{self, CliParams, CliResult, Hello, Mismatch, Request, Response, method};
use rustix::fs::{FlockOperation, flock};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

/// Why a call through the daemon did not produce an exit code.
pub enum Failure {
    /// The running daemon speaks another protocol; it has been asked to stop.
    Mismatch(String),
    /// The daemon went away before answering `hello` (it was dying): nothing ran.
    Unanswered(String),
    /// A second signal came before the call ended: the exit code it ends with here.
    Signalled(u8),
    Other(String),
}

/// Runs `call` through the context's openboxd and returns the exit code.
pub fn call(call: &Call, context: &Context) -> Result<u8, String> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    call_with(call, context, &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()])
}

/// Runs `call` (a run in a terminal) through the context's openboxd, with `resizes`, a
/// pipe that carries the terminal's size changes, as a fourth descriptor.
pub fn call_in_terminal(call: &Call, context: &Context, resizes: Option<BorrowedFd<'_>>) -> Result<u8, String> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut fds = vec![stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    fds.extend(resizes);
    call_with(call, context, &fds)
}

/// Runs `call` through openboxd with its output captured rather than printed (for a small
/// answer this process needs to read itself); the exit code and the output.
pub fn call_capturing(call: &Call, context: &Context) -> Result<(u8, Vec<u8>), String> {
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let (stdin, stderr) = (std::io::stdin(), std::io::stderr());
    let code = call_with(call, context, &[stdin.as_fd(), writer.as_fd(), stderr.as_fd()])?;
    drop(writer);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| format!("reading openboxd's answer: {e}"))?;
    Ok((code, out))
}

/// Runs `call` through the context's openboxd only if one runs: none is started, and none
/// is started again when the running one speaks another protocol (then nothing runs).
pub fn call_if_running(call: &Call, context: &Context) -> Option<u8> {
    let socket = context.daemon_socket();
    let stream = ours(UnixStream::connect(&socket).ok()?, &socket).ok()?;
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    exchange(stream, &socket, call, &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]).ok()
}

fn call_with(call: &Call, context: &Context, fds: &[BorrowedFd<'_>]) -> Result<u8, String> {
    let socket = context.daemon_socket();
    for attempt in 0..2 {
        let stream = connect_or_start(context)?;
        match exchange(stream, &socket, call, fds) {
            Ok(code) => return Ok(code),
            Err(Failure::Mismatch(why)) if attempt == 0 => {
                eprintln!("openbox: restarting openboxd ({why})");
            }
            Err(Failure::Unanswered(_)) if attempt == 0 => {}
            Err(Failure::Signalled(code)) => return Ok(code),
            Err(Failure::Mismatch(why) | Failure::Unanswered(why) | Failure::Other(why)) => return Err(why),
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Checks that whoever serves the socket runs as this user: the call hands it this
/// process's terminal and files.
fn ours(stream: UnixStream, socket: &Path) -> Result<UnixStream, String> {
    let me = rustix::process::getuid().as_raw();
    let peer = peer_uid(&stream).map_err(|e| format!("cannot tell who serves {}: {e}", socket.display()))?;
    if peer != me {
        return Err(format!(
            "{} is served by uid {peer}, not by you (uid {me}); refusing to hand it this call. Remove it, then try again",
            socket.display(),
        ));
    }
    Ok(stream)
}

/// The user of the process at the socket's other end (`SO_PEERCRED`).
#[cfg(target_os = "linux")]
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// The user of the process at the socket's other end (`getpeereid`, `LOCAL_PEERCRED`).
#[cfg(target_os = "macos")]
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    Ok(nix::unistd::getpeereid(stream)?.0.as_raw())
}

fn connect_or_start(context: &Context) -> Result<UnixStream, String> {
    let socket = &context.daemon_socket();
    paths::check_socket_path(socket)?;
    if let Ok(s) = UnixStream::connect(socket) {
        return ours(s, socket);
    }
    // Start it, under a lock so that concurrent first calls start one daemon.
    let dir = socket.parent().ok_or("the socket path has no directory")?;
    paths::create_private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(context.daemon_lock())
        .map_err(|e| format!("opening the openboxd lock: {e}"))?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| format!("locking: {e}"))?;
    if let Ok(s) = UnixStream::connect(socket) {
        return ours(s, socket); // another call started it while we waited
    }
    let logs = context.logs_dir();
    paths::create_private_dir(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let log_path = context.daemon_log();
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let binary = paths::sibling_binary("openboxd");
    let mut child = Command::new(&binary)
        .env_remove(CALL_ENV)
        .env(paths::CONTEXT_ENV, context.name())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!("cannot start {} ({e}); it is installed next to `openbox` — reinstall openbox", binary.display())
        })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pause = Duration::from_millis(1);
    loop {
        if let Ok(s) = UnixStream::connect(socket) {
            // The daemon lives on; its exit status is nobody's business here.
            std::mem::forget(child);
            return ours(s, socket);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("openboxd exited while starting ({status}); see {}", log_path.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("openboxd did not start within 10s; see {}", log_path.display()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn exchange(stream: UnixStream, socket: &Path, call: &Call, fds: &[BorrowedFd<'_>]) -> Result<u8, Failure> {
    let other = |e: std::io::Error| Failure::Other(format!("talking to openboxd: {e}"));
    let hello = Request::new(
        Some(0.into()),
        method::HELLO,
        to_value(&Hello {
            protocol: rpc::PROTOCOL,
            client: format!("openbox {}", proto::VERSION),
            release: Some(proto::VERSION.to_owned()),
        }),
    );
    let cli = Request::new(Some(1.into()), method::CLI, to_value(&CliParams { call: call.clone() }));
    let mut bytes = serde_json::to_vec(&hello).expect("serializable");
    bytes.push(b'\n');
    bytes.extend(serde_json::to_vec(&cli).expect("serializable"));
    bytes.push(b'\n');

    // Both requests and the call's three standard streams (and a terminal's resize pipe)
    // travel in one message.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(fds));
    let mut sent =
        sendmsg(&stream, &[IoSlice::new(&bytes)], &mut control, SendFlags::empty()).map_err(|e| other(e.into()))?;
    while sent < bytes.len() {
        sent += rustix::io::write(&stream, &bytes[sent..]).map_err(|e| other(e.into()))?;
    }

    let mut answers = Answers::new(&stream).map_err(other)?;
    let mut next = || -> Result<Response, Failure> {
        let line = answers.next_line()?;
        serde_json::from_str(&line).map_err(|e| Failure::Other(format!("unreadable answer from openboxd: {e}")))
    };
    let hello = next().map_err(|f| match f {
        Failure::Other(why) => Failure::Unanswered(why),
        f => f,
    })?;
    if let Some(err) = hello.error {
        if err.code == rpc::code::PROTOCOL_MISMATCH {
            let daemon = err.data.and_then(|d| serde_json::from_value::<Mismatch>(d).ok());
            stop_daemon(socket, daemon.and_then(|d| d.pid));
            return Err(Failure::Mismatch(err.message));
        }
        return Err(Failure::Other(err.message));
    }
    let answer = next()?;
    match (answer.result, answer.error) {
        (Some(result), _) => serde_json::from_value::<CliResult>(result)
            .map(|r| r.exit_code)
            .map_err(|e| Failure::Other(format!("openboxd's answer has no exit code ({e})"))),
        (None, Some(err)) => Err(Failure::Other(err.message)),
        (None, None) => Err(Failure::Other("openboxd's answer is empty".into())),
    }
}

/// The daemon's answers, line by line, read while this process's SIGINT, SIGTERM and
/// SIGHUP are passed on: the first of them goes to the call (openboxd hands it to the
/// command, which then ends, or is stopped a moment later — the answer says how it
/// ended); a second one ends this process at once, which openboxd takes as the caller
/// gone.
struct Answers<'s> {
    stream: &'s UnixStream,
    buf: Vec<u8>,
    /// A pipe per signal that gets a byte when it comes: (its name, read end).
    signals: Vec<(&'static str, std::os::fd::OwnedFd)>,
    signalled: bool,
}

impl<'s> Answers<'s> {
    fn new(stream: &'s UnixStream) -> std::io::Result<Answers<'s>> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = Vec::new();
        for (sig, name) in [(SIGINT, "INT"), (SIGTERM, "TERM"), (SIGHUP, "HUP")] {
            let (read, write) = std::io::pipe()?;
            let write = std::os::fd::OwnedFd::from(write);
            // A handler never blocks on a full pipe; one byte says it all.
            let flags = rustix::fs::fcntl_getfl(&write)?;
            rustix::fs::fcntl_setfl(&write, flags | rustix::fs::OFlags::NONBLOCK)?;
            signal_hook::low_level::pipe::register(sig, write)?;
            signals.push((name, read.into()));
        }
        Ok(Answers { stream, buf: Vec::new(), signals, signalled: false })
    }

    fn next_line(&mut self) -> Result<String, Failure> {
        use rustix::event::{PollFd, PollFlags, poll};
        let other = |e: std::io::Error| Failure::Other(format!("talking to openboxd: {e}"));
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(self.stream, PollFlags::IN)];
            fds.extend(self.signals.iter().map(|(_, fd)| PollFd::new(fd, PollFlags::IN)));
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(other(e.into())),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            if let Some(i) = ready[1..].iter().position(|r| *r) {
                let (name, fd) = &self.signals[i];
                let mut byte = [0u8; 16];
                let _ = rustix::io::read(fd, &mut byte);
                if self.signalled {
                    // Dropping the connection is the caller gone: openboxd stops the command.
                    return Err(Failure::Signalled(proto::exec::signal_exit_code(name)));
                }
                self.signalled = true;
                let note = Request::new(
                    None,
                    method::SIGNAL,
                    to_value(&rpc::CallSignal { id: 1.into(), signal: (*name).to_owned() }),
                );
                let mut text = serde_json::to_vec(&note).expect("serializable");
                text.push(b'\n');
                let _ = (&mut &*self.stream).write_all(&text);
                continue;
            }
            if ready[0] {
                let mut chunk = [0u8; 8192];
                match rustix::io::read(self.stream, &mut chunk) {
                    Ok(0) => return Err(Failure::Other("openboxd closed the connection".into())),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(e) => return Err(other(e.into())),
                }
            }
        }
    }
}

/// Stops the openboxd serving `socket`, if one runs, and waits (at most 10 s) until it is
/// done with its files; whether one ran.
pub fn stop(socket: &Path) -> Result<bool, String> {
    let Ok(stream) = UnixStream::connect(socket) else { return Ok(false) };
    drop(ours(stream, socket)?);
    stop_daemon(socket, None);
    // Removing its socket is the last thing it does.
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}

/// Asks the daemon at `socket` to stop, and waits until its process `pid` has, if known.
fn stop_daemon(socket: &Path, pid: Option<u32>) {
    if let Ok(mut s) = UnixStream::connect(socket) {
        use std::io::Write;
        let req = Request::new(Some(0.into()), method::SHUTDOWN, serde_json::Value::Null);
        let _ = writeln!(s, "{}", serde_json::to_string(&req).expect("serializable"));
        let _ = BufReader::new(&s).lines().next();
    }
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else { return };
    let deadline = Instant::now() + Duration::from_secs(5);
    while rustix::process::test_kill_process(pid).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializable")
}
