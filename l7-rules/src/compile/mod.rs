//! Raw YAML types → compiled model. This is where validation lives: every check reports the
//! field path, and compilation carries on so that all errors of a document come out at once.

mod cilium;
mod k8s;
mod l7;
mod peers;
mod ports;
mod rule;

pub use cilium::cilium_policy;
pub use k8s::{k8s_policy, service_labels};
pub use l7::MAX_KAFKA_TOPIC_LEN;
pub use peers::{parse_cidr, selector};
pub use ports::MAX_PORTS_PER_RULE;
