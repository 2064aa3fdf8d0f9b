//! The commands running now, written down (an empty file each, named by the process the
//! agent spawned and its start time) so that the next start of an agent that died stops
//! what it left running: their callers saw the connection drop and gave up on them.
//! Sessions' shells are not here: they are taken up again (see `session`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::process::{Pid, test_kill_process_group};

use crate::procs::Proc;
use crate::procs::{Tree, tear_down};

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where running commands are written down (`running/` in the agent's `dir`); first stops
/// whatever an earlier run of the agent left there. Returns how many it stopped.
pub fn open(dir: &Path) -> usize {
    use std::os::unix::fs::DirBuilderExt as _;
    let running = dir.join("running");
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&running) {
        tracing::warn!(dir = %running.display(), error = %e, "cannot write down running commands");
        return 0;
    }
    let mut stopped = 0;
    for entry in std::fs::read_dir(&running).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((process, tree)) = parse(&name)
            && left_running(process)
        {
            tear_down(process.pid, tree);
            stopped += 1;
        }
        let _ = std::fs::remove_file(entry.path());
    }
    if stopped > 0 {
        tracing::info!(commands = stopped, "stopped commands an earlier run of the agent left running");
    }
    let _ = DIR.set(running);
    stopped
}

/// `PID:STARTED-g` (a process group) or `PID:STARTED-n` (an nspawn container).
fn parse(name: &str) -> Option<(Proc, Tree)> {
    let (process, tree) = name.rsplit_once('-')?;
    let tree = match tree {
        "g" => Tree::Group,
        "n" => Tree::Nspawn,
        _ => return None,
    };
    Some((process.parse().ok()?, tree))
}

/// Whether what `process` started may still run: it does, or its process group does and
/// its pid has not gone to another process (a pid in use as a group's is not given out
/// again, so a group under it with no process of that pid is still the command's).
fn left_running(process: Proc) -> bool {
    match Proc::now(process.pid) {
        Some(now) => now == process,
        None => Pid::from_raw(process.pid as i32).is_some_and(|p| test_kill_process_group(p).is_ok()),
    }
}

/// A running command, written down until this is dropped.
pub struct Noted(Option<PathBuf>);

/// Writes down the command whose spawned process is `pid` (its tree as `tree` says).
pub fn note(pid: u32, tree: Tree) -> Noted {
    let (Some(dir), Some(process)) = (DIR.get(), Proc::now(pid)) else { return Noted(None) };
    let kind = match tree {
        Tree::Group => "g",
        Tree::Nspawn => "n",
    };
    let file = dir.join(format!("{process}-{kind}"));
    match std::fs::File::create(&file) {
        Ok(_) => Noted(Some(file)),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot write down a running command");
            Noted(None)
        }
    }
}

impl Drop for Noted {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}
