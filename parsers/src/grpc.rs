//! gRPC over HTTP/2: the call path (`/<package>.<Service>/<Method>`), the content type that marks
//! a request as gRPC, and the 5-byte length-prefixed message header.
//!
//! A gRPC call is an HTTP/2 `POST` whose `:path` names the service and method
//! (docs/policy-semantics.md §3); policy rules are written either as HTTP rules on that path or
//! as Ward's native service/method form, which [`parse_path`] feeds.

use crate::Status;

/// Largest message Ward lets through (the gRPC default receive limit is 4 MiB).
pub const MAX_MESSAGE_LEN: u32 = 4 * 1024 * 1024;

/// Size of the length-prefixed message header: compressed flag (1) + big-endian length (4).
pub const MESSAGE_HEADER_LEN: usize = 5;

/// Why a gRPC message header was refused. The client's fault: end the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    /// The compressed flag is neither 0 nor 1.
    #[error("invalid gRPC compressed flag {0} (must be 0 or 1)")]
    BadCompressedFlag(u8),
    /// The declared message length exceeds [`MAX_MESSAGE_LEN`].
    #[error("gRPC message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    MessageTooLarge(u32),
}

/// Header of one length-prefixed gRPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// The message is compressed with the stream's `grpc-encoding`.
    pub compressed: bool,
    /// Length of the message that follows the header.
    pub len: u32,
}

/// Splits a gRPC `:path` into `(service, method)`: exactly two non-empty segments after the
/// leading `/`, no query. `"/pkg.Service/Method"` → `("pkg.Service", "Method")`.
pub fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    if rest.contains('?') {
        return None;
    }
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// `true` for `application/grpc`, `application/grpc+<codec>` and those followed by `;params`
/// (type and subtype compared case-insensitively). `application/grpc-web` is not gRPC.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    if value.len() < PREFIX.len() || !value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    matches!(value.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// Decodes the 5-byte message header at the start of `buf`.
pub fn message_header(buf: &[u8]) -> Result<Status<MessageHeader>, GrpcError> {
    let Some(head) = buf.first_chunk::<MESSAGE_HEADER_LEN>() else {
        return Ok(Status::NeedMore);
    };
    let compressed = match head[0] {
        0 => false,
        1 => true,
        flag => return Err(GrpcError::BadCompressedFlag(flag)),
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_MESSAGE_LEN {
        return Err(GrpcError::MessageTooLarge(len));
    }
    Ok(Status::Complete(
        MessageHeader { compressed, len },
        MESSAGE_HEADER_LEN,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("/pkg.Service/Method", Some(("pkg.Service", "Method"))),
            ("/Service/M", Some(("Service", "M"))),
            (
                "/grpc.health.v1.Health/Check",
                Some(("grpc.health.v1.Health", "Check")),
            ),
            ("pkg.Service/Method", None),
            ("/pkg.Service", None),
            ("/pkg.Service/", None),
            ("//Method", None),
            ("/a/b/c", None),
            ("/a/b?x=1", None),
            ("/", None),
            ("", None),
        ];
        for &(path, want) in cases {
            assert_eq!(parse_path(path), want, "parse_path({path:?})");
        }
    }

    #[test]
    fn content_types() {
        let cases: &[(&[u8], bool)] = &[
            (b"application/grpc", true),
            (b"application/grpc+proto", true),
            (b"application/grpc+json", true),
            (b"application/grpc;charset=utf-8", true),
            (b"Application/GRPC", true),
            (b"application/grpc-web", false),
            (b"application/grpc-web+proto", false),
            (b"application/grpcx", false),
            (b"application/json", false),
            (b"application/grp", false),
            (b"", false),
        ];
        for &(value, want) in cases {
            assert_eq!(
                is_grpc_content_type(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn message_headers() {
        type Want = Result<Status<MessageHeader>, GrpcError>;
        let cases: &[(&[u8], Want)] = &[
            (b"", Ok(Status::NeedMore)),
            (b"\0\0\0\0", Ok(Status::NeedMore)),
            (
                b"\0\0\0\0\x05hello",
                Ok(Status::Complete(
                    MessageHeader {
                        compressed: false,
                        len: 5,
                    },
                    5,
                )),
            ),
            (
                b"\x01\0\x40\0\0",
                Ok(Status::Complete(
                    MessageHeader {
                        compressed: true,
                        len: MAX_MESSAGE_LEN,
                    },
                    5,
                )),
            ),
            (b"\x02\0\0\0\0", Err(GrpcError::BadCompressedFlag(2))),
            (
                b"\0\0\x40\0\x01",
                Err(GrpcError::MessageTooLarge(MAX_MESSAGE_LEN + 1)),
            ),
            (
                b"\0\xff\xff\xff\xff",
                Err(GrpcError::MessageTooLarge(u32::MAX)),
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(&message_header(buf), want, "{buf:?}");
        }
    }
}
