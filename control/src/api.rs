//! HTTP handlers: each turns a request into store calls and CA signatures.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use proto::api::*;
use serde::Deserialize;
use trust::token;

use crate::audit::{Record, Source};
use crate::refusal::{Kind, Refusal, check_name};
use crate::store::{NodeRow, User};
use crate::{App, enrollment, now, placement};

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(Health { status: "ok".into(), version: proto::VERSION.into() }) }))
        .route("/v1/ready", get(crate::metrics::ready))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/v1/whoami", get(whoami))
        .route("/v1/logout", post(logout))
        .route("/v1/users", get(list_users).post(add_user))
        .route("/v1/users/{name}", delete(remove_user))
        .route("/v1/users/{name}/tokens", post(new_user_token))
        .route("/v1/users/{name}/grants", post(grant))
        .route("/v1/users/{name}/grants/{kind}/{value}", delete(revoke_grant))
        .route("/v1/enroll-tokens", get(list_enroll_tokens).post(new_enroll_token))
        .route("/v1/enroll-tokens/{id}", delete(remove_enroll_token))
        .route("/v1/web-links", post(crate::web::new_link))
        .route("/v1/console", post(crate::console::run))
        .route("/v1/console/terminal", get(crate::terminal::open))
        .route("/v1/mesh", get(mesh))
        .route("/v1/enroll", post(enroll))
        .route("/v1/enroll/mesh", post(enroll_mesh))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}", delete(remove_node).patch(update_node))
        .route("/v1/dispatch", post(dispatch))
        .route("/v1/events", get(crate::events::events))
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", delete(remove_session))
        .route("/v1/audit", get(audit_log))
        .merge(crate::web::routes())
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::metrics::count))
        .with_state(app)
}

type ApiResult<T> = Result<Json<T>, Refusal>;

/// A refusal as an HTTP answer: a status for its kind and an [`Refusalor`] body.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Gone => StatusCode::GONE,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ApiError { error: self.message })).into_response()
    }
}

/// Unwraps a JSON body, answering a malformed one with a JSON error.
pub(crate) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    b.map(|Json(v)| v).map_err(|e| Refusal::new(Kind::BadRequest, format!("bad request body: {}", e.body_text())))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")
}

/// A person authenticated by a login token, or by the dashboard's session cookie.
pub(crate) struct Caller {
    pub user: User,
    pub credential: Credential,
    /// Where the request came from.
    pub source: Option<Source>,
}

/// What a caller proved who they are with (each as its hash).
#[derive(Clone)]
pub(crate) enum Credential {
    Token(String),
    Web(String),
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Caller, Refusal> {
        Caller::from_parts(parts, app).await
    }
}

impl Caller {
    pub async fn from_parts(parts: &Parts, app: &App) -> Result<Caller, Refusal> {
        let unauthorized = |m: &str| Refusal::new(Kind::Unauthorized, m);
        let source = parts.extensions.get::<Source>().cloned();
        let Some(tok) = bearer(&parts.headers) else {
            return match crate::web::cookie(app, &parts.headers) {
                Some(cookie) => {
                    let (user, hash) = crate::web::cookie_user(app, parts, cookie).await?;
                    Ok(Caller { user, credential: Credential::Web(hash), source })
                }
                None => Err(unauthorized("not logged in: run `openbox login --server URL --token TOKEN`")),
            };
        };
        if !tok.starts_with(token::LOGIN_PREFIX) {
            return Err(unauthorized("that is not a login token (login tokens start with obx_)"));
        }
        let token_hash = token::hash(tok);
        match app.store.user_by_login_token(&token_hash).await? {
            Some(user) => Ok(Caller { user, credential: Credential::Token(token_hash), source }),
            None => Err(unauthorized(
                "the login token is invalid or was revoked; ask an admin for a new one (`openbox user token NAME`)",
            )),
        }
    }

    /// Who this caller's credential belongs to now (`None`: revoked, expired or removed).
    pub(crate) async fn current_user(app: &App, credential: &Credential) -> Option<User> {
        match credential {
            Credential::Token(hash) => app.store.user_by_login_token(hash).await.ok()?,
            Credential::Web(hash) => app.store.web_session(hash, now()).await.ok()?.map(|s| s.user),
        }
    }

    /// Records an action by this caller in the audit log.
    async fn audit(&self, app: &App, action: &str, record: Record<'_>) -> Result<(), Refusal> {
        app.audit(&self.user.name, action, self.source.as_ref(), record).await
    }

    fn require_admin(&self) -> Result<(), Refusal> {
        if self.user.admin {
            Ok(())
        } else {
            Err(Refusal::new(Kind::Forbidden, format!("{:?} is not an admin; ask an admin to do this", self.user.name)))
        }
    }
}

async fn whoami(State(app): AppState, caller: Caller) -> ApiResult<WhoAmI> {
    Ok(Json(WhoAmI { user: caller.user.name, admin: caller.user.admin, ca_public_key: app.ca.public_key_openssh() }))
}

/// The fleet's tailnet, for a user's openboxd to join (`null` when there is none).
#[derive(serde::Deserialize)]
struct MeshQuery {
    /// `none`: which tailnet only, no key (the caller is on it already).
    #[serde(default)]
    key: Option<String>,
}

async fn mesh(State(app): AppState, caller: Caller, Query(q): Query<MeshQuery>) -> ApiResult<Option<MeshSettings>> {
    if q.key.as_deref() == Some("none") {
        let fleet = app.store.mesh().await?;
        return Ok(Json(fleet.map(|f| MeshSettings { control_url: f.control_url, auth_key: String::new() })));
    }
    Ok(Json(crate::coordination::for_user(&app, &caller.user).await?))
}

async fn logout(State(app): AppState, caller: Caller) -> Result<StatusCode, Refusal> {
    match &caller.credential {
        Credential::Token(hash) => app.store.revoke_login_token(hash).await?,
        Credential::Web(hash) => app.store.remove_web_session(hash).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(app): AppState, caller: Caller) -> ApiResult<Vec<UserInfo>> {
    caller.require_admin()?;
    Ok(Json(app.store.list_users().await?))
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
    app.store.create_user(&req.name, false, &token::hash(tok.expose()), now()).await?;
    tracing::info!(user = %req.name, by = %caller.user.name, "user added");
    caller.audit(&app, "user.add", Record { detail: Some(req.name.clone()), ..Default::default() }).await?;
    Ok(Json(UserCreated { name: req.name, token: tok.expose().to_owned() }))
}

async fn remove_user(State(app): AppState, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    let t = now();
    app.store.remove_user(&name, t).await?;
    // Its laptops leave the tailnet too (its incarnation is in the removals just recorded).
    if let Some(gone) = app.store.revoked_users(t).await?.into_iter().find(|r| r.name == name) {
        crate::coordination::forget_user(&app, &name, &gone.incarnation);
    }
    tracing::info!(user = %name, by = %caller.user.name, "user removed");
    caller.audit(&app, "user.remove", Record { detail: Some(name), ..Default::default() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn new_user_token(State(app): AppState, caller: Caller, Path(name): Path<String>) -> ApiResult<UserCreated> {
    caller.require_admin()?;
    let tok = crate::new_login_token(&app.store, &name).await?;
    tracing::info!(user = %name, by = %caller.user.name, "login token issued");
    caller.audit(&app, "user.token", Record { detail: Some(name.clone()), ..Default::default() }).await?;
    Ok(Json(UserCreated { name, token: tok.expose().to_owned() }))
}

/// Lets a user run on the nodes of a tag or on one node (admins only); returns their grants.
async fn grant(
    State(app): AppState,
    caller: Caller,
    Path(name): Path<String>,
    b: Result<Json<Grant>, JsonRejection>,
) -> ApiResult<Vec<Grant>> {
    caller.require_admin()?;
    let mut grant = body(b)?;
    for k in &grant.isolation {
        proto::isolation::check_kind(k)?;
    }
    grant.isolation.sort();
    grant.isolation.dedup();
    let shown = grant.to_string();
    match &grant.on {
        Target::Tag(t) => check_name("tag", t)?,
        Target::Node(n) => grant.on = Target::Node(find_node(&app, n).await?.id),
    }
    let grants = app.store.put_grant(&name, &grant, now()).await?;
    tracing::info!(user = %name, grant = %shown, by = %caller.user.name, "access granted");
    caller.audit(&app, "user.grant", Record { detail: Some(format!("{name}: {shown}")), ..Default::default() }).await?;
    app.changed();
    Ok(Json(grants))
}

/// Takes back a grant (admins only); returns the user's grants.
async fn revoke_grant(
    State(app): AppState,
    caller: Caller,
    Path((name, kind, value)): Path<(String, String, String)>,
) -> ApiResult<Vec<Grant>> {
    caller.require_admin()?;
    let shown = format!("{kind}:{value}");
    let on = match kind.as_str() {
        "tag" => Target::Tag(value),
        // By name or id; a node since removed took its grants with it.
        "node" => Target::Node(app.store.node(&value).await?.map_or(value, |n| n.id)),
        _ => return Err(Refusal::new(Kind::NotFound, "a grant is on a `tag` or a `node`")),
    };
    let grants = app.store.remove_grant(&name, &on).await?;
    tracing::info!(user = %name, grant = %shown, by = %caller.user.name, "access revoked");
    caller
        .audit(&app, "user.revoke", Record { detail: Some(format!("{name}: {shown}")), ..Default::default() })
        .await?;
    app.changed();
    Ok(Json(grants))
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
        return Err(Refusal::new(Kind::BadRequest, "the token lifetime must be between 1 second and 30 days"));
    }
    let tok = token::generate(token::ENROLL_PREFIX);
    let expires_at = now() + req.ttl_secs;
    app.store.add_enroll_token(&token::hash(tok.expose()), caller.user.id, &req.tags, now(), expires_at).await?;
    let detail = format!("tags [{}], valid {}s", req.tags.join(", "), req.ttl_secs);
    caller.audit(&app, "node.token", Record { detail: Some(detail), ..Default::default() }).await?;
    Ok(Json(EnrollToken { token: tok.expose().to_owned(), tags: req.tags, expires_at }))
}

/// Enrollment tokens not used yet (admins only).
async fn list_enroll_tokens(State(app): AppState, caller: Caller) -> ApiResult<Vec<EnrollTokenInfo>> {
    caller.require_admin()?;
    Ok(Json(app.store.outstanding_enroll_tokens(now()).await?))
}

/// Withdraws an unused enrollment token (admins only).
async fn remove_enroll_token(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    app.store.remove_enroll_token(&id).await?;
    caller.audit(&app, "node.token.remove", Record { detail: Some(id), ..Default::default() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn enroll(
    State(app): AppState,
    source: Option<axum::Extension<Source>>,
    b: Result<Json<EnrollRequest>, JsonRejection>,
) -> ApiResult<Enrolled> {
    let enrolled = enrollment::enroll(&app, body(b)?).await?;
    let record = Record { node_id: Some(&enrolled.node_id), detail: Some(enrolled.name.clone()), ..Default::default() };
    app.audit("(enrollment)", "node.enroll", source.as_ref().map(|s| &s.0), record).await?;
    Ok(Json(enrolled))
}

async fn enroll_mesh(
    State(app): AppState,
    b: Result<Json<EnrollMeshRequest>, JsonRejection>,
) -> ApiResult<Option<MeshSettings>> {
    Ok(Json(enrollment::fleet_mesh(&app, body(b)?).await?))
}

async fn heartbeat(
    State(app): AppState,
    headers: HeaderMap,
    b: Result<Json<Heartbeat>, JsonRejection>,
) -> ApiResult<HeartbeatReply> {
    Ok(Json(enrollment::heartbeat(&app, bearer(&headers), body(b)?).await?))
}

async fn dispatch(
    State(app): AppState,
    caller: Caller,
    b: Result<Json<DispatchRequest>, JsonRejection>,
) -> ApiResult<Dispatch> {
    Ok(Json(placement::dispatch(&app, &caller.user, caller.source.as_ref(), body(b)?, None).await?))
}

#[derive(Deserialize)]
struct NodeFilter {
    tag: Option<String>,
}

async fn list_nodes(State(app): AppState, caller: Caller, Query(f): Query<NodeFilter>) -> ApiResult<Vec<Node>> {
    let t = now();
    let access = app.access(&caller.user).await?;
    let nodes = app.store.list_nodes().await?;
    Ok(Json(
        nodes
            .iter()
            .filter(|n| f.tag.as_ref().is_none_or(|tag| n.tags.contains(tag)))
            .filter_map(|n| access.view(n.to_api(t, app.config.offline_after_secs)))
            .collect(),
    ))
}

async fn find_node(app: &App, id_or_name: &str) -> Result<NodeRow, Refusal> {
    app.store.node(id_or_name).await?.ok_or_else(|| {
        Refusal::new(Kind::NotFound, format!("no node with id or name {id_or_name:?}; `openbox nodes` lists them"))
    })
}

async fn remove_node(State(app): AppState, caller: Caller, Path(node): Path<String>) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    let row = find_node(&app, &node).await?;
    app.store.remove_node(&row.id, now()).await?;
    crate::coordination::forget_node(&app, &row.id, row.mesh_addr.as_deref());
    tracing::info!(node = %row.id, name = %row.name, by = %caller.user.name, "node removed and revoked");
    caller
        .audit(
            &app,
            "node.remove",
            Record { node_id: Some(&row.id), detail: Some(row.name.clone()), ..Default::default() },
        )
        .await?;
    app.changed();
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
    let row = find_node(&app, &node).await?;
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
    app.store.update_node(&row.id, upd.name.as_deref(), &tags).await?;
    let detail = match &upd.name {
        Some(n) => format!("renamed {} to {n}; tags [{}]", row.name, tags.join(", ")),
        None => format!("tags [{}]", tags.join(", ")),
    };
    caller
        .audit(&app, "node.update", Record { node_id: Some(&row.id), detail: Some(detail), ..Default::default() })
        .await?;
    let row = find_node(&app, &row.id).await?;
    app.changed();
    Ok(Json(row.to_api(now(), app.config.offline_after_secs)))
}

async fn list_sessions(State(app): AppState, caller: Caller) -> ApiResult<Vec<SessionInfo>> {
    Ok(Json(sessions_of(&app, caller.user.id).await?))
}

/// A user's sessions, as `GET /v1/sessions` and the `sessions` event show them.
pub(crate) async fn sessions_of(app: &App, user_id: i64) -> Result<Vec<SessionInfo>, crate::store::StoreError> {
    let rows = app.store.list_sessions(user_id).await?;
    let mut out = Vec::new();
    for r in rows {
        let node_name = app.store.node(&r.node_id).await?.map(|n| n.name).unwrap_or_else(|| "(removed)".into());
        // A session whose isolation no longer parses is shown as the error it is, never
        // as native (which it may not have been).
        let isolation = r.isolation.parse::<proto::Isolation>().ok();
        let state = match isolation {
            Some(_) => r.state,
            None => format!("error: its isolation {:?} is not understood here", r.isolation),
        };
        out.push(SessionInfo {
            id: r.id,
            node_id: r.node_id,
            node_name,
            isolation,
            created_at: r.created_at,
            last_used: r.last_used,
            state,
        });
    }
    Ok(out)
}

async fn remove_session(State(app): AppState, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, Refusal> {
    if app.store.remove_session(caller.user.id, &id).await? {
        app.changed();
        caller.audit(&app, "session.remove", Record { session: Some(&id), ..Default::default() }).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Refusal::new(Kind::NotFound, format!("you have no session {id:?}; `openbox sessions` lists them")))
    }
}

#[derive(Deserialize)]
struct AuditFilter {
    user: Option<String>,
    node: Option<String>,
    /// Only entries from the last this many seconds.
    since: Option<u64>,
    limit: Option<u32>,
}

/// The audit log, newest last (admins only).
async fn audit_log(State(app): AppState, caller: Caller, Query(f): Query<AuditFilter>) -> ApiResult<Vec<AuditEntry>> {
    caller.require_admin()?;
    let since = f.since.map_or(0, |s| now().saturating_sub(s));
    let limit = f.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(app.store.audit_log(f.user.as_deref(), f.node.as_deref(), since, limit).await?))
}
