//! Certificates and SSH connections kept warm per (node, session, isolation) — what a user
//! certificate binds. A certificate is reused until shortly before it expires; a connection
//! carries many commands, each on a channel of its own, in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use net::ssh::{Connection, NodeTarget, SshError};
use proto::Isolation;
use proto::api::{Dispatch, DispatchRequest, Node, Target};
use trust::{Certificate, PrivateKey};

use crate::login::Login;

/// Certificates are renewed this long before they expire (at most), so none expires
/// mid-dial.
const MARGIN_SECS: u64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub node_id: String,
    pub session: Option<String>,
    pub isolation: Isolation,
}

#[derive(Default)]
struct Slot {
    cert: Option<Certificate>,
    addr: Option<String>,
    conn: Option<Arc<Connection>>,
}

#[derive(Default)]
pub struct Pool {
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Slot>>>>,
}

fn now() -> u64 {
    crate::commands::now()
}

/// Good for a while yet: more than the margin (a fifth of its life, at most 30s) remains.
fn fresh(cert: &Certificate) -> bool {
    let margin = MARGIN_SECS.min(cert.valid_before().saturating_sub(cert.valid_after()) / 5);
    cert.valid_before() > now() + margin
}

/// Asks the control plane for a node and a user certificate for this key pair.
pub async fn dispatch(
    login: &Login,
    key: &PrivateKey,
    target: &Target,
    session: Option<&str>,
    isolation: &Isolation,
) -> anyhow::Result<(Node, Certificate)> {
    let d: Dispatch = login
        .client()?
        .post(
            "/v1/dispatch",
            &DispatchRequest {
                target: target.clone(),
                session: session.map(str::to_owned),
                isolation: isolation.clone(),
                public_key: key.public_key().to_openssh()?,
            },
        )
        .await?;
    if trust::parse_public_key(&d.ca_public_key)? != login.ca {
        bail!(
            "the control plane's certificate authority changed since you logged in; log in again if that is expected"
        );
    }
    Ok((d.node, trust::parse_certificate(&d.cert)?))
}

impl Pool {
    fn slot(&self, key: &Key) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// Forgets every certificate and connection (after a login change).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Open connections (slots busy dialing are not counted).
    pub fn connections(&self) -> usize {
        let slots: Vec<_> = self.slots.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        slots.iter().filter(|s| s.try_lock().is_ok_and(|s| s.conn.as_ref().is_some_and(|c| !c.is_closed()))).count()
    }

    /// Keeps a certificate that came with a dispatch, for the connection about to be made.
    pub async fn remember(&self, key: &Key, cert: Certificate, addr: String) {
        let slot = self.slot(key);
        let mut s = slot.lock().await;
        s.cert = Some(cert);
        s.addr = Some(addr);
    }

    /// Drops `conn` from the pool if it is still the pooled one (it turned out dead).
    pub async fn discard(&self, key: &Key, conn: &Arc<Connection>) {
        let slot = self.slot(key);
        let mut s = slot.lock().await;
        if s.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            s.conn = None;
        }
    }

    /// A connection for `key`, authenticated with a certificate that is good for a while:
    /// the pooled one when it is alive, else a new one. `addr` is where the registry mirror
    /// last saw the node. The control plane is asked only when no usable certificate is
    /// cached, or when the known address no longer answers.
    pub async fn connection(
        &self,
        login: &Login,
        key_pair: &Arc<PrivateKey>,
        key: &Key,
        addr: Option<String>,
    ) -> anyhow::Result<Arc<Connection>> {
        let slot = self.slot(key);
        let mut s = slot.lock().await;
        if let (Some(conn), Some(cert)) = (&s.conn, &s.cert)
            && !conn.is_closed()
            && fresh(cert)
        {
            return Ok(conn.clone());
        }
        s.conn = None;
        if let Some(a) = addr {
            s.addr = Some(a);
        }
        let cached = match (&s.cert, &s.addr) {
            (Some(cert), Some(addr)) if fresh(cert) => Some((cert.clone(), addr.clone())),
            _ => None,
        };
        let target = Target::Node(key.node_id.clone());
        let conn = match cached {
            Some((cert, addr)) => match self.dial(login, key_pair, key, &addr, cert).await {
                Ok(c) => c,
                // The node may have moved (a restart on another port): ask where it is now.
                Err(e) if matches!(e.downcast_ref::<SshError>(), Some(SshError::Unreachable { .. })) => {
                    let (node, cert) =
                        dispatch(login, key_pair, &target, key.session.as_deref(), &key.isolation).await?;
                    s.cert = Some(cert.clone());
                    s.addr = Some(node.addr.clone());
                    self.dial(login, key_pair, key, &node.addr, cert).await?
                }
                Err(e) => return Err(e),
            },
            None => {
                let (node, cert) = dispatch(login, key_pair, &target, key.session.as_deref(), &key.isolation).await?;
                s.cert = Some(cert.clone());
                s.addr = Some(node.addr.clone());
                self.dial(login, key_pair, key, &node.addr, cert).await?
            }
        };
        let conn = Arc::new(conn);
        s.conn = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(
        &self,
        login: &Login,
        key_pair: &Arc<PrivateKey>,
        key: &Key,
        addr: &str,
        cert: Certificate,
    ) -> anyhow::Result<Connection> {
        let target = NodeTarget { node_id: key.node_id.clone(), addr: addr.to_owned(), ca: login.ca.clone() };
        let mut conn = net::ssh::dial(&target).await?;
        conn.authenticate(&login.user, key_pair.clone(), cert).await?;
        Ok(conn)
    }
}
