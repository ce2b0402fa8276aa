//! Sans-IO codecs for the protocols Ward enforces: the HTTP/1.1 request head ([`http1`]), request
//! path normalisation ([`path`]), gRPC paths and message framing ([`grpc`]), Kafka request
//! headers, topics and deny responses ([`kafka`], on top of `kafka-protocol`), and DNS messages
//! ([`dns`], on top of `hickory-proto`).
//!
//! This crate owns the bytes-to-meaning step and nothing else: every function takes `&[u8]` (or
//! `&str`) and returns either a parsed value borrowed from the input, [`Status::NeedMore`], or a
//! typed error saying why the peer's bytes were refused. It must never do I/O, never depend on
//! tokio, hyper or aya, never know about policy rules, and never trust a length or count from the
//! wire before checking it against a named `pub const` limit declared at the top of its module.

#![forbid(unsafe_code)]

pub mod dns;
pub mod grpc;
pub mod http1;
pub mod kafka;
pub mod path;

/// Outcome of a parser that reads a prefix of a byte buffer.
///
/// Incremental parsers (HTTP/1 head, gRPC and Kafka framing, DNS over TCP framing) return
/// `Result<Status<T>, E>`: `Ok(Complete(value, consumed))` when a whole unit was parsed from the
/// first `consumed` bytes of the input, `Ok(NeedMore)` when the input is a valid but incomplete
/// prefix (read more bytes and call again with the longer buffer), and `Err(_)` when the input can
/// never become valid (the caller closes the connection or answers with an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A complete unit: the value and how many bytes of the input it used.
    Complete(T, usize),
    /// The input is a valid prefix; more bytes are needed.
    NeedMore,
}

impl<T> Status<T> {
    /// The parsed value, if complete.
    pub fn complete(self) -> Option<(T, usize)> {
        match self {
            Status::Complete(value, consumed) => Some((value, consumed)),
            Status::NeedMore => None,
        }
    }

    /// `true` when more input is needed.
    pub fn is_need_more(&self) -> bool {
        matches!(self, Status::NeedMore)
    }

    /// Maps the complete value, keeping the consumed count.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Status<U> {
        match self {
            Status::Complete(value, consumed) => Status::Complete(f(value), consumed),
            Status::NeedMore => Status::NeedMore,
        }
    }
}
