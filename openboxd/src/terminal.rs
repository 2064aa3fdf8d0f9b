//! The caller's terminal, for `openbox -i`: its size for the remote pseudo-terminal, raw
//! mode while the command runs (restored on every way out: the guard's drop), and its
//! size changes as they happen. The CLI passes the terminal as its stdin and, since only
//! the terminal's foreground process hears SIGWINCH, a pipe it writes a byte into at each
//! one; a one-shot openboxd (`--no-daemon`) is that foreground process and listens itself.

use std::os::fd::{AsFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};
use tokio::sync::mpsc;

/// The caller's terminal and how its resizes are heard.
pub struct Terminal {
    tty: OwnedFd,
    resizes: Resizes,
}

/// Where the news of a size change comes from.
enum Resizes {
    /// A pipe the CLI writes a byte into at each SIGWINCH.
    Pipe(OwnedFd),
    /// This process's own SIGWINCH.
    Signal,
    None,
}

/// Raw mode, for as long as it lives; the terminal's settings from before come back when
/// it is dropped.
pub struct RawMode {
    tty: OwnedFd,
    saved: Termios,
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(&self.tty, OptionalActions::Now, &self.saved) {
            tracing::warn!(error = %e, "could not restore the terminal's settings");
        }
    }
}

impl Terminal {
    /// `tty` (the caller's stdin), with resizes from the CLI's pipe when it sent one.
    pub fn from_caller(tty: OwnedFd, resize_pipe: Option<OwnedFd>) -> Terminal {
        Terminal { tty, resizes: resize_pipe.map_or(Resizes::None, Resizes::Pipe) }
    }

    /// This process's own stdin, resized by this process's SIGWINCH.
    pub fn own() -> std::io::Result<Terminal> {
        Ok(Terminal { tty: std::io::stdin().as_fd().try_clone_to_owned()?, resizes: Resizes::Signal })
    }

    /// Whether it is a terminal at all.
    pub fn is_tty(&self) -> bool {
        rustix::termios::isatty(&self.tty)
    }

    /// (columns, rows); 80×24 when the terminal does not say.
    pub fn size(&self) -> (u32, u32) {
        size_of(&self.tty)
    }

    /// Puts the terminal in raw mode: keys go to the remote side as typed (Ctrl-C too).
    pub fn raw(&self) -> std::io::Result<RawMode> {
        let tty = self.tty.try_clone()?;
        let saved = tcgetattr(&tty)?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&tty, OptionalActions::Now, &raw)?;
        Ok(RawMode { tty, saved })
    }

    /// The terminal's new size each time it changes, until the receiver is dropped.
    pub fn resizes(&self) -> std::io::Result<mpsc::Receiver<(u32, u32)>> {
        let (tx, rx) = mpsc::channel(4);
        let tty = self.tty.try_clone()?;
        match &self.resizes {
            Resizes::Pipe(pipe) => {
                let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe.try_clone()?)?;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            r = tokio::io::AsyncReadExt::read(&mut pipe, &mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(_) => if tx.send(size_of(&tty)).await.is_err() { return },
                            },
                        }
                    }
                });
            }
            Resizes::Signal => {
                let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            got = sig.recv() => match got {
                                Some(()) => if tx.send(size_of(&tty)).await.is_err() { return },
                                None => return,
                            },
                        }
                    }
                });
            }
            Resizes::None => {}
        }
        Ok(rx)
    }
}

fn size_of(tty: &OwnedFd) -> (u32, u32) {
    match tcgetwinsize(tty) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (u32::from(w.ws_col), u32::from(w.ws_row)),
        _ => (80, 24),
    }
}
