use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokengate_core::{KeyId, RateQuota, TokenHash, TokenId, TokenRecord, UseLimit, Uses};

use crate::{
    COLUMNS, Dialect, Kind, Row, RowError, Sql, UseColumns, Value, read_record, record_values,
};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn limit(uses: u64) -> UseLimit {
    UseLimit::new(NonZeroU64::new(uses).unwrap())
}

/// Bound values read back as a driver would: the row the test reads.
struct Bound(Vec<Value>);

impl Row for Bound {
    fn value(&self, i: usize, kind: Kind) -> Result<Value, RowError> {
        let value = self.0[i].clone();
        let matches = matches!(
            (&value, kind),
            (Value::Int(_), Kind::Int)
                | (Value::Text(_), Kind::Text)
                | (Value::Bytes(_), Kind::Bytes)
                | (Value::Time(_), Kind::Time)
                | (Value::List(_), Kind::List)
                | (Value::Json(_), Kind::Json)
        );
        if matches {
            Ok(value)
        } else {
            Err(format!("not {kind:?}: {value:?}").into())
        }
    }
}

fn full_record() -> TokenRecord {
    let n = |v| std::num::NonZeroU32::new(v).unwrap();
    TokenRecord {
        id: TokenId::generate(),
        hash: TokenHash::from_parts(KeyId::new(3), [7; 32]),
        name: "ci".into(),
        subject: "team-a".into(),
        scopes: "notes:read notes:write".parse().unwrap(),
        audiences: vec!["notes".parse().unwrap()],
        created_at: at(10),
        expires_at: Some(at(100)),
        revoked_at: Some(at(50)),
        disabled_at: Some(at(40)),
        last_used_at: Some(at(20)),
        allowed_networks: vec!["10.0.0.0/8".parse().unwrap()],
        rate_quotas: vec![
            RateQuota::new(n(100), Duration::from_secs(60), n(10)).unwrap(),
            RateQuota::new(n(5_000), Duration::from_secs(86_400), n(50)).unwrap(),
        ],
        binding: Some(tokengate_core::Binding::Dpop(
            tokengate_core::Thumbprint::new([5; 32]),
        )),
        rotated_from: Some(TokenId::generate()),
        metadata: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        uses: Some(Uses::fresh(
            limit(7).with_refill("5/1h".parse().unwrap()),
            at(9_000),
        )),
        version: 4,
    }
}

#[test]
fn a_record_reads_back_from_its_values() {
    let record = full_record();
    for dialect in [Dialect::SQLITE, Dialect::POSTGRES] {
        let values: Vec<Value> = record_values(&record, |t| t)
            .into_iter()
            .map(|v| dialect.encode(v))
            .collect();
        assert_eq!(values.len(), COLUMNS.len());
        assert_eq!(read_record(dialect, &Bound(values)).unwrap(), record);
    }
}

#[test]
fn an_unreadable_value_names_its_column() {
    let record = full_record();
    let broken = |column: &str, value: Value| {
        let mut values = record_values(&record, |t| t);
        values[COLUMNS.iter().position(|(c, _)| *c == column).unwrap()] = value;
        let dialect = Dialect::POSTGRES;
        let values = values.into_iter().map(|v| dialect.encode(v)).collect();
        read_record(dialect, &Bound(values)).unwrap_err()
    };
    for (column, value) in [
        ("id", Value::Text(Some("not-an-id".into()))),
        ("hash", Value::Bytes(Some(vec![1, 2, 3]))),
        ("key_id", Value::Int(Some(-1))),
        ("scopes", Value::List(vec!["NOT A SCOPE".into()])),
        ("audiences", Value::List(vec!["?".into()])),
        ("allowed_networks", Value::List(vec!["10.0.0.0/99".into()])),
        ("rate_count", Value::Int(Some(0))),
        ("rate_burst", Value::Int(None)),
        ("rate_period_ms", Value::Int(Some(0))),
        ("metadata", Value::Json(Some("[1]".into()))),
        ("uses_limit", Value::Int(Some(0))),
        ("version", Value::Int(Some(-5))),
        ("created_at", Value::Time(None)),
        ("name", Value::Int(Some(1))),
    ] {
        let error = broken(column, value);
        let expected = if column == "rate_burst" {
            "rate_count"
        } else {
            column
        };
        assert_eq!(error.column(), expected, "{error}");
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn columns_round_trip() {
    let hourly = limit(7).with_refill("5/1h".parse().unwrap());
    for uses in [
        None,
        Some(Uses::fresh(limit(3), at(5))),
        Some(Uses::fresh(hourly, at(9_000))),
    ] {
        assert_eq!(UseColumns::of(uses.as_ref()).into_uses(), uses);
    }
    let mut spent = Uses::fresh(hourly, at(0));
    spent.hand_over();
    assert_eq!(UseColumns::of(Some(&spent)).into_uses(), Some(spent));
    let broken = UseColumns {
        limit: Some(0),
        remaining: Some(1),
        ..UseColumns::default()
    };
    assert_eq!(broken.into_uses(), None);
}

#[test]
fn expiries_round_up_to_what_the_backend_stores() {
    let t = at(5) + Duration::from_nanos(1_500_001);
    assert_eq!(
        Dialect::SQLITE.round_up(t),
        at(5) + Duration::from_millis(2)
    );
    assert_eq!(
        Dialect::POSTGRES.round_up(t),
        at(5) + Duration::from_micros(1_501)
    );
    assert_eq!(Dialect::SQLITE.round_up(at(5)), at(5));
}

#[test]
fn each_dialect_numbers_its_placeholders() {
    let sqlite = Sql::new(Dialect::SQLITE);
    let postgres = Sql::new(Dialect::POSTGRES);
    assert!(sqlite.insert.contains("?27)"), "{}", sqlite.insert);
    assert!(!sqlite.update.contains('$'), "{}", sqlite.update);
    assert!(
        postgres.insert.contains("$17::text::jsonb"),
        "{}",
        postgres.insert
    );
    assert!(postgres.select_by_hash.contains("FROM tokengate_tokens"));
    assert!(sqlite.select_by_hash.contains("FROM peppers"));
    for sql in [&sqlite, &postgres] {
        assert!(!sql.update.contains('{'), "{}", sql.update);
        assert_eq!(sql.update_values(&full_record()).len(), 19);
    }
}
