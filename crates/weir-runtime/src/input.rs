//! The input gate of a task: merges the channels from every upstream subtask, aligns barriers,
//! combines watermarks and notices when all inputs have ended.
//!
//! Operators never see raw channel messages: they see the events this gate yields, so barrier
//! alignment lives here once.

use crate::channel::Receiver;
use arrow::record_batch::RecordBatch;
use std::future::poll_fn;
use std::task::Poll;
use weir_types::{Barrier, CheckpointId, Error, Message, Result, Watermark};

/// What the gate yields to the task loop.
#[derive(Debug)]
pub enum InputEvent {
    /// A data batch from input `input`.
    Data {
        /// Index of the channel it came on.
        input: usize,
        /// The rows.
        batch: RecordBatch,
    },
    /// The minimum watermark over all live inputs advanced.
    Watermark(Watermark),
    /// A barrier has arrived on every live input (aligned).
    Barrier(Barrier),
    /// Every input has ended.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    Open,
    /// Delivered the barrier of this checkpoint; held until the others deliver it too.
    Blocked(CheckpointId),
    Ended,
}

/// Merges the input channels of one subtask.
#[derive(Debug)]
pub struct InputGate {
    inputs: Vec<Receiver>,
    states: Vec<InputState>,
    watermarks: Vec<Option<Watermark>>,
    combined: Option<Watermark>,
    pending_barrier: Option<Barrier>,
    next: usize,
    ended: bool,
}

impl InputGate {
    /// A gate over `inputs`.
    pub fn new(inputs: Vec<Receiver>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            states: vec![InputState::Open; n],
            watermarks: vec![None; n],
            combined: None,
            pending_barrier: None,
            next: 0,
            ended: n == 0,
        }
    }

    /// Bytes queued over all inputs.
    pub fn queued_bytes(&self) -> usize {
        self.inputs.iter().map(|r| r.queued_bytes()).sum()
    }

    /// The next event. Cancel-safe: if the future is dropped before it resolves, no message is lost.
    /// After [`InputEvent::End`] it keeps returning `End`.
    pub async fn next(&mut self) -> Result<InputEvent> {
        loop {
            if self.ended {
                return Ok(InputEvent::End);
            }
            let (idx, msg) = poll_fn(|cx| self.poll_any(cx)).await;
            if let Some(ev) = self.on_message(idx, msg)? {
                return Ok(ev);
            }
        }
    }

    fn poll_any(&mut self, cx: &mut std::task::Context<'_>) -> Poll<(usize, Option<Message>)> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.states[i] != InputState::Open {
                continue;
            }
            if let Poll::Ready(m) = self.inputs[i].poll_recv(cx) {
                self.next = (i + 1) % n;
                return Poll::Ready((i, m));
            }
        }
        Poll::Pending
    }

    fn on_message(&mut self, idx: usize, msg: Option<Message>) -> Result<Option<InputEvent>> {
        match msg {
            Some(Message::Data(batch)) => Ok(Some(InputEvent::Data { input: idx, batch })),
            Some(Message::Watermark(w)) => {
                self.watermarks[idx] = Some(self.watermarks[idx].map_or(w, |old| old.max(w)));
                Ok(self.advance_watermark().map(InputEvent::Watermark))
            }
            Some(Message::Barrier(b)) => {
                match self.pending_barrier {
                    Some(p) if p.checkpoint_id != b.checkpoint_id => {
                        return Err(Error::internal(format!(
                            "barrier {} arrived while aligning barrier {}",
                            b.checkpoint_id, p.checkpoint_id
                        )));
                    }
                    _ => self.pending_barrier = Some(b),
                }
                self.states[idx] = InputState::Blocked(b.checkpoint_id);
                Ok(self.try_release_barrier().map(InputEvent::Barrier))
            }
            Some(Message::EndOfStream) | None => {
                self.states[idx] = InputState::Ended;
                self.watermarks[idx] = None;
                if let Some(b) = self.try_release_barrier() {
                    return Ok(Some(InputEvent::Barrier(b)));
                }
                if self.states.iter().all(|s| *s == InputState::Ended) {
                    self.ended = true;
                    return Ok(Some(InputEvent::End));
                }
                Ok(self.advance_watermark().map(InputEvent::Watermark))
            }
        }
    }

    fn try_release_barrier(&mut self) -> Option<Barrier> {
        let b = self.pending_barrier?;
        let aligned = self.states.iter().all(|s| match s {
            InputState::Blocked(id) => *id == b.checkpoint_id,
            InputState::Ended => true,
            InputState::Open => false,
        });
        if !aligned {
            return None;
        }
        for s in &mut self.states {
            if matches!(s, InputState::Blocked(_)) {
                *s = InputState::Open;
            }
        }
        self.pending_barrier = None;
        Some(b)
    }

    fn advance_watermark(&mut self) -> Option<Watermark> {
        let live: Vec<_> = self
            .states
            .iter()
            .zip(&self.watermarks)
            .filter(|(s, _)| **s != InputState::Ended)
            .map(|(_, w)| *w)
            .collect();
        if live.is_empty() || live.iter().any(|w| w.is_none()) {
            return None;
        }
        let min = live.into_iter().flatten().min()?;
        if self.combined.is_none_or(|c| min > c) {
            self.combined = Some(min);
            return Some(min);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::channel;
    use arrow::array::Int32Array;
    use std::sync::Arc;
    use weir_types::BarrierKind;

    fn data(v: i32) -> Message {
        let a = Int32Array::from(vec![v]);
        Message::Data(RecordBatch::try_from_iter([("a", Arc::new(a) as _)]).expect("batch"))
    }
    fn barrier(id: u64) -> Message {
        Message::Barrier(Barrier {
            checkpoint_id: id,
            kind: BarrierKind::Aligned,
            triggered_at_ms: 0,
        })
    }

    #[tokio::test]
    async fn aligns_barriers_and_holds_inputs_that_delivered_theirs() {
        let (t0, r0) = channel(1 << 20);
        let (t1, r1) = channel(1 << 20);
        let mut gate = InputGate::new(vec![r0, r1]);
        t0.send(barrier(1)).await.expect("send");
        t0.send(data(10)).await.expect("send"); // after the barrier: must wait
        t1.send(data(1)).await.expect("send");
        t1.send(barrier(1)).await.expect("send");
        t0.send(Message::EndOfStream).await.expect("send");
        t1.send(Message::EndOfStream).await.expect("send");
        let mut seen = Vec::new();
        loop {
            match gate.next().await.expect("event") {
                InputEvent::Data { batch, .. } => {
                    let a = batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<Int32Array>()
                        .expect("i32");
                    seen.push(format!("d{}", a.value(0)));
                }
                InputEvent::Barrier(b) => seen.push(format!("b{}", b.checkpoint_id)),
                InputEvent::Watermark(_) => {}
                InputEvent::End => break,
            }
        }
        assert_eq!(seen, vec!["d1", "b1", "d10"]);
    }

    #[tokio::test]
    async fn watermark_is_the_minimum_over_live_inputs() {
        let (t0, r0) = channel(1 << 20);
        let (t1, r1) = channel(1 << 20);
        let mut gate = InputGate::new(vec![r0, r1]);
        t0.send(Message::Watermark(Watermark(5)))
            .await
            .expect("send");
        t1.send(Message::Watermark(Watermark(3)))
            .await
            .expect("send");
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::Watermark(Watermark(3))
        ));
        // When the slower input ends, the faster one alone decides.
        t1.send(Message::EndOfStream).await.expect("send");
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::Watermark(Watermark(5))
        ));
        t0.send(Message::EndOfStream).await.expect("send");
        assert!(matches!(gate.next().await.expect("event"), InputEvent::End));
    }
}
