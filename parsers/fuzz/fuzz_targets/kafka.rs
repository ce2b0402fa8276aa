//! Kafka framing, request parsing and deny responses: never panic or over-allocate; a deny
//! response is a well-formed frame with the request's correlation id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parsers::{kafka, Status};

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete(frame, consumed)) = kafka::frame(data) {
        assert_eq!(consumed, frame.len() + kafka::FRAME_PREFIX_LEN);
    }
    if let Ok(req) = kafka::parse_request(data) {
        assert!(req.header_len <= data.len());
        if let Some(resp) = kafka::deny_response(&req, data) {
            match kafka::frame(&resp) {
                Ok(Status::Complete(body, n)) => {
                    assert_eq!(n, resp.len());
                    assert_eq!(body[..4], req.correlation_id.to_be_bytes());
                }
                other => panic!("deny response is not one frame: {other:?}"),
            }
        }
    }
});
