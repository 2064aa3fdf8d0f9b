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
    /// Control-plane URL (needed to enroll; remembered afterwards): https://HOST[:PORT], or
    /// http:// on loopback.
    #[arg(long)]
    server: Option<String>,
    /// The control plane's TLS key, pinned (SHA256:…, printed with the enrollment command).
    /// Without it the certificate must be signed by an authority this machine trusts.
    #[arg(long, value_name = "SHA256:…", requires = "server")]
    fingerprint: Option<tls::Fingerprint>,
    /// Allow plain http to an address other than loopback or the tailnet: the enrollment
    /// token and the node's secret cross the network unencrypted.
    #[arg(long, requires = "server", conflicts_with = "fingerprint")]
    insecure_http: bool,
    /// One-time enrollment token (enroll_…), needed only the first time. Other users can
    /// see arguments: prefer --token-file or OPENBOX_ENROLL_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// File holding the enrollment token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Where this agent keeps its identity, sessions and journal. A second agent on one
    /// machine needs a directory of its own (or its own OPENBOX_HOME).
    /// [default: `agent` in openbox's state directory]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Address the agent's SSH server listens on over TCP (port 0 picks a free port)
    /// [default: 127.0.0.1:7684; none when on a tailnet, unless given].
    #[arg(long)]
    addr: Option<String>,
    /// Address callers should dial, when it differs from --addr (NAT, 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// Tag for this node (repeatable): it must be among the tags the token was minted with.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Node name [default: this machine's host name].
    #[arg(long)]
    name: Option<String>,
    /// How often to heartbeat.
    #[arg(long, default_value = "10s", value_parser = proto::parse_secs)]
    heartbeat: u64,
    /// Reap a persistent session's shell after it has been idle this long.
    #[arg(long, default_value = "30m", value_parser = proto::parse_secs)]
    session_idle: u64,
    /// Join this tailnet's coordination server (Headscale or Tailscale) and serve on the
    /// tailnet; remembered, so later starts rejoin as the same tailnet node.
    #[arg(long, value_name = "URL")]
    mesh_control: Option<String>,
    /// Serve on the tailnet remembered from an earlier --mesh-control (the default when
    /// there is one).
    #[arg(long)]
    mesh: bool,
    /// File holding the tailnet auth key (needed the first time only; also
    /// OPENBOX_MESH_AUTHKEY). Never give the key itself on the command line.
    #[arg(long, value_name = "FILE")]
    mesh_authkey_file: Option<std::path::PathBuf>,
    /// The SSH port on the tailnet.
    #[arg(long, default_value_t = 7684)]
    mesh_port: u16,
    /// How long joining the tailnet may take at start before the agent gives up.
    #[arg(long, default_value = "60s", value_parser = proto::parse_secs)]
    mesh_timeout: u64,
    /// Run an openbox user's commands as a local account, `USER=LOGIN` (repeatable; `*=LOGIN`
    /// for everyone not named). With a mapping, a user it does not name runs nothing. Needs
    /// the agent to run as root. Native commands, sessions and Docker containers run as
    /// the account's user and primary group; nspawn is refused for mapped accounts other
    /// than root.
    #[arg(long = "run-as", value_name = "USER=LOGIN")]
    run_as: Vec<String>,
    /// A host directory that users who are not admins may mount into their containers
    /// (repeatable): read-only, or writable with `:rw`. Without any, they may mount nothing
    /// from this node; admins may mount anything.
    #[arg(long = "mount-allow", value_name = "DIR[:rw]", value_parser = parse_mount_allow)]
    mount_allow: Vec<openbox_agent::confine::MountAllow>,
    /// Send a keepalive to a caller whose connection has been silent this long; one that
    /// answers none of --client-alive-count-max of them in a row is cut off, and what it
    /// started is stopped as when it hangs up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = proto::parse_secs)]
    client_alive_interval: u64,
    /// See --client-alive-interval.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    client_alive_count_max: u16,
    /// Persistent sessions one user may have on this node at once.
    #[arg(long, value_name = "N", default_value_t = openbox_agent::confine::DEFAULT_MAX_SESSIONS,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_sessions: u16,
    /// Processes a command may run at once, counted per container for users who are not
    /// admins (a private user namespace in nspawn, the engine's limit in Docker) and per
    /// local account for --run-as accounts other than root.
    #[arg(long, value_name = "N", default_value_t = openbox_agent::confine::DEFAULT_MAX_PROCESSES,
          value_parser = clap::value_parser!(u64).range(16..))]
    max_processes: u64,
    /// Print this node's identity (id, name, control plane) as JSON and exit: 0 when it has
    /// enrolled, 3 when it has not.
    #[arg(long)]
    identity: bool,
    /// Set this node's identity aside (its files renamed *.forgotten) and exit: the next
    /// start enrolls anew, with a token. `openbox node add` uses it for an identity the
    /// fleet does not know.
    #[arg(long, conflicts_with = "identity")]
    forget_identity: bool,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_mount_allow(s: &str) -> Result<openbox_agent::confine::MountAllow, String> {
    s.parse()
}

/// Runs this program again in this process, with the same arguments (it is enrolled now,
/// and remembers the tailnet to join).
fn start_again() -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec(),
        Err(e) => e,
    };
    eprintln!("openbox agent: cannot start again to join the tailnet ({err}); start the agent again");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    // Started by the agent itself for an `sftp` channel, as the account it serves.
    if std::env::args_os().nth(1).is_some_and(|a| a == openbox_agent::sftp::SERVER_ARG) {
        return match openbox_agent::sftp::serve(std::env::args_os().nth(2).as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("openbox agent sftp-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `openbox man` asks each binary for its own manual pages (packaging/build installs them).
    if let Some(dir) = telemetry::man_pages_dir(proto::MAN_PAGES_ARG) {
        let cmd = <Args as clap::CommandFactory>::command().display_name("openbox-agent");
        return telemetry::write_man_pages(cmd, &dir);
    }
    let args = Args::parse();
    telemetry::init(args.verbose);
    telemetry::raise_open_file_limit();

    for t in &args.tags {
        if let Err(e) = proto::check_name("tag", t) {
            eprintln!("openbox agent: {e}");
            return ExitCode::from(2);
        }
    }
    let dir = match args.state_dir.as_deref().map(std::path::absolute).transpose() {
        Ok(dir) => dir.unwrap_or_else(paths::agent_dir),
        Err(e) => {
            eprintln!("openbox agent: --state-dir: {e}");
            return ExitCode::from(2);
        }
    };
    let from_file = args.token.is_none() && args.token_file.is_some();
    let token = match (args.token, &args.token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_owned()),
            // Enrolled already, it needs no token: one removed after enrolling (as `openbox
            // node add` does) does not stop a service from starting again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && paths::agent_identity(&dir).exists() => None,
            Err(e) => {
                eprintln!("openbox agent: reading the enrollment token from {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => std::env::var(proto::api::ENROLL_TOKEN_ENV).ok().filter(|t| !t.is_empty()),
    };
    let run_as = match openbox_agent::run_as::RunAs::parse(&args.run_as) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openbox agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(token) = &token
        && let Err(e) = openbox_agent::check_token_is_this_nodes(&dir, token, from_file)
    {
        eprintln!("openbox agent: {e:#}");
        return ExitCode::from(2);
    }
    if args.forget_identity {
        return said_identity(openbox_agent::forget_identity(&dir), "this machine has not enrolled; nothing to forget");
    }
    if args.identity {
        return said_identity(openbox_agent::enrolled(&dir), "this machine has not enrolled");
    }
    let mesh = match openbox_agent::mesh_settings(
        &dir,
        args.mesh,
        args.mesh_control,
        args.mesh_authkey_file.as_deref(),
        args.mesh_port,
        Duration::from_secs(args.mesh_timeout.max(1)),
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("openbox agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(m) = &mesh {
        tailnet::ensure_environment(&m.control_url);
    }
    // Without a tailnet, TCP on the default address; on one, TCP only when asked.
    let listen = args.addr.or_else(|| mesh.is_none().then(|| "127.0.0.1:7684".to_owned()));
    let config = openbox_agent::Config {
        dir,
        server: args.server.map(|url| net::control::Endpoint {
            fingerprint: args.fingerprint,
            insecure_http: args.insecure_http,
            ..net::control::Endpoint::new(url)
        }),
        token,
        listen,
        mesh,
        advertise: args.advertise,
        tags: args.tags,
        name: args.name,
        heartbeat_every: Duration::from_secs(args.heartbeat.max(1)),
        session_idle: Duration::from_secs(args.session_idle.max(1)),
        run_as,
        keepalive: net::ssh::Keepalive {
            interval: Duration::from_secs(args.client_alive_interval.max(1)),
            max: args.client_alive_count_max.into(),
        },
        policy: openbox_agent::confine::Policy {
            mount_allow: args.mount_allow,
            max_sessions: args.max_sessions,
            max_processes: args.max_processes,
        },
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let shutdown = {
        let _in_runtime = rt.enter();
        tailnet::shutdown_signals().expect("signal handlers")
    };
    match rt.block_on(openbox_agent::run(config, shutdown)) {
        Ok(openbox_agent::Ended::Stopped) => ExitCode::SUCCESS,
        Ok(openbox_agent::Ended::JoinTailnet(url)) => {
            println!("openbox agent: starting again to join the fleet's tailnet at {url}, then enroll");
            drop(rt);
            start_again()
        }
        Err(e) => {
            eprintln!("openbox agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--identity` and `--forget-identity`: the identity as JSON and 0, else `none` and 3.
fn said_identity(identity: anyhow::Result<Option<serde_json::Value>>, none: &str) -> ExitCode {
    match identity {
        Ok(Some(shown)) => {
            println!("{shown}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("openbox agent: {none}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("openbox agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
