//! `openboxd` (also `openbox daemon`): serves the CLI's requests on a Unix socket. Started
//! with a call in `OPENBOX_CALL`, it runs just that call instead (no daemon).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use openboxd::Daemon;
use openboxd::io::{CallOutput, fd_input};
use proto::request::{CALL_ENV, Call};

fn main() -> ExitCode {
    if let Some(url) = openboxd::mesh_control_url() {
        tailnet::ensure_environment(url.starts_with("http://"));
    }
    let call = std::env::var_os(CALL_ENV);
    // A one-shot call's stderr is the user's own: only warnings belong there.
    telemetry::init_at(if call.is_some() { "warn" } else { "info" });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match call {
        Some(text) => one_shot(&rt, &text.to_string_lossy()),
        None => match rt.block_on(daemon()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("openboxd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs the one call the CLI handed over, with this process's own streams.
fn one_shot(rt: &tokio::runtime::Runtime, text: &str) -> ExitCode {
    let call: Call = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "openboxd: the request from the CLI is not understood ({e}); are openbox and openboxd the same version?"
            );
            return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
        }
    };
    // The same descriptor handling as for a caller's passed descriptors: they may be
    // non-blocking, and they may be shared.
    let own = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let streams = own(std::io::stdin().as_fd())
        .and_then(|i| Ok((i, own(std::io::stdout().as_fd())?, own(std::io::stderr().as_fd())?)));
    let (stdin, stdout, stderr) = match streams {
        Ok(s) => s,
        Err(e) => {
            eprintln!("openboxd: cannot use this process's standard streams ({e})");
            return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
        }
    };
    let code = rt.block_on(async {
        let d = Daemon::new(false);
        openboxd::handle(&d, call, fd_input(stdin), CallOutput::fds(stdout, stderr), std::future::pending()).await
    });
    // Exit without waiting for a blocked read of stdin (the runtime would wait for it).
    std::process::exit(i32::from(code));
}

async fn daemon() -> anyhow::Result<()> {
    let socket = paths::daemon_socket();
    let listener = bind(&socket)?;
    let d = Daemon::new(true);
    let _watcher = watch_login(d.clone())?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "openboxd listening");
    println!("openboxd listening on {}", socket.display());
    openboxd::serve(listener, d, tailnet::shutdown_signals()?).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("openboxd stopped");
    Ok(())
}

/// Binds the socket: mode 0600 in a 0700 directory. A socket file nobody answers on is
/// left over from a daemon that died, and is replaced.
fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket.parent().context("socket path has no directory")?;
    paths::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("another openboxd is already serving {}", socket.display());
        }
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Notices `openbox login` / `logout` done by other processes, without a restart.
fn watch_login(d: Arc<Daemon>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = paths::login_file();
    let dir = file.parent().context("login file has no directory")?.to_path_buf();
    paths::create_private_dir(&dir)?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the file is an event too: reacting to those would loop forever.
        if let Ok(e) = event
            && (e.kind.is_create() || e.kind.is_modify() || e.kind.is_remove())
            && e.paths.iter().any(|p| p.file_name() == file.file_name())
        {
            d.reload_login();
        }
    })
    .context("watching the login file")?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
