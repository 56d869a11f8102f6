//! A running server's peppers, kept as the database says they are.
//!
//! `tokengate pepper rotate` records a new pepper in the database and
//! writes it to the pepper file; `pepper retire` records a pepper as
//! retired. Both are announced on the store's change feed, which flushes
//! every instance's cache and wakes this task: it reads the peppers again
//! (the file, or `TOKENGATE_PEPPER`), checks them against the database,
//! and swaps them into the shared [`TokenHasher`], so new tokens verify
//! and retired ones stop without a restart. SIGHUP asks for the same.

use std::path::PathBuf;
use std::time::Duration;

use tokengate_core::{KeyId, Peppers, TokenHasher};
use tokio::sync::watch;

use super::AnyStore;

/// How long a reload waits for the pepper file to hold a pepper the
/// database already records: a rotation records it first, then writes
/// the file.
const FILE_CATCH_UP: Duration = Duration::from_secs(5);
/// How often it reads the file again meanwhile.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Reloads `hasher`'s peppers from `store` (and `pepper_file`) whenever
/// `changes` changes or the process receives SIGHUP. Runs until aborted.
pub(crate) async fn follow_peppers(
    store: AnyStore,
    pepper_file: Option<PathBuf>,
    hasher: TokenHasher,
    mut changes: watch::Receiver<u64>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).ok();
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = hup => tracing::info!("SIGHUP: loading the peppers again"),
        }
        reload(&store, pepper_file.as_deref(), &hasher).await;
    }
}

/// Loads the peppers once and swaps them in; on failure the ones in use
/// stay (a retired one is still refused by the store itself).
pub(crate) async fn reload(
    store: &AnyStore,
    pepper_file: Option<&std::path::Path>,
    hasher: &TokenHasher,
) {
    let deadline = tokio::time::Instant::now() + FILE_CATCH_UP;
    loop {
        match load(store, pepper_file).await {
            Ok((peppers, newest)) => {
                let current = peppers.current.id();
                if current.get() < newest.get() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(RETRY_EVERY).await;
                    continue;
                }
                if current.get() < newest.get() {
                    tracing::error!(
                        current = %current,
                        recorded = %newest,
                        "the database records a newer pepper than the pepper file or \
                         TOKENGATE_PEPPER holds: tokens issued under it fail here until it is added"
                    );
                }
                let previous: Vec<KeyId> = peppers.previous.iter().map(|p| p.id()).collect();
                hasher.replace(peppers);
                tracing::info!(current = %current, ?previous, "peppers loaded");
                return;
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "peppers not loaded yet; trying again");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot load the peppers; keeping the ones in use");
                return;
            }
        }
    }
}

/// The peppers as the database accepts them now, and the newest pepper it
/// records.
async fn load(
    store: &AnyStore,
    pepper_file: Option<&std::path::Path>,
) -> Result<(Peppers, KeyId), super::SetupError> {
    let peppers = store.peppers(pepper_file).await?;
    let newest = store
        .recorded_peppers()
        .await?
        .into_iter()
        .max_by_key(|key| key.get())
        .unwrap_or(peppers.current.id());
    Ok((peppers, newest))
}
