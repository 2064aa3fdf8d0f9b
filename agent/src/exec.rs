//! Runs one command for one SSH channel: `sh -c CMD` in its own process group, stdin fed
//! from the channel, stdout and stderr streamed back separately, and the exit status (or
//! the signal) reported last. If the caller goes away, the whole process group is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use russh::{ChannelMsg, ChannelReadHalf};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::channel::{ChannelOut, Outcome, messages};
use crate::signals;

/// Where a command's processes live, for signalling them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Natively: the command's own process group.
    Group,
    /// In an nspawn container: the processes inside it.
    Nspawn,
}

/// Passes the caller's signal to every process the command started (`pid` is the process
/// openbox spawned; its group outlives it while the command's processes do). In a
/// container that is what runs below its pid 1, so a SIGKILL'd command reads 128+9.
fn signal_tree(pid: u32, tree: Tree, sig: Signal) {
    match tree {
        Tree::Group => {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = kill_process_group(p, sig);
            }
        }
        Tree::Nspawn => {
            for (host, inner) in crate::procs::container_processes(pid) {
                if inner != 1 {
                    crate::procs::signal(host, sig);
                }
            }
        }
    }
}

/// Ends everything the command started (timeout, or the caller gone). A container goes
/// down with its pid 1.
fn tear_down(pid: u32, tree: Tree) {
    if tree == Tree::Nspawn {
        match crate::procs::container_init(pid) {
            Some(init) => crate::procs::signal(init, Signal::KILL),
            None => crate::procs::signal(pid, Signal::KILL), // not started yet: stop nspawn
        }
    }
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process_group(p, Signal::KILL);
    }
}

/// Runs `command` natively on this host for the channel; returns when it has ended and its
/// status has been sent.
pub async fn run_native(
    command: &str,
    env: &[(&str, &str)],
    timeout: Option<std::time::Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(command);
    if let Some(home) = std::env::var_os("HOME") {
        cmd.current_dir(home);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_process(cmd, Tree::Group, timeout, input, out).await
}

/// Runs a prepared command (`sh -c …`, or `systemd-nspawn …`) for the channel.
pub async fn run_process(
    mut cmd: Command,
    tree: Tree,
    timeout: Option<std::time::Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let mut input = messages(input);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let program = cmd.as_std().get_program().to_string_lossy().into_owned();
            return out.refuse(&format!("cannot start {program}: {e}")).await;
        }
    };
    // Kept from the start: once the spawned process has been waited for, `child.id()` is
    // gone, but what it left running (`server &`) must still be stoppable.
    let pid = child.id().unwrap_or(0);
    // Stdin is written by a task of its own, and the channel is always read: a command not
    // reading its input must not stop us draining its output, and russh's session loop —
    // which also carries our output — blocks while a channel's messages go unread.
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let mut stdin_tx = Some(stdin_tx);
    if let Some(mut pipe) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(chunk) = stdin_rx.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");

    let mut out_buf = vec![0u8; 128 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    let (mut out_open, mut err_open, mut input_open) = (true, true, true);
    let mut status = None;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = false;
    // Output is drained until both pipes close, as sshd does; the status is sent last.
    while out_open || err_open || status.is_none() {
        tokio::select! {
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                tear_down(pid, tree);
            },
            r = stdout.read(&mut out_buf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => if !out.stdout(&out_buf[..n]).await { tear_down(pid, tree); out_open = false; },
            },
            r = stderr.read(&mut err_buf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => { out.stderr(&err_buf[..n]).await; }
            },
            msg = input.recv(), if input_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &stdin_tx && tx.send(data).is_err() { stdin_tx = None; }
                }
                Some(ChannelMsg::Eof) => stdin_tx = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(s) = signals::to_signal(&signal) { signal_tree(pid, tree, s); }
                }
                Some(ChannelMsg::Close) | None => {
                    // The caller is gone: nobody will read the rest.
                    tear_down(pid, tree);
                    input_open = false;
                }
                Some(_) => {}
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
            }
        }
    }
    if timed_out {
        let secs = timeout.map(|t| t.as_secs()).unwrap_or(0);
        out.stderr(format!("openbox: timed out after {secs}s\n").as_bytes()).await;
        return out.finish(Outcome::Code(124)).await;
    }
    let outcome = match status.expect("loop ends with a status") {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Outcome::Code(c as u32),
            (None, Some(sig)) => Outcome::Signal(signals::from_raw(sig), s.core_dumped()),
            (None, None) => Outcome::Code(255),
        },
        Err(e) => {
            out.stderr(format!("openbox agent: waiting for the command failed: {e}\n").as_bytes()).await;
            Outcome::Code(255)
        }
    };
    out.finish(outcome).await;
}
