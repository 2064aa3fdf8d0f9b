//! The fleet's nodes: listing them (as the caller may see them), renaming and retagging
//! them, and removing them (admins only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::routes;

use crate::audit::Record;
use crate::auth::{Body, Caller, Params, Reply};
use crate::refusal::{Kind, Refusal, check_name};
use crate::store::NodeRow;
use crate::{App, now};

pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Params(f): Params<routes::ListNodes>,
) -> Reply<routes::ListNodes> {
    let t = now();
    let access = app.access(&caller.user).await?;
    let nodes = app.store.list_nodes().await?;
    Ok(Json(
        nodes
            .iter()
            .filter(|n| f.tag.as_ref().is_none_or(|tag| n.tags.contains(tag)))
            .filter_map(|n| access.view(&n.to_api(t, app.config.offline_after_secs)))
            .collect(),
    ))
}

/// A node by id or name, or a refusal that says how to find one.
pub async fn find(app: &App, id_or_name: &str) -> Result<NodeRow, Refusal> {
    app.store.node(id_or_name).await?.ok_or_else(|| {
        Refusal::new(Kind::NotFound, format!("no node with id or name {id_or_name:?}; `openbox nodes` lists them"))
    })
}

pub async fn remove(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(node): Path<String>,
) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    let row = find(&app, &node).await?;
    app.store.remove_node(&row.id, now()).await?;
    // Its next heartbeat is refused here at once, not only once the change is published.
    app.forget_node(&row.id);
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

pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(node): Path<String>,
    Body(upd): Body<routes::UpdateNode>,
) -> Reply<routes::UpdateNode> {
    caller.require_admin()?;
    let row = find(&app, &node).await?;
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
    let row = find(&app, &row.id).await?;
    app.changed();
    Ok(Json(row.to_api(now(), app.config.offline_after_secs)))
}
