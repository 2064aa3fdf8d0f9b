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

/// Where to listen: a loopback TCP address, or a Unix socket (`unix:PATH`, for a control
/// plane that serves these tools to its users through its own `/mcp`).
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn listen_at(addr: &str) -> anyhow::Result<Listen> {
    if let Some(path) = addr.strip_prefix("unix:") {
        return Ok(Listen::Unix(path.into()));
    }
    let tcp: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr:?}: give a loopback IP:PORT, e.g. 127.0.0.1:8765, or unix:PATH"))?;
    if !tcp.ip().is_loopback() {
        bail!(
            "{tcp}: serve MCP over plain HTTP on loopback only (127.0.0.1:PORT); reach it from elsewhere through a tunnel"
        );
    }
    Ok(Listen::Tcp(tcp))
}

/// Serves the tools at `http://addr/mcp` until the process is stopped. `hosted`: served by
/// a control plane for one of its users (see [`crate::tools::Openbox::hosted`]); it stops
/// when its standard input closes, as it does when that control plane is gone.
pub async fn serve(addr: &str, token_file: Option<PathBuf>, hosted: bool) -> anyhow::Result<()> {
    let listen = listen_at(addr)?;
    let (file, made) = match token_file {
        Some(f) => (f, false),
        None => (default_token_file()?, true),
    };
    let expected = Arc::new(format!("Bearer {}", token(&file, made)?));
    let mut config = StreamableHttpServerConfig::default();
    config.max_request_body_bytes = crate::MAX_MESSAGE;
    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let listener = match &listen {
        Listen::Tcp(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            hosts.push(listener.local_addr()?.to_string());
            Either::Tcp(listener)
        }
        Listen::Unix(path) => {
            // A socket left by an earlier server of this context: nobody answers on it.
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Either::Unix(listener)
        }
    };
    let config = config.with_allowed_hosts(hosts);
    let service = StreamableHttpService::new(
        move || Ok(if hosted { crate::tools::Openbox::hosted() } else { crate::tools::Openbox::new() }),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app =
        axum::Router::new().nest_service("/mcp", service).layer(axum::middleware::from_fn_with_state(expected, bearer));
    let until = async move {
        if hosted {
            tokio::select! {
                _ = stopped() => {}
                _ = stdin_closed() => {}
            }
        } else {
            stopped().await;
        }
    };
    match listener {
        Either::Tcp(l) => {
            let bound = l.local_addr()?;
            eprintln!(
                "openbox mcp: serving MCP at http://{bound}/mcp (Authorization: Bearer, the token in {})",
                file.display()
            );
            axum::serve(l, app).with_graceful_shutdown(until).await
        }
        Either::Unix(l) => {
            eprintln!("openbox mcp: serving MCP at {addr} (path /mcp; Authorization: Bearer)");
            axum::serve(l, app).with_graceful_shutdown(until).await
        }
    }
    .context("serving MCP over HTTP")
}

enum Either {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Resolves when standard input reaches its end (or fails).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
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
