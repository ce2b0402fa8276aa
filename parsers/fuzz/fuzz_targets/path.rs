//! Path normalisation: never panics, is idempotent, and its output has no dot-segments or
//! doubled slashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parsers::path;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = path::normalize(input) {
        let again = path::normalize(&normal).expect("normal form must stay valid");
        assert_eq!(again, normal, "not idempotent");
        if normal != "*" {
            let p = normal.split('?').next().unwrap_or_default();
            assert!(p.starts_with('/'));
            assert!(!p.contains("//"));
            assert!(!p.split('/').any(|seg| seg == "." || seg == ".."));
        }
    }
});
