//! A live copy of the node registry, fed by the control plane's `/v1/events` stream, so
//! that resolving a tag costs no network round trip. When the stream is down the last
//! copy is still used for nodes it knows, which keeps commands to known nodes working
//! while the control plane is away.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use proto::api::{Node, Target};

use crate::login::Login;

#[derive(Default)]
struct State {
    /// The last node list received, if any.
    nodes: Option<Vec<Node>>,
    /// Whether the event stream is connected right now.
    live: bool,
}

#[derive(Default)]
pub struct Mirror {
    state: Arc<RwLock<State>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            *task = Some(rt.spawn(feed(login, self.state.clone())));
        }
    }

    /// The node to use for `target`, or `None` when the mirror cannot pick one: then the
    /// control plane, whose answer (or refusal) is authoritative, is asked. The mirror only
    /// speeds up the calls that succeed.
    pub fn resolve(&self, target: &Target, kind: &str, spread: usize) -> Option<Node> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        proto::api::resolve(state.nodes.as_ref()?, target, kind, proto::time::now(), spread).ok().cloned()
    }

    /// (connected, nodes known)
    pub fn status(&self) -> (bool, usize) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        (s.live, s.nodes.as_ref().map_or(0, Vec::len))
    }
}

async fn feed(login: Login, state: Arc<RwLock<State>>) {
    let mut pause = Duration::from_millis(200);
    loop {
        match login.client() {
            Ok(client) => match client.events("/v1/events").await {
                Ok(mut stream) => {
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok((name, data)) if name == proto::api::EVENT_NODES => {
                                match serde_json::from_str::<Vec<Node>>(&data) {
                                    Ok(nodes) => {
                                        let mut s = state.write().unwrap_or_else(|e| e.into_inner());
                                        s.nodes = Some(nodes);
                                        s.live = true;
                                        pause = Duration::from_millis(200);
                                    }
                                    Err(e) => tracing::warn!(error = %e, "unreadable registry event"),
                                }
                            }
                            Ok(_) => {}
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
