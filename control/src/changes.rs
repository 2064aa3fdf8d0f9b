//! Following the registry's change log: every change made through any control plane on
//! the database (this one's at once, the others' as PostgreSQL announces them, or within
//! [`POLL`] at worst) becomes an [`Update`] for this control plane's event streams. Also
//! the sweep that announces silent nodes offline, and the log's pruning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::api::Node;

use crate::store::{Change, ChangeKind};
use crate::{App, now};

/// How often the log is read when nothing woke the follower.
const POLL: Duration = Duration::from_millis(250);
/// Changes read at once.
const BATCH: u32 = 1000;
/// How long changes are kept for streams to resume from; a stream away longer is sent the
/// whole list again.
pub const KEEP_SECS: u64 = 3600;

/// One change, as event streams need it.
#[derive(Debug)]
pub enum Update {
    /// A node joined, changed or went online or offline (`node`), or was removed (`None`).
    Node { seq: i64, id: String, node: Option<Box<Node>> },
    /// A user's grants changed, or the user was removed.
    Policy { seq: i64, user: i64 },
    /// A session was placed, ended or removed.
    Sessions,
}

/// Reads the log from where this control plane started, for as long as it runs.
pub async fn follow(app: Arc<App>) {
    loop {
        let woken = app.wake.notified();
        match app.store.changes_since(app.latest.load(Ordering::Acquire), BATCH).await {
            Ok(changes) => {
                let full = changes.len() == BATCH as usize;
                if publish(&app, changes).await && full {
                    continue; // more behind these
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the registry's changes"),
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Publishes `changes` in order; `false` when it had to stop early (to be read again).
async fn publish(app: &App, changes: Vec<Change>) -> bool {
    let (mut policy, mut sessions, mut all) = (false, false, true);
    for change in changes {
        let mut changed_node = None;
        let update = match change.kind {
            ChangeKind::Node(id) | ChangeKind::NodeRemoved(id) => {
                changed_node = Some(id.clone());
                // Unreadable now (the database away): stop here and read this change again
                // later — never take it for a removal.
                let row = match app.store.node(&id).await {
                    Ok(row) => row,
                    Err(e) => {
                        tracing::warn!(error = %e, node = %id, "cannot read a changed node; trying again");
                        all = false;
                        break;
                    }
                };
                let node = row.map(|r| Box::new(r.to_api(now(), app.config.offline_after_secs)));
                app.patch_registry(&id, node.as_deref());
                Update::Node { seq: change.seq, id, node }
            }
            ChangeKind::Policy(user) => {
                policy = true;
                app.policy_changes.fetch_add(1, Ordering::AcqRel);
                Update::Policy { seq: change.seq, user }
            }
            ChangeKind::Sessions => {
                sessions = true;
                Update::Sessions
            }
        };
        app.latest.store(change.seq, Ordering::Release);
        // After the number moved, so that a heartbeat reading the node meanwhile either
        // sees the move (and keeps nothing) or kept its row before this forgets it.
        if let Some(id) = changed_node {
            app.forget_node(&id);
        }
        // No stream listening is not an error.
        let _ = app.updates.send(Arc::new(update));
    }
    // The whole-list streams (clients that do not ask for changes).
    if policy {
        app.registry.send_modify(|_| ());
    }
    if sessions {
        app.sessions.send_replace(());
    }
    all
}

/// Announces nodes offline as they fall silent (each once, whichever control plane
/// notices), and forgets changes older than [`KEEP_SECS`].
pub async fn sweep(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        let t = now();
        match app.store.mark_offline(t.saturating_sub(app.config.offline_after_secs), t).await {
            Ok(true) => app.changed(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot sweep for silent nodes"),
        }
        ticks += 1;
        if ticks.is_multiple_of(60)
            && let Err(e) = app.store.forget_changes(t.saturating_sub(KEEP_SECS)).await
        {
            tracing::warn!(error = %e, "cannot prune the change log");
        }
    }
}
