use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokengate::{
    Clock, Expiry, InvalidReason, IssuancePolicy, IssuedToken, Lifecycle, SqliteStore, SystemClock,
    TokenFormat, TokenHasher, TokenId, TokenRecord, TokenSpec, TokenStatus, TokenStore,
    audit_chain, load_pepper,
};

use crate::args::{AuditCommand, Cli, Command, Issue};

type Result<T> = std::result::Result<T, String>;

fn when(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

fn record_json(r: &TokenRecord) -> Value {
    json!({
        "id": r.id.as_str(),
        "name": r.name,
        "subject": r.subject,
        "status": r.status(SystemTime::now()).as_str(),
        "scopes": r.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "audiences": r.audiences.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "created_at": when(r.created_at),
        "expires_at": r.expires_at.map(when),
        "revoked_at": r.revoked_at.map(when),
        "last_used_at": r.last_used_at.map(when),
        "allowed_networks": r.allowed_networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "rate": r.rate_quota.map(|q| json!({"count": q.count().get(), "period_secs": q.period().as_secs_f64(), "burst": q.burst().get()})),
        "rotated_from": r.rotated_from.as_ref().map(TokenId::as_str),
        "metadata": r.metadata,
    })
}

fn print_record(r: &TokenRecord) {
    let opt = |t: Option<SystemTime>| t.map_or_else(|| "-".to_owned(), when);
    println!("id:        {}", r.id);
    println!("name:      {}", r.name);
    println!("subject:   {}", r.subject);
    println!("status:    {}", r.status(SystemTime::now()));
    println!("scopes:    {}", r.scopes);
    println!(
        "audiences: {}",
        r.audiences
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("created:   {}", when(r.created_at));
    println!(
        "expires:   {}",
        r.expires_at.map_or_else(|| "never".to_owned(), when)
    );
    println!("revoked:   {}", opt(r.revoked_at));
    println!("last used: {}", opt(r.last_used_at));
    if !r.allowed_networks.is_empty() {
        println!(
            "networks:  {}",
            r.allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(q) = r.rate_quota {
        println!("rate:      {q}");
    }
}

fn print_issued(issued: &IssuedToken, as_json: bool) {
    if as_json {
        let mut object = record_json(&issued.record);
        object["token"] = issued.token.expose_secret().into();
        println!("{object}");
    } else {
        println!("{}", issued.token.expose_secret());
        eprintln!(
            "issued {} for {} (expires {}). The token above is shown once; store it now.",
            issued.record.id,
            issued.record.subject,
            issued
                .record
                .expires_at
                .map_or_else(|| "never".to_owned(), when)
        );
    }
}

fn parse_id(text: &str) -> Result<TokenId> {
    text.parse()
        .map_err(|e: tokengate::TokenIdError| e.to_string())
}

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Audit {
        command: AuditCommand::Verify { file },
    } = &cli.command
    {
        return Ok(match audit_chain::verify(file) {
            Ok(report) => {
                println!(
                    "ok: {} records, last hash {}",
                    report.records, report.last_hash
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("broken: {error}");
                ExitCode::from(1)
            }
        });
    }
    let store = SqliteStore::open(&cli.db).map_err(|e| e.to_string())?;
    let hasher = TokenHasher::new(load_pepper(&cli.db).map_err(|e| e.to_string())?);
    let policy = match &cli.command {
        Command::Issue(issue) if issue.no_expiry => IssuancePolicy::default().allow_no_expiry(),
        _ => IssuancePolicy::default(),
    };
    let lifecycle = Lifecycle::new(store, hasher).with_policy(policy);
    match cli.command {
        Command::Issue(issue) => issue_token(&lifecycle, issue).await,
        Command::List { json } => {
            for record in lifecycle.list().await.map_err(|e| e.to_string())? {
                if json {
                    println!("{}", record_json(&record));
                } else {
                    println!(
                        "{}  {:<8} {:<20} {:<20} {}",
                        record.id,
                        record.status(SystemTime::now()),
                        record.name,
                        record.subject,
                        record.scopes
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            let id = parse_id(&id)?;
            let record = lifecycle
                .get(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("no token with id {id}"))?;
            if json {
                println!("{}", record_json(&record));
            } else {
                print_record(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { id } => {
            let id = parse_id(&id)?;
            let record = lifecycle.revoke(&id).await.map_err(|e| e.to_string())?;
            println!(
                "revoked {} at {}",
                record.id,
                record.revoked_at.map_or_else(String::new, when)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate { id, grace, json } => {
            let id = parse_id(&id)?;
            let issued = lifecycle
                .rotate(&id, grace)
                .await
                .map_err(|e| e.to_string())?;
            print_issued(&issued, json);
            if !json {
                eprintln!(
                    "{id} keeps working until {}",
                    when(SystemClock.now() + grace)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { token } => inspect(&lifecycle, &token).await,
        Command::Audit { .. } => Ok(ExitCode::SUCCESS),
    }
}

async fn issue_token(lifecycle: &Lifecycle<SqliteStore>, issue: Issue) -> Result<ExitCode> {
    let expiry = match (issue.ttl, issue.expires, issue.no_expiry) {
        (Some(ttl), _, _) => Expiry::After(ttl),
        (_, Some(at), _) => Expiry::At(at),
        (_, _, true) => Expiry::Never,
        _ => Expiry::Default,
    };
    let mut spec = TokenSpec::new(issue.name.clone(), issue.subject.clone())
        .scopes(issue.scopes.clone())
        .audiences(issue.audiences.clone())
        .allowed_networks(issue.allow_ip.clone())
        .expiry(expiry);
    if let Some(quota) = issue.quota()? {
        spec = spec.rate_quota(quota);
    }
    let issued = lifecycle.issue(spec).await.map_err(|e| match e {
        tokengate::LifecycleError::NoAudience => "a token needs at least one --audience".to_owned(),
        other => other.to_string(),
    })?;
    print_issued(&issued, issue.json);
    Ok(ExitCode::SUCCESS)
}

async fn inspect(lifecycle: &Lifecycle<SqliteStore>, token: &str) -> Result<ExitCode> {
    let parsed = match TokenFormat::parse_any_prefix(token.trim()) {
        Ok(parsed) => parsed,
        Err(error) => {
            println!("invalid: malformed ({error})");
            return Ok(ExitCode::from(1));
        }
    };
    let hash = lifecycle.hasher().hash(&parsed);
    let Some(record) = lifecycle
        .store()
        .find_by_hash(&hash)
        .await
        .map_err(|e| e.to_string())?
    else {
        println!(
            "invalid: {}",
            InvalidReason::Unknown.as_str().replace('_', " ")
        );
        return Ok(ExitCode::from(1));
    };
    match record.status(SystemClock.now()) {
        TokenStatus::Active => {
            println!("valid");
            print_record(&record);
            Ok(ExitCode::SUCCESS)
        }
        status => {
            println!("invalid: token {status}");
            print_record(&record);
            Ok(ExitCode::from(1))
        }
    }
}
