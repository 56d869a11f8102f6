//! Scopes: what a token may do, as validated `resource:action` strings.
//!
//! Matching is exact and case-sensitive: `notes:read` grants `notes:read`
//! and nothing else; `Notes:read`, `notes:read:all` and `notes:reading` are
//! different scopes; an empty [`ScopeSet`] grants nothing.
//!
//! Implications are never accidental. They come only from [`ScopeRules`]:
//! [`ScopeRules::exact`] (the default) has none; [`ScopeRules::standard`]
//! lets `resource:*` grant every action on `resource` and adds
//! `admin ⇒ write ⇒ read`; and rules can be built up one by one.
//!
//! ```
//! use tokengate_core::{Scope, ScopeRules, ScopeSet};
//!
//! let held: ScopeSet = "notes:write files:*".parse()?;
//! let read: Scope = "notes:read".parse()?;
//! assert!(!held.grants(&read, &ScopeRules::exact()));
//! assert!(held.grants(&read, &ScopeRules::standard()));
//! assert!(held.grants(&"files:delete".parse()?, &ScopeRules::standard()));
//! assert!(ScopeSet::empty().missing(&[read.clone()], &ScopeRules::standard()) == vec![read]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::echo::Echo;

/// One permission: `resource:action`.
///
/// `resource` is 1 to 64 ASCII letters, digits, `_`, `-`, `.` or `/`;
/// `action` is 1 to 32 ASCII letters, digits, `_` or `-`, or the single
/// character `*`. Nothing else parses: no whitespace, no second `:`, no
/// empty part.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    text: Arc<str>,
    colon: usize,
}

impl Scope {
    const MAX_RESOURCE: usize = 64;
    const MAX_ACTION: usize = 32;

    /// The resource part (before `:`).
    pub fn resource(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The action part (after `:`).
    pub fn action(&self) -> &str {
        &self.text[self.colon + 1..]
    }

    /// The whole scope text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `resource:action` from its parts, validated.
    pub fn from_parts(resource: &str, action: &str) -> Result<Self, ScopeError> {
        format!("{resource}:{action}").parse()
    }
}

fn valid_resource(part: &str) -> bool {
    (1..=Scope::MAX_RESOURCE).contains(&part.len())
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

fn valid_action(part: &str) -> bool {
    part == "*"
        || ((1..=Scope::MAX_ACTION).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || ScopeError {
            input: Echo::new(text, 100),
        };
        let (resource, action) = text.split_once(':').ok_or_else(invalid)?;
        if !valid_resource(resource) || !valid_action(action) {
            return Err(invalid());
        }
        Ok(Self {
            text: text.into(),
            colon: resource.len(),
        })
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A string that is not a valid scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input} is not a scope: expected 'resource:action' (resource: letters, digits, '_-./'; action: letters, digits, '_-' or '*')"
)]
pub struct ScopeError {
    input: Echo,
}

/// The scopes a token holds: a sorted set without duplicates.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

impl ScopeSet {
    /// The set that grants nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether the set holds no scope.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// How many scopes the set holds.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether the set holds exactly `scope` (no implications).
    pub fn contains(&self, scope: &Scope) -> bool {
        self.scopes.binary_search(scope).is_ok()
    }

    /// The scope of this set closest to `scope` in spelling (case,
    /// transposed or mistyped letters), if one is close enough to be a
    /// likely typo: for "did you mean" hints, never for granting.
    pub fn nearest(&self, scope: &Scope) -> Option<&Scope> {
        let wanted = scope.as_str().to_ascii_lowercase();
        let limit = (wanted.len() / 8).max(2);
        self.scopes
            .iter()
            .map(|s| {
                let d = strsim::damerau_levenshtein(&wanted, &s.as_str().to_ascii_lowercase());
                (d, s)
            })
            .filter(|&(d, _)| d <= limit)
            .min_by_key(|&(d, _)| d)
            .map(|(_, s)| s)
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    /// Whether the set grants `required` under `rules`.
    pub fn grants(&self, required: &Scope, rules: &ScopeRules) -> bool {
        self.contains(required) || rules.implied(self, required)
    }

    /// The scopes of `required` that this set does not grant (empty: all granted).
    pub fn missing(&self, required: &[Scope], rules: &ScopeRules) -> Vec<Scope> {
        required
            .iter()
            .filter(|scope| !self.grants(scope, rules))
            .cloned()
            .collect()
    }

    /// Whether any scope of this set has the given resource and action.
    fn holds(&self, resource: &str, action: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s.resource() == resource && s.action() == action)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = iter.into_iter().collect();
        scopes.sort();
        scopes.dedup();
        Self { scopes }
    }
}

impl FromStr for ScopeSet {
    type Err = ScopeError;

    /// Parses scopes separated by ASCII whitespace (the OAuth `scope` form).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split_ascii_whitespace().map(str::parse).collect()
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.scopes.iter().map(Scope::as_str))
            .finish()
    }
}

impl fmt::Display for ScopeSet {
    /// Space-separated, as in an RFC 6750 `scope` attribute.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// Which held scopes grant which required ones, beyond exact equality.
///
/// Each rule is stated explicitly; transitive chains (`admin ⇒ write ⇒ read`)
/// are closed when a rule is added, so checking stays a lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRules {
    wildcard: bool,
    /// required action -> held actions that grant it (transitively closed).
    granted_by: BTreeMap<Box<str>, Vec<Box<str>>>,
}

impl ScopeRules {
    /// No implications: a scope grants exactly itself. The default.
    pub fn exact() -> Self {
        Self::default()
    }

    /// `resource:*` grants any action on `resource`, and on the same resource
    /// `admin` grants `write` and `read`, `write` grants `read`.
    pub fn standard() -> Self {
        Self::exact()
            .with_wildcard()
            .action_implies("write", "read")
            .action_implies("admin", "write")
    }

    /// Lets a held `resource:*` grant every action on `resource`.
    pub fn with_wildcard(mut self) -> Self {
        self.wildcard = true;
        self
    }

    /// On the same resource, holding action `held` grants action `granted`
    /// (and whatever `granted` grants).
    pub fn action_implies(mut self, held: &str, granted: &str) -> Self {
        let mut grantors: Vec<Box<str>> = vec![held.into()];
        grantors.extend(self.granted_by.get(held).cloned().unwrap_or_default());
        // Everything that grants `granted` now also grants what `granted` grants.
        let mut targets: Vec<Box<str>> = vec![granted.into()];
        targets.extend(
            self.granted_by
                .iter()
                .filter(|(_, by)| by.iter().any(|a| &**a == granted))
                .map(|(action, _)| action.clone()),
        );
        for target in targets {
            let entry = self.granted_by.entry(target.clone()).or_default();
            for grantor in &grantors {
                if *grantor != target && !entry.contains(grantor) {
                    entry.push(grantor.clone());
                }
            }
        }
        self
    }

    fn implied(&self, held: &ScopeSet, required: &Scope) -> bool {
        let resource = required.resource();
        if self.wildcard && held.holds(resource, "*") {
            return true;
        }
        self.granted_by
            .get(required.action())
            .is_some_and(|grantors| grantors.iter().any(|a| held.holds(resource, a)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scope(text: &str) -> Scope {
        text.parse().unwrap()
    }

    fn set(text: &str) -> ScopeSet {
        text.parse().unwrap()
    }

    #[test]
    fn malformed_scopes_are_refused_and_named() {
        for bad in [
            "",
            ":",
            "notes",
            "notes:",
            ":read",
            "notes:read:all",
            "notes :read",
            "notes: read",
            " notes:read",
            "notes:read ",
            "notes:re*d",
            "*:read",
            "nötes:read",
            "notes\t:read",
            "notes:read\n",
        ] {
            let err = bad.parse::<Scope>().expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(scope("v1/notes:read").resource(), "v1/notes");
        assert_eq!(scope("notes:*").action(), "*");
    }

    #[test]
    fn matching_is_exact_and_case_sensitive() {
        let held = set("notes:read");
        let rules = ScopeRules::standard();
        assert!(held.grants(&scope("notes:read"), &rules));
        for other in [
            "Notes:read",
            "notes:Read",
            "notes:reading",
            "notes:rea",
            "note:read",
            "notes.x:read",
        ] {
            assert!(!held.grants(&scope(other), &rules), "{other}");
        }
    }

    #[test]
    fn empty_set_grants_nothing() {
        let empty = ScopeSet::empty();
        assert!(empty.is_empty());
        assert!(!empty.grants(&scope("notes:read"), &ScopeRules::standard()));
        assert!(ScopeSet::from_str("   ").unwrap().is_empty());
    }

    #[test]
    fn exact_rules_imply_nothing() {
        let held = set("notes:admin notes:*");
        let rules = ScopeRules::exact();
        assert!(!held.grants(&scope("notes:read"), &rules));
        assert!(!held.grants(&scope("notes:write"), &rules));
        assert!(held.grants(&scope("notes:*"), &rules));
    }

    #[test]
    fn standard_rules_chain_admin_write_read_on_the_same_resource_only() {
        let rules = ScopeRules::standard();
        let admin = set("notes:admin");
        assert!(admin.grants(&scope("notes:write"), &rules));
        assert!(admin.grants(&scope("notes:read"), &rules));
        assert!(!admin.grants(&scope("files:read"), &rules));
        let read = set("notes:read");
        assert!(!read.grants(&scope("notes:write"), &rules));
        assert!(!read.grants(&scope("notes:admin"), &rules));
        let write = set("notes:write");
        assert!(!write.grants(&scope("notes:admin"), &rules));
    }

    #[test]
    fn wildcard_action_covers_its_resource_only() {
        let rules = ScopeRules::standard();
        let held = set("files:*");
        assert!(held.grants(&scope("files:delete"), &rules));
        assert!(!held.grants(&scope("notes:read"), &rules));
        assert!(!held.grants(&scope("files/x:read"), &rules));
    }

    #[test]
    fn rules_close_chains_added_in_any_order() {
        let rules = ScopeRules::exact()
            .action_implies("write", "read")
            .action_implies("owner", "admin")
            .action_implies("admin", "write");
        let owner = set("x:owner");
        for action in ["admin", "write", "read"] {
            assert!(
                owner.grants(&Scope::from_parts("x", action).unwrap(), &rules),
                "{action}"
            );
        }
    }

    #[test]
    fn missing_lists_exactly_the_ungranted_scopes() {
        let held = set("notes:read");
        let required = [
            scope("notes:read"),
            scope("notes:write"),
            scope("files:read"),
        ];
        assert_eq!(
            held.missing(&required, &ScopeRules::exact()),
            vec![scope("notes:write"), scope("files:read")]
        );
    }

    #[test]
    fn set_is_sorted_deduplicated_and_displays_space_separated() {
        let s = set("b:read a:write b:read");
        assert_eq!(s.len(), 2);
        assert_eq!(s.to_string(), "a:write b:read");
        assert_eq!(format!("{s:?}"), r#"{"a:write", "b:read"}"#);
    }

    proptest! {
        #[test]
        fn display_round_trips(resource in "[a-zA-Z0-9_./-]{1,64}", action in "[a-zA-Z0-9_-]{1,32}") {
            let s = Scope::from_parts(&resource, &action).unwrap();
            prop_assert_eq!(&s.to_string().parse::<Scope>().unwrap(), &s);
            prop_assert_eq!(s.resource(), resource.as_str());
            prop_assert_eq!(s.action(), action.as_str());
        }

        #[test]
        fn under_exact_rules_grant_means_equal(a in "[a-c]{1,2}:[r-t]{1,2}", b in "[a-c]{1,2}:[r-t]{1,2}") {
            let held: ScopeSet = a.parse().unwrap();
            prop_assert_eq!(held.grants(&scope(&b), &ScopeRules::exact()), a == b);
        }
    }
}
