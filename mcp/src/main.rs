//! `openbox-mcp` (also `openbox mcp`): openbox as an MCP server on stdio.
//!
//! Every tool goes through openboxd over its socket, so each call is warm and obeys the
//! same access policy as the CLI (see [`tools`]). Output is capped (1 MiB per stream by
//! default: head and tail, with a mark), and a command that may outlast a client's
//! tool-call timeout runs in the background: `start`, then `read` / `wait` / `stop`.

mod args;
mod content;
mod daemon;
mod tools;

use rmcp::ServiceExt as _;

/// The exit code of a call whose deadline passed, as openboxd gives it.
const TIMED_OUT: u8 = 124;

fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => {
            println!(
                "openbox mcp: an MCP server on stdio. Tools: run, run_all, list_nodes, list_sessions, end_session,\n\
                 read_file, write_file, edit_file, list_dir, stat, upload, download, start, read, wait, stop.\n\
                 Configure your MCP client to start `openbox mcp` (see docs/agents.md). Every call goes through openboxd."
            );
            return std::process::ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("openbox mcp {}", proto::VERSION);
            return std::process::ExitCode::SUCCESS;
        }
        // A client told to pass flags it does not take would otherwise get a server that
        // quietly ignores them.
        Some(other) => {
            eprintln!("openbox mcp: unexpected argument '{other}': it takes none but --help and --version");
            return std::process::ExitCode::from(2);
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let served = rt.block_on(async {
        daemon::ensure_running().await.map_err(anyhow::Error::msg)?;
        let service = tools::Openbox::new().serve(rmcp::transport::stdio()).await?;
        service.waiting().await?;
        anyhow::Ok(())
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openbox mcp: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
