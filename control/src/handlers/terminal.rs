//! The dashboard's terminal: a shell in a pseudo-terminal on a node,
//! over a WebSocket. As for the console, the control plane makes a key pair for the one
//! call, dispatches as the caller (same access policy, audit entry marked `web terminal`),
//! dials the node itself and asks for a terminal of the browser's size; binary frames
//! carry keys one way and output the other, a text frame `{"cols":C,"rows":R}` resizes,
//! and the last text frame says how it ended.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use net::ssh::PtySpec;
use proto::api::Target;
use tokio::sync::mpsc;

use super::console::{Behalf, on_behalf};
use crate::App;
use crate::auth::Caller;
use crate::refusal::{Kind, Refusal};

#[derive(serde::Deserialize)]
struct Resize {
    cols: u32,
    rows: u32,
}

/// Opens a terminal. A socket that does not come from the dashboard's own page is refused
/// before it opens; any other refusal (the policy, a node out of reach) is the socket's
/// one message, so the page can show it.
pub async fn open(
    State(app): State<Arc<App>>,
    caller: Caller,
    headers: HeaderMap,
    slot: Option<axum::Extension<crate::http::ConnectionSlot>>,
    crate::auth::Params(q): crate::auth::Params<proto::routes::ConsoleTerminal>,
    ws: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    crate::auth::check_socket(&headers)?;
    let reached = reach(&app, caller, q).await;
    Ok(ws.on_upgrade(move |mut socket| async move {
        // Counted among the open connections for as long as the terminal lasts.
        let _slot = slot;
        match reached {
            Ok(node) => serve(socket, node).await,
            Err(refusal) => {
                let end = serde_json::json!({ "error": refusal.to_string() });
                let _ = socket.send(Message::Text(end.to_string().into())).await;
            }
        }
    }))
}

/// Where the terminal goes, the certificate for it (the caller's own dispatch), its size.
struct Reached {
    behalf: Behalf,
    pty: PtySpec,
}

async fn reach(app: &App, caller: Caller, q: proto::api::TerminalQuery) -> Result<Reached, Refusal> {
    let target = match q.target.split_once(':') {
        Some(("node", n)) => Target::Node(n.to_owned()),
        Some(("tag", t)) => Target::Tag(t.to_owned()),
        _ => return Err(Refusal::new(Kind::BadRequest, "target is node:NAME or tag:TAG")),
    };
    let isolation: proto::Isolation = match q.isolation.as_deref() {
        None | Some("") => proto::Isolation::Native,
        Some(text) => text.parse().map_err(|e| Refusal::new(Kind::BadRequest, format!("{e}")))?,
    };
    let session = q.session.filter(|s| !s.is_empty());
    let behalf = on_behalf(app, caller, (target, session, isolation), "web terminal").await?;
    let pty = PtySpec { term: "xterm-256color".into(), cols: q.cols, rows: q.rows };
    Ok(Reached { behalf, pty })
}

/// Joins the socket to a login shell on the node until either ends.
async fn serve(mut socket: WebSocket, to: Reached) {
    let started = async {
        let Behalf { target, user, key, cert, .. } = to.behalf;
        let mut conn = net::ssh::dial(&target).await?;
        conn.authenticate(&user, key, cert).await?;
        let started = conn.start_in_pty(None, &[], &to.pty).await?;
        Ok::<_, net::ssh::SshError>((conn, started))
    };
    let (conn, started) = match started.await {
        Ok(s) => s,
        Err(e) => {
            let _ = socket.send(Message::Text(serde_json::json!({ "error": e.to_string() }).to_string().into())).await;
            return;
        }
    };
    let (keys_tx, keys) = mpsc::channel::<Vec<u8>>(16);
    let (sizes_tx, sizes) = mpsc::channel::<(u32, u32)>(4);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        let mut output = Frames(out_tx);
        let cancel = async {
            let _ = gone.await;
        };
        started.with_resizes(sizes).finish(keys, &mut output, cancel).await
    });
    // The page's keys and resizes are read on their own: output keeps flowing while a
    // paste waits for the remote side to read it.
    let (mut page, mut from_page) = socket.split();
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = from_page.next().await {
            match frame {
                Message::Binary(data) if keys_tx.send(data.to_vec()).await.is_err() => break,
                Message::Binary(_) => {}
                Message::Text(text) => {
                    if let Ok(r) = serde_json::from_str::<Resize>(&text) {
                        let _ = sizes_tx.send((r.cols, r.rows)).await;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    loop {
        tokio::select! {
            // The page has gone.
            _ = &mut reader => break,
            out = out_rx.recv() => match out {
                Some(data) => if page.send(Message::Binary(data.into())).await.is_err() { break },
                None => break,
            },
        }
    }
    // The page has gone (or output cannot reach it): end the command on the node.
    drop(gone_tx);
    reader.abort();
    let status = run.await;
    let end = match status {
        Ok(Ok(s)) => serde_json::json!({ "exit": s.exit_code() }),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(_) => serde_json::json!({ "error": "the terminal's task failed" }),
    };
    let _ = page.send(Message::Text(end.to_string().into())).await;
    conn.close().await;
}

/// Output for the socket (a terminal's output is all stdout).
struct Frames(mpsc::Sender<Vec<u8>>);

impl net::ssh::Output for Frames {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.send(data.to_vec()).await.map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stdout(data).await
    }
}
