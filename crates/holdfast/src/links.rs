//! The connections of an initiator whose session uses several of them
//! (PROTOCOL.md §17): one reader task and one writer task per connection,
//! so the driver waits on all of them at once through one channel of input.
//!
//! Bounded: each reader hands over at most one read buffer at a time per
//! slot of a shared channel, and writers only ever hold what the core
//! produced, which its credit window bounds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use holdfast_proto::ConnId;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::outbox::Outbox;
use crate::transport::{BoxStream, ConnectFuture, Connector};

/// Reads handed from the reader tasks to the driver, at most this many at once.
const INPUT_SLOTS: usize = 64;

/// What a connection's tasks report to the driver.
#[derive(Debug)]
pub(crate) enum LinkInput {
    /// Bytes read.
    Data(ConnId, Bytes),
    /// The connection ended (EOF, a read or a write error).
    Closed(ConnId),
}

/// One connection: where its bytes go, and its tasks.
struct Link {
    id: ConnId,
    writes: mpsc::UnboundedSender<Vec<Bytes>>,
    reader: JoinHandle<()>,
}

/// Every connection of the session.
pub(crate) struct Links {
    links: Vec<Link>,
    input_tx: mpsc::Sender<LinkInput>,
    input_rx: mpsc::Receiver<LinkInput>,
}

impl Links {
    /// No connections yet.
    pub(crate) fn new() -> Links {
        let (input_tx, input_rx) = mpsc::channel(INPUT_SLOTS);
        Links {
            links: Vec::new(),
            input_tx,
            input_rx,
        }
    }

    /// True with no connection.
    pub(crate) fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// How many connections there are.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// Starts the tasks of a new connection `id` over `stream`.
    pub(crate) fn add(&mut self, id: ConnId, stream: BoxStream, read_buffer: usize) {
        let (mut reader, writer) = crate::transport::split(stream);
        let input = self.input_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(read_buffer);
            loop {
                buf.reserve(read_buffer);
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = input.send(LinkInput::Closed(id)).await;
                        return;
                    }
                    Ok(_) => {
                        let data = buf.split().freeze();
                        if input.send(LinkInput::Data(id, data)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let (writes, mut queue) = mpsc::unbounded_channel::<Vec<Bytes>>();
        let input = self.input_tx.clone();
        tokio::spawn(async move {
            let mut outbox = Outbox::new(writer);
            while let Some(batch) = queue.recv().await {
                outbox.push(batch);
                // Whatever else is queued goes out in the same write.
                while let Ok(more) = queue.try_recv() {
                    outbox.push(more);
                }
                if outbox.drain().await.is_err() {
                    let _ = input.send(LinkInput::Closed(id)).await;
                    return;
                }
            }
            // Released: what was queued is written, then the write side closes.
            outbox.finish();
        });
        self.links.push(Link { id, writes, reader });
    }

    /// Queues bytes for connection `id` (dropped if it is gone).
    pub(crate) fn send(&mut self, id: ConnId, chunks: Vec<Bytes>) {
        if let Some(link) = self.links.iter().find(|l| l.id == id) {
            let _ = link.writes.send(chunks);
        }
    }

    /// Lets connection `id` go: its queued bytes are still written, then
    /// its write side is closed; nothing more is read from it.
    pub(crate) fn remove(&mut self, id: ConnId) {
        if let Some(i) = self.links.iter().position(|l| l.id == id) {
            let link = self.links.swap_remove(i);
            link.reader.abort();
        }
    }

    /// Lets every connection go that is not in `keep`.
    pub(crate) fn retain(&mut self, keep: &[ConnId]) {
        let gone: Vec<ConnId> = self
            .links
            .iter()
            .map(|l| l.id)
            .filter(|id| !keep.contains(id))
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// The next input from any connection. Input from a connection already
    /// let go may still arrive; the core ignores it.
    pub(crate) async fn next(&mut self) -> LinkInput {
        match self.input_rx.recv().await {
            Some(input) => input,
            // Unreachable: `self` holds a sender.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for link in &self.links {
            link.reader.abort();
        }
    }
}

/// Connects to several addresses of one target in turn (each new
/// connection of a session to the next address), so a session's
/// connections spread over the target's listen addresses.
pub struct RoundRobinConnector {
    connectors: Vec<Arc<dyn Connector>>,
    next: AtomicUsize,
}

impl RoundRobinConnector {
    /// A connector over `connectors` (at least one).
    ///
    /// # Panics
    /// If `connectors` is empty.
    pub fn new(connectors: Vec<Arc<dyn Connector>>) -> Self {
        assert!(
            !connectors.is_empty(),
            "a RoundRobinConnector needs at least one address"
        );
        RoundRobinConnector {
            connectors,
            next: AtomicUsize::new(0),
        }
    }
}

impl Connector for RoundRobinConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connectors.len();
        self.connectors[i].connect()
    }
}
