//! A session's container: its first process is the session's shell, reading commands from
//! the attached stdin; its output comes back as two streams, as a process's would. The
//! command running in it is stopped from inside, so no access to the engine's host pids
//! is needed.

use bollard::container::LogOutput;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::engine::{Engine, EngineError, Spec};

/// A shell loop that sends signal `name` to every process in the container but pid 1 (the
/// session's shell) and itself.
fn signal_all_but_the_shell(name: &str) -> String {
    format!(
        "for d in /proc/[0-9]*; do p=${{d#/proc/}}; [ \"$p\" = 1 ] || [ \"$p\" = $$ ] || kill -{name} \"$p\" 2>/dev/null; done"
    )
}

/// A session's container: its shell is the container's first process, reading commands
/// from the attached stdin.
pub struct SessionContainer {
    pub engine: Engine,
    pub id: String,
    /// Its first process (the shell) on this host, when the engine runs here: the
    /// session's stdin FIFOs are made in its root.
    pub pid: Option<crate::procs::Proc>,
}

/// The streams of a session's shell in a container.
pub struct Attached {
    pub stdin: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub stdout: tokio::io::DuplexStream,
    pub stderr: tokio::io::DuplexStream,
}

impl SessionContainer {
    /// Starts a container whose pid 1 is `/bin/sh` reading from stdin.
    pub async fn start(engine: &Engine, spec: Spec<'_>) -> Result<(SessionContainer, Attached), EngineError> {
        let id = engine.create(&spec, vec!["/bin/sh".to_owned()], false).await?;
        let mut container = SessionContainer { engine: engine.clone(), id, pid: None };
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
        container.pid = engine.pid(&container.id).await.and_then(crate::procs::Proc::now);
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
        if let Err(e) = self.engine.run_detached(&self.id, script).await {
            tracing::warn!(container = %self.id, error = %e, "could not signal the session's command");
        }
    }

    pub async fn stop(&self) {
        self.engine.remove(&self.id).await;
    }
}
