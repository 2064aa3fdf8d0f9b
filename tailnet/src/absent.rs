//! A build without the tailnet (`--no-default-features`: no Go needed). The types exist so
//! that callers compile unchanged; a node can never be made, and says why.

use std::net::IpAddr;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::{Config, TailnetError};

/// Never made in this build: [`Node::new`] says the build has no tailnet.
pub enum Node {}

impl Node {
    pub fn new(_config: &Config) -> Result<Node, TailnetError> {
        Err(TailnetError::NotBuilt)
    }

    #[allow(clippy::unused_async, reason = "the same signature as the real node's")]
    pub async fn up(&self, _deadline: Duration) -> Result<(), TailnetError> {
        match *self {}
    }

    pub fn ips(&self) -> Result<Vec<IpAddr>, TailnetError> {
        match *self {}
    }

    pub fn listen(&self, _addr: &str) -> Result<Listener, TailnetError> {
        match *self {}
    }

    #[allow(clippy::unused_async, reason = "the same signature as the real node's")]
    pub async fn dial(&self, _addr: &str) -> Result<UnixStream, TailnetError> {
        match *self {}
    }
}

/// Never made in this build.
pub enum Listener {}

impl Listener {
    #[allow(clippy::unused_async, reason = "the same signature as the real listener's")]
    pub async fn accept(&self) -> Result<(UnixStream, String), TailnetError> {
        match *self {}
    }
}
