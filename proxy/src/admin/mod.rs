//! The admin API: its types ([`api`], shared with the CLI) and its server ([`server`]).

pub mod api;
pub mod server;
