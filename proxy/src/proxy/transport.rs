//! The transparent transport every protocol handler shares: the listener bound with
//! `IP_TRANSPARENT` (the original destination is the accepted socket's local address), and
//! upstream sockets that carry the proxy mark and are registered with the datapath, so the
//! kernel lets them through as the proxy's (a forged mark alone gets ordinary policy).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpSocket, TcpStream};
use tracing::warn;

/// Binds the transparent listener (IP_TRANSPARENT, SO_REUSEADDR) on `0.0.0.0:port`.
pub fn bind_transparent(port: u16) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent(true)?;
    s.set_nonblocking(true)?;
    let addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], port));
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Upstream connect timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type SocketRegistry = Arc<Mutex<bpf_redirect::ProxySockets>>;

/// Opens upstream connections for every handler: the datapath registry their sockets go into.
#[derive(Clone, Default)]
pub struct Upstreams {
    sockets: Option<SocketRegistry>,
}

impl Upstreams {
    /// Registers every upstream socket in the datapath's proxy-socket map: the kernel honours
    /// the proxy mark only for registered sockets.
    pub fn registered(sockets: bpf_redirect::ProxySockets) -> Upstreams {
        Upstreams {
            sockets: Some(Arc::new(Mutex::new(sockets))),
        }
    }

    /// Opens an upstream connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Upstream, ConnectError> {
        connect(addr, self.sockets.as_ref()).await
    }
}

/// How long a closed upstream socket stays registered: its last ACK/FIN may leave after close.
const UNREGISTER_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// An upstream connection whose socket cookie is registered with the datapath for as long as
/// it lives (and [`UNREGISTER_DELAY`] after).
pub struct Upstream {
    stream: TcpStream,
    registration: Option<(SocketRegistry, u64)>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let Some((registry, cookie)) = self.registration.take() else {
            return;
        };
        let unregister = move || {
            if let Err(e) = registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(cookie)
            {
                warn!(error = %e, cookie, "unregistering an upstream socket");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(UNREGISTER_DELAY).await;
                    unregister();
                });
            }
            Err(_) => unregister(),
        }
    }
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Connecting upstream failed: our side or the upstream's, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
}

/// Opens an upstream connection: proxy mark, socket registered with the datapath (after
/// `socket()` and the mark, before `connect()`), no Nagle.
async fn connect(
    addr: SocketAddr,
    sockets: Option<&SocketRegistry>,
) -> Result<Upstream, ConnectError> {
    use std::os::fd::AsFd;
    let sock = TcpSocket::new_v4().map_err(|e| ConnectError::Io(addr, e))?;
    socket2::SockRef::from(&sock)
        .set_mark(bpf_redirect::common::MARK_PROXY_UPSTREAM)
        .map_err(|e| ConnectError::Io(addr, e))?;
    let registration = match sockets {
        None => None,
        Some(registry) => {
            let cookie =
                bpf_redirect::socket_cookie(sock.as_fd()).map_err(|e| ConnectError::Io(addr, e))?;
            registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cookie)
                .map_err(|e| ConnectError::Io(addr, std::io::Error::other(e)))?;
            Some((registry.clone(), cookie))
        }
    };
    // From here the guard unregisters the cookie, also when connecting fails.
    let pending = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr));
    let guard = RegistrationGuard(registration);
    let stream = pending
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|e| ConnectError::Io(addr, e))?;
    let _ = stream.set_nodelay(true);
    Ok(guard.attach(stream))
}

/// Holds a registration until a stream takes it over.
struct RegistrationGuard(Option<(SocketRegistry, u64)>);

impl RegistrationGuard {
    fn attach(mut self, stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            registration: self.0.take(),
        }
    }
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        if let Some((registry, cookie)) = self.0.take() {
            let _ = registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(cookie);
        }
    }
}
