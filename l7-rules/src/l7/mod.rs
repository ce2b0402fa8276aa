//! Compiled L7 matchers: HTTP (and gRPC, which is HTTP/2), Kafka, DNS.

pub mod dns;
pub mod http;
pub mod kafka;
pub mod request;
