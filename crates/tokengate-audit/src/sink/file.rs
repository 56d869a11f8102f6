use std::fmt;
use std::fs::{OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};
use metrics::{Counter, Gauge, counter, gauge};
use tokengate_core::metric_names::{AUDIT_QUEUE_DEPTH, AUDIT_RECORDS, AUDIT_WRITER_LAG};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{AuditSink, Reservation};
use crate::hash_chain::{self, AuditKey};
use crate::record::AuditEvent;
use crate::record::AuditRecord;

mod writer;
use writer::{CONTROL_ROOM, Writer};

/// What a full queue does to the request that wants to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// Wait for room: a stalled disk stalls requests, never threads.
    ///
    /// Each request reserves room for its record before it is handled, in
    /// the audit service's `poll_ready`: an asynchronous wait that blocks
    /// no thread of the runtime (it needs tokio's timers, which
    /// `#[tokio::main]` enables). A request that finds room within the
    /// [wait bound](JsonLinesSinkBuilder::block_timeout) (default 5 s) is
    /// handled and its record is never lost. A request that does not is
    /// refused with 503 (reason `audit_unavailable`) without reaching the
    /// service, and its own record is counted in [`SinkStats::dropped`]
    /// (lost: the queue it would need is full). A record whose request
    /// came without a reservation (a `call` without `poll_ready`) takes
    /// room if there is any and is counted as dropped otherwise.
    ///
    /// Memory stays bounded by the queue: a queued record holds its box
    /// and a copy of what it shows of the request's path, query, user
    /// agent and request id, each bounded by its
    /// [`FieldLimits`](crate::FieldLimits) entry (a few KiB at the default
    /// limits, whatever the request sent), and nothing of the connection.
    /// While records wait to be written, at most the queue's capacity of
    /// requests are in flight.
    Block,
    /// Never wait: a record that finds the queue full is dropped and
    /// counted exactly in [`SinkStats::dropped`].
    Drop,
}

/// Counters of a [`JsonLinesSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStats {
    /// Records written.
    pub written: u64,
    /// Records dropped because the queue was full ([`Overflow::Drop`]).
    pub dropped: u64,
    /// Records lost: not written when the writer stopped (a write error
    /// that outlasted the shutdown grace), or sent after the shutdown.
    pub failed: u64,
}

/// Configuration of a [`JsonLinesSink`].
#[derive(Debug, Clone)]
pub struct JsonLinesSinkBuilder {
    capacity: usize,
    overflow: Overflow,
    flush_every: Duration,
    fsync: bool,
    key: Option<AuditKey>,
    block_timeout: Duration,
}

impl Default for JsonLinesSinkBuilder {
    fn default() -> Self {
        Self {
            capacity: 8_192,
            overflow: Overflow::Block,
            flush_every: Duration::from_secs(1),
            fsync: false,
            key: None,
            block_timeout: Duration::from_secs(5),
        }
    }
}

impl JsonLinesSinkBuilder {
    /// Records queued between requests and the writer (default 8,192).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// What a full queue does (default [`Overflow::Block`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How often buffered lines are flushed to the file (default 1 s, at
    /// least 1 ms), under load as well as when idle: a written record
    /// reaches the file within about this long.
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every.max(Duration::from_millis(1));
        self
    }

    /// How long a request waits for room under [`Overflow::Block`] before
    /// it is refused with 503 (default 5 s).
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block_timeout = timeout;
        self
    }

    /// Also `fsync` the file at every flush.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Chains records with HMAC-SHA256 under `key` instead of plain
    /// SHA-256, so that only a holder of the key can rewrite the file
    /// undetected (see [`crate::hash_chain`]). A file keeps one kind of chain.
    pub fn key(mut self, key: AuditKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Appends to the file at `path` (created if missing), continuing its
    /// hash chain.
    ///
    /// The sink holds an exclusive lock on the file while it lives: a
    /// second writer (another server started with the same audit file)
    /// fails here with an error naming the file, instead of interleaving
    /// two chains. A file that ends in a line torn by a crash gets a
    /// newline before the next record, and the chain continues from the
    /// last whole record.
    pub fn open(self, path: &Path) -> io::Result<JsonLinesSink> {
        let named = |error: io::Error| {
            io::Error::new(
                error.kind(),
                format!("audit file {}: {error}", path.display()),
            )
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(named)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(named(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "in use by another writer (is another server using the same audit file?)",
                )));
            }
            Err(TryLockError::Error(error)) => return Err(named(error)),
        }
        let tail = hash_chain::tail(&mut file, self.key.is_some()).map_err(named)?;
        let fsync = self.fsync;
        Ok(self.spawn(
            Destination::File {
                file: BufWriter::with_capacity(64 * 1024, file),
                fsync,
            },
            tail,
        ))
    }

    /// Writes to `writer`, a new chain from the genesis hash.
    pub fn writer(self, writer: impl Write + Send + 'static) -> JsonLinesSink {
        self.spawn(
            Destination::Writer(Box::new(writer)),
            hash_chain::Tail {
                last_hash: hash_chain::GENESIS.to_owned(),
                needs_newline: false,
            },
        )
    }

    fn spawn(self, destination: Destination, tail: hash_chain::Tail) -> JsonLinesSink {
        let block = self.overflow == Overflow::Block;
        // Under Block, room beyond the records' for flush and shutdown
        // messages, so that a reserved record always finds its place.
        let (sender, receiver) = bounded(self.capacity + if block { CONTROL_ROOM } else { 0 });
        let room = block.then(|| Arc::new(Semaphore::new(self.capacity)));
        let stats = Arc::new(Counters::new());
        let writer = Writer {
            receiver,
            destination,
            prev: tail.last_hash,
            needs_newline: tail.needs_newline,
            key: self.key,
            line: String::with_capacity(512),
            event: None,
            flush_every: self.flush_every,
            capacity: self.capacity,
            stats: Arc::clone(&stats),
            room: room.clone(),
            freed: 0,
            unreported: 0,
            last_ended: None,
            gave_up: false,
            stalling: false,
            written: 0,
        };
        let thread = std::thread::Builder::new()
            .name("tokengate-audit".into())
            .spawn(move || writer.run())
            .ok();
        JsonLinesSink {
            shared: Arc::new(Shared {
                sender,
                overflow: self.overflow,
                room,
                block_timeout: self.block_timeout,
                stats,
                thread: Mutex::new(thread),
            }),
        }
    }
}

/// A JSON-lines audit file with a dedicated writer thread, a bounded
/// queue, an explicit [`Overflow`] policy, periodic and shutdown flushes,
/// optional fsync, and a hash chain (see [`crate::hash_chain`]).
///
/// Requests only hand the record to the queue; formatting, hashing and
/// I/O happen on the writer thread. While records keep coming the writer
/// drains the queue every millisecond instead of being woken for each one
/// (handing a record over then costs no system call); after 20 ms without
/// a record it parks until the next. Clones share the queue and the writer.
/// Call [`JsonLinesSink::shutdown`] at graceful shutdown to write
/// everything queued; dropping the last clone does the same.
#[derive(Clone)]
pub struct JsonLinesSink {
    shared: Arc<Shared>,
}

struct Shared {
    sender: Sender<Message>,
    overflow: Overflow,
    /// Under [`Overflow::Block`]: one permit per free place in the queue,
    /// taken by a request before it is handled, given back by the writer
    /// once it took the record off the queue ([`FREE_EVERY`] at a time,
    /// and all it freed whenever it finds the queue empty).
    room: Option<Arc<Semaphore>>,
    block_timeout: Duration,
    stats: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// The error the writer is retrying, while its writes fail.
    stalled: Mutex<Option<String>>,
    /// Set by the shutdown: a writer retrying a write gives up after the
    /// shutdown grace.
    closing: AtomicBool,
    /// The same counts for a `metrics` recorder, and the writer's gauges.
    metrics: SinkMetrics,
}

impl Counters {
    fn new() -> Self {
        let records = |result: &'static str| counter!(AUDIT_RECORDS, "result" => result);
        Self {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stalled: Mutex::new(None),
            closing: AtomicBool::new(false),
            metrics: SinkMetrics {
                written: records("written"),
                dropped: records("dropped"),
                failed: records("failed"),
                depth: gauge!(AUDIT_QUEUE_DEPTH),
                lag: gauge!(AUDIT_WRITER_LAG),
            },
        }
    }

    fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
        self.metrics.dropped.increment(1);
    }

    fn failed(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.metrics.failed.increment(1);
    }
}

struct SinkMetrics {
    written: Counter,
    dropped: Counter,
    failed: Counter,
    depth: Gauge,
    lag: Gauge,
}

enum Message {
    Record(AuditRecord),
    Flush(Sender<()>),
    Shutdown,
}

enum Destination {
    File {
        file: BufWriter<std::fs::File>,
        fsync: bool,
    },
    Writer(Box<dyn Write + Send>),
}

impl fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesSink")
            .field("overflow", &self.shared.overflow)
            .field("stats", &self.stats())
            .finish()
    }
}

impl JsonLinesSink {
    /// The default configuration, to adjust.
    pub fn builder() -> JsonLinesSinkBuilder {
        JsonLinesSinkBuilder::default()
    }

    /// Appends to `path` with the default configuration.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::builder().open(path)
    }

    /// The counters so far.
    pub fn stats(&self) -> SinkStats {
        let c = &self.shared.stats;
        SinkStats {
            written: c.written.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            failed: c.failed.load(Ordering::SeqCst),
        }
    }

    /// While the writer cannot write (a full disk, a failing device): the
    /// error it is retrying. `None` when writes succeed.
    ///
    /// A write that fails is retried, never skipped: the record keeps its
    /// place at the head of the queue and the chain waits for it. Behind
    /// it the queue fills, and then [`Overflow`] decides: under `Block`
    /// requests wait for room (and are refused with 503 after the wait
    /// bound), under `Drop` their records are dropped and counted. Either
    /// way no record is lost uncounted, and the writer goes on where it
    /// stopped as soon as the device takes writes again. Readiness probes
    /// should report this (`Deployment::readiness` in `tokengate` does).
    pub fn stalled(&self) -> Option<String> {
        self.shared
            .stats
            .stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until everything queued before this call is written and flushed.
    pub fn flush(&self) {
        let (ack, done) = bounded(1);
        if self.shared.sender.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Writes everything queued, flushes, and stops the writer. Records
    /// sent afterwards are counted as failed.
    pub fn shutdown(&self) {
        self.shared.stop();
    }
}

impl Shared {
    fn stop(&self) {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            self.stats.closing.store(true, Ordering::SeqCst);
            let _ = self.sender.send(Message::Shutdown);
            let _ = thread.join();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop();
    }
}

impl AuditSink for JsonLinesSink {
    fn record(&self, record: AuditRecord) {
        let shared = &*self.shared;
        // Without a reservation, a record takes room only if there is some:
        // waiting here would block the request's thread.
        let room = shared
            .room
            .as_ref()
            .is_none_or(|room| room.try_acquire().map(SemaphorePermit::forget).is_ok());
        if room {
            shared.send(record);
        } else {
            shared.stats.dropped();
        }
    }

    fn reserve(&self) -> Reservation {
        let Some(room) = &self.shared.room else {
            return Reservation::Ready;
        };
        if let Ok(permit) = room.try_acquire() {
            permit.forget();
            return Reservation::Ready;
        }
        let room = Arc::clone(room);
        let timeout = self.shared.block_timeout;
        Reservation::Wait(Box::pin(async move {
            match tokio::time::timeout(timeout, room.acquire_owned()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    true
                }
                _ => false,
            }
        }))
    }

    fn record_reserved(&self, record: AuditRecord) {
        self.shared.send(record);
    }

    fn release(&self) {
        if let Some(room) = &self.shared.room {
            room.add_permits(1);
        }
    }
}

impl Shared {
    /// Queues a record that has room (reserved, or not bounded by room).
    fn send(&self, record: AuditRecord) {
        match self.sender.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.failed();
            }
        }
    }
}
