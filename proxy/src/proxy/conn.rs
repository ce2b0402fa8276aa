//! Per connection, whatever the protocol: who the two ends are (resolved once from the node's
//! snapshot) and the policy the connection is judged by, through the one decision API
//! (`l7_rules::engine::decide`). A handler asks [`ConnState::policy`] per request, so a live
//! connection sees a policy change on its next request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use l7_rules::engine::{ConnectionPolicy, Flow as PolicyFlow};
use l7_rules::model::{Direction, Protocol};

use crate::flows::{FlowPeer, SharedPeer};
use crate::state::NodeState;

/// What one connection enforces, computed from one view generation.
pub struct ConnPolicy {
    pub generation: u64,
    /// The two ends as flows name them (built once per connection, shared by its flows).
    pub src_peer: Arc<SharedPeer>,
    pub dst_peer: Arc<SharedPeer>,
    /// The sides Ward enforces on (the source's egress, the destination's ingress), resolved
    /// by the engine: the one decision function judges every request against it.
    pub policy: ConnectionPolicy,
    /// The direction a flow reports when no side decided (none is enforced).
    pub default_direction: Direction,
}

pub fn conn_policy(
    view: &NodeState,
    client: SocketAddr,
    orig_dst: SocketAddr,
    protocol: Protocol,
) -> ConnPolicy {
    let src = view.resolve(client.ip());
    let dst = view.resolve(orig_dst.ip());
    let mut audit = view.settings.audit;
    let mut flows = Vec::with_capacity(2);
    let port = orig_dst.port();
    if let Some(i) = src.endpoint {
        audit |= view.endpoints[i].config.audit;
        flows.push(PolicyFlow {
            direction: Direction::Egress,
            subject: &src.peer,
            peer: &dst.peer,
            protocol,
            port,
        });
    }
    if let Some(i) = dst.endpoint {
        audit |= view.endpoints[i].config.audit;
        flows.push(PolicyFlow {
            direction: Direction::Ingress,
            subject: &dst.peer,
            peer: &src.peer,
            protocol,
            port,
        });
    }
    let policy = view.engine.connection_policy(&flows, audit);
    ConnPolicy {
        generation: view.generation,
        src_peer: Arc::new(SharedPeer::new(FlowPeer::new(
            &src,
            client.ip(),
            client.port(),
        ))),
        dst_peer: Arc::new(SharedPeer::new(FlowPeer::new(
            &dst,
            orig_dst.ip(),
            orig_dst.port(),
        ))),
        policy,
        default_direction: if dst.endpoint.is_some() {
            Direction::Ingress
        } else {
            Direction::Egress
        },
    }
}

/// A connection's two addresses and its policy for the view generation it last saw.
pub struct ConnState {
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub protocol: Protocol,
    policy: Mutex<Option<Arc<ConnPolicy>>>,
}

impl ConnState {
    /// A TCP connection's state.
    pub fn new(client: SocketAddr, orig_dst: SocketAddr) -> ConnState {
        ConnState::with_protocol(client, orig_dst, Protocol::Tcp)
    }

    /// A flow's state over `protocol` (a UDP 5-tuple is a flow too).
    pub fn with_protocol(
        client: SocketAddr,
        orig_dst: SocketAddr,
        protocol: Protocol,
    ) -> ConnState {
        ConnState {
            client,
            orig_dst,
            protocol,
            policy: Mutex::new(None),
        }
    }

    /// The connection's policy for the current view (recomputed after a policy change, so
    /// live connections see new rules on their next request).
    pub fn policy(&self, view: &NodeState) -> Arc<ConnPolicy> {
        let mut g = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some(p) if p.generation == view.generation => p.clone(),
            _ => {
                let p = Arc::new(conn_policy(view, self.client, self.orig_dst, self.protocol));
                *g = Some(p.clone());
                p
            }
        }
    }
}
