//! `tokengate pepper status | rotate | retire`.

use std::collections::BTreeMap;

use super::*;
use crate::args::PepperCommand;

/// `tokengate pepper ...`.
pub(super) async fn pepper(cli: &Cli, command: &PepperCommand) -> Result<ExitCode> {
    // Opening checks every pepper against the database's check values.
    let lifecycle = open(cli).await?;
    let file = match &cli.db {
        Database::Sqlite(path) => pepper_path(path),
        _ => cli.pepper_file.clone().ok_or(
            "the pepper of a PostgreSQL database is managed in its pepper file: pass --pepper-file",
        )?,
    };
    let env = std::env::var(PEPPER_ENV).is_ok();
    // TOKENGATE_PEPPER when it is set, else the file.
    let source = PepperSource::found(Some(&file))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no pepper file at {}", file.display()))?;
    let mut under: BTreeMap<u32, usize> = BTreeMap::new();
    for record in lifecycle.list().await.map_err(|e| e.to_string())? {
        *under.entry(record.hash.key_id().get()).or_default() += 1;
    }
    let count = |key: u32| under.get(&key).copied().unwrap_or(0);
    if env && !matches!(command, PepperCommand::Status) {
        return Err(format!(
            "the peppers come from {PEPPER_ENV}: change it there (KEYID:HEX entries, comma-separated); \
             `pepper rotate` and `retire` write the pepper file"
        ));
    }
    match command {
        PepperCommand::Status => {
            let current = source.pepper.id().get();
            let retired = lifecycle
                .store()
                .retired_peppers()
                .await
                .map_err(|e| e.to_string())?;
            let is_retired = |key: u32| retired.iter().any(|r| r.get() == key);
            for pepper in source.all() {
                let key = pepper.id().get();
                let role = if key == current {
                    "current"
                } else if is_retired(key) {
                    "retired (verifies nothing)"
                } else {
                    "previous"
                };
                println!("key {key}: {role}, {} tokens", count(key));
            }
            for (key, n) in &under {
                if source.all().any(|p| p.id().get() == *key) {
                    continue;
                }
                if is_retired(*key) {
                    println!("key {key}: retired, {n} tokens (they never verify again)");
                } else {
                    println!(
                        "key {key}: not in the pepper file, {n} tokens (they cannot be verified)"
                    );
                }
            }
        }
        PepperCommand::Rotate => {
            let old = source.pepper.id().get();
            let recorded = lifecycle
                .store()
                .recorded_peppers()
                .await
                .map_err(|e| e.to_string())?;
            let rotated = source.rotated(&recorded);
            let (key, check) = (rotated.pepper.id(), rotated.check_value());
            lifecycle
                .store()
                .record_pepper(key, check)
                .await
                .map_err(|e| e.to_string())?;
            rotated.write(&file).map_err(|e| e.to_string())?;
            println!(
                "key {} is current; {} tokens under key {old} move to it on their next use",
                key.get(),
                count(old)
            );
            eprintln!(
                "running servers on this database load it from {} through their change feed \
                 (or on SIGHUP); a server whose peppers come from {PEPPER_ENV} needs the new \
                 entry there and a restart",
                file.display()
            );
        }
        PepperCommand::Retire { key, force } => {
            if *key == source.pepper.id().get() {
                return Err(format!("key {key} is the current pepper; rotate first"));
            }
            if !source.previous.iter().any(|p| p.id().get() == *key) {
                return Err(format!(
                    "key {key} is not in the pepper file {}",
                    file.display()
                ));
            }
            let left = count(*key);
            if left > 0 && !force {
                return Err(format!(
                    "{left} tokens are still hashed under key {key} (they move on their next use; \
                     `pepper status` counts them); --force retires it anyway and they stop working"
                ));
            }
            if left > 0 {
                eprintln!("WARNING: {left} tokens under key {key} stop working for good");
            }
            // The database first: from its next lookup no server verifies
            // or moves a token under the key, and its feed tells every
            // server to drop it; then the file.
            lifecycle
                .store()
                .retire_pepper(KeyId::new(*key))
                .await
                .map_err(|e| e.to_string())?;
            source
                .without(KeyId::new(*key))
                .write(&file)
                .map_err(|e| e.to_string())?;
            println!("retired key {key}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
