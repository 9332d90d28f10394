//! Combining the watermarks of several inputs into one: the minimum over the inputs that are live
//! (not ended) and active (not idle).
//!
//! [`WatermarkMerge`] is a pure value. The input gate of every task keeps one over its channels;
//! a source that reads several splits (files, partitions) may keep one over its splits, feeding it
//! each split's watermark and idleness, and emit what it answers through
//! [`OperatorContext::emit_watermark`](crate::OperatorContext::emit_watermark) and
//! [`OperatorContext::mark_idle`](crate::OperatorContext::mark_idle).
//!
//! The rules:
//!
//! - Each input's watermark only moves forward (a lower one than it sent before is ignored).
//! - The combined watermark is the minimum over the live, active inputs, once each of them has
//!   sent one; it only moves forward, and each advance is reported once.
//! - An idle input does not hold the combined watermark back. Its status changes only when it says
//!   so ([`WatermarkMerge::set_status`]): a watermark it sends while idle is recorded and counts
//!   once it is active again. The combined watermark never goes back, even when a returning input
//!   is behind it. (A source that marks itself idle is made active again by the runtime before its
//!   next batch or watermark; a task whose inputs are all idle passes that on and stays idle until
//!   one of them is active again, even when an operator of it emits held rows or watermarks.)
//! - The merge is idle when every live input is idle. Unlike Apache Flink, which then advances to
//!   the largest watermark of any input, weir keeps the combined watermark where it was until an
//!   input is active again: rows an idle input sends later are then never late because of it.
//! - An ended input no longer counts at all; when the inputs that held the watermark back end, the
//!   others alone decide.

use weir_types::{Watermark, WatermarkStatus};

/// What changed after one call of a [`WatermarkMerge`] method. Pass it on in this order: a change
/// of status to [`WatermarkStatus::Active`], then the watermark, then a change to
/// [`WatermarkStatus::Idle`] (at most one status change comes at a time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The merged status changed to this.
    pub status: Option<WatermarkStatus>,
    /// The combined watermark advanced to this.
    pub watermark: Option<Watermark>,
}

impl Progress {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.watermark.is_none()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Input {
    watermark: Option<Watermark>,
    idle: bool,
    ended: bool,
}

/// The minimum watermark over several inputs, with idleness; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkMerge {
    inputs: Vec<Input>,
    combined: Option<Watermark>,
    status: WatermarkStatus,
}

impl WatermarkMerge {
    /// A merge over `inputs` inputs, all active and without a watermark yet.
    pub fn new(inputs: usize) -> Self {
        WatermarkMerge {
            inputs: vec![Input::default(); inputs],
            combined: None,
            status: WatermarkStatus::Active,
        }
    }

    /// Adds an input (a split discovered while running), active and without a watermark: it holds
    /// the combined watermark back until it sends one or goes idle. Returns its index.
    pub fn add_input(&mut self) -> usize {
        self.inputs.push(Input::default());
        self.inputs.len() - 1
    }

    /// The number of inputs, ended ones included.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The combined watermark reported so far.
    pub fn current(&self) -> Option<Watermark> {
        self.combined
    }

    /// The merged status.
    pub fn status(&self) -> WatermarkStatus {
        self.status
    }

    /// Input `input` sent watermark `w`. It counts now if the input is active, or once it is
    /// active again. Unknown and ended inputs are ignored.
    pub fn watermark(&mut self, input: usize, w: Watermark) -> Progress {
        let Some(i) = self.inputs.get_mut(input) else {
            return Progress::default();
        };
        if i.ended {
            return Progress::default();
        }
        i.watermark = Some(i.watermark.map_or(w, |old| old.max(w)));
        self.update()
    }

    /// Input `input` went idle or became active again. Unknown or ended inputs are ignored.
    pub fn set_status(&mut self, input: usize, status: WatermarkStatus) -> Progress {
        let Some(i) = self.inputs.get_mut(input) else {
            return Progress::default();
        };
        if i.ended {
            return Progress::default();
        }
        i.idle = status == WatermarkStatus::Idle;
        self.update()
    }

    /// Input `input` ended: it counts no more.
    pub fn end(&mut self, input: usize) -> Progress {
        let Some(i) = self.inputs.get_mut(input) else {
            return Progress::default();
        };
        i.ended = true;
        self.update()
    }

    fn update(&mut self) -> Progress {
        let live = self.inputs.iter().filter(|i| !i.ended);
        let mut any_live = false;
        let mut any_active = false;
        let mut min: Option<Watermark> = None;
        let mut waiting = false;
        for i in live {
            any_live = true;
            if i.idle {
                continue;
            }
            any_active = true;
            match i.watermark {
                None => waiting = true,
                Some(w) => min = Some(min.map_or(w, |m| m.min(w))),
            }
        }
        let status = if any_live && !any_active {
            WatermarkStatus::Idle
        } else {
            WatermarkStatus::Active
        };
        let mut progress = Progress::default();
        if status != self.status {
            self.status = status;
            progress.status = Some(status);
        }
        if !waiting
            && let Some(m) = min
            && self.combined.is_none_or(|c| m > c)
        {
            self.combined = Some(m);
            progress.watermark = Some(m);
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weir_types::WatermarkStatus::{Active, Idle};

    fn wm(p: Progress) -> Option<i64> {
        p.watermark.map(|w| w.0)
    }

    #[test]
    fn the_minimum_of_the_active_inputs_once_all_have_one() {
        let mut m = WatermarkMerge::new(2);
        assert_eq!(wm(m.watermark(0, Watermark(5))), None);
        assert_eq!(wm(m.watermark(1, Watermark(3))), Some(3));
        assert_eq!(wm(m.watermark(1, Watermark(9))), Some(5));
        // Going back on one input changes nothing.
        assert_eq!(wm(m.watermark(0, Watermark(1))), None);
        assert_eq!(m.current(), Some(Watermark(5)));
    }

    #[test]
    fn an_idle_input_does_not_hold_time_back_and_rejoins_without_going_back() {
        let mut m = WatermarkMerge::new(3);
        m.watermark(0, Watermark(10));
        m.watermark(1, Watermark(20));
        // Input 2 never sent a watermark: it holds everything back until it goes idle.
        assert_eq!(m.current(), None);
        assert_eq!(wm(m.set_status(2, Idle)), Some(10));
        assert_eq!(wm(m.set_status(0, Idle)), Some(20));
        // The last active input goes idle: the merge is idle, time stays.
        let p = m.set_status(1, Idle);
        assert_eq!(p.status, Some(Idle));
        assert_eq!(p.watermark, None);
        // A watermark of an idle input is kept for when it is active again.
        assert!(m.watermark(0, Watermark(12)).is_empty());
        // Input 0 comes back behind the combined watermark: active again, nothing goes back.
        let p = m.set_status(0, Active);
        assert_eq!(p.status, Some(Active));
        assert_eq!(p.watermark, None);
        assert_eq!(wm(m.watermark(0, Watermark(25))), Some(25));
    }

    #[test]
    fn ended_inputs_count_no_more() {
        let mut m = WatermarkMerge::new(2);
        m.watermark(0, Watermark(5));
        m.watermark(1, Watermark(3));
        assert_eq!(wm(m.end(1)), Some(5));
        // Watermarks of an ended input are ignored.
        assert!(m.watermark(1, Watermark(100)).is_empty());
        // An idle input beside only ended ones makes the merge idle.
        let p = m.set_status(0, Idle);
        assert_eq!(p.status, Some(Idle));
        // With every input ended the status is active again (there is nothing to wait for).
        assert_eq!(m.end(0).status, Some(Active));
    }

    #[test]
    fn a_new_input_holds_time_back_until_it_reports() {
        let mut m = WatermarkMerge::new(1);
        m.watermark(0, Watermark(7));
        let i = m.add_input();
        assert!(m.watermark(0, Watermark(9)).is_empty());
        assert_eq!(wm(m.watermark(i, Watermark(8))), Some(8));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Mark(usize, i64),
        Status(usize, bool),
        End(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, -5..50i64).prop_map(|(i, w)| Op::Mark(i, w)),
            (0..4usize, any::<bool>()).prop_map(|(i, idle)| Op::Status(i, idle)),
            (0..4usize).prop_map(Op::End),
        ]
    }

    proptest! {
        /// Reported watermarks strictly increase, and each is at most the watermark of every live
        /// active input at that moment; the reported status is idle exactly when every live input
        /// is idle.
        #[test]
        fn reports_increase_and_never_pass_an_active_input(ops in proptest::collection::vec(op(), 0..60)) {
            let mut m = WatermarkMerge::new(4);
            let mut marks: [Option<i64>; 4] = [None; 4];
            let mut idle = [false; 4];
            let mut ended = [false; 4];
            let mut last: Option<i64> = None;
            let mut status = Active;
            for o in ops {
                let p = match o {
                    Op::Mark(i, w) => {
                        if !ended[i] {
                            marks[i] = Some(marks[i].map_or(w, |o| o.max(w)));
                        }
                        m.watermark(i, Watermark(w))
                    }
                    Op::Status(i, is_idle) => {
                        if !ended[i] {
                            idle[i] = is_idle;
                        }
                        m.set_status(i, if is_idle { Idle } else { Active })
                    }
                    Op::End(i) => {
                        ended[i] = true;
                        m.end(i)
                    }
                };
                if let Some(w) = p.watermark {
                    prop_assert!(last.is_none_or(|l| w.0 > l));
                    last = Some(w.0);
                    for i in 0..4 {
                        if !ended[i] && !idle[i] {
                            prop_assert!(marks[i].is_some_and(|x| x >= w.0));
                        }
                    }
                }
                if let Some(s) = p.status {
                    prop_assert_ne!(s, status);
                    status = s;
                }
                let live: Vec<usize> = (0..4).filter(|i| !ended[*i]).collect();
                let all_idle = !live.is_empty() && live.iter().all(|i| idle[*i]);
                prop_assert_eq!(status == Idle, all_idle);
            }
        }
    }
}
