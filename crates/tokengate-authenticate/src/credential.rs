//! Finding the one credential a request carries.
//!
//! Sources: `Authorization: Bearer <token>` (always), an optional custom
//! header such as `X-API-Key`, and an optional query parameter (off by
//! default). More than one credential, from one source or several, is a
//! malformed request: never first-wins.

use std::borrow::Cow;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use tokengate_core::MalformedReason;

/// The query parameter name RFC 6750 defines; refused unless enabled.
pub(crate) const RFC6750_QUERY_PARAM: &str = "access_token";

/// What the query string is allowed to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QuerySource {
    /// Tokens in the query are refused (`access_token=` gets a 400).
    Refused,
    /// Tokens are read from this parameter and redacted from the URI.
    Accepted(Box<str>),
}

/// The request's credential sources, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sources {
    pub(crate) header: Option<HeaderName>,
    pub(crate) query: QuerySource,
    /// Whether `Authorization: DPoP <token>` is read (RFC 9449).
    pub(crate) dpop: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            header: None,
            query: QuerySource::Refused,
            dpop: true,
        }
    }
}

/// The credential found, with where it came from (the query needs
/// redacting before the request goes on).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Credential<'a> {
    pub(crate) token: Cow<'a, str>,
    pub(crate) from_query: bool,
    /// Sent as `Authorization: DPoP`: a proof must come with it.
    pub(crate) dpop: bool,
}

impl Sources {
    /// The single credential of the request: `Ok(None)` when there is none,
    /// `Err` when the request is malformed.
    pub(crate) fn find<'a>(
        &self,
        headers: &'a HeaderMap,
        uri: &'a Uri,
    ) -> Result<Option<Credential<'a>>, MalformedReason> {
        let mut found = None;
        let mut offer = |token: Cow<'a, str>, from_query: bool, dpop: bool| {
            if found.is_some() {
                return Err(MalformedReason::MultipleCredentials);
            }
            found = Some(Credential {
                token,
                from_query,
                dpop,
            });
            Ok(())
        };
        if let Some((token, dpop)) = authorization_token(headers, self.dpop)? {
            offer(Cow::Borrowed(token), false, dpop)?;
        }
        if let Some(name) = &self.header {
            for value in headers.get_all(name) {
                offer(Cow::Borrowed(header_token(value)?), false, false)?;
            }
        }
        for token in self.query_tokens(uri)? {
            offer(token, true, false)?;
        }
        Ok(found)
    }

    fn query_tokens<'a>(&self, uri: &'a Uri) -> Result<Vec<Cow<'a, str>>, MalformedReason> {
        let Some(query) = uri.query() else {
            return Ok(Vec::new());
        };
        let name = match &self.query {
            QuerySource::Accepted(name) => &**name,
            QuerySource::Refused => {
                return if form_urlencoded::parse(query.as_bytes())
                    .any(|(k, _)| k == RFC6750_QUERY_PARAM)
                {
                    Err(MalformedReason::QueryTokenNotAllowed)
                } else {
                    Ok(Vec::new())
                };
            }
        };
        Ok(form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect())
    }
}

/// The token of the `Authorization: Bearer` (or, with `dpop`, `DPoP`)
/// header, if any, and whether it was `DPoP`. Several `Authorization`
/// headers are malformed whatever their schemes; a header of another
/// scheme (`Basic …`) is not a credential of ours.
fn authorization_token(
    headers: &HeaderMap,
    dpop: bool,
) -> Result<Option<(&str, bool)>, MalformedReason> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(MalformedReason::MultipleCredentials);
    }
    if let Some(token) = parse_authorization(value)? {
        return Ok(Some((token, false)));
    }
    if dpop && let Some(token) = parse_scheme(value, "dpop")? {
        return Ok(Some((token, true)));
    }
    Ok(None)
}

/// Parses one `Authorization` value: `Bearer <token>` with exactly one
/// space and nothing after the token. The scheme name is case-insensitive.
pub(crate) fn parse_authorization(value: &HeaderValue) -> Result<Option<&str>, MalformedReason> {
    parse_scheme(value, "bearer")
}

/// Parses one `Authorization` value of `scheme` (lowercase), as
/// [`parse_authorization`] does `Bearer`.
fn parse_scheme<'a>(
    value: &'a HeaderValue,
    scheme_name: &str,
) -> Result<Option<&'a str>, MalformedReason> {
    let text = value
        .to_str()
        .map_err(|_| MalformedReason::BadAuthorizationHeader)?;
    // Byte scans: the value is visible ASCII (or tab) once `to_str` passed.
    let bytes = text.as_bytes();
    let scheme_end = bytes
        .iter()
        .position(|&b| is_blank(b))
        .unwrap_or(bytes.len());
    let (scheme, rest) = text.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(scheme_name) {
        return Ok(None);
    }
    let token = rest
        .strip_prefix(' ')
        .ok_or(MalformedReason::BadAuthorizationHeader)?;
    if token.is_empty() || has_blank(token) {
        return Err(MalformedReason::BadAuthorizationHeader);
    }
    Ok(Some(token))
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

fn has_blank(text: &str) -> bool {
    text.bytes().any(is_blank)
}

/// A custom header carries the bare token.
fn header_token(value: &HeaderValue) -> Result<&str, MalformedReason> {
    match value.to_str() {
        Ok(text) if !text.is_empty() && !has_blank(text) => Ok(text),
        _ => Err(MalformedReason::BadAuthorizationHeader),
    }
}

/// The URI with the value of every `name` parameter replaced by
/// `REDACTED`, other parameters byte for byte as they were.
pub(crate) fn redact_query(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let redacted: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let decoded = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k);
            if decoded.as_deref() == Some(name) {
                Cow::Owned(format!("{key}=REDACTED"))
            } else {
                Cow::Borrowed(pair)
            }
        })
        .collect();
    let path_and_query = format!("{}?{}", uri.path(), redacted.join("&"));
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn find(
        sources: &Sources,
        pairs: &[(&str, &str)],
        uri: &str,
    ) -> Result<Option<String>, MalformedReason> {
        let headers = headers(pairs);
        let uri: Uri = uri.parse().unwrap();
        sources
            .find(&headers, &uri)
            .map(|c| c.map(|c| c.token.into_owned()))
    }

    fn with_header_and_query() -> Sources {
        Sources {
            header: Some(HeaderName::from_static("x-api-key")),
            query: QuerySource::Accepted("access_token".into()),
            dpop: true,
        }
    }

    #[test]
    fn the_dpop_scheme_is_read_when_enabled_and_is_no_credential_otherwise() {
        let headers = headers(&[("authorization", "DPoP tg_abc")]);
        let uri: Uri = "/".parse().unwrap();
        let found = Sources::default().find(&headers, &uri).unwrap().unwrap();
        assert_eq!((&*found.token, found.dpop), ("tg_abc", true));
        let off = Sources {
            dpop: false,
            ..Sources::default()
        };
        assert_eq!(off.find(&headers, &uri), Ok(None));
        let bearer_headers = self::headers(&[("authorization", "Bearer tg_abc")]);
        let bearer = Sources::default()
            .find(&bearer_headers, &uri)
            .unwrap()
            .unwrap();
        assert!(!bearer.dpop);
        assert_eq!(
            find(
                &Sources::default(),
                &[("authorization", "dpop  tg_abc")],
                "/"
            ),
            Err(MalformedReason::BadAuthorizationHeader)
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let s = Sources::default();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let value = format!("{scheme} tg_abc");
            assert_eq!(
                find(&s, &[("authorization", &value)], "/"),
                Ok(Some("tg_abc".into()))
            );
        }
    }

    #[test]
    fn malformed_bearer_values_are_400() {
        let s = Sources::default();
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer  tg_abc",
            "Bearer\ttg_abc",
            "Bearer tg_abc junk",
            "Bearer tg_abc ",
            "Bearer tg\tabc",
        ] {
            assert_eq!(
                find(&s, &[("authorization", bad)], "/"),
                Err(MalformedReason::BadAuthorizationHeader),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_schemes_are_no_credential() {
        let s = Sources::default();
        for other in [
            "Basic dXNlcjpwYXNz",
            "Token tg_abc",
            "Bearerx tg_abc",
            "Digest a=b",
        ] {
            assert_eq!(
                find(&s, &[("authorization", other)], "/"),
                Ok(None),
                "{other}"
            );
        }
    }

    #[test]
    fn non_text_authorization_is_400() {
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer tg_\xff").unwrap(),
        );
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            Sources::default().find(&map, &uri),
            Err(MalformedReason::BadAuthorizationHeader)
        );
    }

    #[test]
    fn two_credentials_are_never_first_wins() {
        let s = with_header_and_query();
        let two_auth = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert_eq!(
            find(&s, &two_auth, "/"),
            Err(MalformedReason::MultipleCredentials)
        );
        let same_twice = [("authorization", "Bearer a"), ("authorization", "Bearer a")];
        assert_eq!(
            find(&s, &same_twice, "/"),
            Err(MalformedReason::MultipleCredentials)
        );
        let basic_and_bearer = [("authorization", "Basic x"), ("authorization", "Bearer a")];
        assert_eq!(
            find(&s, &basic_and_bearer, "/"),
            Err(MalformedReason::MultipleCredentials)
        );
        let header_and_bearer = [("authorization", "Bearer a"), ("x-api-key", "b")];
        assert_eq!(
            find(&s, &header_and_bearer, "/"),
            Err(MalformedReason::MultipleCredentials)
        );
        let two_keys = [("x-api-key", "a"), ("x-api-key", "b")];
        assert_eq!(
            find(&s, &two_keys, "/"),
            Err(MalformedReason::MultipleCredentials)
        );
        assert_eq!(
            find(&s, &[("authorization", "Bearer a")], "/x?access_token=b"),
            Err(MalformedReason::MultipleCredentials)
        );
        assert_eq!(
            find(&s, &[], "/x?access_token=a&access_token=b"),
            Err(MalformedReason::MultipleCredentials)
        );
    }

    #[test]
    fn custom_header_and_query_are_read_when_configured() {
        let s = with_header_and_query();
        assert_eq!(
            find(&s, &[("x-api-key", "tg_k")], "/"),
            Ok(Some("tg_k".into()))
        );
        assert_eq!(
            find(&s, &[], "/x?a=1&access_token=tg_q"),
            Ok(Some("tg_q".into()))
        );
        assert_eq!(
            find(&s, &[("x-api-key", "")], "/"),
            Err(MalformedReason::BadAuthorizationHeader)
        );
        assert_eq!(
            find(&Sources::default(), &[("x-api-key", "tg_k")], "/"),
            Ok(None)
        );
    }

    #[test]
    fn query_tokens_are_refused_unless_enabled() {
        let s = Sources::default();
        assert_eq!(
            find(&s, &[], "/x?access_token=tg_q"),
            Err(MalformedReason::QueryTokenNotAllowed)
        );
        assert_eq!(
            find(&s, &[], "/x?access%5Ftoken=tg_q"),
            Err(MalformedReason::QueryTokenNotAllowed),
            "percent-encoded names are the same parameter"
        );
        assert_eq!(find(&s, &[], "/x?other=1"), Ok(None));
    }

    #[test]
    fn redaction_replaces_only_the_token_parameter() {
        let uri: Uri = "http://h/p/a?x=%7E1&access_token=tg_secret&y=2"
            .parse()
            .unwrap();
        let redacted = redact_query(&uri, "access_token").unwrap();
        assert_eq!(
            redacted.to_string(),
            "http://h/p/a?x=%7E1&access_token=REDACTED&y=2"
        );
        let origin: Uri = "/p?access%5Ftoken=tg_secret".parse().unwrap();
        assert_eq!(
            redact_query(&origin, "access_token").unwrap().to_string(),
            "/p?access%5Ftoken=REDACTED"
        );
    }

    /// The straightforward reading the one-pass parser must agree with.
    fn reference(value: &HeaderValue) -> Result<Option<&str>, MalformedReason> {
        let text = value
            .to_str()
            .map_err(|_| MalformedReason::BadAuthorizationHeader)?;
        let scheme_end = text.find([' ', '\t']).unwrap_or(text.len());
        let (scheme, rest) = text.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let token = rest
            .strip_prefix(' ')
            .ok_or(MalformedReason::BadAuthorizationHeader)?;
        if token.is_empty() || token.contains([' ', '\t']) {
            return Err(MalformedReason::BadAuthorizationHeader);
        }
        Ok(Some(token))
    }

    proptest! {
        #[test]
        fn the_byte_scanning_parser_agrees_with_the_reference(
            value in prop_oneof![
                "(?i:bearer)[ \t]{0,2}[ -~\t]{0,40}",
                proptest::collection::vec(any::<u8>(), 0..50)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                "[ -~\t\u{80}-\u{ff}]{0,50}",
            ]
        ) {
            let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) else {
                return Ok(());
            };
            prop_assert_eq!(parse_authorization(&v), reference(&v));
        }

        #[test]
        fn any_authorization_value_gets_a_deterministic_answer(value in "[ -~]{0,60}") {
            let v = HeaderValue::from_str(&value).unwrap();
            let first = parse_authorization(&v);
            prop_assert_eq!(first, parse_authorization(&v));
            if let Ok(Some(token)) = first {
                prop_assert!(!token.is_empty() && !token.contains(' '));
                prop_assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer "));
            }
        }
    }
}
