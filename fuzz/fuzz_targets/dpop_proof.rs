#![no_main]
//! DPoP proofs (RFC 9449) from arbitrary bytes: reading one never panics,
//! and nothing the fuzzer makes passes, for it cannot sign. Half the
//! inputs are taken as they are; the other half are cut in three and each
//! part base64url-encoded, so the header's and claims' JSON and the key
//! inside are reached too. Arbitrary text as a JWK gets a thumbprint or
//! an error, never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use tokengate::authenticate::Dpop;
use tokengate::authenticate::dpop::{DPOP, jwk_thumbprint};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let proof = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut parts = rest.splitn(3, |&b| b == 0xff);
        let (a, b, c) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(a),
            URL_SAFE_NO_PAD.encode(b),
            URL_SAFE_NO_PAD.encode(c)
        )
    };
    let Ok(value) = http::HeaderValue::from_str(&proof) else {
        return;
    };
    let request = http::Request::post("/notes")
        .header("host", "api.test")
        .header(DPOP, value)
        .body(())
        .unwrap();
    let answer = Dpop::new().proof_key(&request, 1_767_225_600_000_000_000);
    assert!(answer.is_err(), "an unsigned input passed: {proof:?}");
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = jwk_thumbprint(text);
    }
});
