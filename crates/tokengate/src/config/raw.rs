//! The policy file as written: every value kept with where it stands in
//! the file, so that a refusal names its line.

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) audience: Spanned<String>,
    #[serde(default)]
    pub(super) scopes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub(super) network: Network,
    #[serde(default)]
    pub(super) rate: Rate,
    #[serde(default)]
    pub(super) headers: Headers,
    #[serde(default)]
    pub(super) credentials: Credentials,
    #[serde(default)]
    pub(super) upstream: Upstream,
    #[serde(default)]
    pub(super) audit: Audit,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    pub(super) path: Spanned<String>,
    #[serde(default)]
    pub(super) methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) public: Option<bool>,
    #[serde(default)]
    pub(super) authenticated: Option<bool>,
    #[serde(default)]
    pub(super) scopes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) any_scopes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) cost: Option<Spanned<i64>>,
}

/// `[network]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Network {
    #[serde(default)]
    pub(super) trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) deny: Vec<Spanned<String>>,
}

/// `[rate]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rate {
    #[serde(default)]
    pub(super) client_ip: Option<Quota>,
    #[serde(default)]
    pub(super) token: Option<Quota>,
    #[serde(default)]
    pub(super) owner: Option<Quota>,
}

/// `{ rate = "100/s", burst = 200 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Quota {
    pub(super) rate: Spanned<String>,
    #[serde(default)]
    pub(super) burst: Option<Spanned<i64>>,
}

/// `[headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Headers {
    #[serde(default)]
    pub(super) rate_limit: Option<bool>,
    #[serde(default)]
    pub(super) token_expires: Option<Spanned<String>>,
}

/// `[credentials]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Credentials {
    #[serde(default)]
    pub(super) query_param: Option<Spanned<String>>,
}

/// `[upstream]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Upstream {
    #[serde(default)]
    pub(super) remove_authorization: Option<bool>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Audit {
    #[serde(default)]
    pub(super) file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) overflow: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) capacity: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) fsync: Option<bool>,
    #[serde(default)]
    pub(super) block_timeout: Option<Spanned<String>>,
}
