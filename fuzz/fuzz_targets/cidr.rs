#![no_main]
//! CIDR text: parsing never panics, and a parsed network prints back to
//! the same network.

use libfuzzer_sys::fuzz_target;
use tokengate_ipfilter::parse_net;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = parse_net(text) {
        assert_eq!(parse_net(&net.to_string()), Ok(net));
    }
});
