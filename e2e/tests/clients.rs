//! openbox as the remote-shell transport for the tools people point at ssh every day —
//! rsync, git, tar pipelines — and callers whose standard streams are non-blocking (rsync
//! hands its remote shell a non-blocking socket). Every test runs through openboxd and
//! again with `OPENBOX_NO_DAEMON=1`. No byte may be lost, and a call whose output could
//! not all be written never exits 0.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openbox_e2e::{Agent, Cli, ControlPlane, Out, READY_TIMEOUT, bin, wait_until};

/// A control plane, the admin logged in, and one node named `n1`.
struct Fleet {
    _cp: ControlPlane,
    cli: Cli,
    _agent: Agent,
    /// Whether calls go through openboxd or run directly.
    no_daemon: bool,
}

impl Fleet {
    fn start(no_daemon: bool) -> Fleet {
        let cp = ControlPlane::start();
        let cli = Cli::admin(&cp);
        let agent = Agent::enroll_with(&cp, &cli.enroll_token(&["t"]), &["--name", "n1"]);
        Fleet { _cp: cp, cli, _agent: agent, no_daemon }
    }

    /// `openbox` with this fleet's identity and mode.
    fn openbox(&self) -> Command {
        let mut c = self.cli.cmd();
        self.mode(&mut c);
        c
    }

    /// Another program (rsync, git, sh) whose children run `openbox` as this fleet's user.
    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("OPENBOX_HOME", self.cli.home.path());
        self.mode(&mut c);
        c
    }

    fn mode(&self, c: &mut Command) {
        if self.no_daemon {
            c.env("OPENBOX_NO_DAEMON", "1");
        } else {
            c.env_remove("OPENBOX_NO_DAEMON");
        }
    }

    /// The remote-shell command for rsync's `-e` and git's `GIT_SSH_COMMAND`.
    fn remote_shell(&self) -> String {
        format!("{} -n", bin("openbox").display())
    }
}

/// Runs a tool to its end; a tool that hangs fails the test instead of hanging it.
fn run(cmd: &mut Command) -> Out {
    let (stdout, stderr) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .expect("spawn");
    let status = wait(&mut child, &format!("{cmd:?}"));
    let read = |mut f: std::fs::File| {
        use std::io::Seek;
        let mut text = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut text).unwrap();
        text
    };
    Out { code: status.code().unwrap_or(-1), stdout: read(stdout), stderr: read(stderr) }
}

/// Bytes that do not repeat in any short period (so a lost or doubled chunk shows).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_nonblocking(fd: impl AsFd) {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(&fd).expect("F_GETFL");
    fcntl_setfl(&fd, flags | OFlags::NONBLOCK).expect("F_SETFL");
    assert!(fcntl_getfl(&fd).unwrap().contains(OFlags::NONBLOCK));
}

/// Waits for `child` to exit; fails the test instead of hanging.
fn wait(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + READY_TIMEOUT * 4;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn diff_r(a: &Path, b: &Path) {
    let out = Command::new("diff").arg("-r").arg(a).arg(b).output().expect("diff");
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A tree with one 50 MB file and 1,000 small ones in nested directories.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), noise(50_000_000, 7)).unwrap();
    for d in 0..10 {
        let sub = dir.path().join(format!("d{d}/inner"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f}.txt")), format!("file {d}/{f}\n").repeat(f + 1)).unwrap();
        }
    }
    dir
}

// ---- non-blocking standard streams ----

fn a_nonblocking_stdout_with_a_slow_reader_gets_every_byte(no_daemon: bool) {
    let fleet = Fleet::start(no_daemon);
    let data = noise(100_000_000, 1);
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), &data).unwrap();

    let (mut reader, writer) = std::io::pipe().unwrap();
    set_nonblocking(&writer);
    let mut child = fleet
        .openbox()
        .args(["-n", "n1", &format!("cat {}", src.path().display())])
        .stdin(Stdio::null())
        .stdout(writer)
        .spawn()
        .unwrap();
    // A slow reader: the pipe is full most of the time, so openbox meets EAGAIN often.
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() % (4 << 20) < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = wait(&mut child, "openbox");
    assert!(status.success(), "{status:?}");
    assert!(got.len() == data.len() && got == data, "got {} of {} bytes, or other bytes", got.len(), data.len());
}

#[test]
fn a_nonblocking_stdout_with_a_slow_reader_gets_every_byte_through_openboxd() {
    a_nonblocking_stdout_with_a_slow_reader_gets_every_byte(false);
}

#[test]
fn a_nonblocking_stdout_with_a_slow_reader_gets_every_byte_without_openboxd() {
    a_nonblocking_stdout_with_a_slow_reader_gets_every_byte(true);
}

fn a_nonblocking_stdin_with_a_slow_writer_delivers_every_byte(no_daemon: bool) {
    let fleet = Fleet::start(no_daemon);
    let data = noise(100_000_000, 2);
    let dst = tempfile::tempdir().unwrap();
    let file = dst.path().join("copy");

    let (reader, mut writer) = std::io::pipe().unwrap();
    set_nonblocking(&reader);
    let mut child =
        fleet.openbox().args(["-n", "n1", &format!("cat > {}", file.display())]).stdin(reader).spawn().unwrap();
    // A slow writer: openbox finds the pipe empty (EAGAIN) again and again.
    for (i, chunk) in data.chunks(256 * 1024).enumerate() {
        writer.write_all(chunk).expect("openbox stopped reading its stdin");
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(writer);
    let status = wait(&mut child, "openbox");
    assert!(status.success(), "{status:?}");
    let copy = std::fs::read(&file).unwrap();
    assert!(
        copy.len() == data.len() && copy == data,
        "the node got {} of {} bytes, or other bytes",
        copy.len(),
        data.len()
    );
}

#[test]
fn a_nonblocking_stdin_with_a_slow_writer_delivers_every_byte_through_openboxd() {
    a_nonblocking_stdin_with_a_slow_writer_delivers_every_byte(false);
}

#[test]
fn a_nonblocking_stdin_with_a_slow_writer_delivers_every_byte_without_openboxd() {
    a_nonblocking_stdin_with_a_slow_writer_delivers_every_byte(true);
}

fn output_that_cannot_be_written_never_ends_in_success(no_daemon: bool) {
    let fleet = Fleet::start(no_daemon);
    // A device that refuses every write (ENOSPC).
    let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
    let out = fleet.openbox().args(["-n", "n1", "echo hello"]).stdout(full).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("could not write all output to stdout"), "{stderr}");

    // The reader goes away after a little: openbox stops the command (else `yes` would
    // run forever) and exits as a local command killed by SIGPIPE does.
    let mut child = fleet
        .openbox()
        .args(["-n", "n1", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4096];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let status = wait(&mut child, "openbox whose reader went away");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(141), "{stderr}");
    assert!(stderr.contains("stdout was closed before all output was written"), "{stderr}");
}

#[test]
fn output_that_cannot_be_written_never_ends_in_success_through_openboxd() {
    output_that_cannot_be_written_never_ends_in_success(false);
}

#[test]
fn output_that_cannot_be_written_never_ends_in_success_without_openboxd() {
    output_that_cannot_be_written_never_ends_in_success(true);
}

#[test]
fn the_end_of_stdin_reaches_the_command_while_its_output_keeps_flowing() {
    for no_daemon in [false, true] {
        let fleet = Fleet::start(no_daemon);
        let mut child = fleet
            .openbox()
            .args(["-n", "n1", "wc -c; echo after-eof; head -c 3000000 /dev/zero | wc -c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&[b'x'; 12345]).unwrap(); // dropped: EOF
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "12345\nafter-eof\n3000000\n");
    }
}

// ---- rsync ----

fn rsync_pulls_and_pushes_a_tree(no_daemon: bool) {
    let fleet = Fleet::start(no_daemon);
    let src = tree();
    for flags in ["-a", "-az"] {
        // Pull: the node sends (rsync hands openbox a non-blocking socket for its output).
        let pulled = tempfile::tempdir().unwrap();
        let from = format!("n1:{}/", src.path().display());
        let out = run(fleet.tool("rsync").args([flags, "-e", &fleet.remote_shell(), &from]).arg(pulled.path()));
        out.ok();
        diff_r(src.path(), pulled.path());

        // Push: the node receives.
        let pushed = tempfile::tempdir().unwrap();
        let to = format!("n1:{}/", pushed.path().display());
        let out = run(fleet
            .tool("rsync")
            .args([flags, "-e", &fleet.remote_shell()])
            .arg(format!("{}/", src.path().display()))
            .arg(&to));
        out.ok();
        diff_r(src.path(), pushed.path());
    }
}

#[test]
fn rsync_pulls_and_pushes_a_tree_through_openboxd() {
    rsync_pulls_and_pushes_a_tree(false);
}

#[test]
fn rsync_pulls_and_pushes_a_tree_without_openboxd() {
    rsync_pulls_and_pushes_a_tree(true);
}

// ---- git ----

fn git(fleet: &Fleet, dir: &Path, args: &[&str]) -> Out {
    let mut c = fleet.tool("git");
    c.current_dir(dir)
        .env("GIT_SSH_COMMAND", fleet.remote_shell())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .args(args);
    run(&mut c)
}

fn git_pushes_fetches_and_clones(no_daemon: bool) {
    let fleet = Fleet::start(no_daemon);
    let work = tempfile::tempdir().unwrap();
    let (local, clone, remote) = (work.path().join("local"), work.path().join("clone"), work.path().join("remote.git"));
    std::fs::create_dir(&local).unwrap();
    // The bare repository on the node, made through openbox too.
    let out = fleet.openbox().args(["-n", "n1", &format!("git init -q --bare {}", remote.display())]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    git(&fleet, &local, &["init", "-q", "-b", "main"]).ok();
    for i in 0..5 {
        std::fs::write(local.join(format!("file{i}.txt")), format!("version {i}\n")).unwrap();
        std::fs::write(local.join("blob.bin"), noise(200_000 * (i + 1), i as u64)).unwrap();
        git(&fleet, &local, &["add", "."]).ok();
        git(&fleet, &local, &["commit", "-q", "-m", &format!("commit {i}")]).ok();
    }
    let url = format!("n1:{}", remote.display());
    git(&fleet, &local, &["push", "-q", &url, "main"]).ok();

    git(&fleet, work.path(), &["clone", "-q", "-b", "main", &url, clone.to_str().unwrap()]).ok();
    let log = |dir: &Path| git(&fleet, dir, &["log", "--format=%H %s"]).ok().stdout;
    assert_eq!(log(&clone), log(&local));
    assert_eq!(log(&clone).lines().count(), 5);
    assert_eq!(std::fs::read(clone.join("blob.bin")).unwrap(), std::fs::read(local.join("blob.bin")).unwrap());

    // One more commit, pushed, then fetched into the clone.
    std::fs::write(local.join("late.txt"), "late\n").unwrap();
    git(&fleet, &local, &["add", "."]).ok();
    git(&fleet, &local, &["commit", "-q", "-m", "late"]).ok();
    git(&fleet, &local, &["push", "-q", &url, "main"]).ok();
    git(&fleet, &clone, &["fetch", "-q", "origin"]).ok();
    let head = |dir: &Path, rev: &str| git(&fleet, dir, &["rev-parse", rev]).ok().stdout;
    assert_eq!(head(&clone, "origin/main"), head(&local, "HEAD"));
}

#[test]
fn git_pushes_fetches_and_clones_through_openboxd() {
    git_pushes_fetches_and_clones(false);
}

#[test]
fn git_pushes_fetches_and_clones_without_openboxd() {
    git_pushes_fetches_and_clones(true);
}

// ---- tar ----

#[test]
fn tar_pipelines_copy_a_tree_both_ways() {
    let src = tree();
    for no_daemon in [false, true] {
        let fleet = Fleet::start(no_daemon);
        let (up, down) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ob = bin("openbox");
        let script =
            r#"tar c -C "$SRC" . | "$OB" -n n1 "tar x -C '$UP'" && "$OB" -n n1 "tar c -C '$SRC' ." | tar x -C "$DOWN""#;
        let out = run(fleet
            .tool("sh")
            .args(["-c", script])
            .env("OB", &ob)
            .env("SRC", src.path())
            .env("UP", up.path())
            .env("DOWN", down.path()));
        out.ok();
        diff_r(src.path(), up.path());
        diff_r(src.path(), down.path());
    }
}

#[test]
fn a_call_that_reads_no_input_leaves_the_callers_stdin_alone() {
    // A shell loop reading lines while each call runs: no call may swallow the next line.
    for no_daemon in [false, true] {
        let fleet = Fleet::start(no_daemon);
        let script =
            r#"n=0; while read line; do "$OB" nodes >/dev/null; "$OB" whoami >/dev/null; n=$((n+1)); done; echo $n"#;
        let input = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(input.path(), "1\n2\n3\n4\n5\n").unwrap();
        let mut sh = fleet.tool("sh");
        sh.args(["-c", script]).env("OB", bin("openbox"));
        let out = sh.stdin(std::fs::File::open(input.path()).unwrap()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "5\n", "no_daemon={no_daemon}");
    }
}

#[test]
fn a_caller_that_goes_away_while_its_output_is_stalled_stops_the_command() {
    let fleet = Fleet::start(false);
    let marker = format!("openbox-stalled-{}", std::process::id());
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = fleet
        .openbox()
        .args(["-n", "n1", &format!("exec yes {marker}")])
        .stdin(Stdio::null())
        .stdout(writer)
        .spawn()
        .unwrap();
    // Nobody reads: the pipe fills, and openboxd's writes wait for room.
    // (Nearly full: it stops a little short of 64 KiB, holding whole lines.)
    wait_until("the caller's pipe to be full", || rustix::io::ioctl_fionread(&reader).is_ok_and(|n| n > 60_000));
    child.kill().unwrap();
    child.wait().unwrap();
    // The call is gone; the remote command must not go on forever.
    let running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == format!("yes {marker}"))
        })
    };
    wait_until("the remote command to be stopped", || !running());
    drop(reader);
}
