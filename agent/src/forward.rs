//! Port forwarding for certificates that carry `permit-port-forwarding` (native commands
//! outside a session, as the user's grants allow on this node): `-L` arrives as a
//! `direct-tcpip` channel the agent connects onward, `-R` as a `tcpip-forward` request for
//! a listener on this node's loopback whose connections go back as `forwarded-tcpip`
//! channels. Bytes from the caller reopen its SSH window only once written on (as for a
//! command's input), so a slow far end holds the caller back instead of filling memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use russh::server::{Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::{TcpListener, TcpStream};

use crate::channel::Window;

/// How long connecting onward may take before the caller hears it failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept, doubled while accepting keeps failing.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Who a caller's commands run as on this node, for what a listener may bind.
#[derive(Clone, Copy, Debug)]
pub struct Account<'a> {
    pub name: &'a str,
    pub is_root: bool,
}

/// The lowest port an unprivileged process may bind here (the kernel's
/// `ip_unprivileged_port_start`, 1024 unless changed).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Why a certificate does not let its connection forward ports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotForwarding {
    #[error("port forwarding is not offered within a session")]
    InSession,
    #[error("this certificate does not permit port forwarding")]
    NotPermitted,
    #[error("port forwarding reaches the node itself, not a {0} container")]
    Container(&'static str),
}

/// Why a forward is refused, if it is.
pub fn refusal(grant: &trust::UserGrant) -> Option<NotForwarding> {
    if grant.port_forwarding {
        return None;
    }
    Some(match (&grant.session, &grant.isolation) {
        (Some(_), _) => NotForwarding::InSession,
        (None, proto::Isolation::Native) => NotForwarding::NotPermitted,
        (None, other) => NotForwarding::Container(other.kind()),
    })
}

/// Connects to `host:port` from this node and joins it to `channel`; the channel is
/// accepted once connected, refused with the reason otherwise.
pub fn connect_onward(
    channel: Channel<Msg>,
    reply: russh::server::ChannelOpenHandle,
    handle: Handle,
    host: String,
    port: u32,
) {
    tokio::spawn(async move {
        let target = format!("{host}:{port}");
        let Ok(port) = u16::try_from(port) else {
            return reply.reject(ChannelOpenFailure::ConnectFailed).await;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(tcp)) => {
                reply.accept().await;
                join(channel, tcp, handle).await;
            }
            Ok(Err(e)) => {
                tracing::info!(%target, error = %e, "a forwarded connection could not be made");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
    });
}

/// Listeners this connection asked for (`-R`), by the address and port the caller named;
/// they stop when it cancels them or the connection ends.
#[derive(Default)]
pub struct Listeners(HashMap<(String, u32), tokio::task::JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

impl Listeners {
    /// Listens on `address:port` of this node's loopback (port 0: any free one, written
    /// back to `port`) and sends each connection to the caller. Why not, otherwise.
    /// `account` is who the caller's commands run as here: a port only root may bind is
    /// bound only for a caller whose commands run as root.
    pub async fn listen(
        &mut self,
        address: &str,
        port: &mut u32,
        account: Account<'_>,
        handle: Handle,
    ) -> Result<(), ListenError> {
        let ip = loopback(address)?;
        let wanted = u16::try_from(*port).map_err(|_| ListenError::NotAPort(*port))?;
        if wanted != 0 && wanted < unprivileged_port_start() && !account.is_root {
            return Err(ListenError::NeedsRoot { port: wanted, account: account.name.to_owned() });
        }
        let bind = |e| ListenError::Bind { ip, port: wanted, error: e };
        let listener = TcpListener::bind((ip, wanted)).await.map_err(bind)?;
        let bound = listener.local_addr().map_err(bind)?.port();
        // Known by the port it got (the one a caller that asked for any port cancels).
        let key = (address.to_owned(), u32::from(bound));
        *port = u32::from(bound);
        let (address, port) = (address.to_owned(), u32::from(bound));
        let task = tokio::spawn(async move {
            // After a failed accept (out of descriptors, say) wait before the next, longer
            // each time it fails again: never a loop that spins.
            let mut pause = ACCEPT_PAUSE_MIN;
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => {
                        pause = ACCEPT_PAUSE_MIN;
                        accepted
                    }
                    Err(e) => {
                        tracing::warn!(port, error = %e, pause_ms = pause.as_millis() as u64, "accepting a forwarded connection (-R) failed");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                        continue;
                    }
                };
                let (handle, address) = (handle.clone(), address.clone());
                tokio::spawn(async move {
                    let opened = handle
                        .channel_open_forwarded_tcpip(address, port, peer.ip().to_string(), u32::from(peer.port()))
                        .await;
                    if let Ok(channel) = opened {
                        join(channel, tcp, handle).await;
                    }
                });
            }
        });
        self.0.insert(key, task);
        Ok(())
    }

    /// Stops the listener the caller asked for as `address:port`, and waits until its
    /// port is free again; whether there was one.
    pub async fn cancel(&mut self, address: &str, port: u32) -> bool {
        let Some(task) = self.0.remove(&(address.to_owned(), port)) else { return false };
        task.abort();
        let _ = task.await; // the listener is closed once its task is gone
        true
    }
}

/// Why a listener for `-R` was not made.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0:?} is not a loopback address: forwards listen on this node's loopback only")]
    NotLoopback(String),
    #[error("{0} is not a port")]
    NotAPort(u32),
    #[error("port {port} needs root on this node, and your commands here run as {account}")]
    NeedsRoot { port: u16, account: String },
    #[error("cannot listen on {ip}:{port}: {error}")]
    Bind { ip: IpAddr, port: u16, error: std::io::Error },
}

/// The loopback address a caller's bind address names (`""`, `localhost`, or a loopback
/// IP): a forward never listens beyond this node.
fn loopback(address: &str) -> Result<IpAddr, ListenError> {
    match address {
        "" | "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
        other => match other.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(ip),
            _ => Err(ListenError::NotLoopback(other.to_owned())),
        },
    }
}

/// Copies both ways between `channel` and `tcp` until both directions have ended.
async fn join(channel: Channel<Msg>, tcp: TcpStream, handle: Handle) {
    let window = Window::new(handle, channel.id());
    let (read, write) = channel.split();
    crate::channel::splice(read, &write, &window, tcp).await;
    let _ = write.close().await;
}
