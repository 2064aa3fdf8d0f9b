//! `openbox-control` (also `openbox control`): runs the control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;
use openbox_control::https::Https;
use openbox_control::store::Database;

/// Run the openbox control plane: users, node registry, certificate authority.
///
/// On first start it creates the CA key and an admin user, and prints the exact
/// `openbox login` command with a one-time token. State lives in a SQLite file; restarting
/// keeps every user, node and token.
#[derive(Parser, Debug)]
#[command(name = "openbox control", version = proto::VERSION, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7683")]
    addr: String,
    /// URL that people and nodes use to reach this control plane [default: https://ADDR,
    /// or http://ADDR on a loopback address].
    #[arg(long)]
    url: Option<String>,
    /// Serve HTTPS with this certificate (PEM, leaf first) [default: the control plane's
    /// own, made at first start, whenever --addr is not a loopback address].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS on a loopback address too (elsewhere it is the default).
    #[arg(long)]
    tls: bool,
    /// Serve plain HTTP on an address other than loopback: only behind a proxy that ends
    /// TLS, or on a network you trust — tokens would cross it unencrypted.
    #[arg(long, conflicts_with_all = ["tls", "tls_cert"])]
    insecure_http: bool,
    /// Where the registry lives: a SQLite file (sqlite:PATH, or just PATH) or a PostgreSQL
    /// database (postgres://USER[:PASSWORD]@HOST[:PORT]/DB, libpq's form; keep a password
    /// out of the command line with PGPASSWORD or a ~/.pgpass file). Several control planes
    /// on one PostgreSQL database serve one fleet [default: STATE/control/openbox.db].
    #[arg(long, value_name = "sqlite:PATH|postgres://…")]
    db: Option<Database>,
    /// CA private key, OpenSSH format, created on first start (also OPENBOX_CA_KEY_FILE; or
    /// the key itself in OPENBOX_CA_KEY, never written to disk). Every control plane on one
    /// database must have the same key [default: STATE/control/ca_key].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Name of the admin user created on first start.
    #[arg(long, default_value = "admin")]
    admin: String,
    /// Show a node offline when its last heartbeat is older than this (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = proto::parse_secs)]
    offline_after: u64,
    /// How long the user certificate minted for each command stays valid (10s to 1h).
    #[arg(long, default_value = "5m", value_parser = parse_cert_ttl)]
    user_cert_ttl: u64,
    /// Write the first-start login token to this file (mode 0600) instead of printing it.
    #[arg(long)]
    bootstrap_token_file: Option<PathBuf>,
    /// Mint a fresh login token for the admin user and print it (when the first one is lost).
    #[arg(long)]
    new_admin_token: bool,
    /// How long the audit log keeps an entry (every dispatch and every change to users,
    /// nodes, tokens and sessions; `openbox audit` shows it).
    #[arg(long, default_value = "90d", value_parser = proto::parse_secs)]
    audit_retention: u64,
    /// Keep command lines in the audit log (by default only their SHA-256).
    #[arg(long)]
    audit_commands: bool,
    /// The fleet's tailnet (its Headscale or Tailscale coordination server): handed, with
    /// the auth key, to nodes when they enroll and to users when they log in, so that
    /// `openbox agent --token …` and `openbox login …` alone put them on it. Stored; give it
    /// again to change it.
    #[arg(long, value_name = "URL")]
    mesh_control: Option<String>,
    /// File holding a reusable auth key for that tailnet (stored as a secret; also
    /// OPENBOX_MESH_AUTHKEY). Never give the key itself on the command line.
    #[arg(long, value_name = "FILE")]
    mesh_authkey_file: Option<PathBuf>,
    /// File holding an API key for the tailnet's Headscale (`headscale apikeys create`).
    /// With it each laptop and node is handed a key of its own — one use, minutes long,
    /// tagged `tag:openbox-user` or `tag:openbox-node` — instead of the reusable one, and a
    /// removed user's or node's devices are deleted from the tailnet. Without it only
    /// admins are handed the reusable key.
    #[arg(long, value_name = "FILE")]
    mesh_api_key_file: Option<PathBuf>,
    /// Join the fleet's tailnet too and serve this API there as well, to reach and be
    /// reached by nodes that are on the tailnet only.
    #[arg(long)]
    mesh: bool,
    /// The API's port on the tailnet.
    #[arg(long, default_value_t = 7683)]
    mesh_port: u16,
    /// A file holding the token a scraper sends (`Authorization: Bearer …`) to read
    /// /metrics (Prometheus's format); without it /metrics is off.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Copy a fleet's registry from its SQLite file into an empty PostgreSQL database.
    ///
    /// Every user, login and enrollment token, node, grant, session and audit entry is
    /// copied as it is, so the same CA key, nodes and logins keep working. The file may be
    /// in use (it is read as one consistent snapshot); then stop that control plane and start
    /// one with `--db postgres://…` and the same `--ca` key. For example: `openbox control
    /// migrate --from sqlite:/var/lib/openbox/control/openbox.db --to
    /// postgres://openbox@db.internal/openbox`.
    Migrate {
        /// The SQLite file (sqlite:PATH, or PATH).
        #[arg(long, value_name = "sqlite:PATH")]
        from: Database,
        /// The PostgreSQL database, empty (its schema is made).
        #[arg(long, value_name = "postgres://…")]
        to: Database,
    },
}

fn main() -> ExitCode {
    // `openbox man` asks each binary for its own manual pages (packaging/build installs them).
    if let Some(dir) = telemetry::man_pages_dir(proto::MAN_PAGES_ARG) {
        let cmd = <Args as clap::CommandFactory>::command().display_name("openbox-control");
        return telemetry::write_man_pages(cmd, &dir);
    }
    let mut args = Args::parse();
    telemetry::init(args.verbose);
    telemetry::raise_open_file_limit();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let done = match args.command.take() {
        Some(Command::Migrate { from, to }) => rt.block_on(migrate(from, to)),
        None => rt.block_on(run(args)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openbox control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(from: Database, to: Database) -> anyhow::Result<()> {
    let (Database::Sqlite(file), Database::Postgres(url)) = (&from, &to) else {
        bail!("migrate copies from a SQLite file (--from sqlite:PATH) to PostgreSQL (--to postgres://…)");
    };
    let copied = openbox_control::store::migrate::sqlite_to_postgres(file, url)
        .await
        .with_context(|| format!("copying {from} to {to}"))?;
    for (table, rows) in &copied {
        println!("{table:>14}  {rows}");
    }
    println!("Copied {from} to {to}. Stop the control plane on the file, then start one with:");
    println!("  openbox control --db {to} --ca CA_KEY_FILE");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Everything the control plane writes is its own alone: the database holds token
    // hashes and the tailnet's auth key, beside the CA key.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let db = args.db.unwrap_or_else(|| Database::Sqlite(openbox_control::default_db()));
    let ca_path = args
        .ca
        .or_else(|| std::env::var_os("OPENBOX_CA_KEY_FILE").map(PathBuf::from))
        .unwrap_or_else(openbox_control::default_ca);
    // This control plane's own files (its TLS certificate, its tailnet state): beside a
    // SQLite file, else in the default place.
    let state_dir = match &db {
        Database::Sqlite(path) => path.parent().map_or_else(|| PathBuf::from("."), std::path::Path::to_owned),
        Database::Postgres(_) => {
            openbox_control::default_db().parent().map(std::path::Path::to_owned).unwrap_or_default()
        }
    };
    std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let store = openbox_control::Store::open(&db).await.with_context(|| format!("opening the database {db}"))?;
    if let Database::Sqlite(path) = &db {
        make_private(path)?;
    }
    if args.mesh && !tailnet::BUILT {
        bail!(tailnet::TailnetError::NotBuilt);
    }
    let fleet_mesh = fleet_mesh(&store, args.mesh_control, args.mesh_authkey_file.as_deref()).await?;
    if args.mesh {
        let Some(mesh) = &fleet_mesh else {
            bail!(
                "--mesh needs the fleet's tailnet: give --mesh-control URL --mesh-authkey-file FILE (stored after that)"
            );
        };
        // May start this program again, with the environment the tailnet needs.
        tailnet::ensure_environment(&mesh.control_url);
    }
    let ca = fleet_ca(&store, &ca_path).await?;
    let listener = tokio::net::TcpListener::bind(&args.addr).await.with_context(|| {
        format!("cannot listen on {}; is another control plane running there? (--addr picks another)", args.addr)
    })?;
    let bound = listener.local_addr()?;
    let https = if args.insecure_http {
        None
    } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        Some(Https::from_files(cert, key).context("--tls-cert/--tls-key")?)
    } else if args.tls || !bound.ip().is_loopback() {
        let dir = &state_dir;
        let names = certificate_names(bound, args.url.as_deref());
        Some(Https::own(&dir.join("tls_cert.pem"), &dir.join("tls_key.pem"), &names)?)
    } else {
        None
    };
    let scheme = if https.is_some() { "https" } else { "http" };
    let url = args.url.unwrap_or_else(|| format!("{scheme}://{bound}")).trim_end_matches('/').to_owned();
    if https.is_some() && url.starts_with("http://") {
        bail!("--url {url} says http://, but this control plane serves HTTPS; give its https:// URL");
    }
    // What clients pin; not when a proxy in front ends TLS with a certificate of its own.
    let fingerprint = https.as_ref().filter(|_| url.starts_with("https://")).map(|h| h.fingerprint);
    let login_command = net::control::Endpoint::served(&url, fingerprint).login_command();

    let first_token = openbox_control::bootstrap_admin(&store, &args.admin).await?;
    let extra_token =
        if args.new_admin_token { Some(openbox_control::new_login_token(&store, &args.admin).await?) } else { None };

    println!("openbox control plane listening on {url} (database {db}, CA {})", ca_path.display());
    if let Some(fp) = &fingerprint {
        println!("TLS certificate key {fp} (clients pin it with --fingerprint)");
    }
    if let Some(tok) = first_token.as_ref().or(extra_token.as_ref()) {
        let what = if first_token.is_some() {
            format!("First start: created admin user {:?}.", args.admin)
        } else {
            format!("New login token for {:?}.", args.admin)
        };
        // On a terminal the token is shown once. Anywhere else (a service's journal, a
        // log file) it goes to a file only its owner reads, and the output says where.
        use std::io::IsTerminal as _;
        let file = match &args.bootstrap_token_file {
            Some(path) => Some(path.clone()),
            None if !std::io::stdout().is_terminal() => Some(paths::control_admin_token()),
            None => None,
        };
        match file {
            Some(path) => {
                paths::write_private(&path, tok.expose().as_bytes())?;
                println!("{what} Its login token is in {} (mode 0600). Log in with:", path.display());
                println!("  {login_command} --token-file {}", path.display());
            }
            None => {
                println!("{what} Its login token (shown only once):");
                println!("  {}", tok.expose());
                println!("Log in with this, which asks for the token (or takes it from OPENBOX_LOGIN_TOKEN):");
                println!("  {login_command}");
            }
        }
    }

    let metrics_token = match &args.metrics_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let token = text.trim().to_owned();
            if token.len() < 16 {
                bail!("the metrics token in {} is shorter than 16 characters; use a long random one", path.display());
            }
            Some(token)
        }
        None => None,
    };
    let mesh_api_key = match &args.mesh_api_key_file {
        Some(path) => {
            if fleet_mesh.is_none() {
                bail!("--mesh-api-key-file needs the fleet's tailnet: --mesh-control URL --mesh-authkey-file FILE");
            }
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let key = text.trim().to_owned();
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                bail!("the API key in {} is empty or has spaces in it", path.display());
            }
            Some(trust::Secret::new(key))
        }
        None => None,
    };
    let config = openbox_control::Config {
        public_url: url,
        fingerprint: fingerprint.map(|f| f.to_string()),
        offline_after_secs: args.offline_after,
        user_cert_ttl_secs: args.user_cert_ttl,
        audit_retention_secs: args.audit_retention,
        audit_commands: args.audit_commands,
        metrics_token,
        mesh_api_key,
        mcp_dir: Some(state_dir.join("mcp")),
    };
    let app = openbox_control::App::new(config, store, ca).await;
    if let Some(mesh) = fleet_mesh {
        println!("Nodes and users are handed the fleet's tailnet at {}.", mesh.control_url);
        if args.mesh {
            let state = state_dir.join("tailnet");
            let on_tailnet = openbox_control::mesh::serve(app.clone(), mesh, state, args.mesh_port, |url| {
                println!("openbox control plane also listening on the tailnet at {url}");
            });
            tokio::spawn(async move {
                if let Err(e) = on_tailnet.await {
                    eprintln!("openbox control: not on the tailnet: {e:#}");
                }
            });
        }
    }
    // Go is linked in: signal handlers must suit it (see `tailnet::shutdown_signals`).
    openbox_control::serve(listener, app, https.map(|h| h.config), tailnet::shutdown_signals()?).await?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// The CA key (from OPENBOX_CA_KEY, or the file, made on a fleet's first start), checked
/// against the one the database's fleet trusts: a control plane with another key would
/// sign certificates that no node accepts.
async fn fleet_ca(store: &openbox_control::Store, path: &std::path::Path) -> anyhow::Result<trust::Ca> {
    let trusted = store.fleet_ca().await?;
    let (ca, from) = match std::env::var("OPENBOX_CA_KEY") {
        Ok(text) => (
            trust::Ca::from_openssh(&text).context("reading the CA key in OPENBOX_CA_KEY")?,
            "OPENBOX_CA_KEY".to_owned(),
        ),
        Err(_) if trusted.is_some() && !path.exists() => bail!(
            "this fleet's database already has a CA ({}), and its key is not at {}: give the key the other \
             control planes use (--ca FILE, OPENBOX_CA_KEY_FILE or OPENBOX_CA_KEY)",
            trusted.unwrap_or_default(),
            path.display()
        ),
        Err(_) => (openbox_control::load_or_create_ca(path)?, path.display().to_string()),
    };
    let public = ca.public_key_openssh();
    let pinned = store.pin_ca(&public).await?;
    if pinned != public {
        bail!(
            "the CA key in {from} is not the one this fleet's database trusts ({pinned}); every control plane on one \
             database needs the same CA key (--ca FILE, OPENBOX_CA_KEY_FILE or OPENBOX_CA_KEY)"
        );
    }
    Ok(ca)
}

/// The names the control plane's own certificate is made for: this machine's, the address
/// it listens on, and the host in `--url`. (Pinning clients look only at its key; the names
/// are for browsers.)
fn certificate_names(bound: std::net::SocketAddr, url: Option<&str>) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.push(rustix::system::uname().nodename().to_string_lossy().into_owned());
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    let authority = url.and_then(|u| u.split_once("://")).map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
    let host = authority.map(|a| match a.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => a.split(':').next().unwrap_or(a),
    });
    names.extend(host.filter(|h| !h.is_empty()).map(str::to_owned));
    names.sort();
    names.dedup();
    names
}

/// Makes an existing database (and its write-ahead files) private, as an older version may
/// have left them readable by others.
fn make_private(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let private =
        |path: &std::path::Path, mode: u32| match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::from(e).context(format!("making {} private", path.display())))
            }
            _ => Ok(()),
        };
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        private(std::path::Path::new(&name), 0o600)?;
    }
    Ok(())
}

/// The fleet's tailnet: what the flags say (then stored), else what was stored before.
async fn fleet_mesh(
    store: &openbox_control::Store,
    control_url: Option<String>,
    authkey_file: Option<&std::path::Path>,
) -> anyhow::Result<Option<proto::api::MeshSettings>> {
    let key = tailnet::auth_key(authkey_file)?.map(|k| k.expose().to_owned());
    let stored = store.mesh().await?;
    let settings = match (control_url, key, stored) {
        (None, None, stored) => return Ok(stored),
        (Some(url), Some(key), _) => proto::api::MeshSettings { control_url: url, auth_key: key },
        (Some(url), None, Some(s)) => proto::api::MeshSettings { control_url: url, ..s },
        (None, Some(key), Some(s)) => proto::api::MeshSettings { auth_key: key, ..s },
        (Some(_), None, None) => {
            bail!("--mesh-control needs the tailnet's auth key too: --mesh-authkey-file FILE (or OPENBOX_MESH_AUTHKEY)")
        }
        (None, Some(_), None) => bail!("an auth key was given, but no tailnet: add --mesh-control URL"),
    };
    if !(settings.control_url.starts_with("http://") || settings.control_url.starts_with("https://")) {
        bail!("--mesh-control {:?} is not an http:// or https:// URL", settings.control_url);
    }
    if settings.auth_key.is_empty() || settings.auth_key.chars().any(char::is_whitespace) {
        bail!("the tailnet auth key is empty or has spaces in it; check the file");
    }
    store.set_mesh(&settings).await?;
    Ok(Some(settings))
}

fn parse_cert_ttl(text: &str) -> Result<u64, proto::Invalid> {
    let secs = proto::parse_secs(text)?;
    if !(10..=3600).contains(&secs) {
        return Err(proto::Invalid::Duration("the user certificate lifetime must be between 10s and 1h".into()));
    }
    Ok(secs)
}
