//! Where a command runs: the node a target resolves to, or the node a persistent session
//! already lives on — and the user certificate that binds the command to it.

use proto::Isolation;
use proto::api::{Dispatch, DispatchRequest, Node, ResolveError, Target};
use proto::cert::CLOCK_SKEW_SECS;
use trust::token;

use crate::access::Access;
use crate::audit::{Record, Source};
use crate::refusal::{Kind, Refusal, check_name};
use crate::store::{SessionRow, User};
use crate::{App, now};

/// Picks the node for a command (a session's own node, or one the target resolves to)
/// and signs a short-lived user certificate for the caller's key, bound to that node, the
/// isolation and the session.
/// `detail` marks where the dispatch came from in the audit log (the web console).
pub async fn dispatch(
    app: &App,
    user: &User,
    source: Option<&Source>,
    req: DispatchRequest,
    detail: Option<&str>,
) -> Result<Dispatch, Refusal> {
    if let Some(s) = &req.session {
        check_name("session id", s)?;
    }
    let key = trust::parse_public_key(&req.public_key)?;
    let access = app.access(user).await?;
    let node = match &req.session {
        Some(sid) => session_node(app, &access, user, sid, &req).await?,
        None => resolve(app, &access, &req.target, &req.isolation).await?,
    };
    let request_id = token::random_id();
    // Certificates issued up to a cut-off's second are refused by nodes (their time is
    // in whole seconds): one issued just after a cut-off in the same second counts from
    // the next one.
    let mut t = now();
    let recent = app.store.cert_cutoffs(t.saturating_sub(1)).await?;
    if let Some(cut) = recent.iter().find(|c| c.incarnation == user.incarnation).map(|c| c.cutoff)
        && cut >= t
    {
        t = cut + 1;
    }
    let cert = app.ca.sign_user(&trust::UserCertSpec {
        incarnation: &user.incarnation,
        user: &user.name,
        node_id: &node.id,
        request_id: &request_id,
        isolation: &req.isolation,
        session: req.session.as_deref(),
        admin: user.admin,
        public_key: &key,
        valid_after: t - CLOCK_SKEW_SECS,
        valid_before: t + app.config.user_cert_ttl_secs,
    })?;
    tracing::info!(user = %user.name, node = %node.id, request = %request_id, isolation = %req.isolation, "dispatch");
    // Recorded before the certificate leaves: a dispatch the log cannot hold is refused.
    let record = Record {
        node_id: Some(&node.id),
        isolation: Some(req.isolation.to_string()),
        session: req.session.as_deref(),
        key_id: Some(cert.key_id().to_owned()),
        detail: detail.map(str::to_owned),
    };
    app.audit(&user.name, "dispatch", source, record).await?;
    app.metrics.dispatches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Dispatch {
        node,
        cert: cert.to_openssh().map_err(trust::TrustError::from)?,
        ca_public_key: app.ca.public_key_openssh(),
        request_id,
    })
}

/// Picks the node for a target among those the user may run on with this isolation: an
/// exact node, or an online node carrying the tag.
async fn resolve(app: &App, access: &Access<'_>, target: &Target, isolation: &Isolation) -> Result<Node, Refusal> {
    let t = now();
    let kind = isolation.kind();
    let spread = usize::from_str_radix(&token::random_id()[..8], 16).unwrap_or(0);
    // A tag's nodes from the node list the change log keeps current here (going online and
    // offline are changes too): no read of the registry, so a dispatch costs the same in a
    // fleet of 50,000. When that picks none (a node that joined a moment ago may not be
    // in it yet), the database decides, as for a node named.
    if let Target::Tag(tag) = target {
        let registry = app.subscribe_registry();
        let registry = registry.borrow();
        let cached: Vec<&Node> = registry.iter().filter(|n| n.tags.contains(tag) && access.allows(n, kind)).collect();
        if let Ok(node) = proto::api::resolve(&cached, target, kind, t, spread) {
            return Ok(node.clone());
        }
    }
    let nodes: Vec<Node> =
        app.store.nodes_for(target).await?.iter().map(|n| n.to_api(t, app.config.offline_after_secs)).collect();
    let allowed: Vec<Node> = nodes.iter().filter(|n| access.allows(n, kind)).cloned().collect();
    match proto::api::resolve(&allowed, target, kind, t, spread) {
        Ok(node) => Ok(node.clone()),
        Err(mut e) => {
            // Only the target's nodes were read: the tags there are come from the fleet the
            // user may run on.
            if let ResolveError::NoSuchTag { known, .. } = &mut e {
                let fleet = app.subscribe_registry().borrow().clone();
                let mut tags: Vec<String> =
                    fleet.iter().filter(|n| access.allows(n, kind)).flat_map(|n| n.tags.iter().cloned()).collect();
                tags.sort();
                tags.dedup();
                *known = tags;
            }
            // When the user has no node for it but the whole fleet has, what stands in the
            // way is the policy: say so, and what an admin could grant.
            if matches!(e, ResolveError::NoSuchNode(_) | ResolveError::NoSuchTag { .. })
                && let Ok(node) = proto::api::resolve(&nodes, target, kind, t, spread)
            {
                access.check(node, kind)?;
            }
            let status = match e {
                ResolveError::Offline { .. } => Kind::Unavailable,
                ResolveError::Incapable { .. } => Kind::Conflict,
                _ => Kind::NotFound,
            };
            Err(Refusal::new(status, e.to_string()))
        }
    }
}

/// The node a session lives on: where its first use went, whatever the target says now.
async fn session_node(
    app: &App,
    access: &Access<'_>,
    user: &User,
    sid: &str,
    req: &DispatchRequest,
) -> Result<Node, Refusal> {
    let t = now();
    if let Some(row) = app.store.session(user.id, sid).await? {
        if row.isolation != req.isolation.to_string() {
            return Err(Refusal::new(
                Kind::Conflict,
                format!(
                    "session {sid:?} runs {}, not {}; end it first with `openbox session rm {sid}`",
                    row.isolation, req.isolation
                ),
            ));
        }
        let node = app.store.node(&row.node_id).await?.ok_or_else(|| {
            Refusal::new(
                Kind::Gone,
                format!("session {sid:?} was on a node that has been removed; end it with `openbox session rm {sid}`"),
            )
        })?;
        let node = node.to_api(t, app.config.offline_after_secs);
        // A grant taken back since the session began ends the user's use of it.
        access.check(&node, req.isolation.kind())?;
        if !node.online {
            return Err(Refusal::new(
                Kind::Unavailable,
                format!("session {sid:?} lives on node {}, which is offline", node.name),
            ));
        }
        app.store.put_session(user.id, &SessionRow { last_used: t, ..row }).await?;
        return Ok(node);
    }
    let node = resolve(app, access, &req.target, &req.isolation).await?;
    let row = SessionRow {
        id: sid.to_owned(),
        node_id: node.id.clone(),
        isolation: req.isolation.to_string(),
        created_at: t,
        last_used: t,
        state: "active".into(),
    };
    if app.store.put_session(user.id, &row).await? != node.id {
        // Another first use of this session placed it a moment ago: go where it went.
        return Box::pin(session_node(app, access, user, sid, req)).await;
    }
    app.changed();
    tracing::info!(user = %user.name, session = %sid, node = %node.id, "session placed");
    Ok(node)
}

#[cfg(test)]
mod tests {
    use proto::api::Grant;

    use super::*;
    use crate::testing::{add_node, app, user};

    fn request(target: Target, session: Option<&str>, isolation: &str) -> DispatchRequest {
        DispatchRequest {
            target,
            session: session.map(str::to_owned),
            isolation: isolation.parse().unwrap(),
            public_key: trust::generate_key().public_key().to_openssh().unwrap(),
        }
    }

    fn tag(t: &str) -> Target {
        Target::Tag(t.into())
    }

    #[tokio::test]
    async fn a_user_runs_only_where_granted_and_is_told_what_an_admin_could_grant() {
        let (app, _, _dir) = app().await;
        add_node(&app, "gpu1", &["gpu"], 0).await;
        let bob = user(&app, "bob").await;
        let refused = dispatch(&app, &bob, None, request(tag("gpu"), None, "native"), None).await.unwrap_err();
        assert_eq!(refused.kind, Kind::Forbidden, "{refused}");
        assert!(refused.message.contains("openbox user grant"), "{refused}");

        app.store.put_grant("bob", &Grant { on: tag("gpu"), isolation: vec![] }, now()).await.unwrap();
        let d = dispatch(&app, &bob, None, request(tag("gpu"), None, "native"), None).await.unwrap();
        assert_eq!(d.node.id, "gpu1");
        // The certificate binds the user, the node and the isolation, and nodes take it.
        let cert = trust::parse_certificate(&d.cert).unwrap();
        let grant = trust::verify_user_cert(&cert, app.ca.public_key(), "bob", "gpu1", now()).unwrap();
        assert_eq!((grant.user.as_str(), grant.admin), ("bob", false));
        assert!(trust::verify_user_cert(&cert, app.ca.public_key(), "bob", "other", now()).is_err());
    }

    #[tokio::test]
    async fn an_offline_node_or_an_unknown_tag_is_refused_with_its_reason() {
        let (app, token, _dir) = app().await;
        let admin = app.store.user_by_login_token(&token::hash(&token)).await.unwrap().unwrap();
        add_node(&app, "old", &["ci"], 3600).await;
        let offline = dispatch(&app, &admin, None, request(tag("ci"), None, "native"), None).await.unwrap_err();
        assert_eq!(offline.kind, Kind::Unavailable, "{offline}");
        let unknown = dispatch(&app, &admin, None, request(tag("nope"), None, "native"), None).await.unwrap_err();
        assert_eq!(unknown.kind, Kind::NotFound, "{unknown}");
        assert!(unknown.message.contains("\"nope\""), "{unknown}");
    }

    #[tokio::test]
    async fn a_session_stays_on_its_first_node_with_its_first_isolation() {
        let (app, _, _dir) = app().await;
        add_node(&app, "a", &["t"], 0).await;
        add_node(&app, "b", &["t"], 0).await;
        let bob = user(&app, "bob").await;
        app.store.put_grant("bob", &Grant { on: tag("t"), isolation: vec![] }, now()).await.unwrap();
        let first = dispatch(&app, &bob, None, request(tag("t"), Some("s"), "native"), None).await.unwrap();
        for _ in 0..8 {
            let again = dispatch(&app, &bob, None, request(tag("t"), Some("s"), "native"), None).await.unwrap();
            assert_eq!(again.node.id, first.node.id, "a session stays where it went first");
        }
        let other = dispatch(&app, &bob, None, request(tag("t"), Some("s"), "docker:img"), None).await.unwrap_err();
        assert_eq!(other.kind, Kind::Conflict, "{other}");
        assert!(other.message.contains("openbox session rm s"), "{other}");
    }
}
