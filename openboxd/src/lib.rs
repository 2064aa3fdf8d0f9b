//! openboxd: carries out what the `openbox` CLI asks. It holds the user's login state and
//! key, asks the control plane to dispatch, and talks SSH straight to the chosen node's
//! agent — so the CLI itself stays tiny, with no runtime and no SSH.
//!
//! Each request arrives as a [`proto::request::Call`]; [`handle`] runs it with the
//! caller's stdin, stdout and stderr and returns the exit code.

mod commands;
mod fleet;
mod login;
mod run;

use proto::api::NodeUpdate;
use proto::request::{Call, Request};

pub use fleet::sibling;

/// Exit code for a failed account or fleet command.
const COMMAND_FAILED: u8 = 1;

/// Runs one call and returns the process exit code.
pub async fn handle(call: Call) -> u8 {
    let json = call.json;
    let result = match call.request {
        Request::Run(req) => {
            return match run::run(req).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("openbox: {e:#}");
                    run::FAILED
                }
            };
        }
        Request::Login { server, token } => commands::login(&server, &token, json).await,
        Request::Logout => commands::logout(json).await,
        Request::Whoami => commands::whoami(json).await,
        Request::UserAdd { name } => commands::user_add(&name, json).await,
        Request::UserList => commands::user_list(json).await,
        Request::UserRemove { name } => commands::user_remove(&name, json).await,
        Request::NodeToken { tags, ttl_secs } => commands::node_token(&tags, ttl_secs, json).await,
        Request::Nodes { tag } => commands::nodes(tag.as_deref(), json).await,
        Request::NodeRemove { node } => commands::node_remove(&node, json).await,
        Request::NodeTag { node, add, remove } => {
            commands::node_update(
                &node,
                NodeUpdate {
                    name: None,
                    add_tags: add,
                    remove_tags: remove,
                },
                json,
            )
            .await
        }
        Request::NodeRename { node, name } => {
            commands::node_update(
                &node,
                NodeUpdate {
                    name: Some(name),
                    ..Default::default()
                },
                json,
            )
            .await
        }
        Request::Up(req) => fleet::up(req, json).await,
        Request::Down => fleet::down(json).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("openbox: {e:#}");
            COMMAND_FAILED
        }
    }
}
