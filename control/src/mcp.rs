//! `/mcp`: the MCP tools of `openbox mcp`, served to each user over Streamable HTTP, with
//! one of their login tokens as the bearer token.
//!
//! For each user who calls it, the control plane runs `openbox-mcp --hosted` with an
//! openboxd of its own, logged in to this control plane as that user with a login token
//! made for it (`obx_mcp_…`, so that what it does is marked `mcp` in the audit log), and
//! passes the user's requests to it over a Unix socket in the user's directory
//! (`STATE/mcp/INCARNATION`, named by the user's incarnation). From there the path is the CLI's: the same access
//! policy, certificates signed for the user, the same audit entries, the same jobs. The
//! hosted server has no tools that reach this machine's own files.
//!
//! The servers live as long as the control plane: each stops, with its openboxd, when its
//! standard input (a pipe from here) closes. They start with no environment but what they
//! need (none of the control plane's secrets), and keep ended jobs for a day. A login token
//! made for one is kept here only as its hash, and revoked when the next is made, when a
//! start fails, and at the next start for those of an earlier run.

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
/// The hash of the login token made for a user's server, in its directory.
const TOKEN_HASH: &str = "login-token.sha256";

/// The MCP servers run for users, one per user incarnation.
pub struct Gateway {
    /// Where their directories are; `None`: `/mcp` is not served.
    dir: Option<PathBuf>,
    /// Each user's server, behind a lock of its own: one user's slow start holds no one else.
    servers: std::sync::Mutex<HashMap<String, Arc<ServerCell>>>,
}

/// A user's server once started, and the lock its start is made under.
type ServerCell = tokio::sync::Mutex<Option<Arc<Server>>>;

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
        Gateway { dir, servers: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Revokes the login tokens made for the servers of an earlier run (they stopped with
    /// it).
    pub async fn revoke_earlier(&self, app: &App) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            revoke_token_in(app, &entry.path()).await;
        }
    }

    /// The caller's server, started when it is not running.
    async fn server(&self, app: &App, caller: &Caller) -> Result<Arc<Server>, Refusal> {
        let Some(dir) = &self.dir else {
            return Err(Refusal::new(Kind::NotFound, "this control plane does not serve MCP"));
        };
        let incarnation = &caller.user.incarnation;
        let cell = {
            let mut servers = self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            servers.entry(incarnation.clone()).or_default().clone()
        };
        let mut cell = cell.lock().await;
        if let Some(s) = cell.as_ref().filter(|s| s.running()) {
            return Ok(s.clone());
        }
        // Named by the incarnation alone: short enough for the sockets under it.
        let short: String = incarnation.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        let user_dir = dir.join(short);
        caller.audit(app, "mcp.start", Record::default()).await?;
        let server = match start(app, &caller.user, &user_dir).await {
            Ok(server) => Arc::new(server),
            Err(why) => {
                revoke_token_in(app, &user_dir).await;
                tracing::warn!(user = %caller.user.name, error = %why, "MCP server did not start");
                return Err(Refusal::new(Kind::Unavailable, format!("the MCP server did not start: {why}")));
            }
        };
        *cell = Some(server.clone());
        Ok(server)
    }
}

/// Revokes the login token made for the server in `dir`, if it has one.
async fn revoke_token_in(app: &App, dir: &Path) {
    let file = dir.join(TOKEN_HASH);
    if let Ok(hash) = std::fs::read_to_string(&file)
        && !hash.trim().is_empty()
    {
        let _ = app.store.revoke_login_token(hash.trim()).await;
        let _ = std::fs::remove_file(&file);
    }
}

/// `program` with only the environment a user's server needs: none of the control
/// plane's own (its CA key, its tailnet's keys).
fn clean_command(program: &Path, dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", dir)
        .env(paths::HOME_ENV, dir)
        // Ended jobs take this machine's disk: a day, not a week.
        .env("OPENBOX_JOB_RETENTION", "1d")
        .env("TS_NO_LOGS_NO_SUPPORT", "true")
        .current_dir(dir);
    cmd
}

/// Logs a fresh openbox identity in as `user` in `dir` and starts its MCP server there.
async fn start(app: &App, user: &User, dir: &Path) -> Result<Server, String> {
    paths::create_private_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    revoke_token_in(app, dir).await;
    let login = token::generate(token::MCP_LOGIN_PREFIX);
    let hash = token::hash(login.expose());
    // The hash first: a token that exists is one this directory can revoke.
    paths::write_private(&dir.join(TOKEN_HASH), hash.as_bytes()).map_err(|e| e.to_string())?;
    app.store.add_login_token(&user.name, &hash, crate::now()).await.map_err(|e| e.to_string())?;
    // The token itself only for `openbox login` to read (not in its arguments).
    let token_file = dir.join("login-token");
    paths::write_private(&token_file, login.expose().as_bytes()).map_err(|e| e.to_string())?;

    let mut args = vec!["login".to_owned(), "--no-daemon".into(), "--server".into(), app.config.public_url.clone()];
    if let Some(fp) = &app.config.fingerprint {
        args.extend(["--fingerprint".into(), fp.clone()]);
    }
    args.extend(["--token-file".into(), token_file.display().to_string()]);
    let openbox = paths::sibling_binary("openbox");
    let mut login_cmd = clean_command(&openbox, dir);
    login_cmd.args(&args).stdin(Stdio::null()).kill_on_drop(true);
    let logged_in = tokio::time::timeout(START_TIMEOUT, login_cmd.output()).await;
    let _ = std::fs::remove_file(&token_file);
    let logged_in = logged_in
        .map_err(|_| format!("openbox login did not end within {} s", START_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run {}: {e}", openbox.display()))?;
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
    let mut child = clean_command(&mcp, dir)
        .arg("--http")
        .arg(format!("unix:{}", socket.display()))
        .arg("--token-file")
        .arg(&bearer_file)
        .arg("--hosted")
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
    strip_hop_by_hop(&mut parts.headers);
    let bearer = HeaderValue::from_str(&format!("Bearer {}", server.bearer)).expect("hex");
    parts.headers.insert(header::AUTHORIZATION, bearer);
    parts.headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    let unavailable = |e: &dyn std::fmt::Display| Refusal::new(Kind::Unavailable, format!("the MCP server: {e}"));
    let stream = tokio::net::UnixStream::connect(&server.socket).await.map_err(|e| unavailable(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(&e))?;
    tokio::spawn(connection);
    let mut answer = sender.send_request(Request::from_parts(parts, body)).await.map_err(|e| unavailable(&e))?;
    strip_hop_by_hop(answer.headers_mut());
    Ok(answer.map(Body::new))
}

/// Removes the headers that are about one connection, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TRAILER,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}
