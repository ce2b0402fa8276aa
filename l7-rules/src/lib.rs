//! Ward's policy engine: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes
//! NetworkPolicy objects (policy files, or cluster objects kept in a store) parsed and validated
//! ([`source`]), compiled into a typed model ([`model`]),
//! resolved per endpoint into kernel map entries and L7 rule sets, and decided ([`engine`]).
//! Also the `ward-check` rule tester (`src/bin/ward-check/`, questions and answers in [`check`]).
//!
//! This crate is pure: no sockets, no tokio, no BPF maps. The proxy turns its output into map
//! writes and listeners; the datapath crate never sees L7 rules.

#![forbid(unsafe_code)]

pub mod check;
pub mod compile;
pub mod diag;
pub mod engine;
pub mod identity;
pub mod l7;
pub mod labels;
pub mod lint;
pub mod model;
pub mod raw;
pub mod selector;
pub mod source;

pub use model::RuleRef;
