//! HTTP/1 request heads: never panic; a complete head consumes at most the input and at most
//! MAX_HEAD_LEN bytes, and its path normalises or is refused without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parsers::{http1, path, Status};

fuzz_target!(|data: &[u8]| {
    match http1::parse_request_head(data) {
        Ok(Status::Complete(head, consumed)) => {
            assert!(consumed <= data.len());
            assert!(consumed <= http1::MAX_HEAD_LEN);
            assert!(head.headers().len() <= http1::MAX_HEADERS);
            assert!(!(head.chunked && head.content_length.is_some()));
            let _ = path::normalize(head.path_and_query());
            // The same head followed by more bytes parses to the same length.
            let mut longer = data[..consumed].to_vec();
            longer.extend_from_slice(b"GET");
            match http1::parse_request_head(&longer) {
                Ok(Status::Complete(_, again)) => assert_eq!(again, consumed),
                other => panic!("re-parse differs: {other:?}"),
            }
        }
        Ok(Status::NeedMore) => assert!(data.len() < http1::MAX_HEAD_LEN),
        Err(e) => {
            let status = http1::error_status(&e);
            assert!(status == 400 || status == 431);
        }
    }
});
