//! The access policy: which nodes a user may run on, and with which isolation. Admins may
//! run anywhere; everyone else only where a grant lets them, and on a node that could read
//! the control plane's own files only when granted that node by name.

use proto::api::{AgentHost, Grant, Node, Target};

use crate::refusal::{Kind, Refusal};
use crate::store::User;

/// What one user may do, read from their grants.
pub struct Access<'a> {
    user: &'a User,
    grants: Vec<Grant>,
}

impl<'a> Access<'a> {
    /// `grants` name nodes by id.
    pub fn new(user: &'a User, grants: Vec<Grant>) -> Access<'a> {
        Access { user, grants }
    }

    /// The grants that cover `node`: a grant on the node itself, or on one of its tags
    /// unless the node shares the control plane's files.
    fn covering(&self, node: &Node) -> impl Iterator<Item = &Grant> {
        self.grants.iter().filter(|g| match &g.on {
            Target::Node(id) => *id == node.id,
            Target::Tag(t) => !node.shares_control && node.tags.contains(t),
        })
    }

    /// The isolation kinds the user may use on `node`: `None` when they may not run there
    /// at all, `Kinds::Any`, or those the grants covering it name.
    fn kinds(&self, node: &Node) -> Option<Kinds<'_>> {
        if self.user.admin {
            return Some(Kinds::Any);
        }
        let mut named: Vec<&str> = Vec::new();
        let mut covered = false;
        for g in self.covering(node) {
            if g.isolation.is_empty() {
                return Some(Kinds::Any);
            }
            covered = true;
            named.extend(g.isolation.iter().map(String::as_str));
        }
        named.sort_unstable();
        named.dedup();
        covered.then_some(Kinds::Only(named))
    }

    /// Whether the user may run a command under isolation `kind` on `node`.
    pub fn allows(&self, node: &Node, kind: &str) -> bool {
        self.kinds(node).is_some_and(|k| k.contains(kind))
    }

    /// `node` as this user sees it (in `nodes` and the event stream): only if a grant covers
    /// it, and offering only the isolation kinds they may use there, so that openboxd's
    /// mirror never picks it for anything else. Only a node the user may see is copied.
    pub fn view(&self, node: &Node) -> Option<Node> {
        let kinds = self.kinds(node)?;
        let mut node = node.clone();
        node.capabilities.retain(|k| kinds.contains(k));
        Some(node)
    }

    /// [`Access::allows`], or a refusal that says what an admin could grant.
    pub fn check(&self, node: &Node, kind: &str) -> Result<(), Refusal> {
        let user = &self.user.name;
        let forbidden = |m: String| Err(Refusal::new(Kind::Forbidden, m));
        match self.kinds(node) {
            Some(kinds) if kinds.contains(kind) => Ok(()),
            Some(Kinds::Only(named)) => forbidden(format!(
                "{user:?} may run on node {} only with {} isolation, not {kind}; an admin can allow it with \
                 `openbox user grant {user} --node {} --isolation {kind}`",
                node.name,
                named.join(" or "),
                node.name
            )),
            // The node is hidden from this user: the refusal does not name it.
            _ if node.shares_control
                && self.grants.iter().any(|g| matches!(&g.on, Target::Tag(t) if node.tags.contains(t))) =>
            {
                forbidden(format!(
                    "no node {user:?} may use matches: a node that runs beside the control plane and could read its \
                     files takes only a grant by name, which an admin gives with `openbox user grant {user} --node NODE`"
                ))
            }
            _ => forbidden(format!(
                "no node {user:?} may use matches; an admin can allow it with `openbox user grant {user} --node NODE` \
                 (or `--tag TAG` for the nodes of a tag)"
            )),
        }
    }
}

/// The isolation kinds a user may use on one node.
enum Kinds<'a> {
    Any,
    Only(Vec<&'a str>),
}

impl Kinds<'_> {
    fn contains(&self, kind: &str) -> bool {
        match self {
            Kinds::Any => true,
            Kinds::Only(named) => named.contains(&kind),
        }
    }
}

/// Whether an agent on `agent` could read the files of a control plane on `control`: the
/// same machine, as the same user or root. An agent that did not say is assumed to.
pub fn shares_control(control: &AgentHost, agent: Option<&AgentHost>) -> bool {
    agent.is_none_or(|a| a.machine == control.machine && (a.uid == control.uid || a.uid == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, tags: &[&str], shares_control: bool) -> Node {
        Node {
            id: id.into(),
            name: format!("{id}-name"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            platform: proto::api::Platform::this_machine(),
            addr: String::new(),
            mesh_addr: None,
            online: true,
            last_seen: None,
            created_at: 0,
            capabilities: vec!["native".into(), "docker".into()],
            shares_control,
            host_cert_expires: None,
        }
    }

    fn user(admin: bool) -> User {
        User { id: 1, name: "bob".into(), admin, incarnation: "i".into() }
    }

    fn grant(on: Target, isolation: &[&str]) -> Grant {
        Grant { on, isolation: isolation.iter().map(|k| k.to_string()).collect() }
    }

    #[test]
    fn a_user_runs_only_where_and_how_a_grant_says() {
        let bob = user(false);
        let ci = node("n1", &["ci"], false);
        let gpu = node("n2", &["gpu"], false);
        let access = Access::new(&bob, vec![grant(Target::Tag("ci".into()), &["docker"])]);
        assert_eq!(access.view(&ci).unwrap().capabilities, ["docker"], "offered only what bob may use");
        assert!(access.view(&gpu).is_none());
        assert!(access.check(&ci, "docker").is_ok());
        let e = access.check(&ci, "native").unwrap_err();
        assert!(e.message.contains("only with docker isolation"), "{}", e.message);
        let e = access.check(&gpu, "native").unwrap_err();
        assert!(e.message.contains("no node \"bob\" may use matches"), "{}", e.message);
        assert!(!e.message.contains("n2"), "a node hidden from him is not named: {}", e.message);
        let none = Access::new(&bob, vec![]);
        assert!(none.check(&ci, "docker").is_err(), "no grant, no access");
        let admin = user(true);
        assert!(Access::new(&admin, vec![]).check(&gpu, "native").is_ok());
    }

    #[test]
    fn a_node_beside_the_control_plane_needs_a_grant_by_name() {
        let bob = user(false);
        let local = node("n1", &["local"], true);
        let by_tag = Access::new(&bob, vec![grant(Target::Tag("local".into()), &[])]);
        assert!(by_tag.view(&local).is_none());
        let e = by_tag.check(&local, "native").unwrap_err();
        assert!(e.message.contains("runs beside the control plane"), "{}", e.message);
        let by_name = Access::new(&bob, vec![grant(Target::Node("n1".into()), &[])]);
        assert!(by_name.check(&local, "native").is_ok());
    }

    #[test]
    fn only_the_same_machine_as_the_same_user_or_root_shares_the_control_planes_files() {
        let control = AgentHost { machine: "m".into(), uid: 1000 };
        let at = |machine: &str, uid| Some(AgentHost { machine: machine.into(), uid });
        assert!(shares_control(&control, at("m", 1000).as_ref()));
        assert!(shares_control(&control, at("m", 0).as_ref()));
        assert!(!shares_control(&control, at("m", 1001).as_ref()));
        assert!(!shares_control(&control, at("other", 0).as_ref()));
        assert!(shares_control(&control, None), "an agent that does not say is assumed to");
    }
}
