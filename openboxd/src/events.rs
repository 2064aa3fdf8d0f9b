//! Fleet events for scripts on the socket (`subscribe`): what changed between two node
//! lists, or two session lists, that the control plane's registry stream sent.

use proto::api::{Node, SessionInfo};
use proto::rpc::FleetEvent;

/// The changes from `before` to `after`, node by node (matched by id).
pub fn node_changes(before: &[Node], after: &[Node]) -> Vec<FleetEvent> {
    let mut out = Vec::new();
    for node in after {
        let Some(old) = before.iter().find(|b| b.id == node.id) else {
            out.push(FleetEvent::NodeJoined { node: node.clone() });
            continue;
        };
        if old.name != node.name {
            out.push(FleetEvent::NodeRenamed { node: node.clone(), previous_name: old.name.clone() });
        }
        if old.tags != node.tags {
            out.push(FleetEvent::NodeTagsChanged { node: node.clone(), previous_tags: old.tags.clone() });
        }
        match (old.online, node.online) {
            (false, true) => out.push(FleetEvent::NodeOnline { node: node.clone() }),
            (true, false) => out.push(FleetEvent::NodeOffline { node: node.clone() }),
            _ => {}
        }
    }
    for old in before {
        if !after.iter().any(|n| n.id == old.id) {
            out.push(FleetEvent::NodeLeft { node: old.clone() });
        }
    }
    out
}

/// The sessions that were active in `before` and are not any more in `after`: their shell
/// ended (the state says how), or the session was removed (then as it was last seen).
pub fn session_changes(before: &[SessionInfo], after: &[SessionInfo]) -> Vec<FleetEvent> {
    const ACTIVE: &str = "active";
    before
        .iter()
        .filter(|old| old.state == ACTIVE)
        .filter_map(|old| match after.iter().find(|s| s.id == old.id) {
            Some(now) if now.state == ACTIVE => None,
            Some(now) => Some(FleetEvent::SessionEnded { session: now.clone() }),
            None => Some(FleetEvent::SessionEnded { session: old.clone() }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::api::Platform;

    fn node(id: &str, name: &str, tags: &[&str], online: bool) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platform: Platform::this_machine(),
            addr: "127.0.0.1:1".into(),
            mesh_addr: None,
            online,
            last_seen: Some(1),
            created_at: 1,
            capabilities: vec!["native".into()],
            shares_control: false,
            host_cert_expires: None,
        }
    }

    fn session(id: &str, state: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            node_id: "n".into(),
            node_name: "box".into(),
            isolation: Some(proto::Isolation::Native),
            created_at: 1,
            last_used: 2,
            state: state.into(),
        }
    }

    fn kinds(events: &[FleetEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap();
                let name = v.get("node").or(v.get("session")).and_then(|n| n.get("id")).cloned().unwrap_or_default();
                format!("{} {}", v["type"].as_str().unwrap(), name.as_str().unwrap_or(""))
            })
            .collect()
    }

    #[test]
    fn each_kind_of_node_change_is_named_once() {
        let before = [node("a", "a", &["x"], true), node("b", "b", &["x"], true), node("c", "c", &[], false)];
        let after = [node("a", "a", &["x"], false), node("b", "bee", &["y"], true), node("d", "d", &[], true)];
        assert_eq!(
            kinds(&node_changes(&before, &after)),
            ["node_offline a", "node_renamed b", "node_tags_changed b", "node_joined d", "node_left c"]
        );
        assert!(node_changes(&after, &after).is_empty());
    }

    #[test]
    fn a_session_ends_once_when_its_shell_goes_or_it_is_removed() {
        let before =
            [session("s1", "active"), session("s2", "active"), session("s3", "active"), session("s4", "exited")];
        let after = [session("s1", "active"), session("s2", "exited"), session("s4", "exited")];
        assert_eq!(kinds(&session_changes(&before, &after)), ["session_ended s2", "session_ended s3"]);
        assert!(session_changes(&after, &after).is_empty());
    }
}
