//! What held and what did not: the soak's table.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::cluster::Cluster;

/// How long after a fault ends its effects may still show (reconnects,
/// the feed's flush, a restarted instance's first requests).
pub(crate) const GRACE: Duration = Duration::from_secs(3);
/// Clients sending at once.
pub(crate) const CLIENTS: usize = 12;
/// Uses of the usage-limited token.
pub(crate) const USES: u64 = 300;

/// What one request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Read,
    Write,
    Unknown,
    Malformed,
    Limited,
    Uses,
    Admin,
    Victim,
}

/// One answer the client saw.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) at: Duration,
    pub(crate) instance: usize,
    pub(crate) kind: Kind,
    pub(crate) status: u16,
    pub(crate) latency: Duration,
    pub(crate) victim: Option<usize>,
}

/// A fault and when it was in force.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) name: &'static str,
    pub(crate) start: Duration,
    pub(crate) end: Duration,
}

impl Window {
    pub(crate) fn covers(&self, at: Duration) -> bool {
        at >= self.start && at <= self.end + GRACE
    }
}

/// One `/readyz` sample: when, which instance, its status (`None`: no answer).
pub(crate) type Sample = (Duration, usize, Option<u16>);

pub(crate) struct Report {
    pub(crate) seen: Vec<Seen>,
    pub(crate) windows: Vec<Window>,
    pub(crate) revoked: HashMap<usize, Duration>,
    pub(crate) elapsed: Duration,
    pub(crate) rss_warm: Vec<u64>,
    pub(crate) rss_end: Vec<u64>,
    pub(crate) fds: Vec<usize>,
    pub(crate) readiness: Vec<bool>,
    /// Each revocation: when, and how long until every instance refused.
    pub(crate) refusals: Vec<(Duration, Duration)>,
    /// The revocation prober's answers, by instance (audited too).
    pub(crate) probes: Vec<usize>,
    /// `/readyz` samples.
    pub(crate) samples: Vec<Sample>,
}

fn audit_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count())
}

impl Report {
    fn in_fault(&self, at: Duration) -> bool {
        self.windows.iter().any(|w| w.covers(at))
    }

    /// Prints the table; the number of failed assertions.
    pub(crate) fn print(&self, cluster: &Cluster) -> usize {
        let mut failures = 0;
        let mut row = |what: &str, value: String, ok: bool| {
            println!(
                "| {what} | {value} | {} |",
                if ok { "ok" } else { "FAILED" }
            );
            if !ok {
                failures += 1;
            }
        };
        println!("\nfaults:");
        for w in &self.windows {
            println!(
                "  {:>6.1}s - {:>6.1}s  {}",
                w.start.as_secs_f64(),
                w.end.as_secs_f64(),
                w.name
            );
        }
        println!("\n| assertion | measured | |\n|---|---|---|");
        let total = self.seen.len();
        row(
            "answers seen",
            format!(
                "{total} in {:.0} s ({:.0}/s)",
                self.elapsed.as_secs_f64(),
                total as f64 / self.elapsed.as_secs_f64()
            ),
            total > 0,
        );

        // Audit: one record per answer (Block mode), per instance.
        for (i, instance) in cluster.instances.iter().enumerate() {
            let answered = self.seen.iter().filter(|s| s.instance == i).count() + self.probes[i];
            let records = audit_lines(&instance.audit);
            if instance.killed {
                let missing = answered.saturating_sub(records);
                row(
                    &format!("instance {i} (SIGKILLed): audit records / answers"),
                    format!("{records} / {answered}, {missing} lost to the kill"),
                    records <= answered + 1 && missing < answered / 10 + 1000,
                );
            } else {
                row(
                    &format!("instance {i}: audit records / answers"),
                    format!("{records} / {answered}"),
                    records == answered,
                );
            }
        }

        // 5xx only inside fault windows.
        let outside: Vec<&Seen> = self
            .seen
            .iter()
            .filter(|s| s.status >= 500 && !self.in_fault(s.at))
            .collect();
        let inside = self
            .seen
            .iter()
            .filter(|s| s.status >= 500 && self.in_fault(s.at))
            .count();
        row(
            "5xx outside fault windows (+3 s)",
            format!("{} (inside: {inside})", outside.len()),
            outside.is_empty(),
        );

        // Revoked tokens refused within a second (outside faults).
        let mut worst = Duration::ZERO;
        let mut late = 0;
        for s in self
            .seen
            .iter()
            .filter(|s| s.kind == Kind::Victim && s.status == 200)
        {
            if let Some(at) = s.victim.and_then(|v| self.revoked.get(&v))
                && s.at > *at
            {
                worst = worst.max(s.at - *at);
                if s.at - *at > Duration::from_secs(1) && !self.in_fault(s.at) {
                    late += 1;
                }
            }
        }
        row(
            "admitted after revocation, latest",
            format!(
                "{:.0} ms after; {late} past 1 s outside faults",
                worst.as_secs_f64() * 1000.0
            ),
            late == 0,
        );

        // Every revocation refused by every instance within a second.
        let calm: Vec<Duration> = self
            .refusals
            .iter()
            .filter(|(at, _)| !self.in_fault(*at))
            .map(|(_, d)| *d)
            .collect();
        let worst_calm = calm.iter().max().copied().unwrap_or_default();
        let worst = self
            .refusals
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        row(
            "revocation refused by all instances",
            format!(
                "{} revocations; worst {:.0} ms outside faults, {:.0} ms overall",
                self.refusals.len(),
                worst_calm.as_secs_f64() * 1000.0,
                worst.as_secs_f64() * 1000.0
            ),
            !self.refusals.is_empty() && worst_calm <= Duration::from_secs(1),
        );

        // /readyz not ready only inside fault windows.
        let not_ready = |s: &&Sample| s.2.is_some_and(|code| code != 200);
        let outside = self
            .samples
            .iter()
            .filter(not_ready)
            .filter(|s| !self.in_fault(s.0))
            .count();
        let inside = self
            .samples
            .iter()
            .filter(not_ready)
            .filter(|s| self.in_fault(s.0))
            .count();
        row(
            "/readyz not ready outside fault windows (+3 s)",
            format!(
                "{outside} of {} samples (inside: {inside})",
                self.samples.len()
            ),
            outside == 0,
        );

        // The usage-limited token: never more than its uses.
        let uses = self
            .seen
            .iter()
            .filter(|s| s.kind == Kind::Uses && s.status == 200)
            .count() as u64;
        row(
            "usage-limited token admitted",
            format!("{uses} of {USES} uses"),
            uses <= USES,
        );

        // The quota across instances (shared in Redis) outside Redis faults.
        let limited: Vec<&Seen> = self
            .seen
            .iter()
            .filter(|s| s.kind == Kind::Limited && s.status == 200)
            .collect();
        let redis_fault = |at: Duration| {
            self.windows
                .iter()
                .filter(|w| w.name.starts_with("Redis"))
                .any(|w| w.covers(at))
        };
        let shared = limited.iter().filter(|s| !redis_fault(s.at)).count();
        let allowed = 10 + (self.elapsed.as_secs_f64()).ceil() as usize;
        row(
            "60/min quota (burst 10) admitted, Redis up",
            format!(
                "{shared} (at most {allowed}); {} in Redis faults",
                limited.len() - shared
            ),
            shared <= allowed,
        );

        // Memory, descriptors, readiness at the end.
        for i in 0..3 {
            let (warm, end) = (self.rss_warm.get(i).copied().unwrap_or(0), self.rss_end[i]);
            if cluster.instances[i].killed || i == 1 {
                row(
                    &format!("instance {i}: RSS at the end (restarted)"),
                    format!("{} MiB", end / 1024),
                    end < 512 * 1024,
                );
            } else {
                row(
                    &format!("instance {i}: RSS warm-up → end"),
                    format!("{} → {} MiB", warm / 1024, end / 1024),
                    end <= warm + 64 * 1024,
                );
            }
            row(
                &format!("instance {i}: open file descriptors"),
                self.fds[i].to_string(),
                self.fds[i] < 512,
            );
            row(
                &format!("instance {i}: ready at the end"),
                self.readiness[i].to_string(),
                self.readiness[i],
            );
        }

        // Throughput and tail outside faults.
        let mut calm: Vec<Duration> = self
            .seen
            .iter()
            .filter(|s| !self.in_fault(s.at))
            .map(|s| s.latency)
            .collect();
        calm.sort();
        let p99 = calm.get(calm.len() * 99 / 100).copied().unwrap_or_default();
        let fault_time: f64 = self
            .windows
            .iter()
            .map(|w| (w.end - w.start + GRACE).as_secs_f64())
            .sum();
        let calm_rate = calm.len() as f64 / (self.elapsed.as_secs_f64() - fault_time).max(1.0);
        row(
            "outside faults: answers/s, p99",
            format!("{calm_rate:.0}/s, {:.1} ms", p99.as_secs_f64() * 1000.0),
            true,
        );
        failures
    }
}
