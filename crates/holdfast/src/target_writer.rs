//! The target's write side of one connection: the engine writes a batch
//! straight to the socket when the socket takes it, and a small task per
//! connection writes whatever the socket did not take once it is writable.
//!
//! Handing every batch to a writer task instead cost a channel send and a
//! task wake-up (often a cross-thread one) per batch; on a 2-core VM
//! cross-thread wake-ups were about a tenth of the CPU of a 4 KiB echo at
//! QD 32, and dropping this one gained about 4% calls/s there. Both sides
//! share one [`Outbox`] behind a mutex that is never held across an await.
//!
//! Only one of the two ever waits for the socket: the engine tries a write
//! (with a no-op waker) only when nothing is pending, that is when the task
//! is not waiting for the socket, so the engine can never replace the
//! task's waker. The task is told through a [`Notify`] when bytes are left.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::outbox::Outbox;
use crate::transport::WriteHalf;

/// How long a closing connection may take to flush its last bytes before
/// its socket is torn down regardless.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the engine and the connection's task share.
struct Shared {
    /// The socket's write half and its queue; `None` once the connection is
    /// killed or broken (the socket half is dropped with it).
    outbox: Option<Outbox>,
    /// The engine let the connection go: flush, then close the write side.
    closing: bool,
    /// This connection's share of `queued` (its outbox's pending bytes
    /// when last counted).
    counted: usize,
    /// Bytes waiting in every connection's outbox, for the target's memory
    /// budget.
    queued: Arc<AtomicUsize>,
}

impl Shared {
    /// Brings this connection's share of the shared count up to date; call
    /// after every change to the outbox.
    fn recount(&mut self) {
        let now = self.outbox.as_ref().map_or(0, Outbox::pending_len);
        if now > self.counted {
            self.queued.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            self.queued.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }
}

impl Drop for Shared {
    /// Whatever was still queued is gone with the connection.
    fn drop(&mut self) {
        self.queued.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// The engine's end of one connection's write side. The queue is unbounded
/// so the engine never blocks on a slow peer, but its bytes are counted: a
/// peer that stops reading is dropped, not buffered for.
pub(crate) struct ConnWriter {
    shared: Arc<Mutex<Shared>>,
    /// Tells the task that bytes are left or that the connection closes.
    wake: Arc<Notify>,
    /// Set to true to stop both of the connection's tasks at once.
    kill: Arc<watch::Sender<bool>>,
}

impl ConnWriter {
    /// Takes over `sink` and starts its task; `kill` also stops the reader.
    /// The bytes it holds waiting for the socket are counted in `queued`.
    pub(crate) fn spawn(
        sink: WriteHalf,
        kill: watch::Sender<bool>,
        queued: Arc<AtomicUsize>,
    ) -> ConnWriter {
        let shared = Arc::new(Mutex::new(Shared {
            outbox: Some(Outbox::new(sink)),
            closing: false,
            counted: 0,
            queued,
        }));
        let wake = Arc::new(Notify::new());
        let kill = Arc::new(kill);
        let task = WriterTask {
            shared: shared.clone(),
            wake: wake.clone(),
            kill: kill.clone(),
        };
        let stop = kill.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = killed(stop) => {}
                () = task.run() => {}
            }
        });
        ConnWriter { shared, wake, kill }
    }

    /// Writes `chunks` now as far as the socket takes them and queues the
    /// rest; returns how many bytes now wait for the socket (0 as well when
    /// the connection is broken: its reader reports that).
    pub(crate) fn send(&self, chunks: Vec<Bytes>) -> usize {
        let mut shared = lock(&self.shared);
        let Some(out) = shared.outbox.as_mut() else {
            return 0;
        };
        let idle = !out.has_pending();
        out.push(chunks);
        // Only when the task is not waiting for the socket (see the module
        // comment); otherwise it writes these too once the socket is ready.
        let broken = idle && out.write_now().is_err();
        if !broken {
            let pending = out.pending_len();
            if idle && pending > 0 {
                self.wake.notify_one();
            }
            shared.recount();
            return pending;
        }
        shared.outbox = None;
        shared.recount();
        drop(shared);
        let _ = self.kill.send(true);
        0
    }

    /// Tears the connection down now, dropping whatever is queued.
    pub(crate) fn kill(self) {
        let mut shared = lock(&self.shared);
        shared.outbox = None;
        shared.recount();
        drop(shared);
        let _ = self.kill.send(true);
    }

    /// Flushes what is queued, then closes the write side; a peer that does
    /// not take the bytes within [`CLOSE_GRACE`] is cut off. (Dropping the
    /// writer does the same.)
    pub(crate) fn close(self) {}
}

impl Drop for ConnWriter {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        if shared.outbox.is_none() || shared.closing {
            return;
        }
        shared.closing = true;
        drop(shared);
        self.wake.notify_one();
        let kill = self.kill.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    let _ = kill.send(true);
                });
            }
            // The runtime is going away: so is the connection.
            Err(_) => {
                let _ = kill.send(true);
            }
        }
    }
}

/// The connection's task: writes what the engine's writes left, closes.
struct WriterTask {
    shared: Arc<Mutex<Shared>>,
    wake: Arc<Notify>,
    kill: Arc<watch::Sender<bool>>,
}

impl WriterTask {
    async fn run(self) {
        loop {
            self.wake.notified().await;
            let done = poll_fn(|cx| {
                let mut shared = lock(&self.shared);
                let closing = shared.closing;
                let Some(out) = shared.outbox.as_mut() else {
                    return Poll::Ready(true);
                };
                let polled = if closing {
                    out.poll_shutdown(cx)
                } else {
                    out.poll_drain(cx)
                };
                let result = match polled {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) if !closing => Poll::Ready(false),
                    // Closed, or the socket failed: let it go.
                    Poll::Ready(_) => {
                        shared.outbox = None;
                        Poll::Ready(true)
                    }
                };
                shared.recount();
                result
            })
            .await;
            if done {
                // A broken socket also stops the reader; a clean close
                // leaves it to read the peer's end.
                if !lock(&self.shared).closing {
                    let _ = self.kill.send(true);
                }
                return;
            }
        }
    }
}

/// Locks `shared`; a panic elsewhere while it was held cannot leave it
/// inconsistent (every update is a single assignment or an outbox call
/// that keeps its queue whole), so a poisoned lock is used as it is.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolves once `kill` is set (or its sender is gone).
pub(crate) async fn killed(mut kill: watch::Receiver<bool>) {
    let _ = kill.wait_for(|k| *k).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn numbered(len: u32, salt: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_add(salt))
                .collect::<Vec<u8>>(),
        )
    }

    #[tokio::test]
    async fn batches_arrive_in_order_whether_written_at_once_or_by_the_task() {
        // A 1 KiB pipe: the first batch goes out at once in part, the rest
        // waits for the task while more batches queue behind it.
        let (a, mut b) = tokio::io::duplex(1024);
        let (kill, _stop) = watch::channel(false);
        let w = ConnWriter::spawn(Box::new(a), kill, Arc::default());
        let mut want = Vec::new();
        let mut most_pending = 0;
        for round in 0..20u8 {
            let batch = vec![
                Bytes::from_static(b"head"),
                numbered(20_000 + u32::from(round), round),
                numbered(100, round),
            ];
            for c in &batch {
                want.extend_from_slice(c);
            }
            most_pending = most_pending.max(w.send(batch));
        }
        assert!(most_pending > 1024, "the pipe cannot have taken it all");
        w.close();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read to the close");
        assert_eq!(got.len(), want.len(), "bytes lost or added");
        assert!(got == want, "bytes reordered");
    }

    #[tokio::test]
    async fn the_bytes_waiting_are_counted_and_kill_drops_them() {
        let (a, mut b) = tokio::io::duplex(64);
        let (kill, mut stop) = watch::channel(false);
        let w = ConnWriter::spawn(Box::new(a), kill, Arc::default());
        let pending = w.send(vec![numbered(10_000, 0)]);
        assert_eq!(pending, 10_000 - 64, "all but what the pipe took");
        assert_eq!(w.send(vec![numbered(500, 1)]), 10_000 - 64 + 500);
        w.kill();
        assert!(*stop.borrow_and_update(), "the reader is told to stop");
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got.len(), 64, "nothing written after the kill");
    }

    #[tokio::test]
    async fn the_bytes_waiting_are_counted_across_connections_until_gone() {
        let queued = Arc::new(AtomicUsize::new(0));
        let (a, mut b) = tokio::io::duplex(64);
        let (c, _d) = tokio::io::duplex(64);
        let (kill_a, _stop_a) = watch::channel(false);
        let (kill_c, _stop_c) = watch::channel(false);
        let wa = ConnWriter::spawn(Box::new(a), kill_a, queued.clone());
        let wc = ConnWriter::spawn(Box::new(c), kill_c, queued.clone());
        wa.send(vec![numbered(1000, 0)]);
        wc.send(vec![numbered(500, 0)]);
        assert_eq!(queued.load(Ordering::Relaxed), 1000 - 64 + 500 - 64);
        wc.kill();
        assert_eq!(queued.load(Ordering::Relaxed), 1000 - 64);
        // The reader takes everything: the task writes the rest.
        let mut got = vec![0u8; 1000];
        b.read_exact(&mut got).await.expect("read");
        wa.close();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.expect("read to the close");
        assert_eq!(queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_broken_socket_stops_the_connection() {
        let (a, b) = tokio::io::duplex(64);
        let (kill, mut stop) = watch::channel(false);
        let w = ConnWriter::spawn(Box::new(a), kill, Arc::default());
        drop(b);
        assert_eq!(w.send(vec![Bytes::from_static(b"lost")]), 0);
        stop.wait_for(|k| *k).await.expect("told to stop");
    }
}
