//! The control plane on the fleet's tailnet (`openbox control --mesh`): it joins as a node
//! of its own and serves the same API there, so tailnet-only nodes and laptops reach it.

use std::sync::Arc;
use std::time::Duration;

use proto::api::MeshSettings;

use crate::App;

/// How long joining may take.
const UP: Duration = Duration::from_secs(60);

/// Joins `mesh` (state in `state_dir`, so a restart is the same tailnet node), then serves
/// the API on the tailnet at `port` until the control plane shuts down. `joined` hears the
/// API's tailnet URL once it serves there.
pub async fn serve(
    app: Arc<App>,
    mesh: MeshSettings,
    state_dir: std::path::PathBuf,
    port: u16,
    joined: impl FnOnce(String),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let node = tailnet::Node::new(&tailnet::Config {
        dir: state_dir,
        hostname: "openbox-control".into(),
        control_url: mesh.control_url.clone(),
        auth_key: Some(tailnet::AuthKey::new(mesh.auth_key)),
        ephemeral: false,
    })?;
    node.up(UP).await.with_context(|| format!("joining the tailnet at {}", mesh.control_url))?;
    let listener = node.listen(&format!(":{port}"))?;
    let ip = node.ips()?.into_iter().next().context("the tailnet gave the control plane no address")?;
    joined(format!("http://{}", std::net::SocketAddr::new(ip, port)));
    // Plain HTTP: the tailnet encrypts and authenticates every peer already.
    crate::http::serve(OnTailnet(listener), crate::router::router(app.clone()), None, app.closing()).await;
    drop(node);
    Ok(())
}

/// The tailnet listener, as axum takes listeners.
struct OnTailnet(tailnet::Listener);

impl axum::serve::Listener for OnTailnet {
    type Io = tokio::net::UnixStream;
    type Addr = String;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(conn) => return conn,
                // The node left the tailnet: nothing more comes; shutdown ends the serving.
                Err(tailnet::TailnetError::Closed) => std::future::pending::<()>().await,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the tailnet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok("tailnet".into())
    }
}
