//! Nodes joining and staying: enrollment tokens (admins mint them), enrollment itself,
//! and heartbeats. What each does to the registry is `crate::enrollment`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use proto::api::EnrollToken;
use proto::routes;
use trust::token;

use crate::audit::{Record, Source};
use crate::auth::{Body, Caller, Reply, bearer};
use crate::refusal::{Kind, Refusal, check_name};
use crate::{App, now};

pub async fn new_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<routes::NewEnrollToken>,
) -> Reply<routes::NewEnrollToken> {
    caller.require_admin()?;
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

/// Enrollment tokens not used yet.
pub async fn list_tokens(State(app): State<Arc<App>>, caller: Caller) -> Reply<routes::ListEnrollTokens> {
    caller.require_admin()?;
    Ok(Json(app.store.outstanding_enroll_tokens(now()).await?))
}

/// Withdraws an unused enrollment token.
pub async fn remove_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    app.store.remove_enroll_token(&id).await?;
    caller.audit(&app, "node.token.remove", Record { detail: Some(id), ..Default::default() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn enroll(
    State(app): State<Arc<App>>,
    source: Option<axum::Extension<Source>>,
    Body(req): Body<routes::Enroll>,
) -> Reply<routes::Enroll> {
    let enrolled = crate::enrollment::enroll(&app, req).await?;
    let record = Record { node_id: Some(&enrolled.node_id), detail: Some(enrolled.name.clone()), ..Default::default() };
    app.audit("(enrollment)", "node.enroll", source.as_ref().map(|s| &s.0), record).await?;
    Ok(Json(enrolled))
}

pub async fn fleet_mesh(State(app): State<Arc<App>>, Body(req): Body<routes::EnrollMesh>) -> Reply<routes::EnrollMesh> {
    Ok(Json(crate::enrollment::fleet_mesh(&app, req).await?))
}

pub async fn heartbeat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Body(hb): Body<routes::Heartbeat>,
) -> Reply<routes::Heartbeat> {
    Ok(Json(crate::enrollment::heartbeat(&app, bearer(&headers), hb).await?))
}
