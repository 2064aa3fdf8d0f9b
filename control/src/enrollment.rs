//! Nodes joining and staying: enrollment with a single-use token, and the heartbeats that
//! keep a node's entry current and its host certificate renewed.

use proto::api::{
    AuditEntry, EnrollMeshRequest, EnrollRequest, Enrolled, Execution, Heartbeat, HeartbeatReply, MeshSettings,
};
use proto::cert::{CLOCK_SKEW_SECS, HOST_CERT_TTL_SECS};
use trust::token;

use crate::refusal::{Kind, Refusal, check_name};
use crate::store::{EnrollTokenProblem, NodeRow, StoreError};
use crate::{App, now};

/// Enrolls a node with a single-use token: checks the token and names, issues its id,
/// heartbeat secret and host certificate, and adds it to the registry with the isolation
/// it says it can serve.
pub async fn enroll(app: &App, req: EnrollRequest) -> Result<Enrolled, Refusal> {
    if !req.token.starts_with(token::ENROLL_PREFIX) {
        return Err(Refusal::new(
            Kind::Unauthorized,
            "that is not an enrollment token (they start with enroll_); mint one with `openbox node token`",
        ));
    }
    // The token first: nothing about the fleet is said to someone without a valid one.
    let token_hash = token::hash(&req.token);
    let allowed = app.store.check_enroll_token(&token_hash, now()).await?.map_err(token_refusal)?;
    for t in &req.tags {
        check_name("tag", t)?;
    }
    if let Some(n) = &req.name {
        check_name("node name", n)?;
    }
    // A host name that is not a valid node name is replaced rather than refused.
    let default_name =
        req.default_name.filter(|n| proto::check_name("node name", n).is_ok()).unwrap_or_else(|| "node".into());
    check_mesh_addr(req.mesh_addr.as_deref())?;
    req.platform.check()?;
    proto::api::check_reported_addr("addr", &req.addr)?;
    let host_key = trust::parse_public_key(&req.host_public_key)?;
    // A chosen name that is taken is refused before the token is used up.
    if let Some(name) = &req.name
        && app.store.node(name).await?.is_some_and(|n| &n.name == name)
    {
        return Err(Refusal::new(
            Kind::Conflict,
            format!("a node named {name:?} already exists; choose another --name (the token is still valid)"),
        ));
    }
    // The token's tags are the most a node gets: more would let it receive commands (and
    // their input) meant for other nodes. Retagging stays with admins.
    if let Some(extra) = req.tags.iter().find(|t| !allowed.contains(t)) {
        return Err(Refusal::new(
            Kind::Forbidden,
            format!(
                "this enrollment token allows the tags [{}]; {extra:?} is not among them: mint a token with --tag {extra}, or have an admin add it later with `openbox node tag` (the token is still valid)",
                allowed.join(", ")
            ),
        ));
    }
    let tags = app.store.take_enroll_token(&token_hash, now()).await?.map_err(token_refusal)?;
    let node_id = token::random_id()[..12].to_owned();
    let secret = token::generate(token::NODE_PREFIX);
    let (host_cert, host_cert_expires) = sign_host_cert(app, &host_key, &node_id)?;
    let exact_name = req.name.is_some();
    let inserted = app
        .store
        .insert_node(
            NodeRow {
                id: node_id.clone(),
                name: req.name.unwrap_or(default_name),
                tags,
                platform: req.platform,
                addr: req.addr,
                mesh_addr: req.mesh_addr,
                host_key: host_key.to_openssh().map_err(trust::TrustError::from)?,
                secret_hash: token::hash(secret.expose()),
                last_seen: Some(now()),
                stopped: false,
                created_at: now(),
                capabilities: proto::api::known_capabilities(&req.capabilities),
                shares_control: app.shares_control(req.host.as_ref()),
                host_cert_expires: Some(host_cert_expires),
                listed_online: true,
            },
            exact_name,
        )
        .await;
    let row = match inserted {
        Ok(row) => row,
        Err(e) => {
            // No node was enrolled: the token stays good (the same name chosen at the same
            // moment through another control plane, say).
            if let Err(again) = app.store.release_enroll_token(&token_hash).await {
                tracing::warn!(error = %again, "could not give an enrollment token back");
            }
            return Err(match e {
                StoreError::Conflict(m) => Refusal::new(Kind::Conflict, format!("{m} (the token is still valid)")),
                e => e.into(),
            });
        }
    };
    tracing::info!(node = %row.id, name = %row.name, tags = ?row.tags, isolation = ?row.capabilities, "node enrolled");
    app.changed();
    app.metrics.enrollments.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Enrolled {
        node_id,
        name: row.name,
        host_cert,
        ca_public_key: app.ca.public_key_openssh(),
        heartbeat_secret: secret.expose().to_owned(),
    })
}

/// The fleet's tailnet, for a node about to enroll with `token` (which stays unused): it
/// joins first, so that it enrolls with its tailnet address.
pub async fn fleet_mesh(app: &App, req: EnrollMeshRequest) -> Result<Option<MeshSettings>, Refusal> {
    if !req.token.starts_with(token::ENROLL_PREFIX) {
        return Err(Refusal::new(Kind::Unauthorized, "that is not an enrollment token (they start with enroll_)"));
    }
    app.store.check_enroll_token(&token::hash(&req.token), now()).await?.map_err(token_refusal)?;
    crate::coordination::for_node(app).await
}

fn token_refusal(problem: EnrollTokenProblem) -> Refusal {
    let why = match problem {
        EnrollTokenProblem::Unknown => "unknown enrollment token; mint one with `openbox node token`",
        EnrollTokenProblem::Used => {
            "this enrollment token was already used; each token enrolls one node — mint another with `openbox node token`"
        }
        EnrollTokenProblem::Expired => "this enrollment token has expired; mint another with `openbox node token`",
    };
    Refusal::new(Kind::Unauthorized, why)
}

/// How long a user's removal is told to nodes in their heartbeats.
const REVOCATIONS_KEPT_SECS: u64 = 7 * 24 * 3600;

/// Records a heartbeat authenticated by the node's secret, and renews the node's host
/// certificate once past half its life.
pub async fn heartbeat(app: &App, secret: Option<&str>, mut hb: Heartbeat) -> Result<HeartbeatReply, Refusal> {
    app.metrics.heartbeats.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One answer for an unknown id and a wrong secret, so nobody can probe for node ids;
    // only the removed node itself (its own secret) learns that it was removed.
    let refused = || Refusal::new(Kind::Unauthorized, "not a node of this fleet, or not its heartbeat secret");
    let secret_hash = secret.map(token::hash).unwrap_or_default();
    let Some(node) = app.known_node(&hb.node_id).await? else {
        if app.store.is_revoked(&hb.node_id, &secret_hash).await? {
            return Err(Refusal::new(
                Kind::Gone,
                "this node was removed from the fleet; enroll it again with a new token",
            ));
        }
        return Err(refused());
    };
    // Look nodes up by id only: a name must not stand in for the id here.
    if node.id != hb.node_id || secret_hash.is_empty() || secret_hash != node.secret_hash {
        tracing::warn!(node = %telemetry::untrusted(&hb.node_id), "heartbeat refused");
        return Err(refused());
    }
    check_mesh_addr(hb.mesh_addr.as_deref())?;
    if let Err(why) = hb.check() {
        tracing::warn!(node = %node.id, reason = %telemetry::untrusted(&why.to_string()), "heartbeat refused: it reports what a node cannot");
        return Err(why.into());
    }
    // Renewed at half its life (a node stopping takes none: it will not present it).
    let host_cert = if hb.host_cert_valid_before.saturating_sub(now()) < HOST_CERT_TTL_SECS / 2 && !hb.stopping {
        let key = trust::parse_public_key(&node.host_key)?;
        let (cert, expires) = sign_host_cert(app, &key, &node.id)?;
        tracing::info!(node = %node.id, "host certificate renewed");
        // What the registry shows from now on is the certificate the node is sent.
        hb.host_cert_valid_before = expires;
        Some(cert)
    } else {
        None
    };
    // Where the node is now, first: whoever sees what it ran since may dial it at once.
    // Most heartbeats change nothing a node list shows, and wake no one.
    let shares_control = app.shares_control(hb.host.as_ref());
    let unchanged = node.shows_same_after(&hb, shares_control);
    let shown = app.store.record_heartbeat(&hb, unchanged, shares_control, now()).await?;
    if !shown && !unchanged {
        // What was kept of the node was behind the database (a change not yet published
        // here): read it again at the next heartbeat.
        app.forget_node(&node.id);
    }
    // What the node ran, into the audit log before it is told so (then it forgets them).
    let recorded = record_executions(app, &node.id, &hb.executions).await?;
    let sessions = app.store.apply_session_reports(&node.id, &hb.sessions).await?;
    if shown || sessions {
        app.changed();
    }
    // Users removed this past week: the node refuses what they still hold and ends their
    // sessions (a node away for longer learns nothing stale: their certificates expired).
    let bulletin = app.bulletin(REVOCATIONS_KEPT_SECS).await?;
    Ok(HeartbeatReply {
        revoked_users: bulletin.revoked_users.clone(),
        cert_cutoffs: bulletin.cert_cutoffs.clone(),
        executions_recorded: recorded,
        audit_commands: app.config.audit_commands,
        host_cert,
    })
}

/// Puts what a node reports it ran into the audit log, as `exec` entries of the node the
/// heartbeat authenticated; returns their record ids.
async fn record_executions(app: &App, node_id: &str, executions: &[Execution]) -> Result<Vec<String>, Refusal> {
    if executions.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<AuditEntry> = executions
        .iter()
        .map(|x| AuditEntry {
            at: x.started_at,
            user: x.user.clone(),
            action: "exec".into(),
            node_id: Some(node_id.to_owned()),
            isolation: Some(x.isolation.clone()),
            session: x.session.clone(),
            key_id: Some(x.key_id.clone()),
            source: None,
            command_sha256: x.command_sha256.clone(),
            command: x.command.clone().filter(|_| app.config.audit_commands),
            detail: (x.kind != "command").then(|| x.kind.clone()),
            record_id: Some(format!("{node_id}:{}", x.id)),
            duration_ms: Some(x.duration_ms),
            exit: Some(x.exit.clone()),
        })
        .collect();
    app.store.audit(&entries, now().saturating_sub(app.config.audit_retention_secs)).await?;
    Ok(executions.iter().map(|x| x.id.clone()).collect())
}

/// A tailnet address must be one a caller can dial: `IP:PORT`, a unicast IP, a port.
fn check_mesh_addr(mesh_addr: Option<&str>) -> Result<(), Refusal> {
    let Some(text) = mesh_addr else { return Ok(()) };
    let dialable = text
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast());
    if dialable {
        Ok(())
    } else {
        Err(Refusal::new(Kind::BadRequest, format!("the tailnet address {text:?} is not a dialable IP:PORT")))
    }
}

/// A host certificate for `node_id`, valid from now (less the clock skew) for the host
/// certificate lifetime; and when it ends.
fn sign_host_cert(app: &App, host_key: &trust::PublicKey, node_id: &str) -> Result<(String, u64), Refusal> {
    let t = now();
    let cert = app.ca.sign_host(host_key, node_id, t - CLOCK_SKEW_SECS, t + HOST_CERT_TTL_SECS)?;
    Ok((cert.to_openssh().map_err(trust::TrustError::from)?, t + HOST_CERT_TTL_SECS))
}
