//! The caller's terminal during `openbox -i`. openboxd puts it in raw mode and puts it
//! back; this process keeps its settings too and puts them back when the call returns, so
//! the terminal is sane even if openboxd died mid-call. Only the terminal's foreground
//! process hears SIGWINCH — this one — so each is passed on as a byte in a pipe whose
//! other end goes to openboxd with the call.

use std::os::fd::{AsFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};

/// The terminal's settings from before the call; put back when dropped.
pub struct Kept(Termios);

impl Kept {
    pub fn now() -> Option<Kept> {
        tcgetattr(std::io::stdin()).ok().map(Kept)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.0);
    }
}

/// A pipe that gets a byte at each SIGWINCH; its read end, for openboxd.
pub fn resizes() -> std::io::Result<OwnedFd> {
    let (read, write) = std::io::pipe()?;
    let write = OwnedFd::from(write);
    // A signal handler must never block on a full pipe: a missed byte is no loss, the
    // next read of the size sees the latest one.
    let flags = rustix::fs::fcntl_getfl(&write)?;
    rustix::fs::fcntl_setfl(&write, flags | rustix::fs::OFlags::NONBLOCK)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGWINCH, write)?;
    Ok(read.into())
}
