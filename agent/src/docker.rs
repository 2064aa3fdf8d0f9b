//! Containers on the node's Docker-API engine (Docker, or podman's compatible service),
//! through bollard. A one-shot command gets a fresh container that is removed afterwards;
//! a session keeps one container whose first process is the session's shell. Every
//! container carries the node's label, so ones left by a crashed agent are removed at
//! the next start.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, PruneContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use proto::isolation::{Limits, Network};
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::AsyncWriteExt;

use crate::channel::{ChannelOut, Outcome};

/// Label on every container openbox creates: the node id that owns it.
pub const NODE_LABEL: &str = "dev.openbox.node";
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// The node's engine: a client and where it points.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// `DOCKER_HOST`, or the default socket, for messages.
    pub host: String,
    node_id: String,
}

/// One line for a user from an engine error, naming what is wrong.
fn explain(host: &str, image: Option<&str>, e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { status_code: 404, message } if image.is_some() => {
            let image = image.unwrap_or_default();
            format!(
                "image {image} is not on this node's Docker engine ({message}); pull or load it there first, e.g. `docker pull {image}`"
            )
        }
        DockerError::DockerResponseServerError { status_code, message } => {
            format!("the Docker engine at {host} refused: {message} (HTTP {status_code})")
        }
        DockerError::IOError { .. } | DockerError::HyperResponseError { .. } | DockerError::RequestTimeoutError => {
            format!("cannot reach the Docker engine at {host}: {e}; is it running? (DOCKER_HOST picks another)")
        }
        other => format!("the Docker engine at {host} failed: {other}"),
    }
}

impl Engine {
    /// A client for `DOCKER_HOST` (or the default socket); fails while a Unix socket is
    /// missing.
    pub fn from_env(node_id: &str) -> Result<Engine, String> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned());
        let docker = Docker::connect_with_defaults().map_err(|e| {
            format!("cannot reach the Docker engine at {host}: {e}; is it running? (DOCKER_HOST picks another)")
        })?;
        Ok(Engine { docker: docker.with_timeout(Duration::from_secs(120)), host, node_id: node_id.to_owned() })
    }

    /// Whether the engine answers now; why not, if it does not.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(3), self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(explain(&self.host, None, &e)),
            Err(_) => Err(format!("the Docker engine at {} did not answer within 3s", self.host)),
        }
    }

    fn err(&self, image: Option<&str>, e: DockerError) -> String {
        explain(&self.host, image, &e)
    }

    /// Removes containers a previous run of this agent left behind: running ones by id,
    /// then the stopped ones by a prune (engines differ in the states they list, so the
    /// listing asks only for running containers).
    pub async fn remove_leftovers(&self) {
        let label = format!("{NODE_LABEL}={}", self.node_id);
        let running = HashMap::from([("label", vec![label.as_str()]), ("status", vec!["running"])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&running).build();
        match self.docker.list_containers(Some(opts)).await {
            Ok(list) => {
                for id in list.into_iter().filter_map(|c| c.id) {
                    tracing::info!(container = %id, "removing a container left by an earlier run");
                    self.remove(&id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list containers left by an earlier run"),
        }
        let mine = HashMap::from([("label", vec![label.as_str()])]);
        let opts = PruneContainersOptionsBuilder::default().filters(&mine).build();
        if let Err(e) = self.docker.prune_containers(Some(opts)).await {
            tracing::warn!(error = %e, "could not prune containers left by an earlier run");
        }
    }

    pub async fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(opts)).await {
            tracing::warn!(container = %id, error = %e, "could not remove container");
        }
    }

    pub async fn kill(&self, id: &str, signal: &str) {
        let opts = KillContainerOptionsBuilder::default().signal(signal).build();
        if let Err(e) = self.docker.kill_container(id, Some(opts)).await {
            tracing::debug!(container = %id, error = %e, "kill failed");
        }
    }

    /// Creates (not starts) a container running `argv` with stdin open. `argv` replaces the
    /// image's entrypoint too, so what runs is exactly the shell openbox asked for.
    async fn create(&self, spec: &Spec<'_>, argv: Vec<String>, one_shot: bool) -> Result<String, String> {
        let mut labels = HashMap::from([(NODE_LABEL.to_owned(), self.node_id.clone())]);
        if let Some(s) = spec.session {
            labels.insert("dev.openbox.session".to_owned(), s.to_owned());
        }
        let limits = spec.limits;
        let host_config = HostConfig {
            // An init as pid 1 forwards signals to the command and reaps; a session's shell
            // is pid 1 itself, so the interrupt can reach it (see `interrupt`).
            init: Some(one_shot),
            nano_cpus: limits.millicpus.map(|m| (m * 1_000_000) as i64),
            memory: limits.memory.map(|b| b.min(i64::MAX as u64) as i64),
            network_mode: limits.network.map(|n| match n {
                Network::None => "none".to_owned(),
                Network::Host => "host".to_owned(),
            }),
            // `Mounts` rather than `Binds`: a missing source is an error, not a new directory.
            mounts: (!limits.mounts.is_empty()).then(|| {
                limits
                    .mounts
                    .iter()
                    .map(|m| bollard::models::Mount {
                        typ: Some(bollard::models::MountType::BIND),
                        source: Some(m.src.clone()),
                        target: Some(m.dst.clone()),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.to_owned()),
            entrypoint: Some(argv),
            cmd: Some(Vec::new()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(one_shot),
            tty: Some(false),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = format!("openbox-{}", &trust::token::random_id()[..12]);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let created =
            self.docker.create_container(Some(opts), body).await.map_err(|e| self.err(Some(spec.image), e))?;
        Ok(created.id)
    }

    /// Attaches to a created container's stdin, stdout and stderr.
    async fn attach(&self, id: &str) -> Result<bollard::container::AttachContainerResults, String> {
        let opts = AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build();
        self.docker.attach_container(id, Some(opts)).await.map_err(|e| self.err(None, e))
    }

    async fn start(&self, id: &str, image: &str) -> Result<(), String> {
        self.docker.start_container(id, None).await.map_err(|e| self.err(Some(image), e))
    }

    /// The exit code of a container that has stopped (or stops soon).
    pub async fn exit_code(&self, id: &str) -> Option<i64> {
        self.wait(id, "not-running").await
    }

    /// Waits for a container to stop. Asked before the container starts, `next-exit`
    /// answers as soon as it exits, where `not-running` asked afterwards can lag behind
    /// (podman updates the state only after its clean-up process has run).
    async fn wait(&self, id: &str, condition: &str) -> Option<i64> {
        let opts = WaitContainerOptionsBuilder::default().condition(condition).build();
        match self.docker.wait_container(id, Some(opts)).next().await {
            Some(Ok(r)) => Some(r.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
            _ => None,
        }
    }
}

/// What to run a container from, and for whom.
pub struct Spec<'a> {
    pub image: &'a str,
    pub limits: &'a Limits,
    pub env: &'a [(&'a str, &'a str)],
    /// The session it serves, for its label.
    pub session: Option<&'a str>,
}

/// Removes a container when dropped, whatever path the run took.
struct Removal {
    engine: Engine,
    id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let (engine, id) = (self.engine.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move { engine.remove(&id).await });
    }
}

/// A shell loop that sends signal `name` to every process in the container but pid 1 (the
/// session's shell) and itself.
fn signal_all_but_the_shell(name: &str) -> String {
    format!(
        "for d in /proc/[0-9]*; do p=${{d#/proc/}}; [ \"$p\" = 1 ] || [ \"$p\" = $$ ] || kill -{name} \"$p\" 2>/dev/null; done"
    )
}

/// Stops a task when dropped (a wait that will never be answered, on an early return).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `command` in a fresh container from `spec` for the channel, then removes the
/// container. Stdin, stdout, stderr, signals and the exit code behave as natively.
pub async fn run_once(
    engine: &Engine,
    spec: Spec<'_>,
    command: &str,
    timeout: Option<Duration>,
    input: ChannelReadHalf,
    out: ChannelOut,
) {
    let mut input = crate::channel::messages(input);
    let cmd = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
    let id = match engine.create(&spec, cmd, true).await {
        Ok(id) => id,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let _removal = Removal { engine: engine.clone(), id: id.clone() };
    let attached = match engine.attach(&id).await {
        Ok(a) => a,
        Err(e) => return out.refuse(&format!("{e}; nothing was run")).await,
    };
    let mut exit = AbortOnDrop(tokio::spawn({
        let (engine, id) = (engine.clone(), id.clone());
        async move { engine.wait(&id, "next-exit").await }
    }));
    if let Err(e) = engine.start(&id, spec.image).await {
        return out.refuse(&format!("{e}; nothing was run")).await;
    }
    let mut output = attached.output;
    // Stdin goes through a task of its own so output keeps draining (as in native runs).
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let mut stdin_tx = Some(stdin_tx);
    let mut stdin = attached.input;
    tokio::spawn(async move {
        while let Some(chunk) = stdin_rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stdin.shutdown().await; // end of input reaches the command
    });

    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (mut timed_out, mut input_open, mut output_open) = (false, true, true);
    while output_open {
        tokio::select! {
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() && !timed_out => {
                timed_out = true;
                engine.kill(&id, "SIGKILL").await;
            },
            item = output.next() => match item {
                Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                    if !out.stdout(&message).await {
                        engine.kill(&id, "SIGKILL").await;
                    }
                }
                Some(Ok(LogOutput::StdErr { message })) => { out.stderr(&message).await; }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    tracing::warn!(container = %id, error = %e, "reading container output failed");
                    output_open = false;
                }
                None => output_open = false,
            },
            msg = input.recv(), if input_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(tx) = &stdin_tx && tx.send(data).is_err() { stdin_tx = None; }
                }
                Some(ChannelMsg::Eof) => stdin_tx = None,
                Some(ChannelMsg::Signal { signal }) => {
                    if let Some(name) = crate::signals::name(&signal) {
                        engine.kill(&id, &format!("SIG{name}")).await;
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    engine.kill(&id, "SIGKILL").await;
                    input_open = false;
                }
                Some(_) => {}
            },
        }
    }
    if timed_out {
        let secs = timeout.map(|t| t.as_secs()).unwrap_or(0);
        out.stderr(format!("openbox: timed out after {secs}s\n").as_bytes()).await;
        return out.finish(Outcome::Code(124)).await;
    }
    // The early wait may have reached the engine only after the container had exited
    // (then it waits for an exit that never comes): after a grace period, ask plainly.
    let exit_code = match tokio::time::timeout(Duration::from_secs(2), &mut exit.0).await {
        Ok(Ok(Some(code))) => Some(code),
        _ => engine.exit_code(&id).await,
    };
    let outcome = match exit_code {
        Some(code) => Outcome::Code(code.clamp(0, 255) as u32),
        None => {
            out.stderr(b"openbox agent: the Docker engine did not report the container's exit code\n").await;
            Outcome::Code(255)
        }
    };
    out.finish(outcome).await;
}

/// A session's container: its shell is the container's first process, reading commands
/// from the attached stdin.
pub struct SessionContainer {
    pub engine: Engine,
    pub id: String,
}

/// The streams of a session's shell in a container.
pub struct Attached {
    pub stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub stdout: tokio::io::DuplexStream,
    pub stderr: tokio::io::DuplexStream,
}

impl SessionContainer {
    /// Starts a container whose pid 1 is `/bin/sh` reading from stdin.
    pub async fn start(engine: &Engine, spec: Spec<'_>) -> Result<(SessionContainer, Attached), String> {
        let id = engine.create(&spec, vec!["/bin/sh".to_owned()], false).await?;
        let container = SessionContainer { engine: engine.clone(), id };
        let started = match engine.attach(&container.id).await {
            Ok(a) => engine.start(&container.id, spec.image).await.map(|_| a),
            Err(e) => Err(e),
        };
        let attached = match started {
            Ok(a) => a,
            Err(e) => {
                container.stop().await;
                return Err(e);
            }
        };
        // The engine interleaves stdout and stderr on one stream; the session reads them
        // as two pipes. Output a background job writes while no command reads it waits
        // here; the buffers grow only as used, and are large so that such output does not
        // hold up the other stream's end marker behind it.
        let (mut out_w, out_r) = tokio::io::duplex(16 << 20);
        let (mut err_w, err_r) = tokio::io::duplex(16 << 20);
        let mut output = attached.output;
        tokio::spawn(async move {
            while let Some(Ok(item)) = output.next().await {
                let ok = match item {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => out_w.write_all(&message).await,
                    LogOutput::StdErr { message } => err_w.write_all(&message).await,
                    LogOutput::StdIn { .. } => Ok(()),
                };
                if ok.is_err() {
                    return;
                }
            }
        });
        Ok((container, Attached { stdin: attached.input, stdout: out_r, stderr: err_r }))
    }

    /// Stops the command running in the session: the shell (pid 1) is told to abandon it,
    /// and every other process in the container is killed — as natively, from inside,
    /// so it works whatever host the engine runs on.
    pub async fn interrupt(&self) {
        self.run_inside(&format!("kill -USR1 1; {}", signal_all_but_the_shell("KILL"))).await;
    }

    /// Passes a signal (a name such as `INT`) to what the session's command started.
    pub async fn signal(&self, name: &'static str) {
        self.run_inside(&signal_all_but_the_shell(name)).await;
    }

    /// Runs a short script inside the container without waiting for it.
    async fn run_inside(&self, script: &str) {
        let exec = bollard::exec::CreateExecOptions {
            cmd: Some(vec!["/bin/sh", "-c", script]),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let detached = Some(bollard::exec::StartExecOptions { detach: true, ..Default::default() });
        let started = match self.engine.docker.create_exec(&self.id, exec).await {
            Ok(e) => self.engine.docker.start_exec(&e.id, detached).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            tracing::warn!(container = %self.id, error = %e, "could not signal the session's command");
        }
    }

    pub async fn stop(&self) {
        self.engine.remove(&self.id).await;
    }
}
