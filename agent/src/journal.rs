//! What this node ran, for the fleet's audit log: every command, login shell and file
//! transfer, with the certificate that asked for it and how it ended. The control plane
//! records what the node reports rather than what a caller said it would run, and the
//! node's warm path stays free of any call to it: records go with the heartbeats.
//!
//! Each record is written to `executions.jsonl` under the agent's directory when it
//! starts and again when it ends, and is forgotten only once a heartbeat reply says the
//! control plane holds it; so an agent that restarts (or a control plane that is away)
//! loses none. A record whose end was never written ran while the agent stopped: it is
//! reported as such.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use proto::api::{Execution, MAX_EXECUTIONS_PER_HEARTBEAT};
use serde::{Deserialize, Serialize};

/// Records kept while the control plane is away; past this many the oldest are dropped
/// (and the agent's log says how many).
const MAX_PENDING: usize = 100_000;

/// The journal's file, one JSON object per line.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// A record as it started.
    Start(Execution),
    /// How the record `id` ended.
    End { id: String, duration_ms: u64, exit: String },
}

pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// Whether command lines are kept as they are (the fleet's `--audit-commands`), not
    /// only as their SHA-256.
    record_commands: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Ended, not yet recorded by the control plane; oldest first.
    ended: VecDeque<Execution>,
    /// Started and not ended.
    running: Vec<Execution>,
    file: Option<std::fs::File>,
    dropped: u64,
}

impl Journal {
    /// Opens the journal under `dir`, taking in what an earlier run left: records that
    /// never ended ran while the agent stopped.
    pub fn open(dir: &std::path::Path) -> Arc<Journal> {
        let path = dir.join("executions.jsonl");
        let mut state = State::default();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                match serde_json::from_str::<Line>(line) {
                    Ok(Line::Start(x)) => state.running.push(x),
                    Ok(Line::End { id, duration_ms, exit }) => {
                        if let Some(i) = state.running.iter().position(|x| x.id == id) {
                            let x = state.running.swap_remove(i);
                            state.ended.push_back(Execution { duration_ms, exit, ..x });
                        }
                    }
                    // A line cut short by a crash: what it held is lost, the rest is read.
                    Err(_) => {}
                }
            }
            for x in std::mem::take(&mut state.running) {
                state.ended.push_back(Execution { exit: "unknown: the agent stopped while it ran".into(), ..x });
            }
        }
        let journal = Journal { path, state: Mutex::new(state), record_commands: AtomicBool::new(false) };
        journal.rewrite(&mut journal.lock());
        Arc::new(journal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps command lines as they are from now on, or only their SHA-256.
    pub fn record_commands(&self, yes: bool) {
        self.record_commands.store(yes, Ordering::Relaxed);
    }

    /// Starts a record for what `grant` asked to run: `command` for a command (none for a
    /// login shell or a file transfer, as `kind` says). It ends when the returned value is
    /// ended or dropped.
    pub fn start(self: &Arc<Journal>, grant: &trust::UserGrant, kind: &str, command: Option<&str>) -> Running {
        let x = Execution {
            id: trust::token::random_id(),
            user: grant.user.clone(),
            key_id: grant.key_id.clone(),
            isolation: grant.isolation.to_string(),
            session: grant.session.clone(),
            kind: kind.to_owned(),
            command_sha256: command.map(trust::token::hash),
            command: command.filter(|_| self.record_commands.load(Ordering::Relaxed)).map(str::to_owned),
            started_at: proto::time::control_now(),
            duration_ms: 0,
            exit: String::new(),
        };
        let id = x.id.clone();
        let mut state = self.lock();
        self.append(&mut state, &Line::Start(x.clone()));
        state.running.push(x);
        Running { journal: self.clone(), id, started: Instant::now(), ended: AtomicBool::new(false) }
    }

    fn end(&self, id: &str, duration_ms: u64, exit: String) {
        let mut state = self.lock();
        let Some(i) = state.running.iter().position(|x| x.id == id) else { return };
        let x = state.running.swap_remove(i);
        self.append(&mut state, &Line::End { id: id.to_owned(), duration_ms, exit: exit.clone() });
        state.ended.push_back(Execution { duration_ms, exit, ..x });
        if state.ended.len() > MAX_PENDING {
            state.ended.pop_front();
            state.dropped += 1;
            if state.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = state.dropped,
                    "the control plane has not taken the execution records for a long while; the oldest are dropped"
                );
            }
        }
    }

    /// The records to send with the next heartbeat (the oldest first).
    pub fn to_report(&self) -> Vec<Execution> {
        self.lock().ended.iter().take(MAX_EXECUTIONS_PER_HEARTBEAT).cloned().collect()
    }

    /// Forgets the records the control plane now holds.
    pub fn recorded(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.ended.retain(|x| !ids.contains(&x.id));
        self.rewrite(&mut state);
    }

    fn append(&self, state: &mut State, line: &Line) {
        if state.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt as _;
            state.file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path).ok();
        }
        let text = serde_json::to_string(line).expect("serializable") + "\n";
        let written = state.file.as_mut().map(|f| f.write_all(text.as_bytes()));
        if !matches!(written, Some(Ok(()))) {
            tracing::warn!(path = %self.path.display(), "could not write the execution journal; records are kept in memory only");
            state.file = None;
        }
    }

    /// Writes the file anew with what is still pending (a new file, renamed over the old).
    fn rewrite(&self, state: &mut State) {
        let mut text = String::new();
        let lines = state.ended.iter().flat_map(|x| {
            let end = Line::End { id: x.id.clone(), duration_ms: x.duration_ms, exit: x.exit.clone() };
            [Line::Start(x.clone()), end]
        });
        for line in lines.chain(state.running.iter().cloned().map(Line::Start)) {
            text.push_str(&serde_json::to_string(&line).expect("serializable"));
            text.push('\n');
        }
        state.file = None;
        if let Err(e) = paths::write_private(&self.path, text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not rewrite the execution journal");
        }
    }
}

/// A record that has started; ended with [`Running::end`], or (when dropped unended) as
/// having ended without a status.
pub struct Running {
    journal: Arc<Journal>,
    id: String,
    started: Instant,
    ended: AtomicBool,
}

impl Running {
    pub fn end(&self, exit: String) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.journal.end(&self.id, ms, exit);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.end("unknown: it ended without a status".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> trust::UserGrant {
        trust::UserGrant {
            user: "bob".into(),
            incarnation: None,
            key_id: "openbox-user:bob:req:1".into(),
            isolation: proto::Isolation::Native,
            session: None,
            valid_before: 0,
            issued_at: 0,
            admin: false,
            port_forwarding: false,
        }
    }

    #[test]
    fn records_survive_a_restart_until_the_control_plane_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path());
        j.start(&grant(), "command", Some("echo one")).end("0".into());
        let running = j.start(&grant(), "command", Some("sleep 100"));
        let reported = j.to_report();
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].exit, "0");
        assert_eq!(reported[0].command, None, "only the hash unless the fleet records commands");
        assert_eq!(reported[0].command_sha256.as_deref(), Some(trust::token::hash("echo one").as_str()));
        // The agent stops with one record running and one not yet taken.
        std::mem::forget(running);
        drop(j);
        let again = Journal::open(dir.path());
        let reported = again.to_report();
        assert_eq!(reported.len(), 2, "{reported:?}");
        assert_eq!(reported[1].exit, "unknown: the agent stopped while it ran");
        again.recorded(&[reported[0].id.clone()]);
        drop(again);
        let third = Journal::open(dir.path());
        assert_eq!(third.to_report().len(), 1);
        third.recorded(&[reported[1].id.clone()]);
        assert!(Journal::open(dir.path()).to_report().is_empty());
    }

    #[test]
    fn command_lines_are_kept_only_when_the_fleet_records_them() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path());
        j.record_commands(true);
        j.start(&grant(), "command", Some("make build")).end("2".into());
        drop(j.start(&grant(), "shell", None));
        let reported = j.to_report();
        assert_eq!(reported[0].command.as_deref(), Some("make build"));
        assert_eq!(reported[1].exit, "unknown: it ended without a status");
        assert!(reported.iter().all(|x| x.check().is_ok()), "{reported:?}");
    }
}
