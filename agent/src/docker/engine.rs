//! The client for the node's Docker-API engine (Docker, or podman's compatible service):
//! creating, starting, waiting for and removing the containers openbox runs, each labelled
//! with the node that owns it, and one clear line for whatever the engine says went wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, PruneContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use proto::isolation::{Limits, Network};

/// Label on every container openbox creates: the node id that owns it.
pub const NODE_LABEL: &str = "dev.openbox.node";
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Where the engines a Mac runs put their sockets, under the home of the agent's user:
/// Docker Desktop, colima, OrbStack, Rancher Desktop and `podman machine` (the system
/// socket, which Docker Desktop links when allowed to, is looked at first).
const MAC_SOCKETS: [&str; 5] = [
    ".docker/run/docker.sock",
    ".colima/default/docker.sock",
    ".orbstack/run/docker.sock",
    ".rd/docker.sock",
    ".local/share/containers/podman/machine/podman.sock",
];

/// Where to reach the engine: `DOCKER_HOST` when set; else the system socket — and on
/// macOS, when that is missing, the first socket a Mac's engine made under `home`.
fn engine_host(
    docker_host: Option<String>,
    macos: bool,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> String {
    if let Some(host) = docker_host {
        return host;
    }
    let system = Path::new(DEFAULT_SOCKET);
    let found = match home {
        Some(home) if macos && !exists(system) => MAC_SOCKETS.iter().map(|s| home.join(s)).find(|p| exists(p)),
        _ => None,
    };
    format!("unix://{}", found.as_deref().unwrap_or(system).display())
}

/// The node's engine: a client and where it points.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// `DOCKER_HOST`, or the socket found, for messages.
    pub host: String,
    node_id: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("host", &self.host).finish_non_exhaustive()
    }
}

/// What went wrong with the engine, each in one line for a user that names what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {host}: {error}; is it running? (DOCKER_HOST picks another)")]
    Unreachable { host: String, error: DockerError },
    #[error("the Docker engine at {host} did not answer within 3s")]
    Silent { host: String },
    #[error(
        "image {image} is not on this node's Docker engine ({message}); pull or load it there first, e.g. `docker pull {image}`"
    )]
    NoImage { image: String, message: String },
    #[error("the Docker engine at {host} refused: {message} (HTTP {status})")]
    Refused { host: String, status: u16, message: String },
    #[error("the Docker engine at {host} failed: {error}")]
    Failed { host: String, error: DockerError },
}

/// What an error from the engine at `host` means, asked about `image` if it was.
fn explain(host: &str, image: Option<&str>, e: DockerError) -> EngineError {
    let host = host.to_owned();
    match (e, image) {
        (DockerError::DockerResponseServerError { status_code: 404, message }, Some(image)) => {
            EngineError::NoImage { image: image.to_owned(), message }
        }
        (DockerError::DockerResponseServerError { status_code, message }, _) => {
            EngineError::Refused { host, status: status_code, message }
        }
        (
            error @ (DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::RequestTimeoutError),
            _,
        ) => EngineError::Unreachable { host, error },
        (error, _) => EngineError::Failed { host, error },
    }
}

impl Engine {
    /// A client for `DOCKER_HOST` (or the socket found, see `engine_host`); fails while a
    /// Unix socket is missing.
    pub fn from_env(node_id: &str) -> Result<Engine, EngineError> {
        let docker_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let host = engine_host(docker_host.clone(), cfg!(target_os = "macos"), home.as_deref(), |p| p.exists());
        let connected = match docker_host {
            Some(_) => Docker::connect_with_defaults(),
            None => Docker::connect_with_unix(&host, 120, bollard::API_DEFAULT_VERSION),
        };
        let docker = match connected {
            Ok(docker) => docker,
            Err(error) => return Err(EngineError::Unreachable { host, error }),
        };
        Ok(Engine { docker: docker.with_timeout(Duration::from_secs(120)), host, node_id: node_id.to_owned() })
    }

    /// Whether the engine answers now; why not, if it does not.
    pub async fn check(&self) -> Result<(), EngineError> {
        match tokio::time::timeout(Duration::from_secs(3), self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.err(None, e)),
            Err(_) => Err(EngineError::Silent { host: self.host.clone() }),
        }
    }

    fn err(&self, image: Option<&str>, e: DockerError) -> EngineError {
        explain(&self.host, image, e)
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

    /// Resizes a container's terminal.
    pub(super) async fn resize(&self, id: &str, cols: u32, rows: u32) {
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX).max(1);
        let opts = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::default()
            .w(clamp(cols))
            .h(clamp(rows))
            .build();
        if let Err(e) = self.docker.resize_container_tty(id, opts).await {
            tracing::debug!(container = %id, error = %e, "resizing its terminal failed");
        }
    }

    /// Creates (not starts) a container running `argv` with stdin open. `argv` replaces the
    /// image's entrypoint too, so what runs is exactly the shell openbox asked for.
    pub(super) async fn create(
        &self,
        spec: &Spec<'_>,
        argv: Vec<String>,
        one_shot: bool,
    ) -> Result<String, EngineError> {
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
            // Never privileged, for anyone.
            privileged: Some(false),
            ..Default::default()
        };
        let host_config = match spec.hold.process_limit() {
            None => host_config,
            // A user who is not an admin: no setuid or file capability raises privileges
            // (a setuid binary in the image gives nothing), only a documented few
            // capabilities, and a bounded number of processes.
            Some(max) => HostConfig {
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                cap_drop: Some(vec!["ALL".to_owned()]),
                cap_add: Some(crate::confine::DOCKER_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
                pids_limit: Some(max.min(i64::MAX as u64) as i64),
                ..host_config
            },
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.to_owned()),
            entrypoint: Some(argv),
            cmd: Some(Vec::new()),
            env: Some(
                spec.env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(spec.tty.map(|term| format!("TERM={term}")))
                    .collect(),
            ),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(one_shot),
            tty: Some(spec.tty.is_some()),
            user: spec.login.map(|l| format!("{}:{}", l.uid, l.gid)),
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
    pub(super) async fn attach(&self, id: &str) -> Result<bollard::container::AttachContainerResults, EngineError> {
        let opts = AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build();
        self.docker.attach_container(id, Some(opts)).await.map_err(|e| self.err(None, e))
    }

    pub(super) async fn start(&self, id: &str, image: &str) -> Result<(), EngineError> {
        self.docker.start_container(id, None).await.map_err(|e| self.err(Some(image), e))
    }

    /// The host pid of a running container's first process, when the engine says (an
    /// engine on another host, or in another pid namespace, says nothing usable).
    pub(super) async fn pid(&self, id: &str) -> Option<u32> {
        let state = self.docker.inspect_container(id, None).await.ok()?.state?;
        state.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
    }

    /// The exit code of a container that has stopped (or stops soon).
    pub async fn exit_code(&self, id: &str) -> Option<i64> {
        self.wait(id, "not-running").await
    }

    /// Waits for a container to stop. Asked before the container starts, `next-exit`
    /// answers as soon as it exits, where `not-running` asked afterwards can lag behind
    /// (podman updates the state only after its clean-up process has run).
    pub(super) async fn wait(&self, id: &str, condition: &str) -> Option<i64> {
        let opts = WaitContainerOptionsBuilder::default().condition(condition).build();
        match self.docker.wait_container(id, Some(opts)).next().await {
            Some(Ok(r)) => Some(r.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
            _ => None,
        }
    }

    /// Starts `script` in container `id` with `/bin/sh`, without waiting for it.
    pub(super) async fn run_detached(&self, id: &str, script: &str) -> Result<(), DockerError> {
        let exec = CreateExecOptions {
            cmd: Some(vec!["/bin/sh", "-c", script]),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let created = self.docker.create_exec(id, exec).await?;
        let detached = Some(StartExecOptions { detach: true, ..Default::default() });
        self.docker.start_exec(&created.id, detached).await.map(|_| ())
    }

    /// Starts `argv` in running container `id` with a terminal of its own (as `user`),
    /// attached: its id, output and input.
    pub(super) async fn exec_in_terminal(
        &self,
        id: &str,
        argv: Vec<String>,
        env: Vec<String>,
        user: Option<String>,
    ) -> Result<(String, ExecOutput, std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>), EngineError> {
        let exec = CreateExecOptions {
            cmd: Some(argv),
            env: Some(env),
            user,
            tty: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self.docker.create_exec(id, exec).await.map_err(|e| self.err(None, e))?;
        let start = Some(StartExecOptions { detach: false, tty: true, ..Default::default() });
        match self.docker.start_exec(&created.id, start).await.map_err(|e| self.err(None, e))? {
            bollard::exec::StartExecResults::Attached { output, input } => Ok((created.id, output, input)),
            bollard::exec::StartExecResults::Detached => Err(EngineError::Refused {
                host: self.host.clone(),
                status: 0,
                message: "the engine started the command detached".into(),
            }),
        }
    }

    /// Resizes the terminal of exec `exec_id`.
    pub(super) async fn resize_exec(&self, exec_id: &str, cols: u32, rows: u32) {
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX).max(1);
        let opts = bollard::query_parameters::ResizeExecOptions { w: clamp(cols), h: clamp(rows) };
        if let Err(e) = self.docker.resize_exec(exec_id, opts).await {
            tracing::debug!(exec = %exec_id, error = %e, "resizing its terminal failed");
        }
    }

    /// An exec's state: its exit code once it has ended, and its host pid.
    pub(super) async fn exec_state(&self, exec_id: &str) -> (Option<i64>, Option<u32>) {
        match self.docker.inspect_exec(exec_id).await {
            Ok(r) if r.running == Some(true) => (None, r.pid.and_then(|p| u32::try_from(p).ok())),
            Ok(r) => (r.exit_code, None),
            Err(_) => (None, None),
        }
    }
}

/// The output of a command started in a container, as it comes.
pub(super) type ExecOutput =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, DockerError>> + Send>>;

/// What to run a container from, and for whom.
pub struct Spec<'a> {
    pub image: &'a str,
    pub limits: &'a Limits,
    /// Whether the container is hardened for a user who is not an admin.
    pub hold: crate::confine::Confinement,
    pub env: &'a [(&'a str, &'a str)],
    /// The session it serves, for its label.
    pub session: Option<&'a str>,
    /// The local account whose user and group the container runs as (none: the image's).
    pub login: Option<&'a crate::run_as::Login>,
    /// A terminal for it (`openbox -i`), of this `TERM`.
    pub tty: Option<&'a str>,
}

/// Removes a container when dropped, whatever path the run took.
pub(super) struct Removal {
    pub(super) engine: Engine,
    pub(super) id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let (engine, id) = (self.engine.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move { engine.remove(&id).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_docker_host_else_the_system_socket_else_on_a_mac_the_first_one_an_engine_made() {
        let home = Path::new("/Users/ann");
        let none = |_: &Path| false;
        let set = Some("tcp://127.0.0.1:2375".to_owned());
        assert_eq!(engine_host(set, true, Some(home), none), "tcp://127.0.0.1:2375");
        assert_eq!(
            engine_host(None, false, Some(home), none),
            "unix:///var/run/docker.sock",
            "Linux looks at the system socket"
        );
        assert_eq!(
            engine_host(None, true, Some(home), none),
            "unix:///var/run/docker.sock",
            "nothing found: named in the error"
        );
        let colima_and_podman =
            |p: &Path| p.ends_with(".colima/default/docker.sock") || p.ends_with("machine/podman.sock");
        assert_eq!(
            engine_host(None, true, Some(home), colima_and_podman),
            "unix:///Users/ann/.colima/default/docker.sock"
        );
        assert_eq!(engine_host(None, false, Some(home), colima_and_podman), "unix:///var/run/docker.sock");
        let desktop_linked =
            |p: &Path| p == Path::new("/var/run/docker.sock") || p.ends_with(".docker/run/docker.sock");
        assert_eq!(engine_host(None, true, Some(home), desktop_linked), "unix:///var/run/docker.sock");
        assert_eq!(engine_host(None, true, None, colima_and_podman), "unix:///var/run/docker.sock", "no home");
    }

    fn refusal(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError { status_code, message: message.into() }
    }

    #[test]
    fn a_missing_image_says_how_to_get_it() {
        let e = explain("unix:///d.sock", Some("busybox:1"), refusal(404, "no such image"));
        assert_eq!(
            e.to_string(),
            "image busybox:1 is not on this node's Docker engine (no such image); pull or load it there first, e.g. `docker pull busybox:1`"
        );
    }

    #[test]
    fn other_refusals_name_the_engine_and_the_http_status() {
        let e = explain("unix:///d.sock", None, refusal(404, "no such container"));
        assert_eq!(e.to_string(), "the Docker engine at unix:///d.sock refused: no such container (HTTP 404)");
        let e = explain("unix:///d.sock", Some("busybox:1"), refusal(500, "broken"));
        assert_eq!(e.to_string(), "the Docker engine at unix:///d.sock refused: broken (HTTP 500)");
    }

    #[test]
    fn an_engine_that_does_not_answer_is_called_unreachable() {
        let e = explain("unix:///d.sock", None, DockerError::RequestTimeoutError);
        assert!(matches!(e, EngineError::Unreachable { .. }));
        assert!(e.to_string().starts_with("cannot reach the Docker engine at unix:///d.sock: "), "{e}");
        assert!(e.to_string().ends_with("; is it running? (DOCKER_HOST picks another)"), "{e}");
    }
}
