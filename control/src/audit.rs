//! The audit log: every dispatch, and every change to users, nodes, tokens and sessions —
//! who, when, from where, on which node, under which certificate. A command line is kept
//! as its SHA-256 unless the control plane records commands (`--audit-commands`). A
//! dispatch that cannot be recorded is refused (no certificate leaves); a change is
//! recorded once it is made.

use proto::api::AuditEntry;

use crate::refusal::Refusal;
use crate::{App, now};

/// Where a request came from: the peer address of its connection.
#[derive(Clone, Debug)]
pub struct Source(pub String);

/// What an action did, beyond who did it and from where.
#[derive(Default)]
pub struct Record<'a> {
    pub node_id: Option<&'a str>,
    pub isolation: Option<String>,
    pub session: Option<&'a str>,
    pub key_id: Option<String>,
    pub detail: Option<String>,
}

impl App {
    /// Records `action` by `user`; fails (and the action with it) when it cannot.
    pub async fn audit(&self, user: &str, action: &str, source: Option<&Source>, r: Record<'_>) -> Result<(), Refusal> {
        let t = now();
        let entry = AuditEntry {
            at: t,
            user: user.to_owned(),
            action: action.to_owned(),
            node_id: r.node_id.map(str::to_owned),
            isolation: r.isolation,
            session: r.session.map(str::to_owned),
            key_id: r.key_id,
            source: source.map(|s| s.0.clone()),
            detail: r.detail,
            ..AuditEntry::default()
        };
        self.store.audit(&[entry], t.saturating_sub(self.config.audit_retention_secs)).await?;
        Ok(())
    }
}
