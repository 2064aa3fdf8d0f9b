//! How a byte stream to a node is made: the one seam every SSH connection is dialled
//! through — the operating system's TCP, or the tailnet node this process holds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// How long a dial may take before the node counts as unreachable.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The same over the tailnet, where a peer that restarted moments ago may still answer at
/// its old path until the coordination server tells the other side (a WireGuard handshake
/// is retried every 5 s): a dial then takes several seconds, and succeeds.
pub const TAILNET_DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// A way to reach nodes.
#[derive(Clone, Default)]
pub enum Transport {
    /// The operating system's TCP stack: the node's address is dialled directly.
    #[default]
    Tcp,
    /// The tailnet node this process holds: the node's tailnet address is dialled over it.
    Tailnet(Arc<tailnet::Node>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Tailnet(_) => "tailnet",
        })
    }
}

impl Transport {
    /// Opens a stream to `addr` (`host:port`), giving up after [`DIAL_TIMEOUT`] (over TCP)
    /// or [`TAILNET_DIAL_TIMEOUT`].
    pub async fn connect(&self, addr: &str) -> io::Result<Stream> {
        match self {
            Transport::Tcp => tcp(TcpStream::connect(addr)).await,
            Transport::Tailnet(node) => {
                let stream = tokio::time::timeout(TAILNET_DIAL_TIMEOUT, node.dial(addr))
                    .await
                    .map_err(|_| no_answer(TAILNET_DIAL_TIMEOUT))?
                    .map_err(io::Error::other)?;
                Ok(Stream::Tailnet(stream))
            }
        }
    }
}

/// A TCP stream to `addr` (`host:port`) from the local address `source`.
pub async fn connect_from(source: std::net::IpAddr, addr: &str) -> io::Result<Stream> {
    let to = tokio::net::lookup_host(addr).await?.find(|to| to.is_ipv4() == source.is_ipv4()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{addr} has no address of {source}'s family"))
    })?;
    let socket = if source.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(std::net::SocketAddr::new(source, 0))?;
    tcp(socket.connect(to)).await
}

/// A TCP dial given up after [`DIAL_TIMEOUT`], its stream sending each write at once.
async fn tcp(dial: impl Future<Output = io::Result<TcpStream>>) -> io::Result<Stream> {
    let stream = tokio::time::timeout(DIAL_TIMEOUT, dial).await.map_err(|_| no_answer(DIAL_TIMEOUT))??;
    stream.set_nodelay(true)?;
    Ok(Stream::Tcp(stream))
}

fn no_answer(limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {}s", limit.as_secs()))
}

/// A byte stream to a node, whichever transport made it.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// The local end of a socket the tailnet node bridges to the remote one.
    Tailnet(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tailnet(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tailnet(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tailnet(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tailnet(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tailnet(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tailnet(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tcp_carries_bytes_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut stream = Transport::Tcp.connect(&addr).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(Transport::Tcp.connect(&addr).await.is_err());
    }
}
