#![no_main]
//! RFC 7239 Forwarded values, and the whole walk over arbitrary header
//! bytes: never a panic, always a verdict.

use libfuzzer_sys::fuzz_target;
use tokengate_ipfilter::IpSet;
use tokengate_ipfilter::forwarded::{ForwardedHeader, parse_forwarded, walk};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(!parse_forwarded(text).is_empty());
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let trusted = IpSet::parse(["10.0.0.0/8"]).unwrap();
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-forwarded-for", value.clone());
            headers.insert("forwarded", value.clone());
            let _verdict = walk("10.0.0.1".parse().unwrap(), &trusted, &headers, header);
        }
    }
});
