use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use std::path::Path;

use serde_json::Value;
use tokengate::audit::{AuditKey, hash_chain};
use tokengate::core::{
    Binding, Clock, InvalidReason, KeyId, SystemClock, TokenFormat, TokenStatus,
};
use tokengate::deployment::{AnyStore, Database};
use tokengate::sqlite::pepper_path;
use tokengate::store::{
    Expiry, IssuancePolicy, IssuedToken, LifecycleError, PEPPER_ENV, PepperSource, TokenAdmin,
    TokenQuery,
};
use tokengate::{Lifecycle, TokenId, TokenRecord, TokenSpec, TokenStore};

use crate::args::{AuditCommand, Cli, Command, Issue, Update};

mod pepper;
mod scan;
use pepper::pepper;

mod webhooks;

type Result<T> = std::result::Result<T, String>;

fn when(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A record in the one JSON rendering (`tokengate::store::view::TokenView`), as
/// the admin API sends it.
fn record_json(r: &TokenRecord) -> Value {
    serde_json::to_value(tokengate::store::view::TokenView::from(r)).unwrap_or(Value::Null)
}

/// `remaining/limit` of a usage-limited token, `-` for unlimited uses.
fn uses_left(r: &TokenRecord) -> String {
    r.uses.map_or_else(
        || "-".to_owned(),
        |u| format!("{}/{}", u.remaining_at(SystemTime::now()), u.limit.uses()),
    )
}

/// Stored text as the operator's terminal shows it: control, bidi and
/// zero-width characters escaped, so a name cannot steer the terminal or
/// display as something it is not.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    tokengate::core::escape_for_display(text)
}

/// A JSON value as one line, with the characters JSON allows raw but that
/// display as something else (bidi, zero-width, line separators) written
/// as `\uXXXX`: the same value to a parser, plain to a reader.
pub(crate) fn json_line(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if !text.chars().any(tokengate::core::needs_unicode_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 12);
    for c in text.chars() {
        if tokengate::core::needs_unicode_escape(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// `tokengate usage ID`: a token's hours.
async fn usage(
    lifecycle: &Lifecycle<AnyStore>,
    id: &TokenId,
    since: SystemTime,
    json: bool,
) -> Result<()> {
    if lifecycle
        .get(id)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("no token with id {id}"));
    }
    let buckets = lifecycle
        .store()
        .usage(id, since)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        let view = tokengate::store::view::UsageView::new(id, &buckets);
        println!("{}", json_line(&serde_json::json!(view)));
        return Ok(());
    }
    if buckets.is_empty() {
        eprintln!("no requests of {id} since {}", when(since));
        return Ok(());
    }
    println!(
        "{:<20}  {:>9}  {:>9}  {:<39}  REFUSED BY REASON",
        "HOUR (UTC)", "ADMITTED", "REFUSED", "LAST CLIENT"
    );
    for bucket in &buckets {
        let reasons: Vec<String> = bucket
            .refused
            .iter()
            .map(|(reason, n)| format!("{}={n}", shown(reason)))
            .collect();
        println!(
            "{:<20}  {:>9}  {:>9}  {:<39}  {}",
            when(bucket.start),
            bucket.admitted,
            bucket.refused_total(),
            bucket
                .last_client
                .map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            if reasons.is_empty() {
                "-".to_owned()
            } else {
                reasons.join(" ")
            }
        );
    }
    Ok(())
}

/// `tokengate usage --top N`: the tokens with the most requests.
async fn top_usage(
    lifecycle: &Lifecycle<AnyStore>,
    top: usize,
    since: SystemTime,
    json: bool,
) -> Result<()> {
    let totals = lifecycle
        .store()
        .top_usage(since, top)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        let views: Vec<_> = totals
            .iter()
            .map(tokengate::store::view::UsageTotalView::from)
            .collect();
        println!("{}", json_line(&serde_json::json!(views)));
        return Ok(());
    }
    if totals.is_empty() {
        eprintln!("no requests since {}", when(since));
        return Ok(());
    }
    println!(
        "{:<20}  {:<24}  {:>9}  {:>9}",
        "TOKEN", "NAME", "ADMITTED", "REFUSED"
    );
    for total in &totals {
        let name = lifecycle
            .get(&total.token_id)
            .await
            .map_err(|e| e.to_string())?
            .map_or_else(|| "-".to_owned(), |r| shown(&r.name).into_owned());
        println!(
            "{:<20}  {:<24}  {:>9}  {:>9}",
            total.token_id, name, total.admitted, total.refused
        );
    }
    Ok(())
}

fn print_record(r: &TokenRecord) {
    let opt = |t: Option<SystemTime>| t.map_or_else(|| "-".to_owned(), when);
    println!("id:        {}", r.id);
    println!("name:      {}", shown(&r.name));
    println!("subject:   {}", shown(&r.subject));
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
    println!("disabled:  {}", opt(r.disabled_at));
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
    for q in &r.rate_quotas {
        println!("rate:      {q}");
    }
    if let Some(binding) = r.binding {
        println!("bound to:  {binding}");
    }
    for (key, value) in &r.metadata {
        println!("meta:      {}={}", shown(key), shown(value));
    }
    if let Some(u) = r.uses {
        let refill = u
            .limit
            .refill()
            .map_or_else(String::new, |refill| format!(", refill {refill}"));
        let left = u.remaining_at(SystemTime::now());
        println!("uses:      {left} left of {}{refill}", u.limit.uses());
    }
}

fn print_issued(issued: &IssuedToken, as_json: bool) {
    if as_json {
        let mut object = record_json(&issued.record);
        object["token"] = issued.token.expose_secret().into();
        println!("{}", json_line(&object));
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

/// Opens the existing database and its pepper (never creating a SQLite file).
async fn open(cli: &Cli) -> Result<Lifecycle<AnyStore>> {
    connect(cli, false).await
}

/// Opens the database, creating a SQLite file and its pepper if there is none.
async fn open_or_create(cli: &Cli) -> Result<Lifecycle<AnyStore>> {
    connect(cli, true).await
}

async fn connect(cli: &Cli, create: bool) -> Result<Lifecycle<AnyStore>> {
    let (store, peppers) = cli
        .db
        .open(create, cli.pepper_file.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Lifecycle::new(store, peppers.hasher()))
}

/// The token id in `text`. A token given instead is never echoed: the
/// error says so, with the token's id when the store knows it.
async fn parse_id(lifecycle: &Lifecycle<AnyStore>, text: &str) -> Result<TokenId> {
    let error = match text.trim().parse::<TokenId>() {
        Ok(id) => return Ok(id),
        Err(error) => error,
    };
    if !error.is_token_shaped() {
        return Err(error.to_string());
    }
    let known = match TokenFormat::parse_any_prefix(text.trim()) {
        Ok(token) => lifecycle
            .store()
            .find_by_hash(&lifecycle.hasher().hash(&token))
            .await
            .ok()
            .flatten(),
        Err(_) => None,
    };
    Err(match known {
        Some(record) => format!(
            "that is a token, not a token id (tokens are secrets and are not shown); its id is {}",
            record.id
        ),
        None => "that looks like a token, not a token id (tokens are secrets and are not shown); \
                 `tokengate inspect TOKEN` finds a token's id"
            .to_owned(),
    })
}

fn verify_audit(file: &Path, key_file: Option<&Path>) -> Result<ExitCode> {
    // The key: given, or the server's (its variable, or the file beside the log).
    let default_key = AuditKey::path_for(file);
    let key = if let Some(path) = key_file {
        Some(AuditKey::read(path))
    } else if let Ok(hex) = std::env::var(hash_chain::AUDIT_KEY_ENV) {
        Some(AuditKey::from_hex(&hex, hash_chain::AUDIT_KEY_ENV))
    } else if default_key.exists() {
        Some(AuditKey::read(&default_key))
    } else {
        None
    }
    .transpose()
    .map_err(|e| e.to_string())?;
    Ok(match hash_chain::verify_with(file, key.as_ref()) {
        Ok(report) if !report.torn_lines.is_empty() => {
            println!(
                "torn: {} records intact, last hash {}; line(s) {:?} were cut short by a crash \
                 mid-write (records lost, not edited)",
                report.records, report.last_hash, report.torn_lines
            );
            ExitCode::from(2)
        }
        Ok(report) => {
            println!(
                "ok: {} records{}, last hash {}",
                report.records,
                if report.keyed { " (keyed)" } else { "" },
                report.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("broken: {error}");
            ExitCode::from(1)
        }
    })
}

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Serve(args) => {
            tokengate_server::init_logging(args.ops.log_format);
            let serve = tokengate_server::serve::serve(
                cli.db.clone(),
                cli.pepper_file.clone(),
                (**args).clone(),
            );
            serve.await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { file, key_file },
        } => verify_audit(file, key_file.as_deref()),
        Command::Webhooks { command } => webhooks::run(&open(&cli).await?, command).await,
        Command::Init => {
            let pepper = if std::env::var_os(PEPPER_ENV).is_some() {
                PEPPER_ENV.to_owned()
            } else {
                match (&cli.db, &cli.pepper_file) {
                    (_, Some(file)) => file.display().to_string(),
                    (Database::Sqlite(path), None) => pepper_path(path).display().to_string(),
                    _ => String::new(),
                }
            };
            if let Database::Sqlite(path) = &cli.db
                && path.exists()
            {
                return Err(format!("{} already exists", path.display()));
            }
            let lifecycle = open_or_create(&cli).await?;
            if !lifecycle
                .list()
                .await
                .map_err(|e| e.to_string())?
                .is_empty()
            {
                return Err(format!("{} already holds tokens", cli.db));
            }
            println!("created {} (pepper: {pepper})", cli.db);
            Ok(ExitCode::SUCCESS)
        }
        Command::Issue(issue) => issue_token(&cli, issue).await,
        Command::Scopes => {
            let catalogue = open(&cli)
                .await?
                .scope_catalogue()
                .await
                .map_err(|e| e.to_string())?;
            if catalogue.is_empty() {
                eprintln!(
                    "the scope catalogue is empty: no server has started on this database yet"
                );
            }
            for scope in catalogue.iter() {
                println!("{scope}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            json,
            array,
            subject,
            status,
            expiring_within,
            limit,
            after,
        } => {
            let lifecycle = open(&cli).await?;
            let mut query = TokenQuery::new();
            if let Some(subject) = subject {
                query = query.subject(subject.clone());
            }
            if let Some(status) = status {
                query = query.status(*status);
            }
            if let Some(window) = expiring_within {
                query = query.expiring_within(*window);
            }
            if let Some(limit) = limit {
                query = query.limit(*limit);
            }
            if let Some(after) = after {
                query = query.after(parse_id(&lifecycle, after).await?);
            }
            let records = lifecycle
                .list_matching(&query)
                .await
                .map_err(|e| e.to_string())?;
            match (*json, *array) {
                (true, true) => {
                    let all: Vec<Value> = records.iter().map(record_json).collect();
                    println!("{}", json_line(&Value::Array(all)));
                }
                (json, _) => print_list(&records, json),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id, json } => {
            let lifecycle = open(&cli).await?;
            let id = parse_id(&lifecycle, id).await?;
            let record = lifecycle
                .get(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("no token with id {id}"))?;
            if *json {
                println!("{}", json_line(&record_json(&record)));
            } else {
                print_record(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Usage {
            id,
            top,
            since,
            json,
        } => {
            let lifecycle = open(&cli).await?;
            let day = std::time::Duration::from_secs(86_400);
            match (id, top) {
                (Some(id), _) => {
                    let id = parse_id(&lifecycle, id).await?;
                    let since = SystemTime::now() - since.unwrap_or(7 * day);
                    usage(&lifecycle, &id, since, *json).await?;
                }
                (None, Some(top)) => {
                    let since = SystemTime::now() - since.unwrap_or(day);
                    top_usage(&lifecycle, usize::from(*top), since, *json).await?;
                }
                (None, None) => return Err("name a token id, or --top N".into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { id } => {
            let lifecycle = open(&cli).await?;
            let id = parse_id(&lifecycle, id).await?;
            let record = lifecycle.revoke(&id).await.map_err(|e| e.to_string())?;
            println!(
                "revoked {} at {}",
                record.id,
                record.revoked_at.map_or_else(String::new, when)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate {
            id,
            grace,
            ttl,
            expires,
            json,
        } => {
            let lifecycle = open(&cli).await?;
            let id = parse_id(&lifecycle, id).await?;
            let expiry = match (ttl, expires) {
                (Some(ttl), _) => Some(Expiry::After(*ttl)),
                (_, Some(at)) => Some(Expiry::At(*at)),
                _ => None,
            };
            let issued = lifecycle
                .rotate_with_expiry(&id, *grace, expiry)
                .await
                .map_err(|e| e.to_string())?;
            print_issued(&issued, *json);
            if !json {
                // The lifecycle refused a grace past what the clock holds,
                // before anything was written; the old token's own expiry
                // may end it sooner.
                let old = lifecycle.get(&id).await.map_err(|e| e.to_string())?;
                if let Some(until) = old.and_then(|old| old.expires_at) {
                    eprintln!("{id} keeps working until {}", when(until));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { token } => inspect(&open(&cli).await?, token).await,
        Command::Scan(args) => Ok(scan::scan(&cli, args).await),
        Command::Update(update) => update_token(&cli, update).await,
        Command::Pepper { command } => pepper(&cli, command).await,
        Command::Disable { id } | Command::Enable { id } => {
            let lifecycle = open(&cli).await?;
            let id = parse_id(&lifecycle, id).await?;
            let record = if matches!(cli.command, Command::Disable { .. }) {
                lifecycle.disable(&id).await
            } else {
                lifecycle.enable(&id).await
            }
            .map_err(|e| e.to_string())?;
            match record.disabled_at {
                Some(at) => println!("disabled {} at {}", record.id, when(at)),
                None => println!("enabled {}", record.id),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ResetUses {
            id,
            remaining,
            json,
        } => {
            let lifecycle = open(&cli).await?;
            let id = parse_id(&lifecycle, id).await?;
            let record = lifecycle
                .reset_uses(&id, *remaining)
                .await
                .map_err(|e| e.to_string())?;
            if *json {
                println!("{}", json_line(&record_json(&record)));
            } else {
                println!("{} has {} uses left", record.id, uses_left(&record));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn update_token(cli: &Cli, update: &Update) -> Result<ExitCode> {
    let changes = update.changes()?;
    if changes.is_empty() {
        return Err(
            "nothing to change: give at least one of --name, --scope, --add-scope, \
                    --remove-scope, --audience, --ttl, --expires, --allow-ip, --any-ip, --rate, \
                    --no-rate, --meta, --remove-meta, --uses, --no-uses"
                .to_owned(),
        );
    }
    let lifecycle = open(cli).await?;
    let id = parse_id(&lifecycle, &update.id).await?;
    let catalogue = lifecycle
        .scope_catalogue()
        .await
        .map_err(|e| e.to_string())?;
    let mut policy = IssuancePolicy::default();
    if !catalogue.is_empty() && !update.allow_unknown_scope {
        policy = policy.scope_catalogue(catalogue);
    }
    let record = lifecycle
        .with_policy(policy)
        .update(&id, &changes)
        .await
        .map_err(|e| issue_error(&e))?;
    if update.json {
        println!("{}", json_line(&record_json(&record)));
    } else {
        print_record(&record);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(records: &[TokenRecord], json: bool) {
    if json {
        for record in records {
            println!("{}", json_line(&record_json(record)));
        }
        return;
    }
    let now = SystemTime::now();
    println!(
        "{:<20}  {:<8} {:<20} {:<20} {:<20} {:<11} {:<5} SCOPES",
        "ID", "STATUS", "NAME", "SUBJECT", "EXPIRES", "USES", "BOUND"
    );
    for record in records {
        println!(
            "{:<20}  {:<8} {:<20} {:<20} {:<20} {:<11} {:<5} {}",
            record.id.as_str(),
            record.status(now).as_str(),
            shown(&record.name),
            shown(&record.subject),
            record.expires_at.map_or_else(|| "never".to_owned(), when),
            uses_left(record),
            match record.binding {
                Some(Binding::Dpop(_)) => "dpop",
                Some(Binding::Certificate(_)) => "cert",
                None => "-",
            },
            record.scopes
        );
    }
}

/// Everything `issue` can check without a database, checked before one
/// is opened or created: bad input leaves no file behind.
fn issue_spec(issue: &Issue) -> Result<(TokenSpec, IssuancePolicy)> {
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
    for quota in issue.quotas()? {
        spec = spec.rate_quota(quota);
    }
    if let Some(limit) = issue.uses.limit() {
        spec = spec.uses(limit);
    }
    if let Some(binding) = crate::args::binding(issue.dpop_jkt, issue.cert_sha256) {
        spec = spec.binding(binding);
    }
    let policy = if issue.no_expiry {
        IssuancePolicy::default().allow_no_expiry()
    } else {
        IssuancePolicy::default()
    };
    policy
        .validate(&spec, SystemClock.now())
        .map_err(|e| issue_error(&e))?;
    Ok((spec, policy))
}

fn issue_error(error: &LifecycleError) -> String {
    match error {
        LifecycleError::NoAudience => "a token needs at least one --audience".to_owned(),
        LifecycleError::NoScope => "a token needs at least one --scope".to_owned(),
        LifecycleError::UnknownScope { .. } => format!(
            "{error}; pass --allow-unknown-scope to issue it anyway (`tokengate scopes` lists the catalogue)"
        ),
        other => other.to_string(),
    }
}

async fn issue_token(cli: &Cli, issue: &Issue) -> Result<ExitCode> {
    let (spec, mut policy) = issue_spec(issue)?;
    let lifecycle = open_or_create(cli).await?;
    let catalogue = lifecycle
        .scope_catalogue()
        .await
        .map_err(|e| e.to_string())?;
    if catalogue.is_empty() {
        eprintln!(
            "warning: the scope catalogue is empty (no server has started on this database yet), \
             so the scopes could not be checked"
        );
    } else if !issue.allow_unknown_scope {
        policy = policy.scope_catalogue(catalogue);
    }
    let issued = lifecycle
        .with_policy(policy)
        .issue(spec)
        .await
        .map_err(|e| issue_error(&e))?;
    print_issued(&issued, issue.json);
    Ok(ExitCode::SUCCESS)
}

async fn inspect(lifecycle: &Lifecycle<AnyStore>, token: &str) -> Result<ExitCode> {
    let token = token.trim();
    if let Err(error) = TokenFormat::parse_any_prefix(token) {
        println!("invalid: malformed ({error})");
        return Ok(ExitCode::from(1));
    }
    // Looked up as the servers do: under the current pepper, then under
    // each previous one (newest first), so a token not yet moved after a
    // rotation is found and its key named.
    let hasher = lifecycle.hasher();
    let found = lifecycle
        .find_token_and_key(token)
        .await
        .map_err(|e| e.to_string())?;
    let Some((record, key)) = found else {
        println!(
            "invalid: {}",
            InvalidReason::Unknown.as_str().replace('_', " ")
        );
        return Ok(ExitCode::from(1));
    };
    let under = if key == hasher.key_id() {
        String::new()
    } else {
        format!(
            " (under previous pepper {key}: a server moves it to {} on its next use)",
            hasher.key_id()
        )
    };
    match record.status(SystemClock.now()) {
        TokenStatus::Active => {
            println!("valid{under}");
            print_record(&record);
            Ok(ExitCode::SUCCESS)
        }
        status => {
            println!("invalid: token {status}{under}");
            print_record(&record);
            Ok(ExitCode::from(1))
        }
    }
}
