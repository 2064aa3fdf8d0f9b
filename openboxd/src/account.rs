//! Everything that belongs to one login — the login itself, the user's key pair, the
//! certificates and connections made with them, and which node each session lives on.
//! It is replaced as a whole when the login changes, so no call can pair one user's
//! login with another's key, certificates or connections: a call holds the `Arc` it
//! started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use trust::PrivateKey;

use crate::login::{self, Login};
use crate::pool::Pool;

pub struct Account {
    pub login: Login,
    pub key: Arc<PrivateKey>,
    pub pool: Pool,
    /// Which node each persistent session lives on, learned from its first dispatch.
    sessions: Mutex<HashMap<String, String>>,
}

impl Account {
    /// The account for `login`, with the user's key pair (created on first use).
    pub fn new(login: Login) -> anyhow::Result<Account> {
        use anyhow::Context as _;
        let key = login::user_key().context("loading your key")?;
        Ok(Account { login, key, pool: Pool::default(), sessions: Mutex::default() })
    }

    /// Whether `other` is the same login (same server and TLS pin, user, token and CA).
    pub fn is(&self, other: &Login) -> bool {
        let l = &self.login;
        (&l.server, l.user.as_str(), l.token.expose()) == (&other.server, &other.user, other.token.expose())
            && l.ca == other.ca
    }

    pub fn session_node(&self, id: &str) -> Option<String> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    pub fn remember_session(&self, id: &str, node_id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), node_id.to_owned());
    }

    /// The session is over: where it was, and its connection (its certificate names the
    /// session, so nothing else could use it), are dropped.
    pub fn forget_session(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        self.pool.forget_session(id);
    }
}
