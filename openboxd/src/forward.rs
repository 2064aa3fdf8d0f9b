//! Port forwards for a run (`openbox -n NODE -L …/-R …`), through the node's pooled
//! connection: `-L` listens here and opens a `direct-tcpip` channel per connection; `-R`
//! has the agent listen on the node's loopback and connections come back as
//! `forwarded-tcpip` channels (see `net::ssh::Connection`). They last as long as the
//! call: the command's run, or until the caller goes away.

use std::sync::Arc;

use net::ssh::{Connection, SshError};
use proto::request::{Direction, Forward};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The forwards of one call; stopped when dropped.
pub struct Forwards {
    conn: Arc<Connection>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    /// The node ports listening for `-R` forwards.
    remote_ports: Vec<u16>,
}

/// Why a forward could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("-L {forward}: cannot listen on {bind}:{port}: {error}")]
    Listen { forward: Forward, bind: String, port: u16, error: std::io::Error },
    #[error("-R {forward}: {error}")]
    Remote { forward: Forward, error: SshError },
}

impl Forwards {
    /// Sets up every forward through `conn` to node `node`; lines that say what listens
    /// where, and a channel of notices about connections that could not be forwarded.
    pub async fn start(
        conn: Arc<Connection>,
        node: &str,
        specs: &[Forward],
    ) -> Result<(Forwards, Vec<String>, mpsc::UnboundedReceiver<String>), ForwardError> {
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let mut fw = Forwards { conn: conn.clone(), listeners: Vec::new(), remote_ports: Vec::new() };
        let mut said = Vec::new();
        for spec in specs {
            match spec.direction {
                Direction::Local => {
                    let listener = TcpListener::bind((spec.bind.as_str(), spec.port)).await.map_err(|error| {
                        ForwardError::Listen { forward: spec.clone(), bind: spec.bind.clone(), port: spec.port, error }
                    })?;
                    said.push(format!("-L {}:{} -> {node} -> {}:{}", spec.bind, spec.port, spec.host, spec.host_port));
                    fw.listeners.push(tokio::spawn(serve_local(listener, conn.clone(), spec.clone(), notices.clone())));
                }
                Direction::Remote => {
                    let target = (spec.host.clone(), spec.host_port);
                    let port = conn
                        .remote_forward(spec.port, target)
                        .await
                        .map_err(|error| ForwardError::Remote { forward: spec.clone(), error })?;
                    fw.remote_ports.push(port);
                    said.push(format!("-R {node} 127.0.0.1:{port} -> {}:{}", spec.host, spec.host_port));
                }
            }
        }
        Ok((fw, said, notices_rx))
    }
}

impl Forwards {
    /// Stops every forward, and waits until the node has stopped listening for them (so
    /// the next call may listen there again).
    pub async fn stop(mut self) {
        for port in std::mem::take(&mut self.remote_ports) {
            self.conn.cancel_remote_forward(port).await;
        }
    }
}

/// A call that ends some other way stops its forwards too, without waiting.
impl Drop for Forwards {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
        let (conn, ports) = (self.conn.clone(), std::mem::take(&mut self.remote_ports));
        if !ports.is_empty() {
            tokio::spawn(async move {
                for port in ports {
                    conn.cancel_remote_forward(port).await;
                }
            });
        }
    }
}

/// Accepts connections for a `-L` forward and joins each to a channel to its target.
async fn serve_local(
    listener: TcpListener,
    conn: Arc<Connection>,
    spec: Forward,
    notices: mpsc::UnboundedSender<String>,
) {
    loop {
        let Ok((mut tcp, peer)) = listener.accept().await else { continue };
        let (conn, spec, notices) = (conn.clone(), spec.clone(), notices.clone());
        tokio::spawn(async move {
            match conn.direct_tcpip(&spec.host, spec.host_port, peer).await {
                Ok(mut stream) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                }
                Err(e) => {
                    tracing::info!(error = %e, "a forwarded connection could not be opened");
                    let _ = notices.send(format!("openbox: -L {}: {e}\n", spec.port));
                }
            }
        });
    }
}
