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
    /// What it was computed from: a later generation with the same inputs (an address
    /// learned from DNS changes the generation, not this connection's policy) keeps it.
    inputs: Inputs,
    /// The two ends as flows name them (built once per connection, shared by its flows).
    pub src_peer: Arc<SharedPeer>,
    pub dst_peer: Arc<SharedPeer>,
    /// The sides Ward enforces on (the source's egress, the destination's ingress), resolved
    /// by the engine: the one decision function judges every request against it.
    pub policy: ConnectionPolicy,
    /// The direction a flow reports when no side decided (none is enforced).
    pub default_direction: Direction,
}

/// Everything a connection's policy is computed from.
struct Inputs {
    engine: Arc<l7_rules::engine::Engine>,
    src: Arc<l7_rules::identity::Peer>,
    dst: Arc<l7_rules::identity::Peer>,
    src_endpoint: bool,
    dst_endpoint: bool,
    audit: bool,
}

impl Inputs {
    fn of(view: &NodeState, client: SocketAddr, orig_dst: SocketAddr) -> Inputs {
        let src = view.resolve(client.ip());
        let dst = view.resolve(orig_dst.ip());
        let mut audit = view.settings.audit;
        for i in [src.endpoint, dst.endpoint].into_iter().flatten() {
            audit |= view.endpoints[i].config.audit;
        }
        Inputs {
            engine: view.engine.clone(),
            src_endpoint: src.endpoint.is_some(),
            dst_endpoint: dst.endpoint.is_some(),
            src: src.peer,
            dst: dst.peer,
            audit,
        }
    }

    /// The same inputs (the engine by identity, peers by value).
    fn same(&self, other: &Inputs) -> bool {
        Arc::ptr_eq(&self.engine, &other.engine)
            && self.src == other.src
            && self.dst == other.dst
            && (self.src_endpoint, self.dst_endpoint, self.audit)
                == (other.src_endpoint, other.dst_endpoint, other.audit)
    }
}

pub fn conn_policy(
    view: &NodeState,
    client: SocketAddr,
    orig_dst: SocketAddr,
    protocol: Protocol,
) -> ConnPolicy {
    let src = view.resolve(client.ip());
    let dst = view.resolve(orig_dst.ip());
    let inputs = Inputs::of(view, client, orig_dst);
    let audit = inputs.audit;
    let mut flows = Vec::with_capacity(2);
    let port = orig_dst.port();
    if src.endpoint.is_some() {
        flows.push(PolicyFlow {
            direction: Direction::Egress,
            subject: &src.peer,
            peer: &dst.peer,
            protocol,
            port,
        });
    }
    if dst.endpoint.is_some() {
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
        inputs,
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
            Some(p) if p.inputs.same(&Inputs::of(view, self.client, self.orig_dst)) => {
                let p = Arc::new(ConnPolicy {
                    generation: view.generation,
                    inputs: Inputs {
                        engine: p.inputs.engine.clone(),
                        src: p.inputs.src.clone(),
                        dst: p.inputs.dst.clone(),
                        ..p.inputs
                    },
                    src_peer: p.src_peer.clone(),
                    dst_peer: p.dst_peer.clone(),
                    policy: p.policy.clone(),
                    default_direction: p.default_direction,
                });
                *g = Some(p.clone());
                p
            }
            _ => {
                let p = Arc::new(conn_policy(view, self.client, self.orig_dst, self.protocol));
                *g = Some(p.clone());
                p
            }
        }
    }
}
