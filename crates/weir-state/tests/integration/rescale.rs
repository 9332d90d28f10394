//! Property: a keyed computation over value, list and map state and event-time timers, snapshotted
//! at any point at parallelism p, redistributed and restored at p', gives the same answers as one
//! instance that never stopped; also with a state TTL in event time, whose last-update times are
//! snapshotted with the state.

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use proptest::prelude::*;
use std::sync::Arc;
use weir_checkpoint::redistribute;
use weir_state::{ListHandle, MapHandle, StateBackend, TimeDomain, ValueHandle};
use weir_types::KeyGroupRange;
use weir_types::key_group::subtask_of_key_group;

const MAX_PARALLELISM: u32 = 16;

fn schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]))
}

fn ints(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

/// One instance: a running sum (value), every value (list), a count per parity (map), and a timer
/// 10 ms after each event that reports the key's sum when it fires.
struct Instance {
    state: StateBackend,
    sum: ValueHandle,
    seen: ListHandle,
    parity: MapHandle,
}

/// A key's final state: key, sum, values seen, count per parity.
type Final = (String, i64, Vec<i64>, Vec<(i64, i64)>);

/// What the computation answers: timer firings and the final state of each key.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answers {
    fired: Vec<(String, i64, i64)>,
    finals: Vec<Final>,
}

impl Instance {
    fn new(range: KeyGroupRange, ttl: Option<i64>) -> Self {
        let mut state =
            StateBackend::new(vec![DataType::Utf8], MAX_PARALLELISM, range).expect("backend");
        state.set_ttl(ttl);
        let sum = state.value_state("sum", schema("sum")).expect("sum");
        let seen = state.list_state("seen", schema("v")).expect("seen");
        let parity = state
            .map_state("parity", &schema("parity"), schema("n"))
            .expect("parity");
        Instance {
            state,
            sum,
            seen,
            parity,
        }
    }

    fn event(&mut self, key: &str, value: i64, time: i64) {
        let mut ids = Vec::new();
        let k: ArrayRef = Arc::new(StringArray::from(vec![key]));
        self.state.intern(&[k], &mut ids).expect("intern");
        let (old, present) = self.state.value(self.sum).get(&ids).expect("get");
        let old = if present.value(0) {
            old.column(0).as_primitive::<Int64Type>().value(0)
        } else {
            0
        };
        let row = RecordBatch::try_new(schema("sum"), vec![ints(vec![old + value])]).expect("row");
        self.state.value_mut(self.sum).put(&ids, row).expect("put");
        let row = RecordBatch::try_new(schema("v"), vec![ints(vec![value])]).expect("row");
        self.state.list_mut(self.seen).add(&ids, row).expect("add");
        let p = ints(vec![value.rem_euclid(2)]);
        let (n, present) = self
            .state
            .map_mut(self.parity)
            .get(&ids, std::slice::from_ref(&p))
            .expect("get");
        let n = if present.value(0) {
            n.column(0).as_primitive::<Int64Type>().value(0)
        } else {
            0
        };
        let row = RecordBatch::try_new(schema("n"), vec![ints(vec![n + 1])]).expect("row");
        self.state
            .map_mut(self.parity)
            .put(&ids, &[p], row)
            .expect("put");
        self.state
            .timers_mut()
            .register(TimeDomain::EventTime, ids[0], time + 10);
        self.state.touch(&ids, time);
    }

    fn watermark(&mut self, w: i64, out: &mut Answers) {
        for f in self.state.timers_mut().advance_watermark(w) {
            let key = self.state.keys().key_arrays(&[f.key]).expect("key");
            let key = key[0].as_string::<i32>().value(0).to_string();
            let (s, _) = self.state.value(self.sum).get(&[f.key]).expect("get");
            out.fired.push((
                key,
                f.time,
                s.column(0).as_primitive::<Int64Type>().value(0),
            ));
        }
        self.state.expire(w).expect("expire");
    }

    fn finals(&mut self, out: &mut Answers) {
        let ids: Vec<u32> = self.state.value(self.sum).keys().collect();
        for id in ids {
            let key = self.state.keys().key_arrays(&[id]).expect("key");
            let key = key[0].as_string::<i32>().value(0).to_string();
            let (s, _) = self.state.value(self.sum).get(&[id]).expect("get");
            let s = s.column(0).as_primitive::<Int64Type>().value(0);
            let seen = self.state.list(self.seen).get(id).expect("list");
            let seen = seen.column(0).as_primitive::<Int64Type>().values().to_vec();
            let (mk, v) = self
                .state
                .map_mut(self.parity)
                .entries(id)
                .expect("entries");
            let mut parity: Vec<(i64, i64)> = mk[0]
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .zip(v.column(0).as_primitive::<Int64Type>().values())
                .map(|(a, b)| (*a, *b))
                .collect();
            parity.sort();
            out.finals.push((key, s, seen, parity));
        }
    }
}

/// Runs `events` with a watermark after each, at `p` instances until `cut`, then (snapshot,
/// redistribute) at `p2` instances to the end.
fn run(events: &[(String, i64, i64)], p: u32, cut: usize, p2: u32, ttl: Option<i64>) -> Answers {
    let mut out = Answers::default();
    let mut instances: Vec<Instance> = (0..p)
        .map(|i| Instance::new(KeyGroupRange::for_subtask(MAX_PARALLELISM, p, i), ttl))
        .collect();
    let mut max_time = i64::MIN;
    for (n, (key, value, time)) in events.iter().enumerate() {
        if n == cut {
            let old: Vec<(u32, weir_checkpoint::StateSnapshot)> = instances
                .iter()
                .enumerate()
                .map(|(i, inst)| (i as u32, inst.state.snapshot().expect("snapshot")))
                .collect();
            let new = redistribute(old, p2, MAX_PARALLELISM).expect("redistribute");
            instances = new
                .into_iter()
                .enumerate()
                .map(|(i, snap)| {
                    let mut inst = Instance::new(
                        KeyGroupRange::for_subtask(MAX_PARALLELISM, p2, i as u32),
                        ttl,
                    );
                    inst.state.restore(&snap).expect("restore");
                    inst
                })
                .collect();
        }
        let k: ArrayRef = Arc::new(StringArray::from(vec![key.as_str()]));
        let hash = weir_types::hash_keys(&[k]).expect("hash")[0];
        let kg = weir_types::key_group::key_group_of(hash, MAX_PARALLELISM);
        let owner = subtask_of_key_group(kg, MAX_PARALLELISM, instances.len() as u32);
        instances[owner as usize].event(key, *value, *time);
        max_time = max_time.max(*time);
        for inst in &mut instances {
            inst.watermark(max_time - 5, &mut out);
        }
    }
    for inst in &mut instances {
        inst.finals(&mut out);
    }
    out.fired.sort();
    out.finals.sort();
    out
}

fn arb_events() -> impl Strategy<Value = Vec<(String, i64, i64)>> {
    proptest::collection::vec(("[a-f]{1,2}", -50i64..50, 0i64..200), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn restore_at_another_parallelism_answers_as_if_never_stopped(
        events in arb_events(),
        p in 1u32..=4,
        p2 in 1u32..=5,
        cut_frac in 0.0f64..1.0,
    ) {
        let cut = ((events.len() as f64) * cut_frac) as usize;
        let straight = run(&events, 1, usize::MAX, 1, None);
        let rescaled = run(&events, p, cut, p2, None);
        prop_assert_eq!(straight, rescaled);
        let straight = run(&events, 1, usize::MAX, 1, Some(40));
        let rescaled = run(&events, p, cut, p2, Some(40));
        prop_assert_eq!(straight, rescaled);
    }
}

#[test]
fn a_part_of_a_foreign_key_group_is_refused() {
    let mut a = Instance::new(
        KeyGroupRange {
            start: 0,
            end: MAX_PARALLELISM,
        },
        None,
    );
    for k in ["a", "b", "c", "d", "e"] {
        a.event(k, 1, 0);
    }
    let snap = a.state.snapshot().expect("snapshot");
    let mut half = Instance::new(KeyGroupRange::for_subtask(MAX_PARALLELISM, 2, 0), None);
    let e = half.state.restore(&snap).expect_err("foreign key group");
    assert!(
        e.message().contains("was restored to the instance owning"),
        "{e}"
    );
    // A state the operator does not declare is named.
    let mut other = StateBackend::new(
        vec![DataType::Utf8],
        MAX_PARALLELISM,
        KeyGroupRange {
            start: 0,
            end: MAX_PARALLELISM,
        },
    )
    .expect("backend");
    let e = other.restore(&snap).expect_err("undeclared");
    assert!(e.message().contains("does not declare"), "{e}");
}

#[test]
fn a_ttl_drops_every_state_and_timer_of_keys_not_updated_for_it() {
    let all = KeyGroupRange {
        start: 0,
        end: MAX_PARALLELISM,
    };
    let events: Vec<(String, i64, i64)> = vec![
        ("a".into(), 1, 0),
        ("b".into(), 2, 0),
        ("b".into(), 3, 60),
        ("c".into(), 4, 100),
    ];
    // Without a TTL every key stays; with 40 ms, "a" (last updated at 0) is gone once the
    // watermark (max time - 5) passes 40, "b" (updated at 60) stays until 100.
    let kept = run(&events, 1, usize::MAX, 1, None);
    assert_eq!(kept.finals.len(), 3);
    let ttl = run(&events, 2, 3, 3, Some(40));
    let keys: Vec<&str> = ttl.finals.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(ttl.finals[0].2, [2, 3], "b's list kept both updates");

    // Timers of an expired key go too, and expire says which keys it dropped.
    let mut i = Instance::new(all, Some(40));
    i.event("a", 1, 0);
    i.state
        .timers_mut()
        .register(TimeDomain::EventTime, 0, 1_000);
    assert_eq!(i.state.last_touched(0), Some(0));
    assert_eq!(i.state.expire(39).expect("expire"), Vec::<u32>::new());
    assert_eq!(i.state.expire(40).expect("expire"), [0]);
    assert!(i.state.timers().is_empty());
    assert_eq!(i.state.last_touched(0), None);
    assert_eq!(i.state.list(i.seen).n_rows(), 0);
    assert!(i.state.value(i.sum).is_empty());
}
