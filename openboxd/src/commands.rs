//! The CLI's account and fleet commands: each is one or two control-plane calls whose
//! answer becomes a [`Reply`], shown as text or JSON by the caller.

use anyhow::{Context as _, bail};
use proto::api::*;
use proto::output::{EnrollIssued, LoggedOut, LoginIssued, Removed};
use proto::routes;
use proto::rpc::Whoami;

use crate::Daemon;
use crate::login::{Login, user_key};

/// What a command has to say.
pub struct Reply {
    pub json: serde_json::Value,
    pub text: String,
    /// Lines for stderr that do not make the command fail.
    pub warnings: Vec<String>,
}

pub fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("replies serialize")
}

impl Reply {
    pub fn new(json: serde_json::Value, text: impl Into<String>) -> Reply {
        Reply { json, text: text.into(), warnings: Vec::new() }
    }
}

/// Logs in: asks the control plane who the token belongs to — over TLS checked against
/// `fingerprint` when given — and saves nothing unless that succeeds.
pub async fn login(
    d: &Daemon,
    url: &str,
    fingerprint: Option<&str>,
    insecure_http: bool,
    token: &str,
) -> anyhow::Result<Reply> {
    let fingerprint = fingerprint.map(str::parse::<tls::Fingerprint>).transpose()?;
    let server = net::control::Endpoint { fingerprint, insecure_http, ..net::control::Endpoint::new(url) };
    let client = crate::mesh::control_client(&server, Some(trust::Secret::new(token)))?;
    let me: WhoAmI = client.call::<routes::WhoAmI>(&[], &()).await.context("login failed")?;
    let login = Login {
        server,
        user: me.user.clone(),
        token: trust::Secret::new(token),
        ca: trust::parse_public_key(&me.ca_public_key)?,
    };
    user_key()?;
    login.save()?;
    d.reload_login();
    let admin = if me.admin { " (admin)" } else { "" };
    let context = paths::context();
    let mut text = format!("Logged in to {} as {}{admin}", login.server.url, me.user);
    if !context.is_default() {
        text += &format!(
            " in context {context}.\nUse it with `openbox --context {context} …` (or OPENBOX_CONTEXT={context}), or for \
             every command: `openbox context use {context}`"
        );
    }
    text.push('.');
    let mut reply = Reply::new(
        to_json(&Whoami {
            server: login.server.url.clone(),
            user: me.user.clone(),
            admin: me.admin,
            context: context.name().into(),
        }),
        text,
    );
    // The fleet's tailnet, when the control plane holds one (an older one has no route).
    // A key only when this openboxd still needs one to join: each may be minted for it.
    let needs_key = d.mesh.is_none() || tailnet::has_kept_auth_key(&paths::tailnet_dir());
    let query = proto::api::MeshQuery { key: (!needs_key).then(|| "none".to_owned()) };
    match client.call::<routes::Mesh>(&[], &query).await {
        Ok(Some(fleet)) => join_fleet_mesh(d, &fleet, &mut reply)?,
        Ok(None) => {}
        Err(e) if e.status() == Some(404) => tracing::debug!(error = %e, "no tailnet from the control plane"),
        // The fleet has a tailnet this user is not handed (or none could be minted now):
        // say why; the login stands.
        Err(e) => reply.warnings.push(format!("not on the fleet's tailnet: {e}")),
    }
    Ok(reply)
}

/// Takes the fleet's tailnet as this openboxd's own (unless it has one), and starts
/// openboxd again so that it joins it.
fn join_fleet_mesh(d: &Daemon, fleet: &MeshSettings, reply: &mut Reply) -> anyhow::Result<()> {
    use crate::mesh::Adopted;
    match crate::mesh::adopt(d.mesh.as_deref(), fleet)? {
        Adopted::Kept(None) => {}
        Adopted::Kept(Some(own)) => reply.warnings.push(format!(
            "the fleet's tailnet is {}, but this openboxd stays on its own at {own}",
            fleet.control_url
        )),
        Adopted::NotBuilt => reply.warnings.push(format!(
            "the fleet has a tailnet at {}, but this build of openbox has none: nodes on the tailnet only are out of reach",
            fleet.control_url
        )),
        Adopted::Remembered if d.follow_registry => {
            reply.text.push_str(&format!(
                "\nJoining the fleet's tailnet at {}: openboxd starts again to join it.",
                fleet.control_url
            ));
            // Stopping is enough: the next call starts it again, on the tailnet.
            d.shutdown.notify_one();
        }
        Adopted::Remembered => {
            reply.text.push_str(&format!("\nThe next call joins the fleet's tailnet at {}.", fleet.control_url));
        }
    }
    Ok(())
}

pub async fn logout(d: &Daemon) -> anyhow::Result<Reply> {
    let Ok(login) = Login::load() else {
        return Ok(Reply::new(to_json(&LoggedOut { logged_out: false, token_revoked: None }), "Not logged in."));
    };
    // Revoke the token on the control plane too; if it cannot be reached, the local
    // logout still happens and says so.
    let mut warnings = Vec::new();
    let revoked = match login.client()?.call::<routes::Logout>(&[], &()).await {
        Ok(()) => true,
        Err(e) => {
            warnings.push(format!("warning: the token could not be revoked on the control plane: {e}"));
            false
        }
    };
    Login::remove()?;
    d.reload_login();
    Ok(Reply {
        json: to_json(&LoggedOut { logged_out: true, token_revoked: Some(revoked) }),
        text: format!("Logged out of {}.", login.server.url),
        warnings,
    })
}

pub async fn whoami(d: &Daemon) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let me: WhoAmI = login.client()?.call::<routes::WhoAmI>(&[], &()).await?;
    let admin = if me.admin { " (admin)" } else { "" };
    let context = paths::context().name().to_owned();
    let text = format!("{}{admin} at {} (context {context})", me.user, login.server.url);
    Ok(Reply::new(to_json(&Whoami { server: login.server.url, user: me.user, admin: me.admin, context }), text))
}

/// A one-time link that opens the web dashboard logged in as this user.
pub async fn dashboard(d: &Daemon) -> anyhow::Result<Reply> {
    let link: proto::api::WebLink = d.login()?.client()?.call::<routes::NewWebLink>(&[], &()).await?;
    Ok(Reply::new(to_json(&link), link.to_string()))
}

pub async fn user_add(d: &Daemon, name: &str) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let client = login.client()?;
    let created: UserCreated = client.call::<routes::AddUser>(&[], &NewUser { name: name.to_owned() }).await?;
    let command = login.server.login_command();
    let mut text = format!(
        "Created user {name}. {}\n\
         They can run nothing until you grant them nodes: `openbox user grant {name} --tag TAG` (or --node NODE, \
         and --isolation docker|nspawn|native to allow only those).",
        how_to_log_in(&created.token, &command),
        name = created.name
    );
    // The nodes a tag grant never reaches, so that the admin knows before granting.
    let beside: Vec<String> = client
        .call::<routes::ListNodes>(&[], &Default::default())
        .await?
        .into_iter()
        .filter(|n| n.shares_control)
        .map(|n| n.name)
        .collect();
    if !beside.is_empty() {
        text += &format!(
            "\nNode{} {} run{} beside the control plane and could read its files (its CA key among them): only a grant \
             by name reaches {}, and it lets that user act as an admin.",
            if beside.len() > 1 { "s" } else { "" },
            beside.join(", "),
            if beside.len() > 1 { "" } else { "s" },
            if beside.len() > 1 { "them" } else { "it" },
        );
    }
    Ok(Reply::new(to_json(&LoginIssued { name: created.name, token: created.token, command }), text))
}

/// Lets a user run on the nodes of a tag, or on one node.
pub async fn user_grant(d: &Daemon, name: &str, grant: &Grant) -> anyhow::Result<Reply> {
    let grants: Vec<Grant> = d.login()?.client()?.call::<routes::Grant>(&[name], grant).await?;
    let text = format!("{name} may now run on {grant}.\n{}", grants_line(name, &grants));
    Ok(Reply::new(to_json(&grants), text))
}

/// Takes back a grant on a tag or a node.
pub async fn user_revoke(d: &Daemon, name: &str, on: &Target) -> anyhow::Result<Reply> {
    let (kind, value) = on.parts();
    let grants: Vec<Grant> = d.login()?.client()?.call::<routes::Revoke>(&[name, kind, value], &()).await?;
    let text = format!("{name} no longer runs on {kind}:{value}.\n{}", grants_line(name, &grants));
    Ok(Reply::new(to_json(&grants), text))
}

fn grants_line(name: &str, grants: &[Grant]) -> String {
    if grants.is_empty() {
        format!("{name} has no grants left: they can run nothing.")
    } else {
        format!("{name}'s grants: {}", grants_shown(grants))
    }
}

fn grants_shown(grants: &[Grant]) -> String {
    grants.iter().map(Grant::to_string).collect::<Vec<_>>().join(", ")
}

/// A new login token for an existing user (their other tokens keep working).
pub async fn user_token(d: &Daemon, name: &str) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let created: UserCreated = login.client()?.call::<routes::NewUserToken>(&[name], &()).await?;
    let command = login.server.login_command();
    let text = format!("New login token for {}. {}", created.name, how_to_log_in(&created.token, &command));
    Ok(Reply::new(to_json(&LoginIssued { name: created.name, token: created.token, command }), text))
}

/// A new login token and the command that takes it: kept apart, so that the token goes
/// into no argument list or shell history.
fn how_to_log_in(token: &str, command: &str) -> String {
    format!(
        "Their login token (shown only once):\n  {token}\n\
         They log in with this, which asks for the token (or takes it from OPENBOX_LOGIN_TOKEN):\n  {command}"
    )
}

pub async fn user_list(d: &Daemon) -> anyhow::Result<Reply> {
    let users: Vec<UserInfo> = d.login()?.client()?.call::<routes::ListUsers>(&[], &()).await?;
    let mut text = format!("{:<24} {:<6} {:<10} {}\n", "NAME", "ADMIN", "CREATED", "MAY RUN ON");
    for u in &users {
        let grants = match (u.admin, u.grants.is_empty()) {
            (true, _) => "every node".to_owned(),
            (false, true) => "nothing (`openbox user grant` gives access)".to_owned(),
            (false, false) => grants_shown(&u.grants),
        };
        text +=
            &format!("{:<24} {:<6} {:<10} {grants}\n", u.name, if u.admin { "yes" } else { "no" }, ago(u.created_at));
    }
    Ok(Reply::new(serde_json::to_value(&users)?, text))
}

pub async fn user_remove(d: &Daemon, name: &str) -> anyhow::Result<Reply> {
    d.login()?.client()?.call::<routes::RemoveUser>(&[name], &()).await?;
    Ok(Reply::new(
        to_json(&Removed { removed: name.to_owned(), node: None }),
        format!("Removed user {name}; their tokens no longer work."),
    ))
}

pub async fn node_token(d: &Daemon, tags: &[String], ttl_secs: u64) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let tok: EnrollToken =
        login.client()?.call::<routes::NewEnrollToken>(&[], &NewEnrollToken { tags: tags.to_vec(), ttl_secs }).await?;
    let tag_flags: String = tok.tags.iter().map(|t| format!(" --tag {t}")).collect();
    // The token goes in the environment: other users can read a process's arguments.
    let command =
        format!("{}={} openbox agent {}{tag_flags}", proto::api::ENROLL_TOKEN_ENV, tok.token, login.server.flags());
    let left = proto::time::human_secs(tok.expires_at.saturating_sub(proto::time::control_now()));
    let text = format!(
        "Enrollment token (single use, expires in {left}). On the new node run:\n  {command}\n\
         (add --addr 0.0.0.0:7684 --advertise THAT-HOST:7684 so other machines can reach it)"
    );
    Ok(Reply::new(
        to_json(&EnrollIssued { token: tok.token, tags: tok.tags, expires_at: tok.expires_at, command }),
        text,
    ))
}

pub async fn nodes(d: &Daemon, tag: Option<&str>) -> anyhow::Result<Reply> {
    let client = d.login()?.client()?;
    let filter = proto::api::NodeFilter { tag: tag.map(str::to_owned) };
    let nodes: Vec<Node> = client.call::<routes::ListNodes>(&[], &filter).await?;
    let text = if nodes.is_empty() {
        match tag {
            Some(t) => format!("No node carries tag {t:?}."),
            // Only an admin can add one; anyone else is shown only the nodes granted to them.
            None if client.call::<routes::WhoAmI>(&[], &()).await.is_ok_and(|me| !me.admin) => {
                "No nodes you may use yet: an admin grants them to you (`openbox user grant`).".into()
            }
            None => "No nodes yet. Add one: `openbox node token --tag TAG` prints the command to run on it.".into(),
        }
    } else {
        let row = |c: [&str; 9]| {
            let [id, name, status, platform, addr, seen, cert, iso, tags] = c;
            format!(
                "{id:<13} {name:<16} {status:<8} {platform:<14} {addr:<22} {seen:<10} {cert:<16} {iso:<20} {tags}\n"
            )
        };
        let mut text =
            row(["ID", "NAME", "STATUS", "PLATFORM", "ADDRESS", "LAST SEEN", "HOST CERT", "ISOLATION", "TAGS"]);
        let t = proto::time::control_now();
        for n in &nodes {
            let platform = format!("{}/{}", n.platform.os, n.platform.arch);
            let seen = n.last_seen.map(ago).unwrap_or_else(|| "never".into());
            let status = if n.online { "online" } else { "offline" };
            let cert = proto::time::expires(t, n.host_cert_expires);
            let (iso, tags) = (n.capabilities.join(","), n.tags.join(","));
            text += &row([&n.id, &n.name, status, &platform, &n.addr, &seen, &cert, &iso, &tags]);
        }
        text
    };
    Ok(Reply::new(serde_json::to_value(&nodes)?, text))
}

pub async fn node_remove(d: &Daemon, node: &str) -> anyhow::Result<Reply> {
    d.login()?.client()?.call::<routes::RemoveNode>(&[node], &()).await?;
    Ok(Reply::new(
        to_json(&Removed { removed: node.to_owned(), node: None }),
        format!("Removed node {node}; its identity is revoked."),
    ))
}

pub async fn node_update(d: &Daemon, node: &str, update: NodeUpdate) -> anyhow::Result<Reply> {
    if update.name.is_none() && update.add_tags.is_empty() && update.remove_tags.is_empty() {
        bail!("nothing to change: give +TAG to add or -TAG to remove");
    }
    let n: Node = d.login()?.client()?.call::<routes::UpdateNode>(&[node], &update).await?;
    let tags = if n.tags.is_empty() { "none".into() } else { n.tags.join(",") };
    Ok(Reply::new(serde_json::to_value(&n)?, format!("Node {} ({}): tags {tags}", n.name, n.id)))
}

fn ago(t: u64) -> String {
    proto::time::ago(proto::time::control_now(), Some(t))
}

pub async fn sessions(d: &Daemon) -> anyhow::Result<Reply> {
    let sessions: Vec<SessionInfo> = d.login()?.client()?.call::<routes::ListSessions>(&[], &()).await?;
    let text = if sessions.is_empty() {
        "No sessions. Start one with `openbox -t TAG -s NAME CMD`.".to_owned()
    } else {
        let row = |c: [&str; 6]| format!("{:<16} {:<16} {:<20} {:<10} {:<10} {}\n", c[0], c[1], c[2], c[3], c[4], c[5]);
        let mut text = row(["SESSION", "NODE", "ISOLATION", "CREATED", "LAST USED", "STATE"]);
        for s in &sessions {
            text += &row([&s.id, &s.node_name, &isolation_text(s), &ago(s.created_at), &ago(s.last_used), &s.state]);
        }
        text
    };
    Ok(Reply::new(serde_json::to_value(&sessions)?, text))
}

fn isolation_text(s: &SessionInfo) -> String {
    s.isolation.as_ref().map_or_else(|| "(unreadable)".to_owned(), ToString::to_string)
}

/// Ends a session: stops its shell on the node, then removes it from the directory.
pub async fn session_remove(d: &Daemon, id: &str) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let sessions: Vec<SessionInfo> = login.client()?.call::<routes::ListSessions>(&[], &()).await?;
    let Some(s) = sessions.into_iter().find(|s| s.id == id) else {
        bail!("you have no session {id:?}; `openbox sessions` lists them");
    };
    let mut warnings = Vec::new();
    let acct = d.account()?;
    let stopped = async {
        let isolation = s.isolation.as_ref().context("its isolation cannot be read")?;
        let target = Target::Node(s.node_id.clone());
        let want = crate::connect::Want { target: &target, session: Some(id), isolation };
        let (_, conn) = crate::connect::connect(d, &acct, want).await?;
        conn.subsystem(proto::exec::END_SESSION_SUBSYSTEM).await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = stopped {
        warnings.push(format!(
            "warning: the shell on node {} could not be stopped now ({e:#}); it ends when it has idled long enough",
            s.node_name
        ));
    }
    login.client()?.call::<routes::RemoveSession>(&[id], &()).await?;
    acct.forget_session(id);
    Ok(Reply {
        json: to_json(&Removed { removed: id.to_owned(), node: Some(s.node_id) }),
        text: format!("Ended session {id} on {}.", s.node_name),
        warnings,
    })
}

/// The control plane's audit log, as a table or JSON.
pub async fn audit(
    d: &Daemon,
    user: Option<&str>,
    node: Option<&str>,
    since_secs: Option<u64>,
) -> anyhow::Result<Reply> {
    let filter = proto::api::AuditFilter {
        user: user.map(str::to_owned),
        node: node.map(str::to_owned),
        since: since_secs,
        limit: None,
    };
    let entries: Vec<AuditEntry> = d.login()?.client()?.call::<routes::Audit>(&[], &filter).await?;
    let text = if entries.is_empty() {
        "No audit entries match.".to_owned()
    } else {
        let row = |c: [&str; 7]| {
            format!("{:<10} {:<12} {:<15} {:<14} {:<22} {:<21} {}\n", c[0], c[1], c[2], c[3], c[4], c[5], c[6])
        };
        // `exec` lines are what a node ran (FROM: the node itself); a dispatch is a
        // certificate handed out, not a command.
        let mut text = row(["WHEN", "USER", "ACTION", "NODE", "ISOLATION", "FROM", "WHAT"]);
        for e in &entries {
            let what = match (&e.command, &e.command_sha256, &e.detail) {
                (Some(c), _, _) => c.clone(),
                (None, Some(h), _) => format!("command sha256:{}", &h[..16.min(h.len())]),
                (None, None, Some(d)) => d.clone(),
                _ => String::new(),
            };
            let what = match &e.session {
                Some(s) => format!("[session {s}] {what}"),
                None => what,
            };
            // What a node ran says how it ended, and after how long.
            let what = match (&e.exit, e.duration_ms) {
                (Some(exit), Some(ms)) if exit.parse::<u32>().is_ok() => format!("{what} → exit {exit} in {ms}ms"),
                (Some(exit), Some(ms)) => format!("{what} → {exit} in {ms}ms"),
                _ => what,
            };
            text += &row([
                &ago(e.at),
                &e.user,
                &e.action,
                e.node_id.as_deref().unwrap_or("-"),
                e.isolation.as_deref().unwrap_or("-"),
                e.source.as_deref().unwrap_or(if e.action == "exec" { "(node)" } else { "-" }),
                &what,
            ]);
        }
        text
    };
    Ok(Reply::new(to_json(&entries), text))
}
