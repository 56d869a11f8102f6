//! The `tokengate` binary over a temporary SQLite file.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use serde_json::Value;
use support::Db;

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path)
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn issue_prints_the_token_once_and_stores_only_its_hash() {
    let db = Db::new("issue");
    let issued = db.issue(&[
        "--ttl",
        "30d",
        "--rate",
        "100/min",
        "--burst",
        "10",
        "--allow-ip",
        "10.0.0.0/8",
    ]);
    let token = issued["token"].as_str().unwrap();
    assert!(token.starts_with("tg_"));
    assert!(issued["id"].as_str().unwrap().starts_with("tok_"));
    assert!(issued["expires_at"].as_str().is_some());
    assert_eq!(issued["rate"]["burst"], 10);
    assert!(!file_contains(&db.path(), token));
    let list = db.ok(&["list", "--json"]);
    assert!(!list.contains(token), "list never shows a secret");
    assert!(!list.contains(&token[3..20]));
    let shown: Value =
        serde_json::from_str(&db.ok(&["show", issued["id"].as_str().unwrap(), "--json"])).unwrap();
    assert_eq!(shown["subject"], "team-a");
    assert_eq!(shown["allowed_networks"][0], "10.0.0.0/8");
    assert!(shown.get("token").is_none());
}

#[test]
fn revoke_and_inspect_say_why_a_token_is_invalid() {
    let db = Db::new("revoke");
    let issued = db.issue(&[]);
    let token = issued["token"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    assert!(db.ok(&["inspect", token]).starts_with("valid"));
    assert!(db.ok(&["revoke", id]).starts_with(&format!("revoked {id}")));
    let out = db.run(&["inspect", token]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("invalid: token revoked"));
    let mut typo = token.to_owned();
    typo.pop();
    typo.push('!');
    let out = db.run(&["inspect", &typo]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("malformed"));
    let unknown = "tg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
    assert_eq!(db.run(&["inspect", &unknown]).status.code(), Some(1));
}

#[test]
fn rotate_prints_a_new_token_and_keeps_the_old_one_for_the_grace() {
    let db = Db::new("rotate");
    let old = db.issue(&["--ttl", "10d"]);
    let rotated: Value = serde_json::from_str(&db.ok(&[
        "rotate",
        old["id"].as_str().unwrap(),
        "--grace",
        "1h",
        "--json",
    ]))
    .unwrap();
    assert_ne!(rotated["token"], old["token"]);
    assert_eq!(rotated["rotated_from"], old["id"]);
    assert!(
        db.ok(&["inspect", old["token"].as_str().unwrap()])
            .starts_with("valid")
    );
    assert!(
        db.ok(&["inspect", rotated["token"].as_str().unwrap()])
            .starts_with("valid")
    );
    let old_now: Value =
        serde_json::from_str(&db.ok(&["show", old["id"].as_str().unwrap(), "--json"])).unwrap();
    assert_ne!(
        old_now["expires_at"], old["expires_at"],
        "the old token now ends with the grace period"
    );
}

#[test]
fn bad_input_is_one_line_naming_it_and_nothing_is_written() {
    let db = Db::new("bad");
    db.issue(&[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "issue",
                "--name",
                "x",
                "--subject",
                "y",
                "--scope",
                "bad scope",
                "--audience",
                "notes",
            ],
            "bad scope",
        ),
        (
            &[
                "issue",
                "--name",
                "x",
                "--subject",
                "y",
                "--scope",
                "a:b",
                "--audience",
                "notes",
                "--ttl",
                "100d",
            ],
            "exceeds the maximum",
        ),
        (
            &["issue", "--name", "x", "--subject", "y", "--scope", "a:b"],
            "--audience",
        ),
        (
            &[
                "issue",
                "--name",
                "x",
                "--subject",
                "y",
                "--audience",
                "notes",
                "--rate",
                "5/week",
                "--burst",
                "1",
            ],
            "5/week",
        ),
        (
            &[
                "issue",
                "--name",
                "x",
                "--subject",
                "y",
                "--audience",
                "notes",
                "--expires",
                "yesterday",
            ],
            "yesterday",
        ),
        (
            &[
                "issue",
                "--name",
                "x",
                "--subject",
                "y",
                "--audience",
                "notes",
                "--allow-ip",
                "10.0.0.0/33",
            ],
            "10.0.0.0/33",
        ),
        (&["revoke", "tok_nope"], "tok_nope"),
        (&["revoke", "tok_AAAAAAAAAAAAAAAA"], "no token with id"),
        (&["show", "tok_AAAAAAAAAAAAAAAA"], "no token with id"),
    ];
    for (args, needle) in cases {
        let out = db.run(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            stderr
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("error")),
            "{stderr}"
        );
    }
    assert_eq!(db.count(), 1, "nothing was half-written");
}

#[test]
fn audit_verify_reports_ok_or_the_broken_line() {
    let db = Db::new("audit");
    let path = db.dir.join("audit.jsonl");
    std::fs::write(&path, "not a record\n").unwrap();
    let out = db.run(&["audit", "verify", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("line 1"));
    std::fs::write(&path, "").unwrap();
    assert!(
        db.ok(&["audit", "verify", path.to_str().unwrap()])
            .starts_with("ok: 0 records")
    );
}

#[test]
fn update_disable_enable_and_list_filters_say_what_they_did_and_refuse_bad_input() {
    let db = Db::new("update");
    let first = db.issue(&["--ttl", "30d"]);
    let second = db.issue(&["--ttl", "2d"]);
    let id = first["id"].as_str().unwrap();
    let token = first["token"].as_str().unwrap();

    let updated: Value = serde_json::from_str(&db.ok(&[
        "update",
        id,
        "--name",
        "renamed",
        "--add-scope",
        "notes:write",
        "--meta",
        "team=a",
        "--rate",
        "10/min",
        "--burst",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["rate"]["burst"], 2);
    assert_eq!(updated["metadata"]["team"], "a");
    assert!(
        db.ok(&["inspect", token]).starts_with("valid"),
        "the secret stays"
    );

    // Bad input: a clear error, and nothing changes.
    let nothing = db.run(&["update", id]);
    assert!(!nothing.status.success());
    assert!(support::text(&nothing).contains("nothing to change"));
    let too_long = db.run(&["update", id, "--ttl", "400d"]);
    assert!(!too_long.status.success());
    assert!(
        support::text(&too_long).contains("exceeds the maximum"),
        "{}",
        support::text(&too_long)
    );
    let pasted = db.run(&["update", token, "--name", "x"]);
    assert!(!pasted.status.success());
    assert!(
        !support::text(&pasted).contains(token),
        "a pasted token is never echoed"
    );
    let bad_status = db.run(&["list", "--status", "sleeping"]);
    assert!(
        support::text(&bad_status).contains("sleeping"),
        "the bad value is named"
    );
    let shown: Value = serde_json::from_str(&db.ok(&["show", id, "--json"])).unwrap();
    assert_eq!(shown["name"], "renamed");

    // Disable, filter, page, enable.
    assert!(
        db.ok(&["disable", id])
            .starts_with(&format!("disabled {id}"))
    );
    let out = db.run(&["inspect", token]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("invalid: token disabled"));
    let disabled = db.ok(&["list", "--status", "disabled", "--json"]);
    assert_eq!(disabled.lines().count(), 1);
    let soon = db.ok(&["list", "--expiring-within", "7d", "--json"]);
    assert_eq!(soon.lines().count(), 1);
    assert!(soon.contains(second["id"].as_str().unwrap()));
    let page = db.ok(&["list", "--limit", "1", "--json"]);
    assert!(page.contains(id));
    let next = db.ok(&["list", "--after", id, "--json"]);
    assert_eq!(next.lines().count(), 1);
    assert!(next.contains(second["id"].as_str().unwrap()));
    assert_eq!(db.ok(&["enable", id]).trim(), format!("enabled {id}"));
    assert!(db.ok(&["inspect", token]).starts_with("valid"));
}

#[test]
fn usage_limited_tokens_are_issued_shown_listed_changed_and_reset() {
    let db = Db::new("uses");
    let issued = db.issue(&["--uses", "5", "--refill", "3/1h"]);
    let id = issued["id"].as_str().unwrap();
    assert_eq!(issued["uses"]["limit"], 5);
    assert_eq!(issued["uses"]["remaining"], 5);
    assert_eq!(
        issued["uses"]["refill"],
        serde_json::json!({"amount": 3, "every_seconds": 3600}),
        "the same rendering as the admin API"
    );
    let shown = db.ok(&["show", id]);
    assert!(
        shown.contains("uses:      5 left of 5, refill 3/1h"),
        "{shown}"
    );
    let listed = db.ok(&["list"]);
    assert!(listed.lines().next().unwrap().contains("USES"));
    assert!(listed.contains(" 5/5 "), "{listed}");

    // A lower limit caps the count; a reset sets it, within the limit.
    let changed: Value =
        serde_json::from_str(&db.ok(&["update", id, "--uses", "2", "--json"])).unwrap();
    assert_eq!(changed["uses"]["limit"], 2);
    assert_eq!(changed["uses"]["remaining"], 2, "capped by the new limit");
    assert_eq!(changed["uses"]["refill"], Value::Null);
    assert_eq!(
        db.ok(&["reset-uses", id]).trim(),
        format!("{id} has 2/2 uses left")
    );
    let over = db.run(&["reset-uses", id, "--remaining", "7"]);
    assert!(!over.status.success());
    assert!(
        support::text(&over).contains("more than the limit"),
        "{}",
        support::text(&over)
    );
    db.ok(&["update", id, "--uses", "9"]);
    let reset: Value =
        serde_json::from_str(&db.ok(&["reset-uses", id, "--remaining", "7", "--json"])).unwrap();
    assert_eq!(reset["uses"]["remaining"], 7);
    let unlimited: Value =
        serde_json::from_str(&db.ok(&["update", id, "--no-uses", "--json"])).unwrap();
    assert_eq!(unlimited["uses"], Value::Null);
    let refused = db.run(&["reset-uses", id]);
    assert!(!refused.status.success());
    assert!(
        support::text(&refused).contains("has no usage limit"),
        "{}",
        support::text(&refused)
    );

    // Bad input names the value, and issues nothing.
    db.issue_refused(&[
        (&["--uses", "0"][..], "0"),
        (&["--uses", "3", "--refill", "3/soon"][..], "3/soon"),
        (&["--uses", "3", "--refill", "3/100ms"][..], "100ms"),
        (&["--refill", "3/1h"][..], "--uses"),
    ]);
    assert_eq!(db.ok(&["list", "--json"]).lines().count(), 1);
    let array: Value = serde_json::from_str(&db.ok(&["list", "--json", "--array"])).unwrap();
    assert_eq!(array.as_array().unwrap().len(), 1);
    assert_eq!(array[0]["id"], issued["id"]);
    assert!(
        !db.run(&["list", "--array"]).status.success(),
        "--array needs --json"
    );
}

#[test]
fn a_grace_or_count_out_of_range_is_refused_before_anything_is_written() {
    let db = Db::new("ranges");
    let old = db.issue(&["--ttl", "10d", "--uses", "5"]);
    let id = old["id"].as_str().unwrap();
    for grace in ["300000000000y", "91d"] {
        let out = db.run(&["rotate", id, "--grace", grace]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{grace}: {stderr}");
        assert!(stderr.contains("grace period"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = db.run(&["update", id, "--uses", "18446744073709551615"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("18446744073709551615"), "{stderr}");
    // Nothing changed: one token, its expiry and its count as issued.
    let now: Value = serde_json::from_str(&db.ok(&["show", id, "--json"])).unwrap();
    assert_eq!(now["expires_at"], old["expires_at"]);
    assert_eq!(now["status"], "active");
    assert_eq!(now["uses"]["limit"], 5);
    assert_eq!(db.ok(&["list", "--json"]).lines().count(), 1);
}

#[test]
fn a_binding_is_issued_shown_listed_changed_and_removed() {
    let db = Db::new("binding");
    // A base64url thumbprint may begin with `-`: it is a value, not a flag.
    let jkt = "-SQAcjNg2NeuQvqRr0rxZzbT9zioBU-PMdKIW5Xy3Iw";
    let issued = db.issue(&["--dpop-jkt", jkt]);
    let id = issued["id"].as_str().unwrap();
    assert_eq!(issued["dpop_jkt"], jkt);
    let shown = db.ok(&["show", id]);
    assert!(
        shown.contains(&format!("bound to:  dpop jkt={jkt}")),
        "{shown}"
    );
    let listed = db.ok(&["list"]);
    assert!(listed.lines().next().unwrap().contains("BOUND"));
    assert!(listed.contains(" dpop "), "{listed}");

    let hex = "AB:".repeat(31) + "CD";
    let changed: Value =
        serde_json::from_str(&db.ok(&["update", id, "--cert-sha256", &hex, "--json"])).unwrap();
    assert_eq!(changed["dpop_jkt"], Value::Null);
    assert_eq!(changed["cert_sha256"], "ab".repeat(31) + "cd");
    assert!(db.ok(&["list"]).contains(" cert "));

    let unbound: Value =
        serde_json::from_str(&db.ok(&["update", id, "--unbind", "--json"])).unwrap();
    assert_eq!(unbound["dpop_jkt"], Value::Null);
    assert_eq!(unbound["cert_sha256"], Value::Null);
    assert!(!db.ok(&["show", id]).contains("bound to:"));

    // A bad thumbprint is named and nothing is issued; both bindings at once are refused.
    db.issue_refused(&[
        (
            &["--dpop-jkt", "-not-a-thumbprint"][..],
            "-not-a-thumbprint",
        ),
        (
            &["--dpop-jkt", jkt, "--cert-sha256", &hex][..],
            "--cert-sha256",
        ),
    ]);
    assert_eq!(db.ok(&["list", "--json"]).lines().count(), 1);
}

#[test]
fn several_quotas_are_issued_shown_replaced_and_dropped() {
    let db = Db::new("quotas");
    let issued = db.issue(&[
        "--rate", "100/min", "--burst", "20", "--rate", "10000/d", "--burst", "100",
    ]);
    let id = issued["id"].as_str().unwrap();
    assert_eq!(issued["rate"]["count"], 100, "the first as before");
    let rates = issued["rates"].as_array().unwrap();
    assert_eq!(rates.len(), 2);
    assert_eq!(
        rates[1],
        serde_json::json!({"count": 10000, "period_seconds": 86400, "burst": 100})
    );
    let shown = db.ok(&["show", id]);
    assert_eq!(shown.matches("rate:").count(), 2, "{shown}");

    let one: Value =
        serde_json::from_str(&db.ok(&["update", id, "--rate", "5/s", "--burst", "5", "--json"]))
            .unwrap();
    assert_eq!(
        one["rates"].as_array().unwrap().len(),
        1,
        "replaced, not added"
    );
    let none: Value = serde_json::from_str(&db.ok(&["update", id, "--no-rate", "--json"])).unwrap();
    assert_eq!(none["rates"], serde_json::json!([]));
    assert_eq!(none["rate"], Value::Null);

    // Unpaired, too many, twice: refused by name, nothing issued.
    let six: Vec<&str> = ["1/s", "2/s", "3/s", "4/s", "5/s", "6/s"]
        .iter()
        .flat_map(|r| ["--rate", r, "--burst", "1"])
        .collect();
    db.issue_refused(&[
        (
            &["--rate", "1/s", "--rate", "2/s", "--burst", "1"][..],
            "each --rate needs its --burst",
        ),
        (&six[..], "at most 5"),
    ]);
    assert_eq!(db.ok(&["list", "--json"]).lines().count(), 1);
    // The same quota twice is the same limit, kept once.
    let twice = db.issue(&[
        "--rate", "1/s", "--burst", "1", "--rate", "1/s", "--burst", "1",
    ]);
    assert_eq!(twice["rates"].as_array().unwrap().len(), 1);
}
