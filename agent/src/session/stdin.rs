//! A session command's stdin. The session's shell lives on, so a command cannot be given
//! a pipe of its own at start; instead each command reads a FIFO made for it alone, in the
//! shell's own `/tmp`, that the caller's data is written into and that is closed at the
//! caller's end of input. When the command ends the FIFO goes with whatever it did not
//! read: the next command gets a new one, and never sees this one's leftovers.
//!
//! On Linux the FIFO is made from here through `/proc/PID/root` of the shell (the
//! container's first process for nspawn and Docker), with every name resolved inside that
//! root, so that a link in a container cannot point it at the host's files. On macOS every
//! shell the agent starts shares the machine's root, and the FIFO is made in its `/tmp`.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use tokio::sync::mpsc::UnboundedSender;

use crate::channel::Window;

/// A FIFO made for one command.
pub struct Fifo {
    /// The shell's `/tmp`, opened inside its root.
    dir: Arc<OwnedFd>,
    name: String,
    /// Its path as the shell sees it.
    pub path_in_shell: String,
}

impl Fifo {
    /// Makes a FIFO in the `/tmp` of process `shell`'s root, readable only by that
    /// process's user.
    pub fn make(shell: crate::procs::Proc) -> std::io::Result<Fifo> {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {} has ended", shell.pid));
        let root = shell.open_root()?;
        let name = format!(".openbox-stdin-{}", trust::token::random_id());
        let dir = make_in_tmp(&root, &name)?;
        let fifo = Fifo { dir: Arc::new(dir), path_in_shell: format!("/tmp/{name}"), name };
        // The shell may run as another user (a mapped login): the FIFO is theirs.
        let (uid, gid) = shell.owner().ok_or_else(gone)?;
        if uid != rustix::process::geteuid().as_raw() {
            rustix::fs::chownat(
                &*fifo.dir,
                &fifo.name,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(fifo)
    }

    /// Writes the caller's data into the FIFO from a task of its own, once the shell has
    /// opened it to read (the command's redirection does that first thing); dropping the
    /// sender is the end of input.
    pub fn feed(&self, window: Window) -> UnboundedSender<bytes::Bytes> {
        let (dir, name) = (self.dir.clone(), self.name.clone());
        let open = async move {
            let fd = tokio::task::spawn_blocking(move || {
                rustix::fs::openat(&*dir, &name, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            })
            .await
            .map_err(std::io::Error::other)??;
            tokio::net::unix::pipe::Sender::from_owned_fd(fd)
        };
        crate::drive::feed(open, window)
    }
}

/// Makes FIFO `name` in `/tmp` under `root`, resolving every name inside that root; the
/// directory it is in.
#[cfg(target_os = "linux")]
fn make_in_tmp(root: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    use rustix::fs::{FileType, ResolveFlags};
    let dir = rustix::fs::openat2(
        root,
        "tmp",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    rustix::fs::mknodat(&dir, name, FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)?;
    Ok(dir)
}

/// Makes FIFO `name` in `/tmp` (a link to `/private/tmp`, which only root may change) —
/// `root` is the machine's own on macOS; the directory it is in.
#[cfg(not(target_os = "linux"))]
fn make_in_tmp(root: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    let dir = rustix::fs::openat(root, "tmp", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    nix::unistd::mkfifo(
        &std::path::Path::new("/tmp").join(name),
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )?;
    Ok(dir)
}

impl Drop for Fifo {
    /// The command has ended: a writer still waiting for the shell to open the FIFO (it
    /// never did) is let go, and the name is removed.
    fn drop(&mut self) {
        let nonblocking_read = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        drop(rustix::fs::openat(&*self.dir, &self.name, nonblocking_read, Mode::empty()));
        if let Err(e) = rustix::fs::unlinkat(&*self.dir, &self.name, AtFlags::empty()) {
            tracing::warn!(error = %e, fifo = %self.path_in_shell, "could not remove a session's stdin FIFO");
        }
    }
}
