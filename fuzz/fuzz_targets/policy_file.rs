#![no_main]
//! The policy file's reader over arbitrary text: never a panic, and every
//! refusal names the file and, where it has one, a line within the text.

use libfuzzer_sys::fuzz_target;
use tokengate::config::GateConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match GateConfig::parse(text, "fuzz.toml") {
        Ok(config) => {
            // Every scope a route asks for is one of the policy's.
            for scope in config.policy().scopes().iter() {
                assert!(config.scopes().contains(scope), "{scope:?}");
            }
        }
        Err(error) => {
            let lines = text.lines().count() + 1;
            for problem in error.problems() {
                assert_eq!(problem.file, "fuzz.toml");
                assert!(problem.line <= lines, "line {} of {lines}", problem.line);
            }
            assert!(error.to_string().starts_with("fuzz.toml"));
        }
    }
});
