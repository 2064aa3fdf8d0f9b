//! The dashboard's console: the one place command bytes pass through the control plane.
//!
//! For each command the control plane makes a key pair of its own, signs a certificate for
//! it exactly as a dispatch for the caller would be (the same access policy, the same
//! audit entry, marked `web console`), dials the node itself, and streams what the
//! command prints back as lines of JSON ([`ConsoleEvent`]). The key and the connection
//! live as long as that one call; when the browser goes away (the page stops the command
//! by dropping its request), the channel is closed and the agent ends the command.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use net::ssh::{ExitStatus, NoInput, NodeTarget};
use net::transport::Transport;
use proto::api::{ConsoleEvent, DispatchRequest, Target};
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::refusal::{Kind, Refusal};
use crate::{App, placement};

/// Lines of output held for a browser that reads slowly; past this the command waits.
const BACKLOG: usize = 64;

pub async fn run(
    State(app): State<Arc<App>>,
    caller: Caller,
    crate::auth::Body(req): crate::auth::Body<proto::routes::Console>,
) -> Result<Response, Refusal> {
    if req.command.trim().is_empty() {
        return Err(Refusal::new(Kind::BadRequest, "give a command to run"));
    }
    let request = (req.target.clone(), req.session.clone(), req.isolation.clone());
    let Behalf { node, target, user, key, cert } = on_behalf(&app, caller, request, "web console").await?;

    let (tx, mut rx) = mpsc::channel::<Bytes>(BACKLOG);
    tokio::spawn(async move {
        let mut out = Lines { tx: tx.clone(), stdout: Vec::new(), stderr: Vec::new() };
        let _ = out.send(&ConsoleEvent::Started { node: node.name.clone() }).await;
        // The browser dropping the answer stops the command.
        let gone = tx.clone();
        let ended = async {
            let mut conn = net::ssh::dial(&target).await?;
            conn.authenticate(&user, key, cert).await?;
            let status = conn.exec(&req.command, NoInput, &mut out, gone.closed()).await;
            conn.close().await;
            status
        }
        .await;
        let last = match ended {
            Ok(status) => {
                let signal = match &status {
                    ExitStatus::Signal { name, .. } => Some(name.clone()),
                    ExitStatus::Code(_) => None,
                };
                ConsoleEvent::Exit { code: status.exit_code(), signal }
            }
            Err(e) => ConsoleEvent::Error(e.to_string()),
        };
        let _ = out.send(&last).await;
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, std::convert::Infallible>)));
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// What the control plane needs to act on the caller's behalf on one node.
pub(crate) struct Behalf {
    pub node: proto::api::Node,
    pub target: NodeTarget,
    pub user: String,
    pub key: Arc<trust::PrivateKey>,
    pub cert: trust::Certificate,
}

/// The console's and the terminal's first step: a key pair for this one call, and a
/// certificate for it signed exactly as a dispatch for the caller (their policy; the audit
/// entry marked `what`); the node must have a direct address.
pub(crate) async fn on_behalf(
    app: &App,
    caller: Caller,
    (target, session, isolation): (Target, Option<String>, proto::Isolation),
    what: &str,
) -> Result<Behalf, Refusal> {
    let key = Arc::new(trust::generate_key());
    let public_key = key.public_key().to_openssh().map_err(trust::TrustError::from)?;
    let dispatch = DispatchRequest { target, session, isolation, public_key };
    let d = placement::dispatch(app, &caller.user, caller.source.as_ref(), dispatch, Some(what)).await?;
    if d.node.addr.is_empty() {
        return Err(Refusal::new(
            Kind::Unavailable,
            format!("{} is on the tailnet only; the {what} reaches nodes with a direct address", d.node.name),
        ));
    }
    let cert = trust::parse_certificate(&d.cert)?;
    let target = NodeTarget {
        node_id: d.node.id.clone(),
        name: d.node.name.clone(),
        addr: d.node.addr.clone(),
        via: Transport::Tcp,
        ca: app.ca.public_key().clone(),
    };
    Ok(Behalf { node: d.node, target, user: caller.user.name, key, cert })
}

/// A command's output as lines of JSON; bytes that end inside a UTF-8 character wait for
/// the rest.
struct Lines {
    tx: mpsc::Sender<Bytes>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Lines {
    async fn send(&self, event: &ConsoleEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl net::ssh::Output for Lines {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        let text = whole_chars(&mut self.stdout, data);
        self.send(&ConsoleEvent::Stdout(text)).await
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        let text = whole_chars(&mut self.stderr, data);
        self.send(&ConsoleEvent::Stderr(text)).await
    }
}

/// The text of `carry` + `data` up to the last whole character (invalid bytes shown as
/// U+FFFD); an unfinished character stays in `carry`.
fn whole_chars(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let upto = match std::str::from_utf8(carry) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => carry.len(),
    };
    let rest = carry.split_off(upto);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_chunks_is_shown_whole() {
        let mut carry = Vec::new();
        let snow = "☃".as_bytes();
        assert_eq!(whole_chars(&mut carry, &[b'a', snow[0]]), "a");
        assert_eq!(whole_chars(&mut carry, &snow[1..2]), "");
        assert_eq!(whole_chars(&mut carry, &[snow[2], b'b']), "☃b");
        assert_eq!(whole_chars(&mut carry, &[0xff, b'c']), "\u{fffd}c");
        assert!(carry.is_empty());
    }
}
