//! Dispatch: the control plane picks a node for the caller's command and signs a user
//! certificate for it (`crate::placement`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use proto::routes;

use crate::App;
use crate::auth::{Body, Caller, Reply};

pub async fn dispatch(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<routes::Dispatch>,
) -> Reply<routes::Dispatch> {
    Ok(Json(crate::placement::dispatch(&app, &caller.user, caller.source.as_ref(), req, caller.via).await?))
}
