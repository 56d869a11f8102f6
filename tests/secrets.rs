//! No secret reaches the `Debug` or `Display` of any type that holds or
//! derives from one.
#![allow(missing_docs, clippy::unwrap_used)]

use tokengate::core::{InvalidReason, KeyId, TokenFormatError};
use tokengate::store::VerifyError;
use tokengate::{
    CacheConfig, CachedStore, Denial, Lifecycle, MemoryStore, Pepper, Principal, TokenHasher,
    TokenSpec,
};

/// Fails if any `window`-long run of `secret` appears in `shown`.
fn assert_hidden(shown: &str, secret: &str, window: usize) {
    for run in secret.as_bytes().windows(window) {
        let run = std::str::from_utf8(run).unwrap();
        assert!(!shown.contains(run), "{run:?} leaked in {shown}");
    }
}

/// The `Display` and `Debug` of every parse error fed `input`.
fn errors_of(input: &str) -> String {
    fn show<T, E: std::fmt::Display + std::fmt::Debug>(result: Result<T, E>) -> String {
        result
            .err()
            .map(|e| format!("{e} {e:?}\n"))
            .unwrap_or_default()
    }
    [
        show(input.parse::<tokengate::TokenId>()),
        show(input.parse::<tokengate::Scope>()),
        // A token is a well-formed audience: no error to show.
        show(input.parse::<tokengate::Audience>()),
        show(tokengate::ipfilter::parse_net(input)),
    ]
    .concat()
}

#[tokio::test]
async fn no_type_shows_the_token_or_the_pepper() {
    let pepper = Pepper::generate(KeyId::new(7));
    let pepper_hex = pepper.expose_hex().to_string();
    let hasher = TokenHasher::new(pepper.clone());
    let cache = CachedStore::new(MemoryStore::new(), CacheConfig::default());
    let lifecycle = Lifecycle::new(cache.clone(), hasher.clone());
    let issued = lifecycle
        .issue(
            TokenSpec::new("ci", "team-a")
                .scopes(["notes:read".parse().unwrap()])
                .audiences(["notes".parse().unwrap()]),
        )
        .await
        .unwrap();
    let secret = issued.token.expose_secret().to_owned();
    let body = &secret[3..35];
    let hash = hasher.hash(&issued.token);
    let principal: Principal = cache.verify(&hash).await.unwrap();
    let parse_error = lifecycle
        .format()
        .parse(&secret[..secret.len() - 1])
        .unwrap_err();
    let verify_error =
        VerifyError::Invalid(InvalidReason::Malformed(TokenFormatError::BadChecksum));

    let layer =
        tokengate::AuthenticateLayer::new(cache.clone(), hasher.clone(), "notes".parse().unwrap());
    let shown = [
        format!("{layer:?}"),
        format!("{:?} {}", issued.token, issued.token),
        format!("{issued:?}"),
        format!("{:?}", issued.record),
        format!("{principal:?}"),
        format!("{lifecycle:?}"),
        format!("{cache:?}"),
        format!("{pepper:?} {hasher:?}"),
        format!("{hash:?} {hash}"),
        format!("{parse_error:?} {parse_error}"),
        format!("{verify_error:?} {verify_error}"),
        format!("{}", Denial::InvalidToken(InvalidReason::Revoked)),
        // A token pasted where other input belongs: the errors never echo it.
        errors_of(&secret),
        errors_of(&format!("Bearer {secret}")),
        format!(
            "{:?}",
            lifecycle
                .issue(TokenSpec::new(secret.clone(), "team-a"))
                .await
                .unwrap_err()
        ),
    ]
    .join("\n");
    assert_hidden(&shown, body, 6);
    assert_hidden(&shown, &pepper_hex, 8);
    // The hash is shown only as a short fingerprint, never whole.
    assert!(!shown.contains(&hash.to_hex()));
    assert!(
        shown.contains(issued.record.id.as_str()),
        "ids are public and shown"
    );
}
