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
///
/// When the accept loop ends (SIGTERM), each worker drains: every connection is told to shut
/// down gracefully (HTTP/1.1: `Connection: close` on the response in flight, then close; an
/// idle keep-alive connection closes; HTTP/2: GOAWAY, then the open streams finish), and the
/// worker waits for them up to the drain timeout; what is left then (upgraded tunnels, stuck
/// peers) is cut and counted in the log.
pub struct Workers {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    next: std::sync::atomic::AtomicUsize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads serving connections through `proxy`. They drain
    /// (within `drain_timeout`) and end when the `Workers` is dropped or [`Workers::stop`]ped.
    pub fn start(
        n: usize,
        proxy: Arc<Proxy>,
        drain_timeout: std::time::Duration,
    ) -> std::io::Result<Workers> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let proxy = proxy.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
                        let mut conns = tokio::task::JoinSet::new();
                        while let Some((stream, peer)) = rx.recv().await {
                            while conns.try_join_next().is_some() {}
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
                            conns.spawn(
                                http::serve_conn(proxy.clone(), stream, peer, drain_rx.clone())
                                    .instrument(span),
                            );
                        }
                        let what = format!("HTTP worker {i}");
                        let deadline = tokio::time::Instant::now() + drain_timeout;
                        transport::drain(conns, drain_tx, drain_timeout, &what).await;
                        // Upgraded connections and CONNECT tunnels live on this runtime: kept
                        // until they end or the drain timeout, then cut and counted.
                        let tunnels = context::worker_tunnels();
                        let open = tunnels.count();
                        if open > 0 {
                            match tunnels.wait_closed(deadline).await {
                                0 => tracing::info!(tunnels = open, "{what}: tunnels ended"),
                                cut => warn!(
                                    cut,
                                    of = open,
                                    timeout_ms = drain_timeout.as_millis() as u64,
                                    "{what}: drain timeout: tunnels still open are cut"
                                ),
                            }
                        }
                    })
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Workers {
            senders,
            next: Default::default(),
            threads,
        })
    }

    /// Stops handing out connections and returns the worker threads, which drain and end.
    pub fn stop(self) -> Vec<std::thread::JoinHandle<()>> {
        self.threads
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

/// Accepts until `shutdown` fires, handing connections to the workers; then returns the worker
/// threads, which drain their connections and end.
pub async fn serve(
    workers: Workers,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<std::thread::JoinHandle<()>> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => workers.dispatch(stream, peer),
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return workers.stop(),
        }
    }
}
