//! The agent's SFTP server (`openbox-agent sftp-server`): started for an SSH channel's
//! `sftp` subsystem as a process of its own, as the account the user's commands run as —
//! so what it may read and write is exactly what that account may, checked by the kernel —
//! speaking SFTP (version 3, as OpenSSH's sftp-server does) on its stdin and stdout.
//! `openbox cp`, `sftp` and `scp -s` talk to it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsFd as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh_sftp::protocol::{Attrs, Data, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version};
use russh_sftp::server::StatusReply;

/// The argument that starts `openbox-agent` as the SFTP server.
pub const SERVER_ARG: &str = "sftp-server";

/// The most a read returns at once (clients ask for 32–256 KiB).
const READ_MAX: u32 = 256 * 1024;

/// Serves SFTP on this process's stdin and stdout until the client closes it — over the
/// filesystem of a container, when `root` names its first process (`PID:STARTED`, see
/// [`crate::procs::Proc`]): the process is checked to be that one, its root becomes this
/// process's, and in a container with a user namespace of its own this process goes on
/// as the user that is root in there (an unprivileged user outside), never as the host's
/// root.
pub fn serve(root: Option<&std::ffi::OsStr>) -> std::io::Result<()> {
    if let Some(root) = root {
        enter_root(root)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        // The agent gave this process a pipe each way: read and written without blocking
        // threads in between (tokio's stdin and stdout go through one per call).
        let own = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
        let input = tokio::net::unix::pipe::Receiver::from_owned_fd(own(std::io::stdin().as_fd())?)?;
        let output = tokio::net::unix::pipe::Sender::from_owned_fd(own(std::io::stdout().as_fd())?)?;
        let stream = Stream { io: tokio::io::join(input, output), done: Some(done_tx) };
        // Started in the account's home (or, chrooted, at the container's root).
        russh_sftp::server::run(stream, Server::new(std::env::current_dir()?)).await;
        // The server drops the stream when the client is gone.
        let _ = done.await;
        Ok::<(), std::io::Error>(())
    })
}

/// Makes the root of container process `root` (`PID:STARTED`) this process's, and its user
/// the one that is root in there when the container has a user namespace of its own.
#[cfg(target_os = "linux")]
fn enter_root(root: &std::ffi::OsStr) -> std::io::Result<()> {
    let invalid = || std::io::Error::new(ErrorKind::InvalidInput, format!("{root:?}: expected PID:STARTED"));
    let shell: crate::procs::Proc = root.to_str().and_then(|r| r.parse().ok()).ok_or_else(invalid)?;
    let (dir, owner) = shell.open_root_and_owner()?;
    rustix::process::fchdir(&dir)?;
    rustix::process::chroot(".")?;
    std::env::set_current_dir("/")?;
    if let Some((uid, gid)) = owner {
        // One thread so far: the thread's credentials are the process's.
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid))?;
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))?;
    }
    Ok(())
}

/// A Mac's containers run in a virtual machine: their files are not the host's to enter.
#[cfg(not(target_os = "linux"))]
fn enter_root(_root: &std::ffi::OsStr) -> std::io::Result<()> {
    Err(std::io::Error::new(
        ErrorKind::Unsupported,
        "a session's container files are out of reach on a Mac node (its containers run in a virtual machine); copy through the session's commands instead",
    ))
}

/// Serves SFTP within the agent's own process — as the agent's account, over the node's
/// files, which is what a process of its own would be when no account is mapped — so no
/// process is started and no pipe crossed: the channel's bytes go to the server through
/// memory, and the caller's window reopens as the server takes them.
pub async fn serve_in_agent(read: russh::ChannelReadHalf, out: crate::channel::ChannelOut) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    russh_sftp::server::run(Stream { io: theirs, done: Some(done_tx) }, Server::new(home)).await;
    let window = crate::channel::Window::new(out.handle.clone(), out.id);
    crate::channel::splice(read, &out.write, &window, ours).await;
    let _ = done.await;
    // As sshd ends a session: the output's EOF (sent above), the status, the close.
    out.ended(&crate::channel::Outcome::Code(0));
    let _ = out.write.exit_status(0).await;
    let _ = out.write.close().await;
}

/// A byte stream for the server that says when it is dropped (the client is gone).
struct Stream<T> {
    io: T,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<T> Drop for Stream<T> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stream<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stream<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An open handle: a file, or a directory listing not yet all sent.
enum Open {
    File(File),
    Dir(Option<Vec<russh_sftp::protocol::File>>),
}

struct Server {
    open: HashMap<String, Open>,
    next: u64,
    /// Where relative paths start: the account's home, as with sshd.
    home: PathBuf,
}

/// An I/O error as the client hears it: its kind, and the system's words.
fn status(e: std::io::Error) -> StatusReply {
    let code = match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply { status_code: code, error_message: Some(e.to_string()), language_tag: None }
}

fn ok(id: u32) -> Status {
    Status { id, status_code: StatusCode::Ok, error_message: "Success".into(), language_tag: "en-US".into() }
}

fn bad_handle() -> StatusReply {
    StatusReply { status_code: StatusCode::Failure, error_message: Some("no such handle".into()), language_tag: None }
}

/// Applies what the client set: permissions, size, times, owner (if this account may).
fn apply(path: &Path, file: Option<&File>, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        match file {
            Some(f) => f.set_len(size)?,
            None => OpenOptions::new().write(true).open(path)?.set_len(size)?,
        }
    }
    if let Some(mode) = attrs.permissions {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let (Some(atime), Some(mtime)) = (attrs.atime, attrs.mtime) {
        let ts = |s: u32| rustix::fs::Timespec { tv_sec: i64::from(s), tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: ts(atime), last_modification: ts(mtime) };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty())?;
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::chown(path, attrs.uid, attrs.gid)?;
    }
    Ok(())
}

impl Server {
    fn new(home: PathBuf) -> Server {
        Server { open: HashMap::new(), next: 0, home }
    }

    /// `path` as given, from the home directory when relative.
    fn at(&self, path: &str) -> PathBuf {
        self.home.join(path)
    }

    fn add(&mut self, open: Open) -> String {
        self.next += 1;
        let handle = self.next.to_string();
        self.open.insert(handle.clone(), open);
        handle
    }

    fn file(&self, handle: &str) -> Result<&File, StatusReply> {
        match self.open.get(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(bad_handle()),
        }
    }
}

impl russh_sftp::server::Handler for Server {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(&mut self, _version: u32, _extensions: HashMap<String, String>) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let mut options = OpenOptions::new();
        options
            .read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .mode(attrs.permissions.unwrap_or(0o666) & 0o7777);
        if pflags.contains(OpenFlags::CREATE) {
            if pflags.contains(OpenFlags::EXCLUDE) {
                options.create_new(true);
            } else {
                options.create(true);
            }
        }
        let file = options.open(self.at(&filename)).map_err(status)?;
        Ok(Handle { id, handle: self.add(Open::File(file)) })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.open.remove(&handle) {
            // A full disk was told at the write (close(2) of a local file adds nothing).
            Some(Open::File(_) | Open::Dir(_)) => {}
            None => return Err(bad_handle()),
        }
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let mut data = vec![0u8; len.min(READ_MAX) as usize];
        let n = file.read_at(&mut data, offset).map_err(status)?;
        if n == 0 && !data.is_empty() {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        data.truncate(n);
        Ok(Data { id, data })
    }

    async fn write(&mut self, id: u32, handle: String, offset: u64, data: Vec<u8>) -> Result<Status, Self::Error> {
        self.file(&handle)?.write_all_at(&data, offset).map_err(status)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs { id, attrs: (&fs::symlink_metadata(self.at(&path)).map_err(status)?).into() })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs { id, attrs: (&fs::metadata(self.at(&path)).map_err(status)?).into() })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs { id, attrs: (&self.file(&handle)?.metadata().map_err(status)?).into() })
    }

    async fn setstat(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        apply(&self.at(&path), None, &attrs).map_err(status)?;
        Ok(ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        let file = self.file(&handle)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file)));
        apply(&path, Some(file), &attrs).map_err(status)?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let mut entries = Vec::new();
        for dot in [".", ".."] {
            if let Ok(meta) = fs::symlink_metadata(self.at(&path).join(dot)) {
                entries.push(russh_sftp::protocol::File::new(dot, (&meta).into()));
            }
        }
        for entry in fs::read_dir(self.at(&path)).map_err(status)? {
            let entry = entry.map_err(status)?;
            let Ok(meta) = entry.metadata() else { continue }; // gone meanwhile
            entries.push(russh_sftp::protocol::File::new(entry.file_name().to_string_lossy(), (&meta).into()));
        }
        Ok(Handle { id, handle: self.add(Open::Dir(Some(entries))) })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.open.get_mut(&handle) {
            Some(Open::Dir(entries)) => match entries.take() {
                Some(files) if !files.is_empty() => Ok(Name { id, files }),
                _ => Err(StatusReply::new(StatusCode::Eof)),
            },
            _ => Err(bad_handle()),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        fs::remove_file(self.at(&filename)).map_err(status)?;
        Ok(ok(id))
    }

    async fn mkdir(&mut self, id: u32, path: String, attrs: FileAttributes) -> Result<Status, Self::Error> {
        fs::DirBuilder::new()
            .mode(attrs.permissions.unwrap_or(0o777) & 0o7777)
            .create(self.at(&path))
            .map_err(status)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        fs::remove_dir(self.at(&path)).map_err(status)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = if path.is_empty() { ".".to_owned() } else { path };
        let real = fs::canonicalize(self.at(&path)).map_err(status)?;
        Ok(Name { id, files: vec![russh_sftp::protocol::File::dummy(real.to_string_lossy())] })
    }

    async fn rename(&mut self, id: u32, oldpath: String, newpath: String) -> Result<Status, Self::Error> {
        // SFTP 3 renames never replace (as OpenSSH's server: a link, then an unlink).
        let (old, new) = (self.at(&oldpath), self.at(&newpath));
        fs::hard_link(&old, &new).and_then(|()| fs::remove_file(&old)).map_err(status)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = fs::read_link(self.at(&path)).map_err(status)?;
        Ok(Name { id, files: vec![russh_sftp::protocol::File::dummy(target.to_string_lossy())] })
    }

    async fn symlink(&mut self, id: u32, linkpath: String, targetpath: String) -> Result<Status, Self::Error> {
        // OpenSSH's server takes them in this order too.
        std::os::unix::fs::symlink(&linkpath, self.at(&targetpath)).map_err(status)?;
        Ok(ok(id))
    }
}
