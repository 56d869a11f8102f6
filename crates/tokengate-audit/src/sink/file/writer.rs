//! The writer thread: records from the queue to the file, in batches,
//! each line linked into the hash chain.

use super::*;

pub(super) struct Writer {
    pub(super) receiver: Receiver<Message>,
    pub(super) destination: Destination,
    pub(super) prev: String,
    /// The file ends in a torn line: end it before the next record.
    pub(super) needs_newline: bool,
    pub(super) key: Option<AuditKey>,
    /// The line being written, reused for every record.
    pub(super) line: String,
    /// The event being written, reused for every record.
    pub(super) event: Option<AuditEvent>,
    pub(super) flush_every: Duration,
    pub(super) capacity: usize,
    pub(super) stats: Arc<Counters>,
    pub(super) room: Option<Arc<Semaphore>>,
    /// Bytes of the line being written that the destination has taken
    /// (a write that failed part way).
    pub(super) written: usize,
    /// Places taken off the queue and not yet given back to `room`.
    pub(super) freed: usize,
    /// Records written since the metrics were last told, and when the
    /// last of them ended: told once per batch, like the room.
    pub(super) unreported: u64,
    pub(super) last_ended: Option<SystemTime>,
    /// A shutdown's grace ran out while a write failed: later failures
    /// are counted at once.
    pub(super) gave_up: bool,
    /// Writes are failing (the shared [`Counters::stalled`] holds the
    /// error); kept here so a successful write reads no lock.
    pub(super) stalling: bool,
}

/// How many places the writer frees before it gives them back to waiting
/// requests at once (and it gives back whatever it freed whenever it finds
/// the queue empty): one semaphore lock per batch instead of one per
/// record, while a request waiting for room waits at most this many
/// records longer.
const FREE_EVERY: usize = 64;

/// Places in the queue beyond the records' capacity, for flush and
/// shutdown messages.
pub(super) const CONTROL_ROOM: usize = 64;

/// How long the writer naps between drains while records keep coming
/// (at most the flush interval). Longer naps mean larger batches: fewer
/// wake-ups and a warmer cache per record (`BENCHMARKS.md` has the
/// writer's CPU per record at both naps).
const NAP: Duration = Duration::from_millis(5);
/// The first pause before a failed write is tried again; each failure
/// doubles it, up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between two tries of a failed write.
const RETRY_AT_MOST: Duration = Duration::from_millis(500);
/// How long a shutting-down writer keeps retrying a failed write before it
/// counts what is left as failed (a server stopping on a full disk).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The nap after a drain that found the queue a quarter full or more, so a
/// small queue does not fill (and block or drop) while the writer sleeps.
const SHORT_NAP: Duration = Duration::from_millis(1);
/// How long the queue must stay empty before the writer parks until the
/// next record (and is woken by it).
const PARK_AFTER: Duration = Duration::from_millis(20);

impl Writer {
    /// Drains the queue until it is shut down.
    ///
    /// Under load the writer never parks: it drains what is queued, writes
    /// it as one batch, and naps for [`NAP`] ([`SHORT_NAP`] when the batch
    /// filled a quarter of the queue). A sender wakes a receiver
    /// only when one is parked, so requests hand records over without a
    /// system call (a futex wake per request, and the cross-core interrupt
    /// behind it, cost more than the rest of the audit path together).
    /// After [`PARK_AFTER`] without a record the writer parks, and the next
    /// record wakes it: an idle server does not spin.
    pub(super) fn run(mut self) {
        let mut last_record = Instant::now();
        let mut last_flush = Instant::now();
        // Records written since the queue was last found empty.
        let mut batch = 0usize;
        loop {
            let message = match self.receiver.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    if batch > 0 {
                        last_record = Instant::now();
                        // Drained: nothing waits for the writer now (set
                        // before the count is told, so a reader that sees
                        // every record written sees the queue empty).
                        self.stats.metrics.depth.set(0.0);
                    }
                    self.give_back_room();
                    if last_flush.elapsed() >= self.flush_every {
                        self.flush();
                        last_flush = Instant::now();
                    }
                    if last_record.elapsed() < PARK_AFTER {
                        let nap = if batch >= self.capacity / 4 {
                            SHORT_NAP
                        } else {
                            NAP
                        };
                        batch = 0;
                        std::thread::sleep(nap.min(self.flush_every));
                        continue;
                    }
                    match self.receiver.recv_timeout(self.flush_every) {
                        Ok(message) => message,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match message {
                Message::Record(record) => {
                    if batch == 0 {
                        // The queue's depth as the writer comes back to it.
                        #[allow(clippy::cast_precision_loss)]
                        self.stats
                            .metrics
                            .depth
                            .set((self.receiver.len() + 1) as f64);
                    }
                    self.take_off_queue();
                    self.write_record(record);
                    batch += 1;
                }
                Message::Flush(ack) => {
                    self.flush();
                    last_flush = Instant::now();
                    let _ = ack.send(());
                }
                Message::Shutdown => break,
            }
        }
        // Whatever was queued before the shutdown is still written.
        while let Ok(message) = self.receiver.try_recv() {
            if let Message::Record(record) = message {
                self.take_off_queue();
                self.write_record(record);
            }
        }
        self.give_back_room();
        self.flush();
    }

    /// A record left the queue: its place is free for the next request,
    /// given back with the next [`FREE_EVERY`] or when the queue is empty.
    fn take_off_queue(&mut self) {
        self.freed += 1;
        if self.freed >= FREE_EVERY {
            self.give_back_room();
        }
    }

    /// Gives the freed places back, and tells the metrics what was
    /// written since the last time (the count, and the last record's lag).
    fn give_back_room(&mut self) {
        let freed = std::mem::take(&mut self.freed);
        if freed > 0
            && let Some(room) = &self.room
        {
            room.add_permits(freed);
        }
        let metrics = &self.stats.metrics;
        metrics
            .written
            .increment(std::mem::take(&mut self.unreported));
        if let Some(ended) = self.last_ended.take() {
            let lag = SystemTime::now().duration_since(ended).unwrap_or_default();
            metrics.lag.set(lag.as_secs_f64());
        }
    }

    /// Writes `record` through the one event the writer keeps, so its
    /// strings' buffers serve every record.
    fn write_record(&mut self, record: AuditRecord) {
        self.last_ended = Some(record.ended_at());
        let mut event = self.event.take().unwrap_or_else(AuditEvent::blank);
        record.fill(&mut event);
        self.write(&event);
        self.event = Some(event);
    }

    /// Writes one record's line, retrying until it is written: a record is
    /// never skipped (its successor's link names it), so a device that
    /// fails stalls the writer and the queue behind it fills instead (see
    /// [`JsonLinesSink::stalled`]). Only a writer shutting down gives up,
    /// after [`SHUTDOWN_GRACE`], and counts the record as failed.
    ///
    /// A failed write writes nothing twice: the next try goes on from the
    /// byte where the device stopped (and the file's buffer keeps what
    /// the device did not take), so the line comes out whole.
    fn write(&mut self, event: &AuditEvent) {
        let hash = hash_chain::link(event, &self.prev, self.key.as_ref(), &mut self.line);
        self.line.push('\n');
        let mut pause = RETRY_FIRST;
        let mut closing_since: Option<Instant> = None;
        loop {
            match self.try_write() {
                Ok(()) => break,
                Err(error) => {
                    if self.stats.closing.load(Ordering::SeqCst) {
                        let since = *closing_since.get_or_insert_with(Instant::now);
                        if self.gave_up || since.elapsed() >= SHUTDOWN_GRACE {
                            self.gave_up = true;
                            self.stats.failed();
                            tracing::error!(%error, "audit record lost: the writer stopped before the device took it");
                            return;
                        }
                    }
                    self.stall(&error);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_AT_MOST);
                }
            }
        }
        self.resume();
        self.prev.clear();
        self.prev.push_str(hash.as_str());
        self.stats.written.fetch_add(1, Ordering::SeqCst);
        self.unreported += 1;
    }

    /// Writes what is left of the line (and of the newline ending a torn
    /// line before it). A device that took part of it before failing has
    /// that part counted in `self.written`, so the next try goes on from
    /// there instead of writing it twice.
    fn try_write(&mut self) -> io::Result<()> {
        let out: &mut dyn Write = match &mut self.destination {
            Destination::File { file, .. } => file,
            Destination::Writer(writer) => writer,
        };
        // A torn last line (a crash mid-write) is ended first, so this
        // record is not glued to it.
        if self.needs_newline {
            write_from(out, b"\n", &mut self.written)?;
            self.needs_newline = false;
        }
        write_from(out, self.line.as_bytes(), &mut self.written)
    }

    /// A write failed: says so once (the log, [`JsonLinesSink::stalled`]).
    fn stall(&mut self, error: &io::Error) {
        let mut stalled = self
            .stats
            .stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.stalling = true;
        if stalled.is_none() {
            tracing::error!(%error, "cannot write the audit file; retrying (requests wait or their records are dropped, by the overflow policy)");
        }
        *stalled = Some(error.to_string());
    }

    /// A write succeeded: clears a stall.
    fn resume(&mut self) {
        if !std::mem::take(&mut self.stalling) {
            return;
        }
        let mut stalled = self
            .stats
            .stalled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if stalled.take().is_some() {
            tracing::warn!("audit file writable again; writing resumed");
        }
    }

    fn flush(&mut self) {
        let result = match &mut self.destination {
            Destination::File { file, fsync } => file.flush().and_then(|()| {
                if *fsync {
                    file.get_ref().sync_data()
                } else {
                    Ok(())
                }
            }),
            Destination::Writer(writer) => writer.flush(),
        };
        // While writes fail, the stall has been told already.
        if let Err(error) = result
            && !self.stalling
        {
            tracing::error!(%error, "could not flush the audit file");
        }
    }
}

/// Writes `bytes[*done..]` to `out`, advancing `done` by what was taken
/// (and back to 0 once all of it was); an error leaves `done` where the
/// device stopped.
fn write_from(out: &mut dyn Write, bytes: &[u8], done: &mut usize) -> io::Result<()> {
    while let Some(rest) = bytes.get(*done..).filter(|rest| !rest.is_empty()) {
        match out.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    *done = 0;
    Ok(())
}
