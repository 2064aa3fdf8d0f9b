//! The audit log (admins only): every dispatch and change, and what nodes report they ran.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use proto::routes;

use crate::auth::{Caller, Params, Reply};
use crate::{App, now};

/// The audit log, newest last.
pub async fn log(
    State(app): State<Arc<App>>,
    caller: Caller,
    Params(f): Params<routes::Audit>,
) -> Reply<routes::Audit> {
    caller.require_admin()?;
    let since = f.since.map_or(0, |s| now().saturating_sub(s));
    let limit = f.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(app.store.audit_log(f.user.as_deref(), f.node.as_deref(), since, limit).await?))
}
