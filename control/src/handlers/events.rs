//! `GET /v1/events`, the live registry. By default a `nodes` event with the whole node
//! list (only the nodes the caller may run on) whenever anything in it changes, and a
//! `sessions` event with the caller's sessions whenever one is placed, ends or is removed.
//! With `?changes=true`, the whole list once and then each change alone, numbered, so a
//! client that reconnects with `?since=N` catches up on what it missed without a reload
//! (see [`proto::api::EVENT_NODE`]): what a fleet of thousands needs. openboxd mirrors the
//! stream, so that resolving a tag costs no round trip and scripts can follow the fleet
//! through it; the dashboard draws it. A stream ends when the caller's login stops being
//! valid.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use proto::api::{EVENT_NODE, EVENT_NODE_REMOVED, EVENT_NODES, EVENT_SESSIONS, Grant, Node, NodeRemoved, SessionInfo};
use tokio::sync::broadcast::error::RecvError;

use super::sessions;
use crate::App;
use crate::access::Access;
use crate::auth::{Caller, Credential};
use crate::changes::Update;
use crate::store::{ChangeKind, User};

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, std::convert::Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

/// How often a change stream asks again whether its caller may still follow it.
const RECHECK: Duration = Duration::from_secs(5);
/// A resume further back than this many changes is sent the whole list instead.
const MAX_REPLAY: i64 = 10_000;

pub async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    crate::auth::Params(q): crate::auth::Params<proto::routes::Events>,
) -> Events {
    // A browser's EventSource resumes on its own with the last id it saw.
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()?.trim().parse().ok());
    let since = resumed.or(q.since);
    if q.changes || since.is_some() { changes(app, caller, since).await } else { whole_lists(app, caller) }
}

/// Who follows a change stream, and what they may see.
struct Follower {
    app: Arc<App>,
    credential: Credential,
    user: User,
    grants: Vec<Grant>,
    checked: Instant,
    /// The session list last sent: a change that alters nothing for this caller sends nothing.
    sent_sessions: Option<Vec<SessionInfo>>,
    /// The nodes the client holds: a node they may not see is never named to them, and
    /// `node_removed` goes only for one they were shown.
    shown: HashSet<String>,
}

impl Follower {
    fn access(&self) -> Access<'_> {
        Access::new(&self.user, self.grants.clone())
    }

    /// Asks again who the caller is and what they may see; `false` when they may no longer
    /// follow (removed, logged out).
    async fn recheck(&mut self) -> bool {
        let Some(user) = Caller::current_user(&self.app, &self.credential).await else { return false };
        let grants = if user.admin { Ok(Vec::new()) } else { self.app.store.grants(user.id).await };
        let Ok(grants) = grants else { return false };
        (self.user, self.grants, self.checked) = (user, grants, Instant::now());
        true
    }

    /// The nodes this caller may see now (copying only those from the whole registry).
    fn visible(&self) -> Vec<Node> {
        let access = self.access();
        self.app.subscribe_registry().borrow().iter().filter_map(|n| access.view(n)).collect()
    }

    /// The whole node list as this caller sees it, numbered `seq`.
    fn whole_list(&mut self, seq: i64) -> Event {
        let nodes = self.visible();
        self.shown = nodes.iter().map(|n| n.id.clone()).collect();
        numbered(EVENT_NODES, &nodes, Some(seq))
    }

    /// One node's change as this caller sees it, if it is news to them.
    fn node(&mut self, seq: Option<i64>, id: &str, node: Option<&Node>) -> Option<Event> {
        match node.and_then(|n| self.access().view(n)) {
            Some(n) => {
                self.shown.insert(n.id.clone());
                Some(numbered(EVENT_NODE, &n, seq))
            }
            None if self.shown.remove(id) => {
                Some(numbered(EVENT_NODE_REMOVED, &NodeRemoved { id: id.to_owned() }, seq))
            }
            None => None,
        }
    }

    /// The caller's sessions, if they differ from those last sent.
    async fn sessions(&mut self) -> Option<Event> {
        let sessions = sessions::of(&self.app, self.user.id).await.ok()?;
        if self.sent_sessions.as_ref() == Some(&sessions) {
            return None;
        }
        let event = Event::default().event(EVENT_SESSIONS).json_data(&sessions).ok();
        self.sent_sessions = Some(sessions);
        event
    }

    /// What to send for one change (nothing, when it alters nothing for this caller).
    async fn on(&mut self, update: &Update) -> Option<Vec<Event>> {
        if self.checked.elapsed() > RECHECK && !self.recheck().await {
            return None;
        }
        Some(match update {
            Update::Node { seq, id, node } => self.node(Some(*seq), id, node.as_deref()).into_iter().collect(),
            Update::Policy { seq, user } if *user == self.user.id => {
                if !self.recheck().await {
                    return None;
                }
                vec![self.whole_list(*seq)]
            }
            Update::Policy { .. } => Vec::new(),
            Update::Sessions => self.sessions().await.into_iter().collect(),
        })
    }

    /// The changes after `since` up to `latest`, each node once as it is now; or the
    /// whole list when they are no longer all kept (or too many). Only a last, empty event
    /// carries `latest` as its id: a client cut off halfway resumes from where it was.
    async fn catch_up(&mut self, since: Option<i64>, latest: i64) -> Vec<Event> {
        let Some(since) = since else { return vec![self.whole_list(latest)] };
        let Ok((oldest, _)) = self.app.store.change_range().await else {
            return vec![self.whole_list(latest)];
        };
        // The log keeps its newest change, so `oldest` is 0 only before the first.
        let kept = oldest == 0 || since >= oldest - 1;
        if !kept || since > latest || latest - since > MAX_REPLAY {
            return vec![self.whole_list(latest)];
        }
        let limit = u32::try_from(latest - since).unwrap_or(u32::MAX);
        let Ok(changes) = self.app.store.changes_since(since, limit).await else {
            return vec![self.whole_list(latest)];
        };
        let mut nodes: Vec<String> = Vec::new();
        for change in changes {
            match change.kind {
                ChangeKind::Node(id) | ChangeKind::NodeRemoved(id) if !nodes.contains(&id) => nodes.push(id),
                ChangeKind::Policy(user) if user == self.user.id => return vec![self.whole_list(latest)],
                _ => {}
            }
        }
        // The client holds what it may see (as of when it went away); of the nodes changed
        // since, it is told each one's state now, or of its removal.
        self.shown = self.visible().into_iter().map(|n| n.id).collect();
        self.shown.extend(nodes.iter().cloned());
        let mut events = Vec::with_capacity(nodes.len());
        for id in &nodes {
            let now = crate::now();
            let Ok(row) = self.app.store.node(id).await else { return vec![self.whole_list(latest)] };
            let node = row.map(|r| r.to_api(now, self.app.config.offline_after_secs));
            events.extend(self.node(None, id, node.as_ref()));
        }
        events.push(Event::default().id(latest.to_string()).comment("caught up"));
        events
    }
}

fn numbered(name: &str, data: &impl serde::Serialize, seq: Option<i64>) -> Event {
    let event = Event::default().event(name);
    let event = match seq {
        Some(seq) => event.id(seq.to_string()),
        None => event,
    };
    match event.json_data(data) {
        Ok(event) => event,
        Err(_) => Event::default().comment("unserializable"),
    }
}

async fn changes(app: Arc<App>, caller: Caller, since: Option<i64>) -> Events {
    // Subscribed before the list is read: no change falls between them.
    let (updates, latest) = app.subscribe_updates();
    let grants =
        if caller.user.admin { Vec::new() } else { app.store.grants(caller.user.id).await.unwrap_or_default() };
    let mut follower = Follower {
        app: app.clone(),
        credential: caller.credential,
        user: caller.user,
        grants,
        checked: Instant::now(),
        sent_sessions: None,
        shown: HashSet::new(),
    };
    let mut pending: VecDeque<Event> = follower.catch_up(since, latest).await.into();
    pending.extend(follower.sessions().await);
    let closing = Box::pin(app.closing());
    let open = crate::metrics::OpenStream::new(app.clone());
    let state = (follower, updates, pending, closing, open);
    let stream =
        futures_util::stream::unfold(state, |(mut follower, mut updates, mut pending, mut closing, open)| async move {
            loop {
                if let Some(event) = pending.pop_front() {
                    return Some((Ok(event), (follower, updates, pending, closing, open)));
                }
                let update = tokio::select! {
                    update = updates.recv() => update,
                    () = &mut closing => return None,
                };
                match update {
                    Ok(update) => pending.extend(follower.on(&update).await?),
                    // Fell behind: start again from the whole list.
                    Err(RecvError::Lagged(_)) => {
                        let latest = follower.app.subscribe_updates().1;
                        pending.push_back(follower.whole_list(latest));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    Sse::new(Box::pin(stream) as EventStream).keep_alive(KeepAlive::default())
}

/// The live registry: a `nodes` event with the whole node list now, and again whenever a
/// node joins, leaves, changes, or goes online or offline, or the caller's grants change —
/// only the nodes the caller may run on; and a `sessions` event with the caller's sessions
/// now, and again whenever one is placed, ends or is removed. openboxd mirrors both, so
/// that resolving a tag costs no round trip and scripts can follow the fleet through it.
/// The stream ends when the caller's login token stops being valid.
fn whole_lists(app: Arc<App>, caller: Caller) -> Events {
    let mut nodes_rx = app.subscribe_registry();
    nodes_rx.mark_changed();
    let mut sessions_rx = app.subscribe_sessions();
    sessions_rx.mark_changed();
    let closing = Box::pin(app.closing());
    let credential = caller.credential;
    // The session list last sent: a wake-up that changes nothing for this caller sends nothing.
    let sent: Option<Vec<SessionInfo>> = None;
    let open = crate::metrics::OpenStream::new(app.clone());
    let state = (nodes_rx, sessions_rx, closing, sent, open);
    let stream =
        futures_util::stream::unfold(state, move |(mut nodes_rx, mut sessions_rx, mut closing, mut sent, open)| {
            let (app, credential) = (app.clone(), credential.clone());
            async move {
                loop {
                    let nodes_changed = tokio::select! {
                        changed = nodes_rx.changed() => { changed.ok()?; true }
                        changed = sessions_rx.changed() => { changed.ok()?; false }
                        _ = &mut closing => return None,
                    };
                    // Who the caller is now: removed or logged out ends the stream; grants filter it.
                    let user = Caller::current_user(&app, &credential).await?;
                    let (name, data) = if nodes_changed {
                        let access = app.access(&user).await.ok()?;
                        let nodes: Vec<Node> =
                            nodes_rx.borrow_and_update().iter().filter_map(|n| access.view(n)).collect();
                        (EVENT_NODES, serde_json::to_string(&nodes))
                    } else {
                        sessions_rx.borrow_and_update();
                        let sessions = sessions::of(&app, user.id).await.ok()?;
                        if sent.as_ref() == Some(&sessions) {
                            continue;
                        }
                        let data = serde_json::to_string(&sessions);
                        sent = Some(sessions);
                        (EVENT_SESSIONS, data)
                    };
                    let event = match data {
                        Ok(data) => Event::default().event(name).data(data),
                        Err(_) => Event::default().comment("unserializable"),
                    };
                    return Some((Ok(event), (nodes_rx, sessions_rx, closing, sent, open)));
                }
            }
        });
    Sse::new(Box::pin(stream) as EventStream).keep_alive(KeepAlive::default())
}
