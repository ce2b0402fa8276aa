//! gRPC paths, content types and message headers: never panic; accepted lengths respect the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parsers::{grpc, Status};

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete(header, consumed)) = grpc::message_header(data) {
        assert_eq!(consumed, grpc::MESSAGE_HEADER_LEN);
        assert!(header.len <= grpc::MAX_MESSAGE_LEN);
    }
    let _ = grpc::is_grpc_content_type(data);
    if let Ok(path) = std::str::from_utf8(data) {
        if let Some((service, method)) = grpc::parse_path(path) {
            assert!(!service.is_empty() && !method.is_empty());
            assert_eq!(format!("/{service}/{method}"), path);
        }
    }
});
