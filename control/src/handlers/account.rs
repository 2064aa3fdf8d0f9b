//! The caller's own account: who they are, logging out, and the fleet's tailnet for their
//! openboxd.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use proto::api::{MeshSettings, WhoAmI};
use proto::routes;

use crate::App;
use crate::auth::{Caller, Credential, Params, Reply};
use crate::refusal::Refusal;

pub async fn whoami(State(app): State<Arc<App>>, caller: Caller) -> Reply<routes::WhoAmI> {
    Ok(Json(WhoAmI { user: caller.user.name, admin: caller.user.admin, ca_public_key: app.ca.public_key_openssh() }))
}

/// The fleet's tailnet, for a user's openboxd to join (`null` when there is none).
pub async fn mesh(State(app): State<Arc<App>>, caller: Caller, Params(q): Params<routes::Mesh>) -> Reply<routes::Mesh> {
    if q.key.as_deref() == Some("none") {
        let fleet = app.store.mesh().await?;
        return Ok(Json(fleet.map(|f| MeshSettings { control_url: f.control_url, auth_key: String::new() })));
    }
    Ok(Json(crate::coordination::for_user(&app, &caller.user).await?))
}

pub async fn logout(State(app): State<Arc<App>>, caller: Caller) -> Result<StatusCode, Refusal> {
    match &caller.credential {
        Credential::Token(hash) => app.store.revoke_login_token(hash).await?,
        Credential::Web(hash) => app.store.remove_web_session(hash).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}
