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
}

impl Proxy {
    pub fn new(view: Arc<ArcSwap<NodeState>>, flows: FlowWriter, metrics: Arc<Metrics>) -> Proxy {
        Proxy {
            view,
            flows,
            metrics,
            upstreams: Upstreams::default(),
        }
    }

    /// Registers every upstream socket in the datapath's proxy-socket map: the kernel honours
    /// the proxy mark only for registered sockets (a forged mark gets ordinary policy).
    pub fn with_proxy_sockets(mut self, sockets: bpf_redirect::ProxySockets) -> Proxy {
        self.upstreams = Upstreams::registered(sockets);
        self
    }
}
