//! A live copy of the node registry and the user's sessions, fed by the control plane's
//! `/v1/events` stream, so that resolving a tag costs no network round trip. When the
//! stream is down the last copy is still used for nodes it knows, which keeps commands to
//! known nodes working while the control plane is away. Each change it sees is also
//! broadcast as a [`FleetEvent`] to scripts subscribed on the socket.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use proto::api::{Node, SessionInfo, Target};
use proto::rpc::{FleetEvent, Subscribed};
use tokio::sync::broadcast;

use crate::login::Login;

/// Events a slow subscriber may fall behind by before it is told it missed some.
const EVENT_BACKLOG: usize = 1024;

#[derive(Default)]
struct State {
    /// The last node list received, if any.
    nodes: Option<Vec<Node>>,
    /// The last session list received, if any.
    sessions: Option<Vec<SessionInfo>>,
    /// Whether the event stream is connected right now.
    live: bool,
}

pub struct Mirror {
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<FleetEvent>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror { state: Arc::default(), events: broadcast::channel(EVENT_BACKLOG).0, task: Mutex::default() }
    }
}

impl Mirror {
    /// Follows the registry of `login`'s control plane (or nothing, when logged out).
    pub fn follow(&self, login: Option<Login>, rt: &tokio::runtime::Handle) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = task.take() {
            t.abort();
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::default();
        if let Some(login) = login {
            *task = Some(rt.spawn(feed(login, self.state.clone(), self.events.clone())));
        }
    }

    /// The node to use for `target`, or `None` when the mirror cannot pick one: then the
    /// control plane, whose answer (or refusal) is authoritative, is asked. The mirror only
    /// speeds up the calls that succeed.
    pub fn resolve(&self, target: &Target, kind: &str, spread: usize) -> Option<Node> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        proto::api::resolve(state.nodes.as_ref()?, target, kind, proto::time::control_now(), spread).ok().cloned()
    }

    /// The names of `kind` it holds, sorted, each once: node names, their tags, or the
    /// user's session ids.
    pub fn names(&self, kind: proto::request::NameKind) -> Vec<String> {
        use proto::request::NameKind;
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let nodes = s.nodes.iter().flatten();
        let names: std::collections::BTreeSet<String> = match kind {
            NameKind::Nodes => nodes.map(|n| n.name.clone()).collect(),
            NameKind::Tags => nodes.flat_map(|n| n.tags.iter().cloned()).collect(),
            NameKind::Sessions => s.sessions.iter().flatten().map(|x| x.id.clone()).collect(),
        };
        names.into_iter().collect()
    }

    /// (connected, nodes known)
    pub fn status(&self) -> (bool, usize) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        (s.live, s.nodes.as_ref().map_or(0, Vec::len))
    }

    /// The fleet as it is now, and every change from this moment on.
    pub fn subscribe(&self) -> (Subscribed, broadcast::Receiver<FleetEvent>) {
        // Under the state lock, so no change falls between the snapshot and the first event.
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let rx = self.events.subscribe();
        (Subscribed { nodes: s.nodes.clone(), sessions: s.sessions.clone(), live: s.live }, rx)
    }
}

async fn feed(login: Login, state: Arc<RwLock<State>>, events: broadcast::Sender<FleetEvent>) {
    let mut pause = Duration::from_millis(200);
    // The last change taken in: a new stream resumes after it, so a reconnect costs the
    // changes missed, not the whole fleet again.
    let mut since: Option<i64> = None;
    loop {
        let query = proto::api::EventsQuery { changes: true, since };
        match login.client() {
            Ok(client) => match client.events_of::<proto::routes::Events>(&query).await {
                Ok(mut stream) => {
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok((name, data)) => match apply(&state, &events, &name, &data) {
                                Ok(true) => {
                                    pause = Duration::from_millis(200);
                                    if let Some(id) = stream.last_id().and_then(|id| id.parse().ok()) {
                                        since = Some(id);
                                    }
                                }
                                // A change to a list it does not hold: start again from the whole list.
                                Ok(false) => {
                                    since = None;
                                    break;
                                }
                                Err(e) => tracing::warn!(error = %e, event = %name, "unreadable registry event"),
                            },
                            Err(e) => {
                                tracing::debug!(error = %e, "registry stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "registry stream unavailable"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot follow the registry"),
        }
        state.write().unwrap_or_else(|e| e.into_inner()).live = false;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Takes one registry event into the mirror and broadcasts what changed since the last
/// list of its kind (nothing for the first: there is nothing to compare it with). `false`
/// for a change to a node list the mirror does not hold.
fn apply(
    state: &RwLock<State>,
    events: &broadcast::Sender<FleetEvent>,
    name: &str,
    data: &str,
) -> serde_json::Result<bool> {
    let mut s = state.write().unwrap_or_else(|e| e.into_inner());
    let changes = match name {
        proto::api::EVENT_NODES => {
            let nodes: Vec<Node> = serde_json::from_str(data)?;
            let changes = s.nodes.as_ref().map(|before| crate::events::node_changes(before, &nodes));
            s.nodes = Some(nodes);
            changes
        }
        proto::api::EVENT_NODE | proto::api::EVENT_NODE_REMOVED => {
            let Some(nodes) = s.nodes.as_mut() else { return Ok(false) };
            // One node in or out (kept in name order, as the whole list comes); what
            // changed is worked out for that node alone.
            let (id, node) = if name == proto::api::EVENT_NODE {
                let node: Node = serde_json::from_str(data)?;
                (node.id.clone(), Some(node))
            } else {
                (serde_json::from_str::<proto::api::NodeRemoved>(data)?.id, None)
            };
            let old = nodes.iter().position(|n| n.id == id).map(|at| nodes.remove(at));
            let changes = crate::events::node_changes(old.as_slice(), node.as_slice());
            if let Some(node) = node {
                let at = nodes.partition_point(|n| n.name < node.name);
                nodes.insert(at, node);
            }
            Some(changes)
        }
        proto::api::EVENT_SESSIONS => {
            let sessions: Vec<SessionInfo> = serde_json::from_str(data)?;
            let changes = s.sessions.as_ref().map(|before| crate::events::session_changes(before, &sessions));
            s.sessions = Some(sessions);
            changes
        }
        _ => return Ok(true), // a newer control plane's event: not for this openboxd
    };
    s.live = true;
    for change in changes.unwrap_or_default() {
        // No subscriber is not an error.
        let _ = events.send(change);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, name: &str, tags: &[&str], online: bool) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platform: proto::api::Platform::this_machine(),
            addr: "127.0.0.1:1".into(),
            mesh_addr: None,
            online,
            last_seen: Some(proto::time::now()),
            created_at: 1,
            capabilities: vec!["native".into()],
            shares_control: false,
            host_cert_expires: None,
        }
    }

    fn feed(mirror: &Mirror, name: &str, data: &impl serde::Serialize) -> bool {
        apply(&mirror.state, &mirror.events, name, &serde_json::to_string(data).unwrap()).unwrap()
    }

    #[test]
    fn the_whole_list_then_each_change_keeps_a_copy_that_resolves_tags_and_says_what_changed() {
        let mirror = Mirror::default();
        let mut heard = mirror.events.subscribe();
        let tag = Target::Tag("t".into());
        assert!(mirror.resolve(&tag, "native", 0).is_none(), "nothing known yet: the control plane picks");
        assert!(!feed(&mirror, proto::api::EVENT_NODE, &node("a", "alpha", &["t"], true)), "a change before a list");

        feed(&mirror, proto::api::EVENT_NODES, &vec![node("b", "beta", &["t"], true)]);
        assert!(heard.try_recv().is_err(), "the first list is what is known, not a change");
        assert_eq!(mirror.resolve(&tag, "native", 0).unwrap().id, "b");

        // One node joins, in name order; another goes offline; one is removed.
        feed(&mirror, proto::api::EVENT_NODE, &node("a", "alpha", &["t"], true));
        assert!(matches!(heard.try_recv(), Ok(FleetEvent::NodeJoined { node }) if node.id == "a"));
        feed(&mirror, proto::api::EVENT_NODE, &node("b", "beta", &["t"], false));
        assert!(matches!(heard.try_recv(), Ok(FleetEvent::NodeOffline { node }) if node.id == "b"));
        assert_eq!(mirror.resolve(&tag, "native", 1).unwrap().id, "a", "an offline node is not picked");
        feed(&mirror, proto::api::EVENT_NODE_REMOVED, &proto::api::NodeRemoved { id: "a".into() });
        assert!(matches!(heard.try_recv(), Ok(FleetEvent::NodeLeft { node }) if node.id == "a"));
        assert!(mirror.resolve(&tag, "native", 0).is_none(), "no online node carries t");

        assert!(feed(&mirror, "some-newer-event", &()), "an event of a newer control plane is passed over");
    }
}
