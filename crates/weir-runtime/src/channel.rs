//! Channels bounded in bytes: a full channel makes its producer wait (credit-based backpressure).
//!
//! The capacity is a budget of bytes. Sending a message takes as many credits as the message's
//! [`Message::size_bytes`] (at most the whole capacity, so one huge batch still passes on an empty
//! channel); receiving it returns them. Control messages cost a nominal 64 bytes.
//!
//! Unaligned checkpoint barriers ([`BarrierKind::Unaligned`]) take a second, unbounded lane that
//! the receiver always reads first, so they overtake the queued data and never wait for credits.
//! Such a barrier carries how many messages the sender had put on the data lane before it; the
//! receiver uses that count to tell which of the messages it reads after the barrier were sent
//! before it (those are the checkpoint's in-flight data). A data message is never delivered ahead
//! of a barrier that was sent before it: after taking a message off the data lane the receiver
//! looks at the barrier lane again, and delivers a barrier found there first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use weir_types::{Barrier, BarrierKind, Message};

/// The sending half. Cloning is not offered: each channel has exactly one producer subtask.
#[derive(Debug)]
pub struct Sender {
    tx: mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>,
    priority: mpsc::UnboundedSender<(Barrier, u64)>,
    /// Messages put on the data lane so far.
    sent: AtomicU64,
    credits: Arc<Semaphore>,
    capacity: u32,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
    priority: mpsc::UnboundedReceiver<(Barrier, u64)>,
    /// A data-lane message taken off the lane but held back behind a barrier.
    held: Option<Option<(Message, OwnedSemaphorePermit)>>,
    /// Messages taken off the data lane so far.
    received: u64,
    credits: Arc<Semaphore>,
    capacity: u32,
}

/// What [`Receiver::poll_next`] yields.
#[derive(Debug)]
pub enum Received {
    /// The next message of the data lane, with its sequence number (1 for the first).
    Message(Message, u64),
    /// An unaligned barrier that overtook the data lane; the sender had put `before` messages on
    /// the data lane before it.
    Overtaking {
        /// The barrier.
        barrier: Barrier,
        /// Data-lane messages sent before it.
        before: u64,
    },
}

/// A read-only view of how full a channel is, for metrics; it keeps no message alive.
#[derive(Debug, Clone)]
pub struct QueueGauge {
    credits: Arc<Semaphore>,
    capacity: u32,
}

impl QueueGauge {
    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.credits.available_permits())
    }

    /// The channel's capacity in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.capacity as usize
    }
}

/// The receiver is gone (its task ended or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A channel holding at most `capacity_bytes` bytes of messages (clamped to `1..=u32::MAX`).
pub fn channel(capacity_bytes: usize) -> (Sender, Receiver) {
    let capacity = capacity_bytes.clamp(1, u32::MAX as usize) as u32;
    let credits = Arc::new(Semaphore::new(capacity as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    let (ptx, prx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            priority: ptx,
            sent: AtomicU64::new(0),
            credits: credits.clone(),
            capacity,
        },
        Receiver {
            rx,
            priority: prx,
            held: None,
            received: 0,
            credits,
            capacity,
        },
    )
}

impl Sender {
    /// Sends `msg`, waiting while the channel is full. Returns how long it waited for room.
    ///
    /// An unaligned barrier is not queued behind the data: it takes the barrier lane, at once.
    pub async fn send(&self, msg: Message) -> Result<Duration, Closed> {
        if let Message::Barrier(b) = &msg
            && b.kind == BarrierKind::Unaligned
        {
            let before = self.sent.load(Ordering::Acquire);
            self.priority.send((*b, before)).map_err(|_| Closed)?;
            return Ok(Duration::ZERO);
        }
        let need = (msg.size_bytes().min(self.capacity as usize)) as u32;
        let (permit, waited) = match self.credits.clone().try_acquire_many_owned(need) {
            Ok(p) => (p, Duration::ZERO),
            Err(_) => {
                let start = Instant::now();
                let p = self
                    .credits
                    .clone()
                    .acquire_many_owned(need)
                    .await
                    .map_err(|_| Closed)?;
                (p, start.elapsed())
            }
        };
        // Counted before it is visible to the receiver, so a barrier sent after it counts it.
        self.sent.fetch_add(1, Ordering::AcqRel);
        self.tx.send((msg, permit)).map_err(|_| Closed)?;
        Ok(waited)
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.capacity as usize - self.credits.available_permits()
    }
}

impl Receiver {
    /// A gauge of this channel's fill.
    pub fn gauge(&self) -> QueueGauge {
        QueueGauge {
            credits: self.credits.clone(),
            capacity: self.capacity,
        }
    }

    /// Receives the next message; `None` when the sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message (cancel-safe); an overtaking barrier comes as a plain barrier.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.poll_next(cx).map(|o| {
            o.map(|r| match r {
                Received::Message(m, _) => m,
                Received::Overtaking { barrier, .. } => Message::Barrier(barrier),
            })
        })
    }

    /// Polls for the next message or overtaking barrier (cancel-safe). `None` when the sender is
    /// gone and both lanes are empty.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        if let Ok((barrier, before)) = self.priority.try_recv() {
            return Poll::Ready(Some(Received::Overtaking { barrier, before }));
        }
        let next = match self.held.take() {
            Some(held) => held,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(m) => {
                    // A barrier sent before this message is visible now: it goes first.
                    if let Ok((barrier, before)) = self.priority.try_recv() {
                        self.held = Some(m);
                        return Poll::Ready(Some(Received::Overtaking { barrier, before }));
                    }
                    m
                }
                Poll::Pending => {
                    // Register for the barrier lane too, then look once more.
                    return match self.priority.poll_recv(cx) {
                        Poll::Ready(Some((barrier, before))) => {
                            Poll::Ready(Some(Received::Overtaking { barrier, before }))
                        }
                        _ => Poll::Pending,
                    };
                }
            },
        };
        Poll::Ready(next.map(|(m, _permit)| {
            self.received += 1;
            Received::Message(m, self.received)
        }))
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.capacity as usize - self.credits.available_permits()
    }

    /// Messages taken off the data lane so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The channel's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Wake producers blocked on credits so they see the channel is gone.
        self.credits.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::record_batch::RecordBatch;

    fn batch(n: i32) -> Message {
        let a = Int32Array::from_iter_values(0..n);
        Message::Data(RecordBatch::try_from_iter([("a", Arc::new(a) as _)]).expect("batch"))
    }

    #[tokio::test]
    async fn a_full_channel_blocks_the_producer_until_the_consumer_reads() {
        let one = batch(1000).size_bytes();
        let (tx, mut rx) = channel(one * 2);
        tx.send(batch(1000)).await.expect("send");
        tx.send(batch(1000)).await.expect("send");
        assert_eq!(tx.queued_bytes(), one * 2);
        // The third send cannot complete until something is received.
        let third = tokio::time::timeout(Duration::from_millis(50), tx.send(batch(1000))).await;
        assert!(third.is_err(), "send on a full channel must wait");
        assert!(rx.recv().await.is_some());
        tx.send(batch(1000)).await.expect("room after a receive");
    }

    #[tokio::test]
    async fn an_oversized_message_passes_an_empty_channel() {
        let (tx, mut rx) = channel(16);
        tx.send(batch(10_000)).await.expect("send");
        assert!(matches!(rx.recv().await, Some(Message::Data(_))));
    }

    #[tokio::test]
    async fn a_dropped_receiver_releases_a_blocked_sender() {
        let (tx, rx) = channel(100);
        tx.send(batch(100)).await.expect("send");
        let blocked = tokio::spawn(async move { tx.send(batch(100)).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.expect("join"), Err(Closed));
    }
}
