//! Connection strings as a message or a log may show them.
//!
//! A database or Redis URL can carry its credential in more than one
//! place: the password of `user:password@`, and query parameters
//! (`postgres://u@h/db?password=...`, `sslpassword=`); a libpq keyword
//! string (`host=h password=...`) carries it as a word. [`redact_url`]
//! hides every one of them and keeps the rest, so an operator still sees
//! which server and database a message is about.

/// What stands where a credential was.
const HIDDEN: &str = "REDACTED";

/// Names (of query parameters and keyword words) whose values are
/// credentials, compared without case.
const CREDENTIAL_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "sslkey",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "auth",
];

fn is_credential(key: &str) -> bool {
    CREDENTIAL_KEYS
        .iter()
        .any(|name| key.trim().eq_ignore_ascii_case(name))
}

/// `text` (a URL or a libpq keyword string) with every credential in it
/// replaced by `REDACTED`: the password of its user info, and the value
/// of every credential-bearing query parameter or keyword (`password`,
/// `sslpassword`, `token`, ...). Text that is neither is returned with
/// anything between `://` and the last `@`, and everything after `?`,
/// hidden. Text with no credential is returned as given.
///
/// ```
/// use tokengate_store::redact_url;
///
/// assert_eq!(
///     redact_url("postgres://app:hunter2@db:5432/tokens?password=x&sslmode=require"),
///     "postgres://app:REDACTED@db:5432/tokens?password=REDACTED&sslmode=require"
/// );
/// assert_eq!(redact_url("host=db password='a b' user=app"), "host=db password=REDACTED user=app");
/// assert_eq!(redact_url("redis://:s3cret@127.0.0.1:6379/0"), "redis://:REDACTED@127.0.0.1:6379/0");
/// ```
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) if !url.cannot_be_a_base() => {
            let holds_credential = url.password().is_some()
                || url.fragment().is_some()
                || url.query_pairs().any(|(key, _)| is_credential(&key));
            if holds_credential {
                redact_parsed(url)
            } else {
                // As given, not as the parser normalises it.
                text.to_owned()
            }
        }
        _ if text.contains("://") => redact_unparsed(text),
        _ => redact_keywords(text),
    }
}

fn redact_parsed(mut url: url::Url) -> String {
    if url.password().is_some() {
        // Only fails for URLs that cannot have one, which this has.
        let _ = url.set_password(Some(HIDDEN));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_credential(&key) {
                    HIDDEN.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.set_fragment(None);
    url.into()
}

/// A URL the parser refused: the user info and the query are hidden whole.
fn redact_unparsed(text: &str) -> String {
    let without_query = text.split(['?', '#']).next().unwrap_or_default();
    let shown = match (without_query.find("://"), without_query.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://{HIDDEN}{}", &text[..scheme], &without_query[at..])
        }
        _ => without_query.to_owned(),
    };
    if without_query.len() < text.len() {
        format!("{shown}?{HIDDEN}")
    } else {
        shown
    }
}

/// A libpq keyword string: `key=value` words, a value possibly quoted
/// with `'` (and `\'` inside).
fn redact_keywords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let (word, after) = split_word(rest);
        match word.split_once('=') {
            Some((key, _)) if is_credential(key) => {
                out.push_str(key);
                out.push('=');
                out.push_str(HIDDEN);
            }
            _ => out.push_str(word),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The first word of `text` (a quoted value runs to its closing quote),
/// and what follows it.
fn split_word(text: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], &text[i..]),
            _ => {}
        }
    }
    (text, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_of_a_url_is_hidden_and_the_rest_kept() {
        for (given, shown) in [
            ("postgres://u:p@h/db", "postgres://u:REDACTED@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("http://x", "http://x"),
            (
                "postgres://u@h/db?password=hunter2",
                "postgres://u@h/db?password=REDACTED",
            ),
            (
                "postgresql://u@h/db?sslmode=require&PassWord=a%20b&sslpassword=k",
                "postgresql://u@h/db?sslmode=require&PassWord=REDACTED&sslpassword=REDACTED",
            ),
            (
                "redis://:pw@127.0.0.1:6379",
                "redis://:REDACTED@127.0.0.1:6379",
            ),
            (
                "rediss://default:pw@cache:6380/1?token=t",
                "rediss://default:REDACTED@cache:6380/1?token=REDACTED",
            ),
            ("postgres://u:p@h/db#frag", "postgres://u:REDACTED@h/db"),
        ] {
            assert_eq!(redact_url(given), shown, "{given}");
        }
    }

    #[test]
    fn keyword_strings_hide_their_password_words() {
        assert_eq!(
            redact_url("host=h user=u password=hunter2 dbname=d"),
            "host=h user=u password=REDACTED dbname=d"
        );
        assert_eq!(
            redact_url("host=h  password='it\\'s secret'\tport=5432"),
            "host=h  password=REDACTED\tport=5432"
        );
        assert_eq!(redact_url("./tokengate.db"), "./tokengate.db");
    }

    #[test]
    fn a_url_the_parser_refuses_shows_no_user_info_or_query() {
        let shown = redact_url("postgres://u:hunter2@[bad/db?password=x");
        assert!(
            !shown.contains("hunter2") && !shown.contains("x"),
            "{shown}"
        );
        assert!(shown.starts_with("postgres://REDACTED@"), "{shown}");
    }
}
