//! `/mcp`: the MCP tools of `openbox mcp`, served to each user over Streamable HTTP, with
//! one of their login tokens as the bearer token.
//!
//! For each user who calls it, the control plane runs `openbox-mcp --hosted` with an
//! openboxd of its own, logged in to this control plane as that user with a login token
//! made for it (`obx_mcp_…`, so that what it does is marked `mcp` in the audit log), and
//! passes the user's requests to it over a Unix socket in the user's directory
//! (`STATE/mcp/USER-INCARNATION`). From there the path is the CLI's: the same access
//! policy, certificates signed for the user, the same audit entries, the same jobs. The
//! hosted server has no tools that reach this machine's own files.
//!
//! The servers live as long as the control plane: each stops, with its openboxd, when its
//! standard input (a pipe from here) closes. A login token made for one is revoked when
//! the next is made, and at the next start for those of an earlier run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use trust::token;

use crate::App;
use crate::audit::Record;
use crate::auth::{Caller, Credential};
use crate::refusal::{Kind, Refusal};
use crate::store::User;

/// How long a user's server has to start (log in, start openboxd, listen).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The MCP servers run for users, one per user incarnation.
pub struct Gateway {
    /// Where their directories are; `None`: `/mcp` is not served.
    dir: Option<PathBuf>,
    servers: tokio::sync::Mutex<HashMap<String, Arc<Server>>>,
}

/// One user's MCP server.
struct Server {
    socket: PathBuf,
    /// What the server takes as its bearer token (it listens for this control plane only).
    bearer: String,
    /// Held so that its standard input stays open: closing it stops the server.
    child: std::sync::Mutex<tokio::process::Child>,
}

impl Server {
    fn running(&self) -> bool {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_wait().is_ok_and(|s| s.is_none())
    }
}

impl Gateway {
    pub fn new(dir: Option<PathBuf>) -> Gateway {
        Gateway { dir, servers: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Revokes the login tokens made for the servers of an earlier run (they stopped with
    /// it).
    pub async fn revoke_earlier(&self, app: &App) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            revoke_token_in(app, &entry.path().join("login-token")).await;
        }
    }

    /// The caller's server, started when it is not running.
    async fn server(&self, app: &App, caller: &Caller) -> Result<Arc<Server>, Refusal> {
        let Some(dir) = &self.dir else {
            return Err(Refusal::new(Kind::NotFound, "this control plane does not serve MCP"));
        };
        let mut servers = self.servers.lock().await;
        if let Some(s) = servers.get(&caller.user.incarnation)
            && s.running()
        {
            return Ok(s.clone());
        }
        let user_dir = dir.join(format!("{}-{}", caller.user.name, &caller.user.incarnation));
        let server = Arc::new(start(app, &caller.user, &user_dir).await.map_err(|why| {
            tracing::warn!(user = %caller.user.name, error = %why, "MCP server did not start");
            Refusal::new(Kind::Unavailable, format!("the MCP server did not start: {why}"))
        })?);
        caller.audit(app, "mcp.start", Record::default()).await?;
        servers.insert(caller.user.incarnation.clone(), server.clone());
        Ok(server)
    }
}

/// Revokes the login token kept in `file`, if there is one.
async fn revoke_token_in(app: &App, file: &Path) {
    if let Ok(old) = std::fs::read_to_string(file)
        && !old.trim().is_empty()
    {
        let _ = app.store.revoke_login_token(&token::hash(old.trim())).await;
        let _ = std::fs::remove_file(file);
    }
}

/// Logs a fresh openbox identity in as `user` in `dir` and starts its MCP server there.
async fn start(app: &App, user: &User, dir: &Path) -> Result<Server, String> {
    paths::create_private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let token_file = dir.join("login-token");
    revoke_token_in(app, &token_file).await;
    let login = token::generate(token::MCP_LOGIN_PREFIX);
    app.store
        .add_login_token(&user.name, &token::hash(login.expose()), crate::now())
        .await
        .map_err(|e| e.to_string())?;
    paths::write_private(&token_file, login.expose().as_bytes()).map_err(|e| e.to_string())?;

    let mut args = vec!["login".to_owned(), "--no-daemon".into(), "--server".into(), app.config.public_url.clone()];
    if let Some(fp) = &app.config.fingerprint {
        args.extend(["--fingerprint".into(), fp.clone()]);
    }
    args.extend(["--token-file".into(), token_file.display().to_string()]);
    let logged_in = tokio::process::Command::new(paths::sibling_binary("openbox"))
        .args(&args)
        .env(paths::HOME_ENV, dir)
        .env_remove(paths::CONTEXT_ENV)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", paths::sibling_binary("openbox").display()))?;
    if !logged_in.status.success() {
        return Err(format!("openbox login: {}", String::from_utf8_lossy(&logged_in.stderr).trim()));
    }

    let bearer = token::random_id();
    let bearer_file = dir.join("mcp-token");
    paths::write_private(&bearer_file, bearer.as_bytes()).map_err(|e| e.to_string())?;
    let socket = dir.join("mcp.sock");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mcp.log"))
        .map_err(|e| format!("opening {}: {e}", dir.join("mcp.log").display()))?;
    let mcp = paths::sibling_binary("openbox-mcp");
    let mut child = tokio::process::Command::new(&mcp)
        .arg("--http")
        .arg(format!("unix:{}", socket.display()))
        .arg("--token-file")
        .arg(&bearer_file)
        .arg("--hosted")
        .current_dir(dir)
        .env(paths::HOME_ENV, dir)
        .env_remove(paths::CONTEXT_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", mcp.display()))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("mcp.log")).unwrap_or_default();
            let last = log.lines().last().unwrap_or_default().to_owned();
            return Err(format!("openbox-mcp exited ({status}): {last}"));
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            return Err(format!("openbox-mcp did not listen within {} s", START_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Server { socket, bearer, child: std::sync::Mutex::new(child) })
}

/// `/mcp`: the request passed to the caller's own MCP server, and its answer (streamed:
/// an SSE stream stays open as long as the client reads it).
pub async fn serve(State(app): State<Arc<App>>, caller: Caller, request: Request) -> Result<Response, Refusal> {
    // A browser's cookie would let any page the user opens call tools as them.
    if !matches!(caller.credential, Credential::Token(_)) {
        return Err(Refusal::new(
            Kind::Unauthorized,
            "send `Authorization: Bearer TOKEN` with one of your login tokens (`openbox user token NAME`)",
        ));
    }
    let server = app.mcp.server(&app, &caller).await?;
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/mcp", |p| p.as_str()).to_owned();
    parts.uri = path.parse().map_err(|_| Refusal::new(Kind::BadRequest, "a request path that does not parse"))?;
    parts.headers.remove(header::COOKIE);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", server.bearer)).expect("hex");
    parts.headers.insert(header::AUTHORIZATION, bearer);
    parts.headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    let unavailable = |e: &dyn std::fmt::Display| Refusal::new(Kind::Unavailable, format!("the MCP server: {e}"));
    let stream = tokio::net::UnixStream::connect(&server.socket).await.map_err(|e| unavailable(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(&e))?;
    tokio::spawn(connection);
    let answer = sender.send_request(Request::from_parts(parts, body)).await.map_err(|e| unavailable(&e))?;
    Ok(answer.map(Body::new))
}
