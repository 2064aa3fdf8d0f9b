//! The CLI's account and fleet commands: each is one or two control-plane calls and a
//! rendering of the answer as text or JSON.

use anyhow::{Context as _, bail};
use proto::api::*;
use serde::Serialize;

use crate::login::{Login, user_key};

/// Prints `value` as JSON when asked, otherwise the text.
fn show<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        );
    } else {
        let t = text();
        if !t.is_empty() {
            println!("{}", t.trim_end());
        }
    }
}

pub async fn login(server: &str, token: &str, json: bool) -> anyhow::Result<()> {
    let client = net::control::Client::new(server, Some(trust::Secret::new(token)))?;
    let me: WhoAmI = client.get("/v1/whoami").await.context("login failed")?;
    let login = Login {
        server: client.url().to_owned(),
        user: me.user.clone(),
        token: trust::Secret::new(token),
        ca: trust::parse_public_key(&me.ca_public_key)?,
    };
    user_key()?;
    login.save()?;
    show(
        json,
        &serde_json::json!({"server": login.server, "user": me.user, "admin": me.admin}),
        || {
            format!(
                "Logged in to {} as {}{}.",
                login.server,
                me.user,
                if me.admin { " (admin)" } else { "" }
            )
        },
    );
    Ok(())
}

pub async fn logout(json: bool) -> anyhow::Result<()> {
    let login = match Login::load() {
        Ok(l) => l,
        Err(_) => {
            show(json, &serde_json::json!({"logged_out": false}), || {
                "Not logged in.".into()
            });
            return Ok(());
        }
    };
    // Revoke the token on the control plane too; if it cannot be reached, the local
    // logout still happens and says so.
    let revoked = match login.client()?.post::<_, ()>("/v1/logout", &()).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("openbox: warning: the token could not be revoked on the control plane: {e}");
            false
        }
    };
    Login::remove()?;
    show(
        json,
        &serde_json::json!({"logged_out": true, "token_revoked": revoked}),
        || format!("Logged out of {}.", login.server),
    );
    Ok(())
}

pub async fn whoami(json: bool) -> anyhow::Result<()> {
    let login = Login::load()?;
    let me: WhoAmI = login.client()?.get("/v1/whoami").await?;
    show(
        json,
        &serde_json::json!({"server": login.server, "user": me.user, "admin": me.admin}),
        || {
            format!(
                "{}{} at {}",
                me.user,
                if me.admin { " (admin)" } else { "" },
                login.server
            )
        },
    );
    Ok(())
}

pub async fn user_add(name: &str, json: bool) -> anyhow::Result<()> {
    let login = Login::load()?;
    let created: UserCreated = login
        .client()?
        .post(
            "/v1/users",
            &NewUser {
                name: name.to_owned(),
            },
        )
        .await?;
    let command = format!(
        "openbox login --server {} --token {}",
        login.server, created.token
    );
    show(
        json,
        &serde_json::json!({"name": created.name, "token": created.token, "command": command}),
        || {
            format!(
                "Created user {}. They log in with (the token is shown only once):\n  {command}",
                created.name
            )
        },
    );
    Ok(())
}

pub async fn user_list(json: bool) -> anyhow::Result<()> {
    let users: Vec<UserInfo> = Login::load()?.client()?.get("/v1/users").await?;
    show(json, &users, || {
        let mut out = format!("{:<24} {:<6} {}\n", "NAME", "ADMIN", "CREATED");
        for u in &users {
            out += &format!(
                "{:<24} {:<6} {}\n",
                u.name,
                if u.admin { "yes" } else { "no" },
                ago(u.created_at)
            );
        }
        out
    });
    Ok(())
}

pub async fn user_remove(name: &str, json: bool) -> anyhow::Result<()> {
    Login::load()?
        .client()?
        .delete(&format!("/v1/users/{name}"))
        .await?;
    show(json, &serde_json::json!({"removed": name}), || {
        format!("Removed user {name}; their tokens no longer work.")
    });
    Ok(())
}

pub async fn node_token(tags: &[String], ttl_secs: u64, json: bool) -> anyhow::Result<()> {
    let login = Login::load()?;
    let tok: EnrollToken = login
        .client()?
        .post(
            "/v1/enroll-tokens",
            &NewEnrollToken {
                tags: tags.to_vec(),
                ttl_secs,
            },
        )
        .await?;
    let tag_flags: String = tok.tags.iter().map(|t| format!(" --tag {t}")).collect();
    let command = format!(
        "openbox agent --server {} --token {}{tag_flags}",
        login.server, tok.token
    );
    show(
        json,
        &serde_json::json!({"token": tok.token, "tags": tok.tags, "expires_at": tok.expires_at, "command": command}),
        || {
            format!(
                "Enrollment token (single use, expires in {}). On the new node run:\n  {command}",
                human_secs(tok.expires_at.saturating_sub(now()))
            )
        },
    );
    Ok(())
}

pub async fn nodes(tag: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match tag {
        Some(t) => format!("/v1/nodes?tag={t}"),
        None => "/v1/nodes".to_owned(),
    };
    let nodes: Vec<Node> = Login::load()?.client()?.get(&path).await?;
    show(json, &nodes, || {
        if nodes.is_empty() {
            return match tag {
                Some(t) => format!("No node carries tag {t:?}."),
                None => "No nodes yet. Add one: `openbox node token --tag TAG` prints the command to run on it.".into(),
            };
        }
        let mut out = format!(
            "{:<13} {:<16} {:<8} {:<14} {:<22} {:<10} {}\n",
            "ID", "NAME", "STATUS", "PLATFORM", "ADDRESS", "LAST SEEN", "TAGS"
        );
        for n in &nodes {
            out += &format!(
                "{:<13} {:<16} {:<8} {:<14} {:<22} {:<10} {}\n",
                n.id,
                n.name,
                if n.online { "online" } else { "offline" },
                format!("{}/{}", n.platform.os, n.platform.arch),
                n.addr,
                n.last_seen.map(ago).unwrap_or_else(|| "never".into()),
                n.tags.join(","),
            );
        }
        out
    });
    Ok(())
}

pub async fn node_remove(node: &str, json: bool) -> anyhow::Result<()> {
    Login::load()?
        .client()?
        .delete(&format!("/v1/nodes/{node}"))
        .await?;
    show(json, &serde_json::json!({"removed": node}), || {
        format!("Removed node {node}; its identity is revoked.")
    });
    Ok(())
}

pub async fn node_update(node: &str, update: NodeUpdate, json: bool) -> anyhow::Result<()> {
    if update.name.is_none() && update.add_tags.is_empty() && update.remove_tags.is_empty() {
        bail!("nothing to change: give +TAG to add or -TAG to remove");
    }
    let n: Node = Login::load()?
        .client()?
        .patch(&format!("/v1/nodes/{node}"), &update)
        .await?;
    show(json, &n, || {
        format!(
            "Node {} ({}): tags {}",
            n.name,
            n.id,
            if n.tags.is_empty() {
                "none".into()
            } else {
                n.tags.join(",")
            }
        )
    });
    Ok(())
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn human_secs(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn ago(t: u64) -> String {
    format!("{} ago", human_secs(now().saturating_sub(t)))
}
