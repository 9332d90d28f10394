//! Channels bounded in bytes: a full channel makes its producer wait (credit-based backpressure).
//!
//! The capacity is a budget of bytes. Sending a message takes as many credits as the message's
//! [`Message::size_bytes`] (at most the whole capacity, so one huge batch still passes on an empty
//! channel); receiving it returns them. Control messages cost a nominal 64 bytes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use weir_types::Message;

/// The sending half. Cloning is not offered: each channel has exactly one producer subtask.
#[derive(Debug)]
pub struct Sender {
    tx: mpsc::UnboundedSender<(Message, OwnedSemaphorePermit)>,
    credits: Arc<Semaphore>,
    capacity: u32,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
    credits: Arc<Semaphore>,
    capacity: u32,
}

/// The receiver is gone (its task ended or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A channel holding at most `capacity_bytes` bytes of messages (clamped to `1..=u32::MAX`).
pub fn channel(capacity_bytes: usize) -> (Sender, Receiver) {
    let capacity = capacity_bytes.clamp(1, u32::MAX as usize) as u32;
    let credits = Arc::new(Semaphore::new(capacity as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Sender {
            tx,
            credits: credits.clone(),
            capacity,
        },
        Receiver {
            rx,
            credits,
            capacity,
        },
    )
}

impl Sender {
    /// Sends `msg`, waiting while the channel is full. Returns how long it waited for room.
    pub async fn send(&self, msg: Message) -> Result<Duration, Closed> {
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
        self.tx.send((msg, permit)).map_err(|_| Closed)?;
        Ok(waited)
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.capacity as usize - self.credits.available_permits()
    }
}

impl Receiver {
    /// Receives the next message; `None` when the sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|(m, _permit)| m)
    }

    /// Polls for the next message (cancel-safe).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx).map(|o| o.map(|(m, _permit)| m))
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.capacity as usize - self.credits.available_permits()
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
