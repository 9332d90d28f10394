//! A harness that runs an operator spec at some parallelism through a script of batches,
//! watermarks and a rescale (snapshot every instance, redistribute, restore at another
//! parallelism), routing rows by key group as `key_by` does; and helpers to build and print
//! batches.

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::util::pretty::pretty_format_batches;
use std::sync::Arc;
use weir_checkpoint::{StateSnapshot, redistribute};
use weir_runtime::partition::split_by_key;
use weir_runtime::{Emitter, ErrorPolicy, Operator, OperatorContext, OperatorMetrics, TaskInfo};
use weir_types::{Barrier, BarrierKind, Watermark};

pub const MAX_PARALLELISM: u32 = 16;

/// One step of a script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Rows to input `0`.
    Rows(RecordBatch),
    /// Rows to input `i` (routed by that input's keys).
    Input(usize, RecordBatch),
    /// A watermark to every instance.
    Watermark(i64),
    /// Snapshot every instance, restore at this parallelism.
    Rescale(u32),
}

pub type Factory = dyn Fn() -> Box<dyn Operator>;

struct Instance {
    op: Box<dyn Operator>,
    ctx: OperatorContext,
}

pub fn context(name: &str, p: u32, i: u32, restored: Option<StateSnapshot>) -> OperatorContext {
    let info = TaskInfo {
        node: name.into(),
        subtask: i,
        parallelism: p,
        max_parallelism: MAX_PARALLELISM,
    };
    OperatorContext::new(
        info,
        ErrorPolicy::DeadLetter,
        Arc::new(OperatorMetrics::default()),
        tokio::runtime::Handle::current(),
    )
    .with_restored_state(restored, true)
}

/// What a run produced: the emitted rows and the dead letters' errors.
#[derive(Debug, Default)]
pub struct Output {
    pub batches: Vec<RecordBatch>,
    /// How many of `batches` were emitted before `finish`.
    pub before_finish: usize,
    pub dead: Vec<String>,
}

impl Output {
    /// The emitted rows, sorted, as a table (order between instances is not defined).
    pub fn sorted(&self) -> String {
        sorted_table(&self.batches)
    }
}

/// Rows of `batches` printed one per line, sorted.
pub fn sorted_table(batches: &[RecordBatch]) -> String {
    let Some(first) = batches.first() else {
        return String::new();
    };
    let all = concat_batches(&first.schema(), batches).expect("concat");
    let text = pretty_format_batches(&[all]).expect("pretty").to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    // Header (3 lines) and footer stay; rows are sorted.
    if lines.len() > 4 {
        let n = lines.len();
        lines[3..n - 1].sort();
    }
    lines.join("\n")
}

/// Runs `script` starting at parallelism `p`; `keys` are the routing columns (`None`: one
/// instance gets everything).
pub async fn run(factory: &Factory, keys: Option<&[&str]>, p: u32, script: &[Step]) -> Output {
    run_inputs(factory, &[keys], p, script).await
}

/// Runs `script` starting at parallelism `p`; `keys[i]` are input `i`'s routing columns.
pub async fn run_inputs(
    factory: &Factory,
    keys: &[Option<&[&str]>],
    p: u32,
    script: &[Step],
) -> Output {
    let mut out = Output::default();
    let mut instances: Vec<Instance> = (0..p)
        .map(|i| Instance {
            op: factory(),
            ctx: context("op", p, i, None),
        })
        .collect();
    for inst in &mut instances {
        inst.op.open(&mut inst.ctx).await.expect("open");
    }
    let keys: Vec<Option<Vec<String>>> = keys
        .iter()
        .map(|k| k.map(|k| k.iter().map(|s| s.to_string()).collect()))
        .collect();
    let mut checkpoint = 0;
    for step in script {
        match step {
            Step::Rows(batch) | Step::Input(_, batch) => {
                let input = match step {
                    Step::Input(i, _) => *i,
                    _ => 0,
                };
                let n = instances.len() as u32;
                let parts = match &keys[input] {
                    Some(k) => split_by_key(batch, k, MAX_PARALLELISM, n).expect("split"),
                    None => {
                        let mut v = vec![None; n as usize];
                        v[0] = Some(batch.clone());
                        v
                    }
                };
                for (i, part) in parts.into_iter().enumerate() {
                    if let Some(part) = part {
                        let inst = &mut instances[i];
                        let mut e = Emitter::default();
                        inst.ctx.set_input(input);
                        inst.op
                            .process_batch(part, &mut inst.ctx, &mut e)
                            .await
                            .expect("process");
                        out.batches.extend(e.take());
                    }
                }
            }
            Step::Watermark(w) => {
                for inst in &mut instances {
                    let mut e = Emitter::default();
                    inst.op
                        .on_watermark(Watermark(*w), &mut inst.ctx, &mut e)
                        .await
                        .expect("watermark");
                    out.batches.extend(e.take());
                }
            }
            Step::Rescale(p2) => {
                checkpoint += 1;
                let barrier = Barrier {
                    checkpoint_id: checkpoint,
                    kind: BarrierKind::Aligned,
                    triggered_at_ms: 0,
                };
                let mut old = Vec::new();
                for (i, inst) in instances.iter_mut().enumerate() {
                    let mut e = Emitter::default();
                    let snap = inst
                        .op
                        .snapshot(&barrier, &mut inst.ctx, &mut e)
                        .await
                        .expect("snapshot");
                    out.batches.extend(e.take());
                    // Through the bytes a checkpoint file holds.
                    let snap = StateSnapshot::decode(&snap.encode()).expect("decode");
                    old.push((i as u32, snap));
                }
                let new = redistribute(old, *p2, MAX_PARALLELISM).expect("redistribute");
                instances = new
                    .into_iter()
                    .enumerate()
                    .map(|(i, snap)| Instance {
                        op: factory(),
                        ctx: context("op", *p2, i as u32, Some(snap)),
                    })
                    .collect();
                for inst in &mut instances {
                    inst.op.open(&mut inst.ctx).await.expect("open restored");
                }
            }
        }
        for inst in &mut instances {
            out.dead
                .extend(inst.ctx.take_dead_letters().into_iter().map(|d| d.error));
        }
    }
    out.before_finish = out.batches.len();
    for inst in &mut instances {
        let mut e = Emitter::default();
        inst.op.finish(&mut inst.ctx, &mut e).await.expect("finish");
        out.batches.extend(e.take());
        out.dead
            .extend(inst.ctx.take_dead_letters().into_iter().map(|d| d.error));
    }
    out
}
