//! Certificates and SSH connections kept warm per (node, session, isolation) — what a user
//! certificate binds. A certificate is reused until shortly before it expires; a connection
//! carries many commands, each on a channel of its own, in parallel. Deciding when to use
//! what is [`crate::connect`]'s job; this is only the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use net::ssh::Connection;
use proto::Isolation;
use trust::Certificate;

/// Certificates are renewed this long before they expire (at most), so none expires
/// mid-dial.
const MARGIN_SECS: u64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub node_id: String,
    pub session: Option<String>,
    pub isolation: Isolation,
}

/// What is cached for one key. Its lock is held while a connection for the key is being
/// made, so concurrent first calls make one connection.
#[derive(Default)]
pub struct Slot {
    cert: Option<Certificate>,
    conn: Option<Arc<Connection>>,
}

impl Slot {
    /// The pooled connection, when it is alive and its certificate is good for a while.
    pub fn live(&self) -> Option<Arc<Connection>> {
        match (&self.conn, &self.cert) {
            (Some(conn), Some(cert)) if !conn.is_closed() && fresh(cert, proto::time::control_now()) => {
                Some(conn.clone())
            }
            _ => None,
        }
    }

    /// The cached certificate, when it is good for a while.
    pub fn fresh_cert(&self) -> Option<Certificate> {
        self.cert.clone().filter(|c| fresh(c, proto::time::control_now()))
    }

    /// Keeps a certificate that came with a dispatch, before dialing with it: if the dial
    /// fails, the next try still has it and need not ask the control plane again.
    pub fn remember(&mut self, cert: Certificate) {
        self.cert = Some(cert);
    }

    /// Drops the cached certificate (and the connection made with it): the node refused it.
    pub fn forget_cert(&mut self) {
        self.cert = None;
        self.conn = None;
    }

    /// Keeps `conn`, made with `cert`, as the pooled connection.
    pub fn keep(&mut self, cert: Certificate, conn: Connection) -> Arc<Connection> {
        let conn = Arc::new(conn);
        self.cert = Some(cert);
        self.conn = Some(conn.clone());
        conn
    }

    /// Whether nothing here is worth keeping.
    fn is_spent(&self) -> bool {
        self.live().is_none() && self.fresh_cert().is_none()
    }
}

/// Good for a while yet at `now`: more than the margin (a fifth of its life, at most 30s)
/// remains.
fn fresh(cert: &Certificate, now: u64) -> bool {
    let margin = MARGIN_SECS.min(cert.valid_before().saturating_sub(cert.valid_after()) / 5);
    cert.valid_before() > now + margin
}

#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Pool {
    /// The slot for `key`. Making a new one first drops the slots that hold nothing worth
    /// keeping and that no call is using, so the pool never grows without bound.
    pub fn slot(&self, key: &Key) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        slots.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.try_lock().map_or(true, |s| !s.is_spent()));
        slots.entry(key.clone()).or_default().clone()
    }

    /// Open connections (slots busy dialing are not counted).
    pub fn connections(&self) -> usize {
        let slots: Vec<_> = self.slots.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        slots.iter().filter(|s| s.try_lock().is_ok_and(|s| s.conn.as_ref().is_some_and(|c| !c.is_closed()))).count()
    }

    /// Slots kept (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().unwrap().len()
    }

    /// Drops the slots of session `id`: their connections close once no call holds them.
    pub fn forget_session(&self, id: &str) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| key.session.as_deref() != Some(id));
    }

    /// Drops `conn` from the pool if it is still the pooled one (it turned out dead).
    pub async fn discard(&self, key: &Key, conn: &Arc<Connection>) {
        let slot = self.slot(key);
        let mut s = slot.lock().await;
        if s.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            s.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(after: u64, before: u64) -> Certificate {
        let ca = trust::Ca::generate();
        let key = trust::generate_key();
        ca.sign_user(&trust::UserCertSpec {
            incarnation: "test",
            user: "u",
            node_id: "n",
            request_id: "r",
            isolation: &Isolation::Native,
            session: None,
            admin: false,
            public_key: key.public_key(),
            valid_after: after,
            valid_before: before,
        })
        .unwrap()
    }

    #[test]
    fn a_certificate_is_fresh_until_a_fifth_of_its_life_or_30s_remain() {
        let c = cert(1000, 1300); // five minutes: the margin is 30s
        assert!(fresh(&c, 1000));
        assert!(fresh(&c, 1269));
        assert!(!fresh(&c, 1270));
        let short = cert(1000, 1050); // fifty seconds: the margin is 10s
        assert!(fresh(&short, 1039));
        assert!(!fresh(&short, 1040));
        assert!(!fresh(&c, 2000), "an expired certificate is not fresh");
    }

    #[test]
    fn slots_that_hold_nothing_are_dropped_when_new_ones_are_made() {
        let pool = Pool::default();
        let key =
            |n: usize| Key { node_id: format!("n{n}"), session: Some(format!("s{n}")), isolation: Isolation::Native };
        for n in 0..100 {
            drop(pool.slot(&key(n)));
        }
        assert_eq!(pool.len(), 1, "empty slots nobody holds are not kept");
        let held = pool.slot(&key(200));
        pool.slot(&key(201));
        assert_eq!(pool.len(), 2, "a slot in use is kept");
        drop(held);
    }

    #[test]
    fn a_sessions_slots_go_when_it_is_forgotten_and_no_others() {
        let pool = Pool::default();
        let key = |session: Option<&str>, isolation| Key {
            node_id: "n".into(),
            session: session.map(str::to_owned),
            isolation,
        };
        let docker = Isolation::Docker { image: "alpine".into(), limits: Default::default() };
        let (a, a_docker, b, none) = (
            key(Some("a"), Isolation::Native),
            key(Some("a"), docker),
            key(Some("b"), Isolation::Native),
            key(None, Isolation::Native),
        );
        for k in [&a, &a_docker, &b, &none] {
            pool.slot(k).try_lock().unwrap().remember(cert(0, u64::MAX / 2));
        }
        assert_eq!(pool.len(), 4);
        pool.forget_session("a");
        let kept: std::collections::HashSet<Key> = pool.slots.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, [b, none].into_iter().collect());
    }
}
