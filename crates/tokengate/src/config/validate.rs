//! From the file as written to a [`GateConfig`]: every value checked,
//! every problem named by its place.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use http::Method;
use tokengate_audit::Overflow;
use tokengate_core::{Audience, RateQuota, Scope, ScopeSet};
use tokengate_ipfilter::parse_net;
use tokengate_scope::{Requirement, ScopePolicy, ScopePolicyBuilder};
use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::raw;
use super::{AuditSettings, GateConfig, TokenExpires, parse_rate};

/// Reads `text` (the file `name`, whose relative paths start at `folder`).
pub(super) fn parse(text: &str, name: &str, folder: &Path) -> Result<GateConfig, ConfigError> {
    let file = structure(text, name)?;
    let mut at = Locator::new(name, text);

    let audience = match file.audience.get_ref().parse::<Audience>() {
        Ok(audience) => Some(audience),
        Err(e) => {
            at.problem(file.audience.span(), "audience", e.to_string());
            None
        }
    };
    let declared = file
        .scopes
        .as_ref()
        .map(|scopes| parse_scopes(&mut at, "scopes", scopes, None));
    let routes = routes(
        &mut at,
        &file.routes,
        declared.as_ref().and_then(Option::as_ref),
    );
    let trusted_proxies = networks(
        &mut at,
        "network.trusted_proxies",
        &file.network.trusted_proxies,
    );
    let allow = networks(&mut at, "network.allow", &file.network.allow);
    let deny = networks(&mut at, "network.deny", &file.network.deny);
    let client_ip_quota = quota(
        &mut at,
        "rate.client_ip",
        file.rate.client_ip.as_ref(),
        (100, 200),
    );
    let token_quota = quota(&mut at, "rate.token", file.rate.token.as_ref(), (50, 100));
    let owner_quota = file
        .rate
        .owner
        .as_ref()
        .map(|q| quota(&mut at, "rate.owner", Some(q), (0, 0)));
    let token_expires = token_expires(&mut at, file.headers.token_expires.as_ref());
    let query_param = file.credentials.query_param.as_ref().and_then(|name| {
        let text = name.get_ref();
        let fine = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
        if fine {
            Some(text.clone())
        } else {
            at.problem(
                name.span(),
                "credentials.query_param",
                format!(
                    "{} is not a query parameter name (letters, digits, - _ . ~)",
                    quoted(text)
                ),
            );
            None
        }
    });
    let audit = audit(&mut at, &file.audit, folder);
    at.finish()?;

    let (policy, used) =
        routes.ok_or_else(|| ConfigError::whole_file(name, "no route".to_owned()))?;
    let scopes = declared.flatten().unwrap_or(used);
    let missing = |what: &str| ConfigError::whole_file(name, format!("{what} was not read"));
    Ok(GateConfig {
        source: name.to_owned(),
        audience: audience.ok_or_else(|| missing("audience"))?,
        scopes,
        policy,
        trusted_proxies,
        allow,
        deny,
        client_ip_quota: client_ip_quota.ok_or_else(|| missing("rate.client_ip"))?,
        token_quota: token_quota.ok_or_else(|| missing("rate.token"))?,
        owner_quota: owner_quota.flatten(),
        rate_headers: file.headers.rate_limit.unwrap_or(true),
        token_expires,
        query_param,
        remove_authorization: file.upstream.remove_authorization.unwrap_or(false),
        audit,
    })
}

/// The file's shape: TOML syntax, known keys, types.
fn structure(text: &str, name: &str) -> Result<raw::File, ConfigError> {
    let mut at = Locator::new(name, text);
    let deserializer = match toml::Deserializer::parse(text) {
        Ok(deserializer) => deserializer,
        Err(e) => {
            at.problem(e.span().unwrap_or(0..0), "", e.message().trim().to_owned());
            return Err(at
                .finish()
                .err()
                .unwrap_or_else(|| ConfigError::new(Vec::new())));
        }
    };
    match serde_path_to_error::deserialize::<_, raw::File>(deserializer) {
        Ok(file) => Ok(file),
        Err(e) => {
            // A value kept with its place is one level deeper to serde.
            let field = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "")
                .replace("$__serde_spanned_private_value.", "");
            let field = if field == "." { String::new() } else { field };
            let inner = e.into_inner();
            at.problem(
                inner.span().unwrap_or(0..0),
                field,
                inner.message().trim().to_owned(),
            );
            Err(at
                .finish()
                .err()
                .unwrap_or_else(|| ConfigError::new(Vec::new())))
        }
    }
}

/// `value` in double quotes, escaped, bounded.
fn quoted(value: &str) -> String {
    tokengate_core::Echo::new(&tokengate_core::escape_for_display(value), 80).to_string()
}

/// Scopes at `field`; with `declared`, each must be one of them.
fn parse_scopes(
    at: &mut Locator<'_>,
    field: &str,
    scopes: &[Spanned<String>],
    declared: Option<&ScopeSet>,
) -> Option<ScopeSet> {
    let mut parsed = Vec::new();
    let mut fine = true;
    for (i, scope) in scopes.iter().enumerate() {
        let here = format!("{field}[{i}]");
        match scope.get_ref().parse::<Scope>() {
            Ok(s) => {
                if let Some(known) = declared
                    && !known.contains(&s)
                {
                    let hint = known
                        .nearest(&s)
                        .map(|n| format!("; did you mean \"{}\"?", n.as_str()))
                        .unwrap_or_else(|| " (add it to `scopes` if it is meant)".to_owned());
                    let value = quoted(scope.get_ref());
                    at.problem(
                        scope.span(),
                        here,
                        format!("{value} is not a scope of this policy{hint}"),
                    );
                    fine = false;
                }
                parsed.push(s);
            }
            Err(e) => {
                at.problem(scope.span(), here, e.to_string());
                fine = false;
            }
        }
    }
    fine.then(|| parsed.into_iter().collect())
}

/// The routes as a policy, and the scopes they name.
fn routes(
    at: &mut Locator<'_>,
    routes: &[Spanned<raw::Route>],
    declared: Option<&ScopeSet>,
) -> Option<(ScopePolicy, ScopeSet)> {
    if routes.is_empty() {
        at.problem(
            0..0,
            "routes",
            "no route: declare at least one [[routes]] (the Gate denies every other)".to_owned(),
        );
        return None;
    }
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut used: Vec<Scope> = Vec::new();
    let mut fine = true;
    for (i, route) in routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        let r = route.get_ref();
        let path = r.path.get_ref();
        if !path.starts_with('/') {
            at.problem(
                r.path.span(),
                format!("{field}.path"),
                format!("{} must start with /", quoted(path)),
            );
            fine = false;
        }
        let methods = methods(at, &field, r.methods.as_deref());
        let requirement = requirement(at, &field, route, declared);
        let cost = match &r.cost {
            None => 1,
            Some(cost) => match u32::try_from(*cost.get_ref()) {
                Ok(value) if value <= MAX_COST => value,
                _ => {
                    at.problem(
                        cost.span(),
                        format!("{field}.cost"),
                        format!(
                            "{} must be a whole number from 0 to {MAX_COST}",
                            cost.get_ref()
                        ),
                    );
                    fine = false;
                    1
                }
            },
        };
        if let Some(requirement) = &requirement {
            used.extend(requirement.scopes().iter().cloned());
        }
        match (methods, requirement) {
            (Some(methods), Some(requirement)) if fine => {
                entries.push((methods, path, requirement, cost));
                // Each route added to those before it: the first that
                // cannot join them is the one named.
                if let Err(e) = policy(&entries) {
                    at.problem(r.path.span(), format!("{field}.path"), e.to_string());
                    fine = false;
                }
            }
            _ => fine = false,
        }
    }
    if !fine {
        return None;
    }
    let policy = policy(&entries).ok()?;
    Some((policy, used.into_iter().collect()))
}

/// The most a route may cost: more than any burst a quota would give.
const MAX_COST: u32 = 1_000_000;

/// A route as the policy takes it: methods (none: every other), path,
/// requirement, cost.
type Entry<'a> = (Vec<Method>, &'a str, Requirement, u32);

fn policy(entries: &[Entry<'_>]) -> Result<ScopePolicy, tokengate_scope::PolicyError> {
    let mut builder = ScopePolicyBuilder::default();
    for (methods, path, requirement, cost) in entries {
        builder = if methods.is_empty() {
            builder.any_method(path, requirement.clone())
        } else {
            builder.route(methods.iter().cloned(), path, requirement.clone())
        };
        if *cost != 1 {
            builder = builder.cost(methods.iter().cloned(), path, *cost);
        }
    }
    builder.build()
}

/// A route's methods: none given means every method not declared otherwise.
fn methods(
    at: &mut Locator<'_>,
    field: &str,
    methods: Option<&[Spanned<String>]>,
) -> Option<Vec<Method>> {
    let Some(methods) = methods else {
        return Some(Vec::new());
    };
    let mut parsed = Vec::new();
    let mut fine = true;
    for (i, m) in methods.iter().enumerate() {
        let text = m.get_ref();
        let standard = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        ];
        if standard.contains(&text.as_str()) {
            if let Ok(method) = text.parse::<Method>() {
                parsed.push(method);
            }
        } else {
            let hint = standard
                .iter()
                .find(|s| s.eq_ignore_ascii_case(text))
                .map(|s| format!("; did you mean \"{s}\"?"))
                .unwrap_or_default();
            at.problem(
                m.span(),
                format!("{field}.methods[{i}]"),
                format!("{} is not an HTTP method{hint}", quoted(text)),
            );
            fine = false;
        }
    }
    if methods.is_empty() {
        at.problem(
            0..0,
            format!("{field}.methods"),
            "is empty: leave it out for every method".to_owned(),
        );
        fine = false;
    }
    fine.then_some(parsed)
}

/// A route's one requirement: `public`, `authenticated`, `scopes` or `any_scopes`.
fn requirement(
    at: &mut Locator<'_>,
    field: &str,
    route: &Spanned<raw::Route>,
    declared: Option<&ScopeSet>,
) -> Option<Requirement> {
    let r = route.get_ref();
    let given = [
        r.public == Some(true),
        r.authenticated == Some(true),
        r.scopes.is_some(),
        r.any_scopes.is_some(),
    ];
    let count = given.iter().filter(|g| **g).count();
    if count != 1 {
        let what = if count == 0 {
            "says nothing of who may call"
        } else {
            "says more than one thing of who may call"
        };
        at.problem(
            route.span(),
            field.to_owned(),
            format!("{what}: give exactly one of `public = true`, `authenticated = true`, `scopes = [...]` (all of them) or `any_scopes = [...]` (one is enough)"),
        );
        return None;
    }
    if r.public == Some(true) {
        return Some(Requirement::Public);
    }
    if r.authenticated == Some(true) {
        return Some(Requirement::Authenticated);
    }
    let (name, list, all) = match (&r.scopes, &r.any_scopes) {
        (Some(list), _) => ("scopes", list, true),
        (None, Some(list)) => ("any_scopes", list, false),
        (None, None) => return None,
    };
    let here = format!("{field}.{name}");
    if list.is_empty() {
        at.problem(
            route.span(),
            here,
            "is empty: say `authenticated = true` if any valid token will do".to_owned(),
        );
        return None;
    }
    let scopes = parse_scopes(at, &here, list, declared)?;
    let scopes: Vec<Scope> = scopes.iter().cloned().collect();
    Some(if all {
        Requirement::All(scopes)
    } else {
        Requirement::Any(scopes)
    })
}

/// CIDR networks at `field`, as written.
fn networks(at: &mut Locator<'_>, field: &str, nets: &[Spanned<String>]) -> Vec<String> {
    nets.iter()
        .enumerate()
        .filter_map(|(i, net)| match parse_net(net.get_ref()) {
            Ok(_) => Some(net.get_ref().clone()),
            Err(e) => {
                at.problem(net.span(), format!("{field}[{i}]"), e.to_string());
                None
            }
        })
        .collect()
}

/// A quota table, or `default` (count per second, burst) without one.
fn quota(
    at: &mut Locator<'_>,
    field: &str,
    quota: Option<&raw::Quota>,
    default: (u32, u32),
) -> Option<RateQuota> {
    let (count, period, burst) = match quota {
        None => (default.0, Duration::from_secs(1), Some(default.1)),
        Some(q) => match parse_rate(q.rate.get_ref()) {
            Ok((count, period)) => {
                let burst = match &q.burst {
                    None => Some(count),
                    Some(b) => match u32::try_from(*b.get_ref()) {
                        Ok(b) if b > 0 => Some(b),
                        _ => {
                            at.problem(
                                b.span(),
                                format!("{field}.burst"),
                                format!("{} is not a burst: a whole number from 1", b.get_ref()),
                            );
                            None
                        }
                    },
                };
                (count, period, burst)
            }
            Err(e) => {
                at.problem(q.rate.span(), format!("{field}.rate"), e.to_string());
                return None;
            }
        },
    };
    let span = quota.map_or(0..0, |q| q.rate.span());
    let Some(count) = NonZeroU32::new(count) else {
        at.problem(
            span,
            format!("{field}.rate"),
            "a rate allows at least 1 request".to_owned(),
        );
        return None;
    };
    let burst = NonZeroU32::new(burst?)?;
    match RateQuota::new(count, period, burst) {
        Ok(q) => Some(q),
        Err(e) => {
            at.problem(span, format!("{field}.rate"), e.to_string());
            None
        }
    }
}

/// `never`, `always`, or a window such as `7d`.
fn token_expires(at: &mut Locator<'_>, value: Option<&Spanned<String>>) -> TokenExpires {
    let Some(value) = value else {
        return TokenExpires::Within(tokengate_authenticate::TOKEN_EXPIRES_WITHIN);
    };
    match value.get_ref().as_str() {
        "never" => TokenExpires::Never,
        "always" => TokenExpires::Always,
        text => match humantime::parse_duration(text) {
            Ok(window) => TokenExpires::Within(window),
            Err(_) => {
                at.problem(
                    value.span(),
                    "headers.token_expires",
                    format!(
                        "{} is not \"never\", \"always\" or a window such as \"7d\"",
                        quoted(text)
                    ),
                );
                TokenExpires::Never
            }
        },
    }
}

/// `[audit]`, relative paths under `folder`.
fn audit(at: &mut Locator<'_>, audit: &raw::Audit, folder: &Path) -> AuditSettings {
    let overflow = match audit.overflow.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "block")) => Overflow::Block,
        Some((_, "drop")) => Overflow::Drop,
        Some((o, other)) => {
            at.problem(
                o.span(),
                "audit.overflow",
                format!("{} is not \"block\" or \"drop\"", quoted(other)),
            );
            Overflow::Block
        }
    };
    let capacity = match &audit.capacity {
        None => 8_192,
        Some(c) => match usize::try_from(*c.get_ref()) {
            Ok(n) if (1..=1_048_576).contains(&n) => n,
            _ => {
                at.problem(
                    c.span(),
                    "audit.capacity",
                    format!("{} is not a queue size from 1 to 1048576", c.get_ref()),
                );
                8_192
            }
        },
    };
    let block_timeout = match &audit.block_timeout {
        None => Duration::from_secs(5),
        Some(t) => humantime::parse_duration(t.get_ref()).unwrap_or_else(|_| {
            at.problem(
                t.span(),
                "audit.block_timeout",
                format!("{} is not a duration such as \"5s\"", quoted(t.get_ref())),
            );
            Duration::from_secs(5)
        }),
    };
    let file = audit.file.as_ref().and_then(|f| {
        if f.get_ref().is_empty() {
            at.problem(f.span(), "audit.file", "is empty".to_owned());
            return None;
        }
        Some(folder.join(f.get_ref()))
    });
    AuditSettings {
        file,
        overflow,
        capacity,
        fsync: audit.fsync.unwrap_or(false),
        block_timeout,
    }
}
