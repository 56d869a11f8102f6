//! The `htu` comparison (RFC 9449 §4.3 step 9): the request's URL without
//! query and fragment, both sides normalised as RFC 3986 §6.2.2 and
//! §6.2.3 say (scheme and host case, default ports, percent-encoding of
//! unreserved characters and hex case, an empty path as `/`).

use http::Uri;
use http::uri::Scheme;

/// A URL reduced to what `htu` compares: scheme, host, port, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    }
}

impl Target {
    /// `scheme`, `authority` (a host and optional port) and `path` as a
    /// request gives them; `None` when they do not make a URL.
    pub(crate) fn new(scheme: &str, authority: &str, path: &str) -> Option<Self> {
        let scheme = scheme.to_ascii_lowercase();
        let authority: http::uri::Authority = authority.parse().ok()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let port = match authority.port_u16() {
            Some(port) => port,
            None => default_port(&scheme)?,
        };
        Some(Self {
            host: authority.host().to_ascii_lowercase(),
            port,
            path: normalise_path(path),
            scheme,
        })
    }

    /// The target `htu` names; `None` when it is not an absolute http(s)
    /// URL.
    pub(crate) fn parse(htu: &str) -> Option<Self> {
        // The fragment is not part of the target; `Uri` refuses one.
        let htu = htu.split('#').next().unwrap_or_default();
        let uri: Uri = htu.parse().ok()?;
        let scheme = uri.scheme().map(Scheme::as_str)?;
        let authority = uri.authority()?;
        Self::new(scheme, authority.as_str(), uri.path())
    }
}

/// Percent-encodings of unreserved characters decoded, the others' hex
/// digits upper-cased, an empty path as `/`.
fn normalise_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%'
            && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(hi), hex(lo))
        {
            let decoded = h * 16 + l;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(char::from(hi.to_ascii_uppercase()));
                out.push(char::from(lo.to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        out.push(char::from(byte));
        i += 1;
    }
    out
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn equivalent_urls_compare_equal() {
        let base = target("https://api.example.com/notes/1");
        for same in [
            "https://api.example.com/notes/1",
            "HTTPS://API.Example.COM/notes/1",
            "https://api.example.com:443/notes/1",
            "https://api.example.com/notes/1?page=2",
            "https://api.example.com/notes/1#frag",
            "https://api.example.com/%6Eotes/1",
        ] {
            assert_eq!(Target::parse(same), Some(base.clone()), "{same}");
        }
        assert_eq!(target("http://h"), target("http://h:80/"));
        assert_eq!(target("https://h/a%2fb"), target("https://h/a%2Fb"));
        assert_eq!(
            Target::new("https", "api.example.com", "/notes/1"),
            Some(base)
        );
    }

    #[test]
    fn different_urls_do_not() {
        let base = target("https://api.example.com/notes/1");
        for other in [
            "http://api.example.com/notes/1",
            "https://api.example.com:8443/notes/1",
            "https://evil.example.com/notes/1",
            "https://api.example.com/notes/2",
            "https://api.example.com/Notes/1",
            "https://api.example.com/notes/1/",
            "https://user@api.example.com/notes/1",
        ] {
            assert_ne!(Target::parse(other), Some(base.clone()), "{other}");
        }
        for bad in [
            "",
            "/notes/1",
            "api.example.com/notes",
            "ftp://h/x",
            "https://",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }
}
