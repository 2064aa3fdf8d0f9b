//! `openbox-mcp` (also `openbox mcp`): openbox as an MCP server on stdio.
//!
//! Every tool goes through openboxd over its socket, so each call is warm and obeys the
//! same access policy as the CLI (see [`tools`]). Output is capped (1 MiB per stream by
//! default: head and tail, with a mark), and a command that may outlast a client's
//! tool-call timeout runs as a job openboxd keeps: `start`, then `read` / `wait` / `stop`.

mod args;
mod content;
mod daemon;
mod http;
mod tools;

use rmcp::ServiceExt as _;

/// The longest message taken from a client: a `write_file` of 128 MiB, base64-encoded, and
/// the rest. (The SDK's own limit, 16 MiB, would drop a larger write without an answer.)
const MAX_MESSAGE: usize = 192 << 20;

/// The exit code of a call whose deadline passed, as openboxd gives it.
const TIMED_OUT: u8 = 124;

/// How it was asked to serve: on stdio, or over HTTP at an address.
enum Serve {
    Stdio,
    Http { addr: String, token_file: Option<std::path::PathBuf>, hosted: bool },
}

const HELP: &str = "openbox mcp: an MCP server, on stdio (as MCP clients start it) or, with --http ADDR, over \
Streamable HTTP at http://ADDR/mcp (loopback only, or a Unix socket as unix:PATH; every request needs \
`Authorization: Bearer TOKEN`, the token in --token-file FILE or this context's `mcp-token`, made on first use).
--hosted (with --http): as a control plane serves it to a user: no upload/download (the files of this machine are not \
theirs); it stops, and stops its openboxd, when its standard input closes.
Tools: run, run_all, list_nodes, list_sessions, end_session,
  read_file, write_file, edit_file, list_dir, stat, upload, download,
  start, read, wait, stop, list_jobs, write_stdin, screen, send_keys.
Configure your MCP client to start `openbox mcp` (see docs/agents.md). Every call goes through openboxd.";

/// What the arguments ask for, or why they do not fit (then exit 2).
fn parse(args: &[String]) -> Result<Option<Serve>, String> {
    let (mut addr, mut token_file, mut hosted) = (None, None, false);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(None);
            }
            "--version" | "-V" => {
                println!("openbox mcp {}", proto::VERSION);
                return Ok(None);
            }
            "--http" => addr = Some(it.next().ok_or("--http needs an address: --http 127.0.0.1:8765")?.clone()),
            "--hosted" => hosted = true,
            "--token-file" => {
                token_file = Some(it.next().ok_or("--token-file needs a file")?.into());
            }
            // A client told to pass flags it does not take would otherwise get a server that
            // quietly ignores them.
            other => {
                return Err(format!(
                    "unexpected argument '{other}': it takes --http ADDR, --token-file FILE, --hosted, --help and --version"
                ));
            }
        }
    }
    match (addr, token_file) {
        (Some(addr), token_file) => Ok(Some(Serve::Http { addr, token_file, hosted })),
        (None, Some(_)) => Err("--token-file goes with --http ADDR".into()),
        (None, None) if hosted => Err("--hosted goes with --http ADDR".into()),
        (None, None) => Ok(Some(Serve::Stdio)),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = match parse(&args) {
        Ok(Some(serve)) => serve,
        Ok(None) => return std::process::ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("openbox mcp: {why}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let served = rt.block_on(async {
        daemon::ensure_running().await.map_err(anyhow::Error::msg)?;
        match serve {
            Serve::Stdio => {
                let (stdin, stdout) = rmcp::transport::stdio();
                let transport =
                    rmcp::transport::async_rw::AsyncRwTransport::<rmcp::RoleServer, _, _>::new(stdin, stdout)
                        .with_max_line_length(MAX_MESSAGE);
                let service = tools::Openbox::new().serve(transport).await?;
                service.waiting().await?;
            }
            Serve::Http { addr, token_file, hosted } => {
                let served = http::serve(&addr, token_file, hosted).await;
                // Its openboxd was started for it alone: it goes too (the jobs it follows
                // go on running on their nodes, and are followed again by the next one).
                if hosted {
                    daemon::stop().await;
                }
                served?;
            }
        }
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
