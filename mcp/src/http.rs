//! `openbox mcp --http ADDR`: the same tools over MCP's Streamable HTTP transport, at
//! `http://ADDR/mcp`, for clients that reach MCP servers over HTTP rather than starting
//! them. Every request carries `Authorization: Bearer TOKEN`; the token is this context's
//! `mcp-token` file (made on first use, 0600) or the one `--token-file` names. Served on
//! loopback only: plain HTTP goes no further (a tunnel reaches it from elsewhere).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

/// Where the bearer token is kept when `--token-file` names none.
fn default_token_file() -> anyhow::Result<PathBuf> {
    let context = paths::Context::from_env().map_err(anyhow::Error::msg)?;
    Ok(context.config_dir().join("mcp-token"))
}

/// The token in `file`, made (random, 0600) when the file is not there and `make`.
fn token(file: &Path, make: bool) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => bail!("{} is empty: put a token in it, or remove it to have one made", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && make => {
            let fresh = random_token()?;
            if let Some(dir) = file.parent() {
                paths::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            paths::write_private(file, format!("{fresh}\n").as_bytes())
                .with_context(|| format!("writing {}", file.display()))?;
            Ok(fresh)
        }
        Err(e) => Err(e).with_context(|| format!("reading the token from {}", file.display())),
    }
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves the tools at `http://addr/mcp` until the process is stopped.
pub async fn serve(addr: &str, token_file: Option<PathBuf>) -> anyhow::Result<()> {
    let addr: SocketAddr =
        addr.parse().with_context(|| format!("{addr:?}: give a loopback IP:PORT, e.g. 127.0.0.1:8765"))?;
    if !addr.ip().is_loopback() {
        bail!(
            "{addr}: serve MCP over plain HTTP on loopback only (127.0.0.1:PORT); reach it from elsewhere through a tunnel"
        );
    }
    let (file, made) = match token_file {
        Some(f) => (f, false),
        None => (default_token_file()?, true),
    };
    let expected = Arc::new(format!("Bearer {}", token(&file, made)?));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let mut config = StreamableHttpServerConfig::default();
    config.max_request_body_bytes = crate::MAX_MESSAGE;
    let config =
        config.with_allowed_hosts(["localhost".to_owned(), "127.0.0.1".into(), "::1".into(), bound.to_string()]);
    let service = StreamableHttpService::new(
        || Ok(crate::tools::Openbox::new()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app =
        axum::Router::new().nest_service("/mcp", service).layer(axum::middleware::from_fn_with_state(expected, bearer));
    eprintln!(
        "openbox mcp: serving MCP at http://{bound}/mcp (Authorization: Bearer, the token in {})",
        file.display()
    );
    axum::serve(listener, app).with_graceful_shutdown(stopped()).await.context("serving MCP over HTTP")
}

/// Refuses a request without the bearer token: 401, saying what to send.
async fn bearer(State(expected): State<Arc<String>>, request: Request, next: Next) -> Response {
    let sent = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !same(sent, &expected) {
        let why =
            "send `Authorization: Bearer TOKEN`, the token in the file `openbox mcp --http` named when it started\n";
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], why).into_response();
    }
    next.run(request).await
}

/// Compared whole, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/mcp-token");
        let first = token(&file, true).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(token(&file, true).unwrap(), first, "the same token next time");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(token(&dir.path().join("missing"), false).is_err(), "a named file must be there");
    }

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same("Bearer abc", "Bearer abc"));
        assert!(!same("Bearer abd", "Bearer abc"));
        assert!(!same("Bearer ab", "Bearer abc"));
    }
}
