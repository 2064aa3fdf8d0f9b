//! `openbox-agent` (also `openbox agent`): runs the node agent.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Run the openbox agent on this node.
///
/// The first start enrolls the node with a one-time token from `openbox node token`; the
/// identity is kept, so later starts need no token and come back as the same node.
#[derive(Parser, Debug)]
#[command(name = "openbox agent", version = proto::VERSION)]
struct Args {
    /// Control-plane URL (needed to enroll; remembered afterwards).
    #[arg(long)]
    server: Option<String>,
    /// One-time enrollment token (enroll_…), needed only the first time.
    #[arg(long)]
    token: Option<String>,
    /// Address the agent's SSH server listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7684")]
    addr: String,
    /// Address callers should dial, when it differs from --addr (NAT, 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// Tag for this node (repeatable), added to the token's tags at enrollment.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Node name [default: this machine's host name].
    #[arg(long)]
    name: Option<String>,
    /// How often to heartbeat.
    #[arg(long, default_value = "10s", value_parser = proto::parse_duration)]
    heartbeat: u64,
    /// Reap a persistent session's shell after it has been idle this long.
    #[arg(long, default_value = "30m", value_parser = proto::parse_duration)]
    session_idle: u64,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.verbose);

    for t in &args.tags {
        if let Err(e) = proto::check_name("tag", t) {
            eprintln!("openbox agent: {e}");
            return ExitCode::from(2);
        }
    }
    let config = openbox_agent::Config {
        dir: paths::agent_dir(),
        server: args.server,
        token: args.token,
        listen: args.addr,
        advertise: args.advertise,
        tags: args.tags,
        name: args.name,
        heartbeat_every: Duration::from_secs(args.heartbeat.max(1)),
        session_idle: Duration::from_secs(args.session_idle.max(1)),
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(openbox_agent::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openbox agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
