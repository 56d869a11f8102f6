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
    pub(crate) name: String,
    pub(crate) start: Duration,
    pub(crate) end: Duration,
    /// The instances that must say, at least once inside the window,
    /// that they are not ready.
    pub(crate) unready: Vec<usize>,
}

impl Window {
    pub(crate) fn covers(&self, at: Duration) -> bool {
        at >= self.start && at <= self.end + GRACE
    }
}

/// One `/readyz` sample: when, which instance, its status (`None`: no answer).
pub(crate) type Sample = (Duration, usize, Option<u16>);

/// What one instance was at the end of the run.
#[derive(Debug, Clone, Default)]
pub(crate) struct End {
    pub(crate) rss_warm_kib: u64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
    pub(crate) threads: u64,
    pub(crate) ready: bool,
    /// `tokengate_audit_records_total{result="dropped"}`.
    pub(crate) dropped: f64,
    /// `tokengate_rate_state_fallbacks_total`.
    pub(crate) fallbacks: f64,
    /// `tokengate audit verify`: exit status and first line.
    pub(crate) verified: (Option<i32>, String),
    /// Started again during the run (its counters and RSS are the new
    /// process's).
    pub(crate) restarted: bool,
}

pub(crate) struct Report {
    pub(crate) seen: Vec<Seen>,
    pub(crate) windows: Vec<Window>,
    /// Faults that could not be injected here.
    pub(crate) skipped: Vec<String>,
    /// Victim → when its change was committed.
    pub(crate) changed: HashMap<usize, Duration>,
    pub(crate) elapsed: Duration,
    pub(crate) ends: Vec<End>,
    /// Each change: when, and how long until every instance obeyed it.
    pub(crate) obeyed: Vec<(Duration, Duration)>,
    /// Each rotation: when, and how long until every instance admitted
    /// the new token and the old.
    pub(crate) rotations: Vec<(Duration, Duration)>,
    /// The prober's answers, by instance (audited too).
    pub(crate) probes: Vec<usize>,
    /// `/readyz` samples.
    pub(crate) samples: Vec<Sample>,
    /// Lines of the audit files that name a rate-state fallback.
    pub(crate) audited_fallbacks: usize,
    /// Whether faults were injected (the no-fault run asserts no 5xx and
    /// ready throughout).
    pub(crate) faults: bool,
    /// Instance 0's RSS at each tenth of the run (KiB).
    pub(crate) rss_by_tenth: Vec<u64>,
}

/// The run's figures outside fault windows, to set beside another run's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Calm {
    pub(crate) per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

pub(crate) fn audit_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count())
}

impl Report {
    fn in_fault(&self, at: Duration) -> bool {
        self.windows.iter().any(|w| w.covers(at))
    }

    /// Prints the table; the number of failed assertions and the figures
    /// outside faults.
    pub(crate) fn print(&self, cluster: &Cluster) -> (usize, Calm) {
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
        if self.faults {
            println!("\nfaults:");
            println!("  (/readyz inside each, by instance: . ready, x not, - no answer)");
            for w in &self.windows {
                let readiness = |i: usize| -> String {
                    self.samples
                        .iter()
                        .filter(|s| s.1 == i && w.covers(s.0))
                        .map(|s| match s.2 {
                            Some(200) => '.',
                            Some(_) => 'x',
                            None => '-',
                        })
                        .collect()
                };
                println!(
                    "  {:>6.1}s - {:>6.1}s  {:<44} {} | {} | {}",
                    w.start.as_secs_f64(),
                    w.end.as_secs_f64(),
                    w.name,
                    readiness(0),
                    readiness(1),
                    readiness(2)
                );
            }
            for s in &self.skipped {
                println!("  skipped: {s}");
            }
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
        let required = std::env::var("TOKENGATE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        if self.faults && required {
            row(
                "faults injected",
                format!("{} ({} skipped)", self.windows.len(), self.skipped.len()),
                self.skipped.is_empty(),
            );
        }

        // Audit: one record per answer, per instance.
        for (i, instance) in cluster.instances.iter().enumerate() {
            let answered = self.seen.iter().filter(|s| s.instance == i).count() + self.probes[i];
            let records = audit_lines(&instance.audit);
            let end = &self.ends[i];
            if instance.killed {
                // What the writer had not flushed: at most its queue
                // (8,192, the default) and its 64 KiB buffer of lines.
                let missing = answered.saturating_sub(records);
                let bytes = std::fs::metadata(&instance.audit).map_or(0, |m| m.len());
                let line = (bytes / records.max(1) as u64).max(1);
                let bound = 8_192 + (64 * 1024 / line) as usize + 1;
                row(
                    &format!("instance {i} (SIGKILLed): audit records / answers"),
                    format!("{records} / {answered}, {missing} lost to the kill (at most {bound})"),
                    records <= answered && missing <= bound,
                );
            } else if instance.audit_flags.contains(&"drop") {
                let dropped = end.dropped as usize;
                row(
                    &format!("instance {i} (drop): audit records + dropped / answers"),
                    format!("{records} + {dropped} / {answered}"),
                    records + dropped == answered && (dropped > 0 || !self.faults),
                );
            } else {
                row(
                    &format!("instance {i} (block): audit records / answers"),
                    format!("{records} / {answered}"),
                    records == answered,
                );
            }
            let (code, line) = &end.verified;
            // 0: intact; 2: intact but for a line torn by the kill.
            let fine = if instance.killed {
                [0, 2].contains(&code.unwrap_or(1))
            } else {
                *code == Some(0)
            };
            row(
                &format!("instance {i}: tokengate audit verify"),
                line.clone(),
                fine,
            );
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

        // Changed tokens refused within a second (outside faults).
        let mut worst = Duration::ZERO;
        let mut late = 0;
        for s in self
            .seen
            .iter()
            .filter(|s| s.kind == Kind::Victim && s.status == 200)
        {
            if let Some(at) = s.victim.and_then(|v| self.changed.get(&v))
                && s.at > *at
            {
                worst = worst.max(s.at - *at);
                if s.at - *at > Duration::from_secs(1) && !self.in_fault(s.at) {
                    late += 1;
                }
            }
        }
        row(
            "load admitted after revoke/disable/update, latest",
            format!(
                "{:.0} ms after; {late} past 1 s outside faults",
                worst.as_secs_f64() * 1000.0
            ),
            late == 0,
        );

        // Every change obeyed by every instance within a second.
        let bound = |list: &[(Duration, Duration)]| {
            let calm = list
                .iter()
                .filter(|(at, _)| !self.in_fault(*at))
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default();
            let all = list.iter().map(|(_, d)| *d).max().unwrap_or_default();
            (calm, all)
        };
        let (calm, all) = bound(&self.obeyed);
        row(
            "revoke/disable/update obeyed by all instances",
            format!(
                "{} changes; worst {:.0} ms outside faults, {:.0} ms overall",
                self.obeyed.len(),
                calm.as_secs_f64() * 1000.0,
                all.as_secs_f64() * 1000.0
            ),
            !self.obeyed.is_empty() && calm <= Duration::from_secs(1),
        );
        let (calm, all) = bound(&self.rotations);
        row(
            "rotation: new and old token admitted by all instances",
            format!(
                "{} rotations; worst {:.0} ms outside faults, {:.0} ms overall",
                self.rotations.len(),
                calm.as_secs_f64() * 1000.0,
                all.as_secs_f64() * 1000.0
            ),
            !self.rotations.is_empty() && calm <= Duration::from_secs(1),
        );

        // /readyz: not ready only inside fault windows, and where a fault
        // takes a part away, not ready at least once inside it.
        let not_ready = |s: &&Sample| s.2.is_some_and(|code| code != 200);
        let outside = self
            .samples
            .iter()
            .filter(not_ready)
            .filter(|s| !self.in_fault(s.0))
            .count();
        row(
            "/readyz not ready outside fault windows (+3 s)",
            format!("{outside} of {} samples", self.samples.len()),
            outside == 0,
        );
        let unseen: Vec<String> = self
            .windows
            .iter()
            .flat_map(|w| w.unready.iter().map(move |i| (w, *i)))
            .filter(|(w, i)| {
                !self
                    .samples
                    .iter()
                    .any(|s| s.1 == *i && w.covers(s.0) && not_ready(&s))
            })
            .map(|(w, i)| format!("{} on instance {i}", w.name))
            .collect();
        if self.faults {
            row(
                "/readyz not ready during store, Redis and audit-disk faults",
                if unseen.is_empty() {
                    "every one".to_owned()
                } else {
                    format!("missed: {}", unseen.join("; "))
                },
                unseen.is_empty(),
            );
        }

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
        let fallbacks: f64 = self.ends.iter().map(|e| e.fallbacks).sum();
        let redis_faults = self.windows.iter().any(|w| w.name.starts_with("Redis"));
        row(
            "rate-state fallbacks (metrics; audit records naming one)",
            format!("{fallbacks:.0}; {}", self.audited_fallbacks),
            !redis_faults || (self.ends[0].fallbacks > 0.0 && self.audited_fallbacks > 0),
        );

        // Memory, descriptors, threads, readiness at the end.
        for (i, end) in self.ends.iter().enumerate() {
            if end.restarted {
                row(
                    &format!("instance {i}: RSS at the end (restarted)"),
                    format!("{} MiB", end.rss_kib / 1024),
                    end.rss_kib < 512 * 1024,
                );
            } else {
                row(
                    &format!("instance {i}: RSS warm-up → end (at most +32 MiB)"),
                    format!("{} → {} MiB", end.rss_warm_kib / 1024, end.rss_kib / 1024),
                    // The caches' bounds at this load: the negative cache
                    // holds 30 s of unknown tokens.
                    end.rss_kib <= end.rss_warm_kib + 32 * 1024,
                );
            }
            row(
                &format!("instance {i}: open files, threads"),
                format!("{}, {}", end.fds, end.threads),
                end.fds < 512 && end.threads < 64,
            );
            row(
                &format!("instance {i}: ready at the end"),
                end.ready.to_string(),
                end.ready,
            );
        }

        // Throughput and tail outside faults.
        let mut latencies: Vec<Duration> = self
            .seen
            .iter()
            .filter(|s| !self.in_fault(s.at))
            .map(|s| s.latency)
            .collect();
        latencies.sort();
        let at = |q: usize| {
            latencies
                .get(latencies.len() * q / 100)
                .copied()
                .unwrap_or_default()
        };
        // Time outside every window (+ grace), in tenths of a second.
        let tenths = (self.elapsed.as_millis() / 100) as u64;
        let calm_time = (0..tenths)
            .filter(|t| !self.in_fault(Duration::from_millis(t * 100)))
            .count() as f64
            / 10.0;
        let calm = Calm {
            per_second: latencies.len() as f64 / calm_time.max(1.0),
            p50: at(50),
            p99: at(99),
        };
        // Answers per second in each tenth of the run: flat, or falling.
        let tenth = self.elapsed.as_secs_f64() / 10.0;
        let mut by_tenth = [0_usize; 10];
        for s in &self.seen {
            by_tenth[((s.at.as_secs_f64() / tenth) as usize).min(9)] += 1;
        }
        let timeline: Vec<String> = by_tenth
            .iter()
            .map(|n| format!("{:.0}", *n as f64 / tenth))
            .collect();
        row(
            "answers/s in each tenth of the run",
            timeline.join(" "),
            true,
        );
        let rss: Vec<String> = self
            .rss_by_tenth
            .iter()
            .map(|kib| format!("{:.1}", *kib as f64 / 1024.0))
            .collect();
        row(
            "instance 0: RSS (MiB) at each tenth of the run",
            rss.join(" "),
            true,
        );
        row(
            "outside faults: answers/s, p50, p99",
            format!(
                "{:.0}/s, {:.1} ms, {:.1} ms",
                calm.per_second,
                calm.p50.as_secs_f64() * 1000.0,
                calm.p99.as_secs_f64() * 1000.0
            ),
            true,
        );
        (failures, calm)
    }
}
