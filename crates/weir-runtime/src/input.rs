//! The input gate of a task: merges the channels from every upstream subtask, aligns barriers,
//! combines watermarks and notices when all inputs have ended.
//!
//! Operators never see raw channel messages: they see the events this gate yields, so barrier
//! alignment lives here once.
//!
//! Unaligned barriers are not aligned: the first one of a checkpoint to arrive (it overtook the
//! queued data, see [`crate::channel`]) is yielded at once, and from then on the gate records every
//! data batch that was sent before that checkpoint's barrier on its input — data the operators have
//! not seen at the snapshot, and which the checkpoint must therefore carry. Once every input has
//! delivered its barrier and everything sent before it, the gate yields the recording
//! ([`InputEvent::InFlight`]).

use crate::channel::{Received, Receiver};
use crate::watermark::{Progress, WatermarkMerge};
use arrow::record_batch::RecordBatch;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use weir_types::{Barrier, CheckpointId, Error, Message, Result, Watermark, WatermarkStatus};

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
    /// The minimum watermark over all live, active inputs advanced.
    Watermark(Watermark),
    /// Every live input went idle ([`WatermarkStatus::Idle`]), or one became active again.
    WatermarkStatus(WatermarkStatus),
    /// A barrier has arrived on every live input (aligned), or the first barrier of an unaligned
    /// checkpoint has arrived on any input.
    Barrier(Barrier),
    /// The data that was in flight at an unaligned checkpoint: every batch sent before the
    /// barrier on its input and read after the snapshot (already yielded as data too), in
    /// arrival order, with the index of its input.
    InFlight {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The recorded batches.
        batches: Vec<(usize, RecordBatch)>,
    },
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
    watermarks: WatermarkMerge,
    /// Events decided but not yet yielded (a message can cause two).
    ready: VecDeque<InputEvent>,
    pending_barrier: Option<Barrier>,
    recording: Option<Recording>,
    next: usize,
    ended: bool,
}

/// An unaligned checkpoint whose in-flight data is being recorded.
#[derive(Debug)]
struct Recording {
    checkpoint: CheckpointId,
    /// Per input: data-lane messages sent before its barrier, once that barrier arrived.
    upto: Vec<Option<u64>>,
    batches: Vec<(usize, RecordBatch)>,
}

impl InputGate {
    /// A gate over `inputs`.
    pub fn new(inputs: Vec<Receiver>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            states: vec![InputState::Open; n],
            watermarks: WatermarkMerge::new(n),
            ready: VecDeque::new(),
            pending_barrier: None,
            recording: None,
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
            if let Some(ev) = self.take_recording() {
                return Ok(ev);
            }
            if let Some(ev) = self.ready.pop_front() {
                return Ok(ev);
            }
            if self.ended {
                return Ok(InputEvent::End);
            }
            let (idx, received) = poll_fn(|cx| self.poll_any(cx)).await;
            let msg = match received {
                Some(Received::Overtaking { barrier, before }) => {
                    if let Some(ev) = self.on_overtaking(idx, barrier, before)? {
                        return Ok(ev);
                    }
                    continue;
                }
                Some(Received::Message(m, seq)) => {
                    if let (Message::Data(b), Some(r)) = (&m, &mut self.recording)
                        && r.upto[idx].is_none_or(|upto| seq <= upto)
                    {
                        r.batches.push((idx, b.clone()));
                    }
                    Some(m)
                }
                None => None,
            };
            if let Some(ev) = self.on_message(idx, msg)? {
                // The last input ended while a recording was open: it is whole now, and must be
                // yielded before the end (the next call yields `End`).
                if matches!(ev, InputEvent::End)
                    && let Some(recorded) = self.take_recording()
                {
                    return Ok(recorded);
                }
                return Ok(ev);
            }
        }
    }

    /// An unaligned barrier on input `idx`, sent after `before` data-lane messages.
    fn on_overtaking(
        &mut self,
        idx: usize,
        barrier: Barrier,
        before: u64,
    ) -> Result<Option<InputEvent>> {
        match &mut self.recording {
            Some(r) if r.checkpoint == barrier.checkpoint_id => {
                r.upto[idx] = Some(before);
                Ok(None)
            }
            Some(r) => Err(Error::internal(format!(
                "unaligned barrier {} arrived while checkpoint {} is still recording",
                barrier.checkpoint_id, r.checkpoint
            ))),
            None => {
                let mut upto = vec![None; self.inputs.len()];
                upto[idx] = Some(before);
                self.recording = Some(Recording {
                    checkpoint: barrier.checkpoint_id,
                    upto,
                    batches: Vec::new(),
                });
                Ok(Some(InputEvent::Barrier(barrier)))
            }
        }
    }

    /// The recording, once every input delivered its barrier and all data sent before it.
    fn take_recording(&mut self) -> Option<InputEvent> {
        let r = self.recording.as_ref()?;
        let done = (0..self.inputs.len()).all(|i| {
            self.states[i] == InputState::Ended
                || r.upto[i].is_some_and(|upto| self.inputs[i].received() >= upto)
        });
        if !done {
            return None;
        }
        let r = self.recording.take()?;
        Some(InputEvent::InFlight {
            checkpoint: r.checkpoint,
            batches: r.batches,
        })
    }

    fn poll_any(&mut self, cx: &mut std::task::Context<'_>) -> Poll<(usize, Option<Received>)> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.states[i] != InputState::Open {
                continue;
            }
            if let Poll::Ready(m) = self.inputs[i].poll_next(cx) {
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
                let p = self.watermarks.watermark(idx, w);
                Ok(self.progress(p))
            }
            Some(Message::WatermarkStatus(s)) => {
                let p = self.watermarks.set_status(idx, s);
                Ok(self.progress(p))
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
                let p = self.watermarks.end(idx);
                let released = self.try_release_barrier();
                if self.states.iter().all(|s| *s == InputState::Ended) {
                    self.ended = true;
                    return Ok(released.map(InputEvent::Barrier).or(Some(InputEvent::End)));
                }
                let progressed = self.progress(p);
                match released {
                    Some(b) => {
                        // The barrier first: it was aligned before this input's end moved time.
                        if let Some(ev) = progressed {
                            self.ready.push_front(ev);
                        }
                        Ok(Some(InputEvent::Barrier(b)))
                    }
                    None => Ok(progressed),
                }
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

    /// Turns a change of the merged watermarks into events: the first is returned, any second one
    /// queued.
    fn progress(&mut self, p: Progress) -> Option<InputEvent> {
        let mut events = Vec::new();
        if p.status == Some(WatermarkStatus::Active) {
            events.push(InputEvent::WatermarkStatus(WatermarkStatus::Active));
        }
        if let Some(w) = p.watermark {
            events.push(InputEvent::Watermark(w));
        }
        if p.status == Some(WatermarkStatus::Idle) {
            events.push(InputEvent::WatermarkStatus(WatermarkStatus::Idle));
        }
        let mut events = events.into_iter();
        let first = events.next();
        self.ready.extend(events);
        first
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
                InputEvent::Watermark(_)
                | InputEvent::WatermarkStatus(_)
                | InputEvent::InFlight { .. } => {}
                InputEvent::End => break,
            }
        }
        assert_eq!(seen, vec!["d1", "b1", "d10"]);
    }

    fn value(b: &RecordBatch) -> i32 {
        b.column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .expect("i32")
            .value(0)
    }

    #[tokio::test]
    async fn an_unaligned_barrier_overtakes_queued_data_and_the_gate_records_it() {
        let unaligned = Message::Barrier(Barrier {
            checkpoint_id: 1,
            kind: BarrierKind::Unaligned,
            triggered_at_ms: 0,
        });
        let (t0, r0) = channel(1 << 20);
        let (t1, r1) = channel(1 << 20);
        let mut gate = InputGate::new(vec![r0, r1]);
        for m in [
            data(1),
            data(2),
            unaligned.clone(),
            data(3),
            Message::EndOfStream,
        ] {
            t0.send(m).await.expect("send");
        }
        for m in [data(10), unaligned, data(11), Message::EndOfStream] {
            t1.send(m).await.expect("send");
        }
        let mut events = Vec::new();
        let mut recorded = Vec::new();
        loop {
            match gate.next().await.expect("event") {
                InputEvent::Data { batch, .. } => events.push(format!("d{}", value(&batch))),
                InputEvent::Barrier(b) => events.push(format!("b{}", b.checkpoint_id)),
                InputEvent::InFlight {
                    checkpoint,
                    batches,
                } => {
                    assert_eq!(checkpoint, 1);
                    events.push("recorded".into());
                    recorded = batches.iter().map(|(i, b)| (*i, value(b))).collect();
                }
                InputEvent::Watermark(_) | InputEvent::WatermarkStatus(_) => {}
                InputEvent::End => break,
            }
        }
        // The barrier comes before everything that was queued ahead of it.
        assert_eq!(events[0], "b1", "{events:?}");
        recorded.sort();
        // Exactly what was sent before each input's barrier is recorded; nothing sent after it.
        assert_eq!(recorded, vec![(0, 1), (0, 2), (1, 10)], "{events:?}");
        let pos = |e: &str| events.iter().position(|x| x == e).expect(e);
        assert!(pos("recorded") > pos("d2") && pos("recorded") > pos("d10"));
        let mut data: Vec<_> = events.iter().filter(|e| e.starts_with('d')).collect();
        data.sort();
        assert_eq!(data, ["d1", "d10", "d11", "d2", "d3"]);
    }

    #[tokio::test]
    async fn a_recording_open_when_every_input_ends_comes_before_the_end() {
        let unaligned = Message::Barrier(Barrier {
            checkpoint_id: 7,
            kind: BarrierKind::Unaligned,
            triggered_at_ms: 0,
        });
        let (t0, r0) = channel(1 << 20);
        let (t1, r1) = channel(1 << 20);
        let mut gate = InputGate::new(vec![r0, r1]);
        // Input 0 delivers its barrier; input 1 ends without one (its task finished earlier).
        for m in [data(1), unaligned, Message::EndOfStream] {
            t0.send(m).await.expect("send");
        }
        for m in [data(2), Message::EndOfStream] {
            t1.send(m).await.expect("send");
        }
        let mut events = Vec::new();
        loop {
            match gate.next().await.expect("event") {
                InputEvent::InFlight { checkpoint, .. } => events.push(format!("r{checkpoint}")),
                InputEvent::Barrier(b) => events.push(format!("b{}", b.checkpoint_id)),
                InputEvent::Data { batch, .. } => events.push(format!("d{}", value(&batch))),
                InputEvent::Watermark(_) | InputEvent::WatermarkStatus(_) => {}
                InputEvent::End => break,
            }
        }
        assert_eq!(events.first().map(String::as_str), Some("b7"), "{events:?}");
        assert!(
            events.contains(&"r7".to_string()),
            "recording lost: {events:?}"
        );
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

    #[tokio::test]
    async fn an_idle_input_is_left_out_until_it_is_active_again() {
        let (t0, r0) = channel(1 << 20);
        let (t1, r1) = channel(1 << 20);
        let mut gate = InputGate::new(vec![r0, r1]);
        t1.send(Message::WatermarkStatus(WatermarkStatus::Idle))
            .await
            .expect("send");
        t0.send(Message::Watermark(Watermark(5)))
            .await
            .expect("send");
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::Watermark(Watermark(5))
        ));
        // Input 0 goes idle too: the gate is idle.
        t0.send(Message::WatermarkStatus(WatermarkStatus::Idle))
            .await
            .expect("send");
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::WatermarkStatus(WatermarkStatus::Idle)
        ));
        // Input 1 comes back with a watermark: active first, then the watermark.
        t1.send(Message::WatermarkStatus(WatermarkStatus::Active))
            .await
            .expect("send");
        t1.send(Message::Watermark(Watermark(9)))
            .await
            .expect("send");
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::WatermarkStatus(WatermarkStatus::Active)
        ));
        assert!(matches!(
            gate.next().await.expect("event"),
            InputEvent::Watermark(Watermark(9))
        ));
    }
}
