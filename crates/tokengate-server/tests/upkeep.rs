//! The admin listener's recorder drains histogram samples on its own: a
//! server nobody scrapes does not grow by every sample. One test in its
//! own binary, since a recorder is installed once per process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokengate_server::{Admin, LogFormat, OpsArgs};

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A million samples of a histogram the servers export (8 MiB and more
/// while undrained).
fn record_a_million() {
    let histogram = metrics::histogram!(tokengate::core::metric_names::RATE_STATE_DURATION);
    for i in 0..1_000_000_u32 {
        histogram.record(f64::from(i % 1000) * 1e-6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_drained_without_a_scrape() {
    let args = OpsArgs {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        log_format: LogFormat::Pretty,
    };
    let _admin = Admin::bind(&args)
        .await
        .unwrap()
        .expect("an admin listener");
    // Drained every 5 s: each round's samples are gone before the next,
    // which reuses their memory.
    record_a_million();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = rss_kib();
    for _ in 0..3 {
        record_a_million();
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "three million samples kept: RSS grew {grown} KiB"
    );
}
