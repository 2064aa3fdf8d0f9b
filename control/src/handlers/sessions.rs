//! The caller's sessions: listing them with their nodes and state, and ending one.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::api::SessionInfo;
use proto::routes;

use crate::App;
use crate::audit::Record;
use crate::auth::{Caller, Reply};
use crate::refusal::{Kind, Refusal};

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Reply<routes::ListSessions> {
    Ok(Json(of(&app, caller.user.id).await?))
}

/// A user's sessions, as `GET /v1/sessions` and the `sessions` event show them.
pub async fn of(app: &App, user_id: i64) -> Result<Vec<SessionInfo>, crate::store::StoreError> {
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

pub async fn remove(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Refusal> {
    if app.store.remove_session(caller.user.id, &id).await? {
        app.changed();
        caller.audit(&app, "session.remove", Record { session: Some(&id), ..Default::default() }).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Refusal::new(Kind::NotFound, format!("you have no session {id:?}; `openbox sessions` lists them")))
    }
}
