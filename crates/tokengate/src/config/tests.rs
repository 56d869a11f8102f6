use std::path::Path;
use std::time::Duration;

use http::Method;
use tokengate_audit::Overflow;
use tokengate_scope::{Requirement, ScopeLookup};

use super::{GateConfig, TokenExpires};

const NOTES: &str = include_str!("../../../../examples/sidecar/notes.toml");

fn refused(text: &str) -> String {
    match GateConfig::parse(text, "p.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "audience = \"notes\"\nscopes = [\"notes:read\", \"notes:write\"]\n";

#[test]
fn the_shipped_notes_policy_reads_as_axum_notes_declares_it() {
    let config = GateConfig::parse(NOTES, "notes.toml").unwrap();
    assert_eq!(config.audience().as_str(), "notes");
    let policy = config.policy();
    let need = |m: Method, p: &str| policy.requirement(&m, p).cloned();
    assert_eq!(need(Method::GET, "/healthz"), Some(Requirement::Public));
    assert_eq!(need(Method::POST, "/healthz"), None);
    assert_eq!(
        need(Method::GET, "/notes"),
        Some(Requirement::all(["notes:read"]).unwrap())
    );
    assert_eq!(
        need(Method::HEAD, "/notes"),
        Some(Requirement::all(["notes:read"]).unwrap())
    );
    assert_eq!(
        need(Method::POST, "/notes"),
        Some(Requirement::all(["notes:write"]).unwrap())
    );
    assert_eq!(
        need(Method::DELETE, "/notes/7"),
        Some(Requirement::all(["notes:admin"]).unwrap())
    );
    assert_eq!(
        need(Method::GET, "/whoami"),
        Some(Requirement::Authenticated)
    );
    assert_eq!(
        need(Method::GET, "/notes/export"),
        Some(Requirement::all(["notes:read"]).unwrap())
    );
    assert_eq!(policy.cost(&Method::GET, "/notes/export"), 10);
    assert_eq!(policy.cost(&Method::HEAD, "/notes/export"), 10);
    assert_eq!(policy.cost(&Method::GET, "/notes"), 1);
    // Deny by default: what is not declared has no requirement to meet.
    assert_eq!(need(Method::PUT, "/notes"), None);
    assert_eq!(need(Method::GET, "/other"), None);
    assert_eq!(config.scopes().len(), 3);
    assert!(!config.remove_authorization());
    assert_eq!(config.audit().overflow, Overflow::Block);
    assert_eq!(
        config.token_expires,
        TokenExpires::Within(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(config.trusted_proxies, ["127.0.0.1/32", "::1/128"]);
}

#[test]
fn a_mistyped_scope_is_named_by_line_field_and_nearest_scope() {
    let text =
        format!("{HEAD}\n[[routes]]\npath = \"/a\"\nscopes = [\"notes:read\", \"notes:raed\"]\n");
    assert_eq!(
        refused(&text),
        "p.toml:6:25: routes[0].scopes[1]: \"notes:raed\" is not a scope of this policy; did you mean \"notes:read\"?"
    );
}

#[test]
fn a_route_cost_is_a_whole_number_in_range_named_where_it_is_not() {
    let route = |cost: &str| {
        format!("{HEAD}[[routes]]\npath = \"/a\"\nscopes = [\"notes:read\"]\ncost = {cost}\n")
    };
    assert_eq!(
        refused(&route("-1")),
        "p.toml:6:8: routes[0].cost: -1 must be a whole number from 0 to 1000000"
    );
    assert!(refused(&route("2000000")).contains("routes[0].cost: 2000000 must be"));
    assert!(refused(&route("\"10\"")).contains("cost"));
    let free = GateConfig::parse(&route("0"), "p.toml").unwrap();
    assert_eq!(
        free.policy().cost(&Method::POST, "/a"),
        0,
        "no methods: every method"
    );
    assert!(free.policy().has_costs());
}

#[test]
fn a_scope_with_no_near_neighbour_says_to_declare_it() {
    let text = format!("{HEAD}[[routes]]\npath = \"/a\"\nany_scopes = [\"billing:read\"]\n");
    let error = refused(&text);
    assert!(error.starts_with("p.toml:5:15: routes[0].any_scopes[0]: \"billing:read\" is not a scope of this policy (add it to `scopes`"), "{error}");
}

#[test]
fn without_a_catalogue_the_routes_scopes_are_the_policys() {
    let text = "audience = \"a\"\n[[routes]]\npath = \"/x\"\nscopes = [\"x:read\", \"x:write\"]\n";
    let config = GateConfig::parse(text, "p.toml").unwrap();
    let names: Vec<_> = config
        .scopes()
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(names, ["x:read", "x:write"]);
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = "audience = \"no tes\"\n[[routes]]\npath = \"x\"\nmethods = [\"get\"]\npublic = true\n[network]\ntrusted_proxies = [\"10.0.0.0/33\"]\n[rate]\ntoken = { rate = \"5/week\" }\n[headers]\ntoken_expires = \"soon\"\n[audit]\noverflow = \"lose\"\n";
    let error = refused(text);
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines.len(), 7, "{error}");
    assert!(
        lines[0].starts_with("p.toml:1:12: audience: \"no tes\" is not an audience: expected"),
        "{error}"
    );
    assert_eq!(
        lines[1],
        "p.toml:3:8: routes[0].path: \"x\" must start with /"
    );
    assert_eq!(
        lines[2],
        "p.toml:4:12: routes[0].methods[0]: \"get\" is not an HTTP method; did you mean \"GET\"?"
    );
    assert!(
        lines[3].starts_with("p.toml:7:20: network.trusted_proxies[0]: "),
        "{error}"
    );
    assert!(lines[3].contains("10.0.0.0/33"), "{error}");
    assert_eq!(
        lines[4],
        "p.toml:9:18: rate.token.rate: \"5/week\" is not a rate like 100/min (units: s, min, h, d)"
    );
    assert_eq!(
        lines[5],
        "p.toml:11:17: headers.token_expires: \"soon\" is not \"never\", \"always\" or a window such as \"7d\""
    );
    assert_eq!(
        lines[6],
        "p.toml:13:12: audit.overflow: \"lose\" is not \"block\" or \"drop\""
    );
}

#[test]
fn unknown_keys_and_wrong_types_name_their_path() {
    let error = refused(&format!(
        "{HEAD}[[routes]]\npath = \"/a\"\npublic = true\n\n[[routes]]\npath = \"/b\"\nscoeps = [\"notes:read\"]\n"
    ));
    assert!(
        error.starts_with("p.toml:9:1: routes[1].scoeps: unknown field `scoeps`"),
        "{error}"
    );
    let error = refused(&format!(
        "{HEAD}[[routes]]\npath = \"/a\"\npublic = \"yes\"\n"
    ));
    assert!(
        error.starts_with(
            "p.toml:5:10: routes[0].public: invalid type: string \"yes\", expected a boolean"
        ),
        "{error}"
    );
    let error = refused(&format!(
        "{HEAD}[rate]\ntoken = {{ rate = \"5/s\", burst = 0 }}\n"
    ));
    assert!(
        error.contains("rate.token.burst: 0 is not a burst"),
        "{error}"
    );
}

#[test]
fn a_route_says_exactly_one_thing_of_who_may_call() {
    let error = refused(&format!(
        "{HEAD}[[routes]]\npath = \"/a\"\npublic = true\nscopes = [\"notes:read\"]\n"
    ));
    assert!(
        error.starts_with("p.toml:3:1: routes[0]: says more than one thing of who may call"),
        "{error}"
    );
    let error = refused(&format!("{HEAD}[[routes]]\npath = \"/a\"\n"));
    assert!(
        error.contains("routes[0]: says nothing of who may call"),
        "{error}"
    );
    let error = refused(&format!("{HEAD}[[routes]]\npath = \"/a\"\nscopes = []\n"));
    assert!(
        error.contains("routes[0].scopes: is empty: say `authenticated = true`"),
        "{error}"
    );
}

#[test]
fn a_route_declared_twice_is_named_at_the_second() {
    let route = "[[routes]]\npath = \"/a\"\nmethods = [\"GET\"]\nauthenticated = true\n";
    let error = refused(&format!("{HEAD}{route}{route}"));
    assert_eq!(
        error,
        "p.toml:8:8: routes[1].path: GET on \"/a\" is declared twice"
    );
    let error = refused(&format!(
        "{HEAD}[[routes]]\npath = \"/a/{{id\"\npublic = true\n"
    ));
    assert!(
        error.starts_with("p.toml:4:8: routes[0].path: path pattern \"/a/{id\" cannot be used"),
        "{error}"
    );
}

#[test]
fn syntax_errors_and_missing_files_name_the_file() {
    let error = refused("audience = \"notes\"\n[[routes]\n");
    assert!(error.starts_with("p.toml:2:"), "{error}");
    let error = refused("[[routes]]\npath = \"/a\"\npublic = true\n");
    assert!(error.contains("missing field `audience`"), "{error}");
    let error = refused("audience = \"notes\"\n");
    assert!(error.contains("routes: no route"), "{error}");
    let error = GateConfig::load(Path::new("/nonexistent/tokengate.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("/nonexistent/tokengate.toml: cannot read it: "),
        "{error}"
    );
}

#[test]
fn quotas_headers_credentials_and_audit_are_read() {
    let text = format!(
        "{HEAD}[[routes]]\npath = \"/a\"\nauthenticated = true\n[rate]\nclient_ip = {{ rate = \"10/s\" }}\ntoken = {{ rate = \"600/min\", burst = 20 }}\nowner = {{ rate = \"1000/h\" }}\n[headers]\nrate_limit = false\ntoken_expires = \"always\"\n[credentials]\nquery_param = \"access_token\"\n[upstream]\nremove_authorization = true\n[audit]\nfile = \"logs/audit.jsonl\"\noverflow = \"drop\"\ncapacity = 64\nfsync = true\nblock_timeout = \"250ms\"\n"
    );
    let config = GateConfig::parse(&text, "p.toml").unwrap();
    assert_eq!(config.client_ip_quota.burst().get(), 10);
    assert_eq!(config.token_quota.count().get(), 600);
    assert_eq!(config.token_quota.period(), Duration::from_secs(60));
    assert_eq!(config.token_quota.burst().get(), 20);
    assert_eq!(config.owner_quota.map(|q| q.count().get()), Some(1000));
    assert!(!config.rate_headers);
    assert_eq!(config.token_expires, TokenExpires::Always);
    assert_eq!(config.query_param.as_deref(), Some("access_token"));
    assert!(config.remove_authorization());
    let audit = config.audit();
    assert_eq!(audit.file.as_deref(), Some(Path::new("logs/audit.jsonl")));
    assert_eq!(
        (audit.overflow, audit.capacity, audit.fsync),
        (Overflow::Drop, 64, true)
    );
    assert_eq!(audit.block_timeout, Duration::from_millis(250));
}

#[test]
fn relative_audit_files_start_at_the_policy_files_folder() {
    let dir = std::env::temp_dir().join(format!("tokengate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        format!(
            "{HEAD}[[routes]]\npath = \"/a\"\npublic = true\n[audit]\nfile = \"audit.jsonl\"\n"
        ),
    )
    .unwrap();
    let config = GateConfig::load(&path).unwrap();
    assert_eq!(
        config.audit().file.as_deref(),
        Some(dir.join("audit.jsonl").as_path())
    );
    assert_eq!(config.source(), path.display().to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_query_parameter_name_is_checked() {
    let error = refused(&format!(
        "{HEAD}[[routes]]\npath = \"/a\"\npublic = true\n[credentials]\nquery_param = \"a b\"\n"
    ));
    assert!(
        error.contains("credentials.query_param: \"a b\" is not a query parameter name"),
        "{error}"
    );
}
