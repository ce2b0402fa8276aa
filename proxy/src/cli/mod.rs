//! The `ward` command line's client side: talking to a running node, rendering its answers,
//! and reading the flow log.

pub mod observe;
