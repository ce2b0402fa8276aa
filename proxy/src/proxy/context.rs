//! What every protocol handler reads: the node snapshot, the flow writer, the metrics, and
//! the upstream socket factory.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::transport::Upstreams;
use crate::flows::FlowWriter;
use crate::metrics::Metrics;
use crate::state::NodeState;

/// What every handler reads: the node snapshot, the flow writer, the metrics, and the
/// upstream socket factory. Handlers never write node state.
pub struct Proxy {
    pub view: Arc<ArcSwap<NodeState>>,
    pub flows: FlowWriter,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    /// Upstream response-head timeout (`None`: no limit) and client request-head timeout.
    pub upstream_timeout: Option<std::time::Duration>,
    pub header_timeout: std::time::Duration,
}

thread_local! {
    static WORKER_TUNNELS: Arc<Tunnels> = Arc::default();
}

/// The tunnels open on this thread's runtime (a proxy worker's): its drain waits for them.
pub fn worker_tunnels() -> Arc<Tunnels> {
    WORKER_TUNNELS.with(Arc::clone)
}

/// The tunnels open (upgrades, CONNECT): a drain keeps them until they end or its timeout.
#[derive(Default)]
pub struct Tunnels {
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

/// One open tunnel; counted until dropped.
pub struct TunnelGuard(Arc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.closed.notify_waiters();
    }
}

impl Tunnels {
    pub fn open(self: &Arc<Self>) -> TunnelGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TunnelGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until no tunnel is open or `deadline`; how many are still open.
    pub async fn wait_closed(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let closed = self.closed.notified();
            if self.count() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.count();
            }
        }
    }
}

impl Proxy {
    pub fn new(view: Arc<ArcSwap<NodeState>>, flows: FlowWriter, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            view,
            flows,
            metrics,
            upstreams: Upstreams::default(),
            upstream_timeout: Some(std::time::Duration::from_secs(15)),
            header_timeout: crate::proxy::http::HEADER_READ_TIMEOUT,
        }
    }

    /// The HTTP timeouts of the node config.
    pub fn with_http(mut self, http: &crate::config::HttpSection) -> Proxy {
        self.upstream_timeout = (http.upstream_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(http.upstream_timeout_ms));
        self.header_timeout = std::time::Duration::from_millis(http.header_timeout_ms.max(1));
        self
    }

    /// Registers every upstream socket in the datapath's proxy-socket map: the kernel honours
    /// the proxy mark only for registered sockets (a forged mark gets ordinary policy).
    pub fn with_proxy_sockets(mut self, sockets: bpf_redirect::ProxySockets) -> Proxy {
        self.upstreams = Upstreams::registered(sockets);
        self
    }
}
