//! DNS framing, query parsing, refusals and answer extraction: never panic; a refusal echoes
//! the query id and parses as a response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parsers::{dns, Status};

fuzz_target!(|data: &[u8]| {
    if let Ok(Status::Complete(msg, consumed)) = dns::frame_tcp(data) {
        assert_eq!(consumed, msg.len() + dns::TCP_LENGTH_PREFIX);
    }
    if let Ok(query) = dns::parse_query(data) {
        let _ = dns::normalize_name(&query.name);
        for rcode in [dns::DenyRcode::Refused, dns::DenyRcode::NameError] {
            let resp = dns::refused_response(data, rcode).expect("a parsed query can be refused");
            let info = dns::answer_addresses(&resp).expect("our refusal parses");
            assert_eq!(info.id, query.id);
            assert_eq!(info.rcode, rcode.code());
        }
    }
    if let Ok(info) = dns::answer_addresses(data) {
        assert!(info.cnames.len() <= dns::MAX_CNAME_CHAIN);
    }
});
