//! Whether a verified certificate still holds here: what the control plane has said since
//! it was issued (users removed from the fleet, access narrowed) and its expiry, judged by
//! the control plane's clock. Checked at authentication and again on every request, as a
//! pooled connection may outlive its certificate, and its user.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use proto::api::{CertCutoff, RevokedUser};
use trust::UserGrant;

/// Why a certificate no longer holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Lapsed {
    #[error("the user certificate for this connection has expired; reconnect")]
    Expired,
    #[error("{user}'s access to this node changed after this certificate was issued; connect again for a new one")]
    CutOff { user: String },
    #[error("user {user} was removed from this fleet")]
    Removed { user: String },
}

/// What the control plane has said about users since their certificates were issued.
#[derive(Default)]
pub struct Access {
    /// Users removed from the fleet.
    revoked: Mutex<HashSet<RevokedUser>>,
    /// For users whose access was narrowed lately (by incarnation): certificates issued at
    /// or before this time are refused.
    cutoffs: Mutex<HashMap<String, u64>>,
}

impl Access {
    /// Why `grant` no longer holds at `now` (the control plane's time), if it does not.
    pub fn lapsed(&self, grant: &UserGrant, now: u64) -> Option<Lapsed> {
        if now >= grant.valid_before {
            return Some(Lapsed::Expired);
        }
        if self.is_cut_off(grant) {
            return Some(Lapsed::CutOff { user: grant.user.clone() });
        }
        self.is_revoked(grant).then(|| Lapsed::Removed { user: grant.user.clone() })
    }

    /// Whether the grant's user was removed from the fleet. A certificate naming no
    /// incarnation (from an older control plane) counts as removed when a user of its
    /// name was.
    pub fn is_revoked(&self, grant: &UserGrant) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.iter().any(|r| match &grant.incarnation {
            Some(i) => *i == r.incarnation,
            None => r.name == grant.user,
        })
    }

    /// Whether the certificate was issued before its user's access here was last narrowed.
    pub fn is_cut_off(&self, grant: &UserGrant) -> bool {
        let cutoffs = self.cutoffs.lock().unwrap_or_else(|e| e.into_inner());
        let key = grant.incarnation.as_deref().unwrap_or(&grant.user);
        // Cut off in the second it was issued, too: the control plane issues none in the
        // second of a cut-off after it (see `placement::dispatch`).
        cutoffs.get(key).is_some_and(|cutoff| grant.issued_at <= *cutoff)
    }

    /// Takes in when users' access was last narrowed, as heartbeat replies say: from now
    /// on their certificates from before then are refused, on open connections too.
    pub fn cut_off(&self, cutoffs: Vec<CertCutoff>) {
        let mut known = self.cutoffs.lock().unwrap_or_else(|e| e.into_inner());
        for c in cutoffs {
            let at = known.entry(c.incarnation).or_default();
            if c.cutoff > *at {
                tracing::info!(user = %c.name, cutoff = c.cutoff, "certificates issued before a change of access are refused");
                *at = c.cutoff;
            }
        }
    }

    /// Takes in the removed users a heartbeat reply names; returns those it had not heard
    /// of before (whose sessions are to be ended).
    pub fn revoke(&self, users: Vec<RevokedUser>) -> Vec<RevokedUser> {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        users.into_iter().filter(|u| revoked.insert(u.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(user: &str, incarnation: Option<&str>, issued_at: u64, valid_before: u64) -> UserGrant {
        UserGrant {
            user: user.into(),
            incarnation: incarnation.map(str::to_owned),
            key_id: "k".into(),
            isolation: proto::Isolation::Native,
            session: None,
            valid_before,
            issued_at,
            admin: false,
            port_forwarding: false,
        }
    }

    #[test]
    fn a_certificate_lapses_when_it_expires_is_cut_off_or_its_user_is_removed() {
        let access = Access::default();
        let g = grant("bob", Some("bob-1"), 100, 200);
        assert_eq!(access.lapsed(&g, 150), None);
        assert_eq!(access.lapsed(&g, 200), Some(Lapsed::Expired));

        access.cut_off(vec![CertCutoff { name: "bob".into(), incarnation: "bob-1".into(), cutoff: 100 }]);
        assert_eq!(access.lapsed(&g, 150), Some(Lapsed::CutOff { user: "bob".into() }), "cut off in its own second");
        assert_eq!(access.lapsed(&grant("bob", Some("bob-1"), 101, 200), 150), None, "issued after");
        // A later cut-off never moves back.
        access.cut_off(vec![CertCutoff { name: "bob".into(), incarnation: "bob-1".into(), cutoff: 50 }]);
        assert!(access.is_cut_off(&g));

        let fresh = access.revoke(vec![RevokedUser { name: "eve".into(), incarnation: "eve-1".into() }]);
        assert_eq!(fresh.len(), 1);
        assert!(access.revoke(vec![RevokedUser { name: "eve".into(), incarnation: "eve-1".into() }]).is_empty());
        assert_eq!(
            access.lapsed(&grant("eve", Some("eve-1"), 100, 200), 150),
            Some(Lapsed::Removed { user: "eve".into() })
        );
        assert_eq!(access.lapsed(&grant("eve", Some("eve-2"), 100, 200), 150), None, "a new user of the same name");
        assert_eq!(access.lapsed(&grant("eve", None, 100, 200), 150), Some(Lapsed::Removed { user: "eve".into() }));
    }
}
