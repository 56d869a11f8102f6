#![no_main]
//! `RateLimit-Policy` and `RateLimit` rendering: for any valid policy name
//! and any numbers, the headers parse back to the name and the numbers
//! (quota, window in whole seconds rounded up and at least 1, remaining,
//! reset in whole seconds rounded up).

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokengate::core::RateLimitPolicy;

fn params(text: &str) -> (String, Vec<(String, u64)>) {
    let mut parts = text.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_owned();
    let params = parts
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect();
    (name, params)
}

fuzz_target!(|input: (String, u64, u64, u64, u64)| {
    let (name, quota, window_ms, remaining, reset_ms) = input;
    let Ok(policy) = RateLimitPolicy::new(&name, quota, Duration::from_millis(window_ms)) else {
        return;
    };
    let seconds_up = |ms: u64| ms / 1000 + u64::from(ms % 1000 > 0);
    let header = policy.policy_header();
    let (shown, values) = params(header.to_str().unwrap());
    assert_eq!(shown, name);
    assert_eq!(
        values,
        vec![
            ("q".to_owned(), quota),
            ("w".to_owned(), seconds_up(window_ms).max(1))
        ]
    );
    let state = policy.state_header(remaining, Duration::from_millis(reset_ms));
    let (shown, values) = params(state.to_str().unwrap());
    assert_eq!(shown, name);
    assert_eq!(
        values,
        vec![
            ("r".to_owned(), remaining),
            ("t".to_owned(), seconds_up(reset_ms))
        ]
    );
});
