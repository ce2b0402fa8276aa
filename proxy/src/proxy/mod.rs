//! The node's transparent proxies. Every listener shares the [`transport`] (transparent bind,
//! marked and registered upstream sockets) and the per-connection policy of [`conn`]; each
//! protocol is a handler folder of its own ([`http`]). Client connections live on per-CPU
//! worker threads.

pub mod conn;
pub mod context;
pub mod dns;
pub mod http;
pub mod kafka;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{warn, Instrument};

pub use context::Proxy;

/// The threads that own client connections: one current-thread runtime each, like nginx's
/// worker processes. A connection, its requests and its upstream connections stay on one
/// thread: no work stealing, no cross-thread wake-ups on the request path. The accept loop
/// hands connections out in turn.
pub struct Workers {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads serving connections through `proxy`. They end
    /// when the `Workers` is dropped.
    pub fn start(n: usize, proxy: Arc<Proxy>) -> std::io::Result<Workers> {
        let mut senders = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let proxy = proxy.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        while let Some((stream, peer)) = rx.recv().await {
                            let stream = match TcpStream::from_std(stream) {
                                Ok(s) => s,
                                Err(e) => {
                                    warn!(error = %e, "registering an accepted connection");
                                    continue;
                                }
                            };
                            let local = stream.local_addr().ok();
                            let span =
                                tracing::debug_span!("conn", client = %peer, orig_dst = ?local);
                            tokio::spawn(
                                http::serve_conn(proxy.clone(), stream, peer).instrument(span),
                            );
                        }
                    })
                })?;
            senders.push(tx);
        }
        Ok(Workers {
            senders,
            next: Default::default(),
        })
    }

    fn dispatch(&self, stream: TcpStream, peer: SocketAddr) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "handing over an accepted connection");
                return;
            }
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.senders.len();
        if self.senders[i].send((stream, peer)).is_err() {
            warn!(worker = i, "proxy worker has stopped; connection dropped");
        }
    }
}

/// Accepts until `shutdown` fires, handing connections to the workers.
pub async fn serve(
    workers: Workers,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => workers.dispatch(stream, peer),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
