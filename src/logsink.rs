//! Where log lines go. `env_logger` formats a record on the thread that logs it; the line is
//! then queued, without blocking, to one writer thread that owns stderr. A stalled stderr (a
//! pipe nobody reads, a wedged terminal, a slow journald) costs log lines, never the event
//! loops: when the queue is full the line is dropped and counted
//! (`shunt_log_lines_dropped_total`), and the writer catches up when stderr moves again.
//!
//! Owns: the queue, the writer thread, the drop counter, flushing before exit. The format and
//! the filters stay `env_logger`'s (set up in `main.rs`).

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// Lines the queue holds (about 0.5 MiB of typical session lines): enough to ride out a burst
/// of session ends while stderr is slow, small enough to be a bounded cost.
pub const QUEUE_LINES: usize = 4096;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<Sender<Msg>> = OnceLock::new();

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(Sender<()>),
}

/// Log lines dropped so far because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

/// The `Write` that `env_logger` is given as its target: each call carries one whole formatted
/// record, which is queued if there is room.
struct QueueWriter(Sender<Msg>);

impl Write for QueueWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        match self.0.try_send(Msg::Line(line.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Relaxed);
            }
            // The writer thread is gone (the process is exiting): nothing left to write to.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts the writer thread and returns the target to give `env_logger`. Call once, before the
/// logger is installed.
pub fn start() -> io::Result<Box<dyn Write + Send + 'static>> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    std::thread::Builder::new().name("shunt-log".into()).spawn(move || write_lines(rx))?;
    let _ = QUEUE.set(tx.clone());
    Ok(Box::new(QueueWriter(tx)))
}

fn write_lines(rx: Receiver<Msg>) {
    let stderr = io::stderr();
    for msg in rx {
        match msg {
            // why ignore errors: a closed stderr is no reason to stop serving; lines are lost.
            Msg::Line(line) => {
                let _ = stderr.lock().write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Waits until every line logged so far is written, for at most `limit` (stderr may be the
/// stalled one). Called before the process exits.
pub fn flush(limit: Duration) {
    let Some(queue) = QUEUE.get() else { return };
    let (tx, rx) = crossbeam_channel::bounded(1);
    if queue.send_timeout(Msg::Flush(tx), limit).is_ok() {
        let _ = rx.recv_timeout(limit);
    }
}
