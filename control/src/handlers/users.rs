//! Users and what they may do (admins only): adding and removing them, their login tokens,
//! and their grants.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use proto::api::{Target, UserCreated};
use proto::routes;
use trust::token;

use crate::audit::Record;
use crate::auth::{Body, Caller, Reply};
use crate::refusal::{Kind, Refusal, check_name};
use crate::{App, now};

pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> Reply<routes::ListUsers> {
    caller.require_admin()?;
    Ok(Json(app.store.list_users().await?))
}

pub async fn add(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<routes::AddUser>,
) -> Reply<routes::AddUser> {
    caller.require_admin()?;
    check_name("user name", &req.name)?;
    let tok = token::generate(token::LOGIN_PREFIX);
    app.store.create_user(&req.name, false, &token::hash(tok.expose()), now()).await?;
    tracing::info!(user = %req.name, by = %caller.user.name, "user added");
    caller.audit(&app, "user.add", Record { detail: Some(req.name.clone()), ..Default::default() }).await?;
    Ok(Json(UserCreated { name: req.name, token: tok.expose().to_owned() }))
}

pub async fn remove(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Refusal> {
    caller.require_admin()?;
    let t = now();
    app.store.remove_user(&name, t).await?;
    app.changed();
    // Its laptops leave the tailnet too (its incarnation is in the removals just recorded).
    if let Some(gone) = app.store.revoked_users(t).await?.into_iter().find(|r| r.name == name) {
        crate::coordination::forget_user(&app, &name, &gone.incarnation);
    }
    tracing::info!(user = %name, by = %caller.user.name, "user removed");
    caller.audit(&app, "user.remove", Record { detail: Some(name), ..Default::default() }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn new_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Reply<routes::NewUserToken> {
    caller.require_admin()?;
    let tok = crate::new_login_token(&app.store, &name).await?;
    tracing::info!(user = %name, by = %caller.user.name, "login token issued");
    caller.audit(&app, "user.token", Record { detail: Some(name.clone()), ..Default::default() }).await?;
    Ok(Json(UserCreated { name, token: tok.expose().to_owned() }))
}

/// Lets a user run on the nodes of a tag or on one node; returns their grants.
pub async fn grant(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    Body(mut grant): Body<routes::Grant>,
) -> Reply<routes::Grant> {
    caller.require_admin()?;
    for k in &grant.isolation {
        proto::isolation::check_kind(k)?;
    }
    grant.isolation.sort();
    grant.isolation.dedup();
    let shown = grant.to_string();
    match &grant.on {
        Target::Tag(t) => check_name("tag", t)?,
        Target::Node(n) => grant.on = Target::Node(super::nodes::find(&app, n).await?.id),
    }
    let grants = app.store.put_grant(&name, &grant, now()).await?;
    tracing::info!(user = %name, grant = %shown, by = %caller.user.name, "access granted");
    caller.audit(&app, "user.grant", Record { detail: Some(format!("{name}: {shown}")), ..Default::default() }).await?;
    app.changed();
    Ok(Json(grants))
}

/// Takes back a grant; returns the user's grants.
pub async fn revoke(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, kind, value)): Path<(String, String, String)>,
) -> Reply<routes::Revoke> {
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
