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

/// Accepts connections on `tcp` until `shutdown` fires, spawning `serve(stream, client, drain)`
/// for each on the current runtime. An accept error (EMFILE, …) is logged and retried after a
/// pause rather than ending the listener. Then drains: `drain` turns true (each connection
/// stops reading new requests and ends once it has answered the ones it holds), and the
/// connections get up to `drain_timeout` before they are cut. `what` names the listener in
/// log lines.
pub async fn accept_until<F, Fut>(
    tcp: std::net::TcpListener,
    what: &'static str,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    drain_timeout: std::time::Duration,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tcp = match tokio::net::TcpListener::from_std(tcp) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "{what}: the listener");
            return;
        }
    };
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = tcp.accept() => match r {
                Ok((stream, client)) => {
                    while conns.try_join_next().is_some() {}
                    conns.spawn(serve(stream, client, drain_rx.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drain(conns, drain_tx, drain_timeout, what).await;
}

/// Drains a listener's connections: `drain` turns true (each connection finishes what it holds
/// and ends), and they get up to `timeout`; what is left is cut when `conns` drops. Logs how
/// many drained, or how many were cut.
pub async fn drain(
    mut conns: tokio::task::JoinSet<()>,
    drain: tokio::sync::watch::Sender<bool>,
    timeout: std::time::Duration,
    what: &str,
) {
    while conns.try_join_next().is_some() {}
    if conns.is_empty() {
        return;
    }
    let open = conns.len();
    let _ = drain.send(true);
    let drained = tokio::time::timeout(timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(connections = open, "{what}: drained"),
        Err(_) => warn!(
            cut = conns.len(),
            of = open,
            timeout_ms = timeout.as_millis() as u64,
            "{what}: drain timeout: connections still open are cut"
        ),
    }
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
        connect(addr, None, self.sockets.as_ref()).await
    }
}

/// How long a closed upstream socket stays registered: its last ACK/FIN may leave after close.
const UNREGISTER_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// A socket cookie registered with the datapath for as long as its socket lives (and
/// [`UNREGISTER_DELAY`] after, when a runtime is there to wait).
struct Registration(Option<(SocketRegistry, u64)>);

impl Registration {
    /// Registers `fd` (after `socket()` and the mark, before the first packet).
    fn new(
        registry: Option<&SocketRegistry>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<Registration> {
        let Some(registry) = registry else {
            return Ok(Registration(None));
        };
        let cookie = bpf_redirect::socket_cookie(fd)?;
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cookie)
            .map_err(std::io::Error::other)?;
        Ok(Registration(Some((registry.clone(), cookie))))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some((registry, cookie)) = self.0.take() else {
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

/// An upstream connection whose socket cookie is registered with the datapath for as long as
/// it lives.
pub struct Upstream {
    stream: TcpStream,
    _registration: Registration,
}

impl Upstream {
    /// The connection itself, for borrowed halves and splice(2); it stays registered while
    /// the `Upstream` lives.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Closes with a reset instead of a FIN when dropped: a connection that spoke from the
    /// client's own address must not leave a TIME_WAIT socket on the client's tuple, which
    /// the client may reuse at once.
    pub fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(std::time::Duration::ZERO));
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
/// `socket()` and the mark, before `connect()`), no Nagle; from `from` (transparently, the
/// client's own address) when given.
async fn connect(
    addr: SocketAddr,
    from: Option<SocketAddr>,
    sockets: Option<&SocketRegistry>,
) -> Result<Upstream, ConnectError> {
    use std::os::fd::AsFd;
    let io = |e| ConnectError::Io(addr, e);
    let sock = TcpSocket::new_v4().map_err(io)?;
    let sref = socket2::SockRef::from(&sock);
    sref.set_mark(bpf_redirect::common::MARK_PROXY_UPSTREAM)
        .map_err(io)?;
    if let Some(from) = from {
        sref.set_ip_transparent(true).map_err(io)?;
        sock.set_reuseaddr(true).map_err(io)?;
        sock.bind(from).map_err(io)?;
    }
    // From here the registration is undone when the socket goes, also when connecting fails.
    let registration = Registration::new(sockets, sock.as_fd()).map_err(io)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(io)?;
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        stream,
        _registration: registration,
    })
}

/// A UDP socket of the proxy's, registered with the datapath when it carries the proxy mark.
pub struct UdpUpstream {
    pub socket: tokio::net::UdpSocket,
    _registration: Registration,
}

/// A UDP socket bound transparently to `local` (an address not the node's) and connected to
/// `peer`: with `IP_TRANSPARENT` and `SO_REUSEADDR` several may share a local address, each
/// connected to its own peer.
fn transparent_udp(
    local: SocketAddr,
    peer: SocketAddr,
    mark: bool,
) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent(true)?;
    if mark {
        s.set_mark(bpf_redirect::common::MARK_PROXY_UPSTREAM)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&local.into())?;
    s.connect(&peer.into())?;
    Ok(s)
}

/// Binds the transparent UDP listener on `0.0.0.0:port`: `IP_TRANSPARENT`, `SO_REUSEADDR`,
/// and `IP_RECVORIGDSTADDR`, so each datagram carries the address the client sent it to.
pub fn bind_transparent_udp(port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    s.set_ip_transparent(true)?;
    s.set_nonblocking(true)?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4OrigDstAddr, &true)
        .map_err(std::io::Error::from)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    Ok(s.into())
}

/// The socket that answers a client from the address it sent to (`orig_dst`): bound there
/// transparently and connected to the client, so the kernel (and the datapath's
/// `bpf_sk_lookup_udp`) also delivers the client's next datagrams of that 5-tuple to it.
pub fn udp_reply_socket(
    orig_dst: SocketAddr,
    client: SocketAddr,
) -> std::io::Result<tokio::net::UdpSocket> {
    let s = transparent_udp(orig_dst, client, false)?;
    tokio::net::UdpSocket::from_std(s.into())
}

impl Upstreams {
    /// Opens an upstream connection to `addr` from the client's own address `from`
    /// (transparently, as Cilium's DNS proxy does); the datapath hands the replies, addressed
    /// to the client, to this socket.
    pub async fn connect_from(
        &self,
        from: SocketAddr,
        addr: SocketAddr,
    ) -> Result<Upstream, ConnectError> {
        connect(addr, Some(from), self.sockets.as_ref()).await
    }

    /// A UDP socket to `server`, marked and registered; from `from` (transparently, the
    /// client's own address and port) when given, else from the node's address.
    pub fn udp(
        &self,
        from: Option<SocketAddr>,
        server: SocketAddr,
    ) -> Result<UdpUpstream, ConnectError> {
        use std::os::fd::AsFd;
        let io = |e| ConnectError::Io(server, e);
        let s = match from {
            Some(from) => transparent_udp(from, server, true).map_err(io)?,
            None => {
                use socket2::{Domain, Socket, Type};
                let s = Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(io)?;
                s.set_mark(bpf_redirect::common::MARK_PROXY_UPSTREAM)
                    .map_err(io)?;
                s.set_nonblocking(true).map_err(io)?;
                s
            }
        };
        let registration = Registration::new(self.sockets.as_ref(), s.as_fd()).map_err(io)?;
        if from.is_none() {
            s.connect(&server.into()).map_err(io)?;
        }
        let socket = tokio::net::UdpSocket::from_std(s.into()).map_err(io)?;
        Ok(UdpUpstream {
            socket,
            _registration: registration,
        })
    }
}
