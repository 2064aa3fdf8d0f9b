//! Running a command on a node: dispatch (the control plane picks the node and signs a
//! user certificate), then SSH straight to the node's agent.

use anyhow::{Context as _, bail};
use proto::api::{Dispatch, DispatchRequest};
use proto::request::RunRequest;

use crate::login::{Login, user_key};

/// Exit code openbox uses for its own failures.
pub const FAILED: u8 = proto::EXIT_OPENBOX_FAILURE;

/// Runs `req` with this process's stdin, stdout and stderr; returns the exit code.
pub async fn run(req: RunRequest) -> anyhow::Result<u8> {
    if req.command.is_empty() {
        bail!("no command given: openbox -t TAG CMD [ARGS…]");
    }
    let login = Login::load()?;
    let key = user_key()?;
    let dispatch: Dispatch = login
        .client()?
        .post(
            "/v1/dispatch",
            &DispatchRequest {
                target: req.target.clone(),
                session: req.session.clone(),
                isolation: req.isolation.clone(),
                public_key: key.public_key().to_openssh()?,
            },
        )
        .await?;
    let ca = trust::parse_public_key(&dispatch.ca_public_key)?;
    if ca != login.ca {
        bail!(
            "the control plane's certificate authority changed since you logged in; log in again if that is expected"
        );
    }
    let cert = trust::parse_certificate(&dispatch.cert)?;
    let node = &dispatch.node;
    let target = net::ssh::NodeTarget {
        node_id: node.id.clone(),
        addr: node.addr.clone(),
        ca,
    };
    let mut conn = net::ssh::dial(&target)
        .await
        .with_context(|| format!("node {}", node.name))?;
    conn.authenticate(&login.user, key, cert).await?;
    let command = req.command.join(" ");
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let status = conn
        .exec(&command, Some(tokio::io::stdin()), &mut stdout, &mut stderr)
        .await?;
    if let net::ssh::ExitStatus::Signal { name, .. } = &status {
        eprintln!(
            "openbox: remote command on {} was killed by signal {name}",
            node.name
        );
    }
    conn.close().await;
    Ok(status.exit_code())
}
