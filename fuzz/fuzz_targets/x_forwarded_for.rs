#![no_main]
//! X-Forwarded-For values: parsing never panics, and every address it
//! yields prints back to itself.

use libfuzzer_sys::fuzz_target;
use tokengate_ipfilter::forwarded::{Hop, parse_x_forwarded_for};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for hop in parse_x_forwarded_for(text) {
        if let Hop::Addr(addr) = hop {
            assert_eq!(
                addr.to_string()
                    .parse::<std::net::IpAddr>()
                    .map(|a| a.to_canonical()),
                Ok(addr)
            );
        }
    }
});
