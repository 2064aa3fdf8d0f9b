//! HTTP handlers: each turns a request into store calls and CA signatures.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use proto::Isolation;
use proto::api::*;
use proto::cert::{CLOCK_SKEW_SECS, HOST_CERT_TTL_SECS};
use serde::Deserialize;
use trust::token;

use crate::store::{EnrollTokenProblem, NodeRow, SessionRow, StoreError, User};
use crate::{App, now};

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(Health { status: "ok".into(), version: proto::VERSION.into() }) }))
        .route("/v1/whoami", get(whoami))
        .route("/v1/logout", post(logout))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{name}", delete(remove_user))
        .route("/v1/users/{name}/tokens", post(new_user_token))
        .route("/v1/enroll-tokens", post(new_enroll_token))
        .route("/v1/enroll", post(enroll))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}", delete(remove_node).patch(update_node))
        .route("/v1/dispatch", post(dispatch))
        .route("/v1/events", get(events))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", delete(remove_session))
        .with_state(app)
}

/// An error answer: a status and one line for the user.
pub struct ApiErr(StatusCode, String);

impl ApiErr {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiErr {
        ApiErr(status, msg.into())
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<StoreError> for ApiErr {
    fn from(e: StoreError) -> ApiErr {
        match e {
            StoreError::Conflict(m) => ApiErr::new(StatusCode::CONFLICT, m),
            StoreError::NotFound(m) => ApiErr::new(StatusCode::NOT_FOUND, m),
            StoreError::Refused(m) => ApiErr::new(StatusCode::FORBIDDEN, m),
            StoreError::Sqlite(e) => {
                tracing::error!(error = %e, "database error");
                ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, "the control plane's database failed; see its log")
            }
        }
    }
}

impl From<trust::TrustError> for ApiErr {
    fn from(e: trust::TrustError) -> ApiErr {
        ApiErr::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiErr>;

/// Unwraps a JSON body, answering a malformed one with a JSON error.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiErr> {
    b.map(|Json(v)| v).map_err(|e| ApiErr::new(StatusCode::BAD_REQUEST, format!("bad request body: {}", e.body_text())))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

fn check_name(kind: &str, v: &str) -> Result<(), ApiErr> {
    proto::check_name(kind, v).map_err(|m| ApiErr::new(StatusCode::BAD_REQUEST, m))
}

/// A person authenticated by a login token.
struct Caller {
    user: User,
    token_hash: String,
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, ApiErr> {
        let unauthorized = |m: &str| ApiErr::new(StatusCode::UNAUTHORIZED, m);
        let tok = bearer(&parts.headers)
            .ok_or_else(|| unauthorized("not logged in: run `openbox login --server URL --token TOKEN`"))?;
        if !tok.starts_with(token::LOGIN_PREFIX) {
            return Err(unauthorized("that is not a login token (login tokens start with obx_)"));
        }
        let token_hash = token::hash(tok);
        match app.store.user_by_login_token(&token_hash)? {
            Some(user) => Ok(Caller { user, token_hash }),
            None => Err(unauthorized(
                "the login token is invalid or was revoked; ask an admin for a new one (`openbox user token NAME`)",
            )),
        }
    }
}

impl Caller {
    fn require_admin(&self) -> Result<(), ApiErr> {
        if self.user.admin {
            Ok(())
        } else {
            Err(ApiErr::new(
                StatusCode::FORBIDDEN,
                format!("{:?} is not an admin; ask an admin to do this", self.user.name),
            ))
        }
    }
}

async fn whoami(State(app): AppState, caller: Caller) -> ApiResult<WhoAmI> {
    Ok(Json(WhoAmI { user: caller.user.name, admin: caller.user.admin, ca_public_key: app.ca.public_key_openssh() }))
}

async fn logout(State(app): AppState, caller: Caller) -> Result<StatusCode, ApiErr> {
    app.store.revoke_login_token(&caller.token_hash)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(app): AppState, caller: Caller) -> ApiResult<Vec<UserInfo>> {
    caller.require_admin()?;
    Ok(Json(app.store.list_users()?))
}

async fn add_user(
    State(app): AppState,
    caller: Caller,
    b: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<UserCreated> {
    caller.require_admin()?;
    let req = body(b)?;
    check_name("user name", &req.name)?;
    let tok = token::generate(token::LOGIN_PREFIX);
    app.store.create_user(&req.name, false, &token::hash(tok.expose()), now())?;
    tracing::info!(user = %req.name, by = %caller.user.name, "user added");
    Ok(Json(UserCreated { name: req.name, token: tok.expose().to_owned() }))
}

async fn remove_user(State(app): AppState, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiErr> {
    caller.require_admin()?;
    app.store.remove_user(&name)?;
    tracing::info!(user = %name, by = %caller.user.name, "user removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn new_user_token(State(app): AppState, caller: Caller, Path(name): Path<String>) -> ApiResult<UserCreated> {
    caller.require_admin()?;
    let tok = crate::new_login_token(&app.store, &name).map_err(|e| match e.downcast::<StoreError>() {
        Ok(se) => ApiErr::from(se),
        Err(e) => ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    })?;
    tracing::info!(user = %name, by = %caller.user.name, "login token issued");
    Ok(Json(UserCreated { name, token: tok.expose().to_owned() }))
}

async fn new_enroll_token(
    State(app): AppState,
    caller: Caller,
    b: Result<Json<NewEnrollToken>, JsonRejection>,
) -> ApiResult<EnrollToken> {
    caller.require_admin()?;
    let req = body(b)?;
    for t in &req.tags {
        check_name("tag", t)?;
    }
    if req.ttl_secs == 0 || req.ttl_secs > 30 * 24 * 3600 {
        return Err(ApiErr::new(StatusCode::BAD_REQUEST, "the token lifetime must be between 1 second and 30 days"));
    }
    let tok = token::generate(token::ENROLL_PREFIX);
    let expires_at = now() + req.ttl_secs;
    app.store.add_enroll_token(&token::hash(tok.expose()), caller.user.id, &req.tags, now(), expires_at)?;
    Ok(Json(EnrollToken { token: tok.expose().to_owned(), tags: req.tags, expires_at }))
}

fn sign_host_cert(app: &App, host_key: &trust::PublicKey, node_id: &str) -> Result<String, ApiErr> {
    let t = now();
    let cert = app.ca.sign_host(host_key, node_id, t - CLOCK_SKEW_SECS, t + HOST_CERT_TTL_SECS)?;
    Ok(cert.to_openssh().map_err(trust::TrustError::from)?)
}

async fn enroll(State(app): AppState, b: Result<Json<EnrollRequest>, JsonRejection>) -> ApiResult<Enrolled> {
    let req = body(b)?;
    let unauthorized = |m: &str| ApiErr::new(StatusCode::UNAUTHORIZED, m);
    if !req.token.starts_with(token::ENROLL_PREFIX) {
        return Err(unauthorized(
            "that is not an enrollment token (they start with enroll_); mint one with `openbox node token`",
        ));
    }
    for t in &req.tags {
        check_name("tag", t)?;
    }
    if let Some(n) = &req.name {
        check_name("node name", n)?;
    }
    // A host name that is not a valid node name is replaced rather than refused.
    let default_name =
        req.default_name.filter(|n| proto::check_name("node name", n).is_ok()).unwrap_or_else(|| "node".into());
    let host_key = trust::parse_public_key(&req.host_public_key)?;
    // A chosen name that is taken is refused before the token is used up.
    if let Some(name) = &req.name
        && app.store.node(name)?.is_some_and(|n| &n.name == name)
    {
        return Err(ApiErr::new(
            StatusCode::CONFLICT,
            format!("a node named {name:?} already exists; choose another --name (the token is still valid)"),
        ));
    }
    let mut tags = match app.store.take_enroll_token(&token::hash(&req.token), now())? {
        Ok(tags) => tags,
        Err(EnrollTokenProblem::Unknown) => {
            return Err(unauthorized("unknown enrollment token; mint one with `openbox node token`"));
        }
        Err(EnrollTokenProblem::Used) => {
            return Err(unauthorized(
                "this enrollment token was already used; each token enrolls one node — mint another with `openbox node token`",
            ));
        }
        Err(EnrollTokenProblem::Expired) => {
            return Err(unauthorized("this enrollment token has expired; mint another with `openbox node token`"));
        }
    };
    for t in req.tags {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let node_id = token::random_id()[..12].to_owned();
    let secret = token::generate(token::NODE_PREFIX);
    let host_cert = sign_host_cert(&app, &host_key, &node_id)?;
    let exact_name = req.name.is_some();
    let row = app.store.insert_node(
        NodeRow {
            id: node_id.clone(),
            name: req.name.unwrap_or(default_name),
            tags,
            platform: req.platform,
            addr: req.addr,
            host_key: host_key.to_openssh().map_err(trust::TrustError::from)?,
            secret_hash: token::hash(secret.expose()),
            last_seen: Some(now()),
            stopped: false,
            created_at: now(),
            capabilities: proto::api::known_capabilities(&req.capabilities),
        },
        exact_name,
    )?;
    tracing::info!(node = %row.id, name = %row.name, tags = ?row.tags, isolation = ?row.capabilities, "node enrolled");
    app.refresh_registry();
    Ok(Json(Enrolled {
        node_id,
        name: row.name,
        host_cert,
        ca_public_key: app.ca.public_key_openssh(),
        heartbeat_secret: secret.expose().to_owned(),
    }))
}

async fn heartbeat(
    State(app): AppState,
    headers: HeaderMap,
    b: Result<Json<Heartbeat>, JsonRejection>,
) -> ApiResult<HeartbeatReply> {
    let hb = body(b)?;
    let Some(node) = app.store.node(&hb.node_id)? else {
        if app.store.is_revoked(&hb.node_id)? {
            return Err(ApiErr::new(
                StatusCode::GONE,
                "this node was removed from the fleet; enroll it again with a new token",
            ));
        }
        return Err(ApiErr::new(StatusCode::UNAUTHORIZED, "unknown node"));
    };
    // Look nodes up by id only: a name must not stand in for the id here.
    let secret_ok = node.id == hb.node_id && bearer(&headers).is_some_and(|s| token::hash(s) == node.secret_hash);
    if !secret_ok {
        tracing::warn!(node = %hb.node_id, "heartbeat with a wrong secret refused");
        return Err(ApiErr::new(StatusCode::UNAUTHORIZED, "heartbeat secret does not match this node"));
    }
    app.store.record_heartbeat(&hb, now())?;
    app.store.apply_session_reports(&node.id, &hb.sessions)?;
    app.refresh_registry();
    let mut reply = HeartbeatReply::default();
    if hb.host_cert_valid_before.saturating_sub(now()) < HOST_CERT_TTL_SECS / 2 && !hb.stopping {
        let key = trust::parse_public_key(&node.host_key)?;
        reply.host_cert = Some(sign_host_cert(&app, &key, &node.id)?);
        tracing::info!(node = %node.id, "host certificate renewed");
    }
    Ok(Json(reply))
}

#[derive(Deserialize)]
struct NodeFilter {
    tag: Option<String>,
}

async fn list_nodes(State(app): AppState, _caller: Caller, Query(f): Query<NodeFilter>) -> ApiResult<Vec<Node>> {
    let t = now();
    let nodes = app.store.list_nodes()?;
    Ok(Json(
        nodes
            .iter()
            .filter(|n| f.tag.as_ref().is_none_or(|tag| n.tags.contains(tag)))
            .map(|n| n.to_api(t, app.config.offline_after_secs))
            .collect(),
    ))
}

fn find_node(app: &App, id_or_name: &str) -> Result<NodeRow, ApiErr> {
    app.store.node(id_or_name)?.ok_or_else(|| {
        ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no node with id or name {id_or_name:?}; `openbox nodes` lists them"),
        )
    })
}

async fn remove_node(State(app): AppState, caller: Caller, Path(node): Path<String>) -> Result<StatusCode, ApiErr> {
    caller.require_admin()?;
    let row = find_node(&app, &node)?;
    app.store.remove_node(&row.id, now())?;
    tracing::info!(node = %row.id, name = %row.name, by = %caller.user.name, "node removed and revoked");
    app.refresh_registry();
    Ok(StatusCode::NO_CONTENT)
}

async fn update_node(
    State(app): AppState,
    caller: Caller,
    Path(node): Path<String>,
    b: Result<Json<NodeUpdate>, JsonRejection>,
) -> ApiResult<Node> {
    caller.require_admin()?;
    let upd = body(b)?;
    let row = find_node(&app, &node)?;
    if let Some(n) = &upd.name {
        check_name("node name", n)?;
    }
    let mut tags = row.tags.clone();
    for t in &upd.add_tags {
        check_name("tag", t)?;
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags.retain(|t| !upd.remove_tags.contains(t));
    app.store.update_node(&row.id, upd.name.as_deref(), &tags)?;
    let row = find_node(&app, &row.id)?;
    app.refresh_registry();
    Ok(Json(row.to_api(now(), app.config.offline_after_secs)))
}

/// Picks the node for a target: an exact node, or an online node carrying the tag.
fn resolve(app: &App, target: &Target, isolation: &Isolation) -> Result<Node, ApiErr> {
    let t = now();
    let nodes: Vec<Node> = app.store.list_nodes()?.iter().map(|n| n.to_api(t, app.config.offline_after_secs)).collect();
    let spread = usize::from_str_radix(&token::random_id()[..8], 16).unwrap_or(0);
    proto::api::resolve(&nodes, target, isolation.kind(), t, spread).cloned().map_err(|e| {
        let status = match e {
            ResolveError::Offline { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ResolveError::Incapable { .. } => StatusCode::CONFLICT,
            _ => StatusCode::NOT_FOUND,
        };
        ApiErr::new(status, e.to_string())
    })
}

async fn dispatch(
    State(app): AppState,
    caller: Caller,
    b: Result<Json<DispatchRequest>, JsonRejection>,
) -> ApiResult<Dispatch> {
    let req = body(b)?;
    if let Some(s) = &req.session {
        check_name("session id", s)?;
    }
    let key = trust::parse_public_key(&req.public_key)?;
    let node = match &req.session {
        Some(sid) => session_node(&app, &caller, sid, &req)?,
        None => resolve(&app, &req.target, &req.isolation)?,
    };
    let request_id = token::random_id();
    let t = now();
    let cert = app.ca.sign_user(&trust::UserCertSpec {
        user: &caller.user.name,
        node_id: &node.id,
        request_id: &request_id,
        isolation: &req.isolation,
        session: req.session.as_deref(),
        public_key: &key,
        valid_after: t - CLOCK_SKEW_SECS,
        valid_before: t + app.config.user_cert_ttl_secs,
    })?;
    tracing::info!(user = %caller.user.name, node = %node.id, request = %request_id, isolation = %req.isolation, "dispatch");
    Ok(Json(Dispatch {
        node,
        cert: cert.to_openssh().map_err(trust::TrustError::from)?,
        ca_public_key: app.ca.public_key_openssh(),
        request_id,
    }))
}

/// The live registry: a `nodes` event with the whole node list now, and again whenever a
/// node joins, leaves, changes, or goes online or offline. openboxd mirrors it so that
/// resolving a tag costs no round trip.
async fn events(
    State(app): AppState,
    _caller: Caller,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut rx = app.subscribe_registry();
    rx.mark_changed();
    let closing = Box::pin(app.closing());
    let stream = futures_util::stream::unfold((rx, closing), |(mut rx, mut closing)| async move {
        tokio::select! {
            changed = rx.changed() => changed.ok()?,
            _ = &mut closing => return None,
        }
        let nodes = rx.borrow_and_update().clone();
        let event = Event::default()
            .event(EVENT_NODES)
            .json_data(nodes)
            .unwrap_or_else(|_| Event::default().comment("unserializable"));
        Some((Ok(event), (rx, closing)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The node a session lives on: where its first use went, whatever the target says now.
fn session_node(app: &App, caller: &Caller, sid: &str, req: &DispatchRequest) -> Result<Node, ApiErr> {
    let t = now();
    if let Some(row) = app.store.session(caller.user.id, sid)? {
        if row.isolation != req.isolation.to_string() {
            return Err(ApiErr::new(
                StatusCode::CONFLICT,
                format!(
                    "session {sid:?} runs {}, not {}; end it first with `openbox session rm {sid}`",
                    row.isolation, req.isolation
                ),
            ));
        }
        let node = app.store.node(&row.node_id)?.ok_or_else(|| {
            ApiErr::new(
                StatusCode::GONE,
                format!("session {sid:?} was on a node that has been removed; end it with `openbox session rm {sid}`"),
            )
        })?;
        let node = node.to_api(t, app.config.offline_after_secs);
        if !node.online {
            return Err(ApiErr::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("session {sid:?} lives on node {}, which is offline", node.name),
            ));
        }
        app.store.put_session(caller.user.id, &SessionRow { last_used: t, ..row })?;
        return Ok(node);
    }
    let node = resolve(app, &req.target, &req.isolation)?;
    let row = SessionRow {
        id: sid.to_owned(),
        node_id: node.id.clone(),
        isolation: req.isolation.to_string(),
        created_at: t,
        last_used: t,
        state: "active".into(),
    };
    app.store.put_session(caller.user.id, &row)?;
    tracing::info!(user = %caller.user.name, session = %sid, node = %node.id, "session placed");
    Ok(node)
}

async fn list_sessions(State(app): AppState, caller: Caller) -> ApiResult<Vec<SessionInfo>> {
    let rows = app.store.list_sessions(caller.user.id)?;
    let mut out = Vec::new();
    for r in rows {
        let node_name = app.store.node(&r.node_id)?.map(|n| n.name).unwrap_or_else(|| "(removed)".into());
        out.push(SessionInfo {
            id: r.id,
            node_id: r.node_id,
            node_name,
            isolation: r.isolation.parse().unwrap_or_default(),
            created_at: r.created_at,
            last_used: r.last_used,
            state: r.state,
        });
    }
    Ok(Json(out))
}

async fn remove_session(State(app): AppState, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiErr> {
    if app.store.remove_session(caller.user.id, &id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiErr::new(StatusCode::NOT_FOUND, format!("you have no session {id:?}; `openbox sessions` lists them")))
    }
}
