//! `GET /metrics`: the job's metrics in the Prometheus text format, encoded by
//! `prometheus-client` from a [`Collector`] that reads the [`Watch`] at scrape time (so no
//! counter is kept twice). Names follow Prometheus' conventions: a `weir_` prefix, base units in
//! the name (`_seconds`, `_bytes`), `_total` on counters; labels `job`, `step`, `subtask`.
//! `docs/observability.md` lists every metric.

use crate::watch::Watch;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::fmt::Error as FmtError;
use std::sync::Arc;
use weir_runtime::MetricsSnapshot;
use weir_runtime::metrics::BATCH_LATENCY_BUCKETS_S;
use weir_runtime::observe::CHECKPOINT_BUCKETS_S;

/// Reads a [`Watch`] on every scrape.
#[derive(Debug)]
pub struct JobCollector {
    watch: Arc<Watch>,
}

impl JobCollector {
    /// A collector over `watch`.
    pub fn new(watch: Arc<Watch>) -> Self {
        JobCollector { watch }
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(m: &mut MetricEncoder<'_>, labels: &Labels, v: u64) -> Result<(), FmtError> {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn counter_f(m: &mut MetricEncoder<'_>, labels: &Labels, v: f64) -> Result<(), FmtError> {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, f64, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder<'_>, labels: &Labels, v: f64) -> Result<(), FmtError> {
    m.encode_family(labels)?.encode_gauge(&v)
}

/// Writes one metric family: `rows` gives each series' labels and value.
fn family<T>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: &[T],
    mut write: impl FnMut(&mut MetricEncoder<'_>, &T) -> Result<(), FmtError>,
) -> Result<(), FmtError> {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for s in series {
        write(&mut m, s)?;
    }
    Ok(())
}

fn histogram(
    m: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
) -> Result<(), FmtError> {
    let buckets: Vec<(f64, u64)> = bounds.iter().copied().zip(counts.iter().copied()).collect();
    let count: u64 = counts.iter().sum();
    m.encode_family(labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for JobCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), FmtError> {
        let w = &self.watch;
        let job = w.info().name.clone();
        let (state, attempts, _) = w.state();
        let jl: Labels = vec![("job", job.clone())];
        let one = [()];
        family(
            &mut enc,
            "weir_job_info",
            "The job: its state as a label.",
            MetricType::Gauge,
            &one,
            |m, _| {
                let mut l = jl.clone();
                l.push(("state", crate::api::state_name(state)));
                gauge(m, &l, 1.0)
            },
        )?;
        family(
            &mut enc,
            "weir_job_uptime_seconds",
            "Seconds since the job started.",
            MetricType::Gauge,
            &one,
            |m, _| gauge(m, &jl, w.uptime().as_secs_f64()),
        )?;
        family(
            &mut enc,
            "weir_job_restarts",
            "Restarts from a checkpoint after a failure.",
            MetricType::Counter,
            &one,
            |m, _| counter(m, &jl, u64::from(attempts.saturating_sub(1))),
        )?;

        // Per step and subtask.
        let nodes = w.counters();
        let mut series: Vec<(Labels, MetricsSnapshot)> = Vec::new();
        for n in &nodes {
            for (i, s) in n.subtasks.iter().enumerate() {
                series.push((
                    vec![
                        ("job", job.clone()),
                        ("step", n.node.name.clone()),
                        ("subtask", i.to_string()),
                    ],
                    *s,
                ));
            }
        }
        let with = |l: &Labels, k: &'static str, v: &str| {
            let mut l = l.clone();
            l.push((k, v.to_string()));
            l
        };
        family(
            &mut enc,
            "weir_operator_rows",
            "Rows received (direction=in) and emitted (direction=out) by a step's subtask.",
            MetricType::Counter,
            &series,
            |m, (l, s)| {
                counter(m, &with(l, "direction", "in"), s.rows_in)?;
                counter(m, &with(l, "direction", "out"), s.rows_out)
            },
        )?;
        family(
            &mut enc,
            "weir_operator_bytes",
            "Bytes (Arrow memory size) received and emitted by a step's subtask.",
            MetricType::Counter,
            &series,
            |m, (l, s)| {
                counter(m, &with(l, "direction", "in"), s.bytes_in)?;
                counter(m, &with(l, "direction", "out"), s.bytes_out)
            },
        )?;
        family(
            &mut enc,
            "weir_operator_batches",
            "Batches emitted.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter(m, l, s.batches_out),
        )?;
        family(
            &mut enc,
            "weir_operator_errors",
            "Bad rows (failed or dead-lettered).",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter(m, l, s.errors),
        )?;
        family(
            &mut enc,
            "weir_operator_dead_letters",
            "Rows written to the dead-letter output.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter(m, l, s.dead_letters),
        )?;
        family(
            &mut enc,
            "weir_operator_late_rows",
            "Rows that arrived behind the watermark.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter(m, l, s.late_rows),
        )?;
        family(
            &mut enc,
            "weir_operator_busy_seconds",
            "Time spent working.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter_f(m, l, s.busy_ms as f64 / 1000.0),
        )?;
        family(
            &mut enc,
            "weir_operator_backpressured_seconds",
            "Time spent waiting for room downstream.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter_f(m, l, s.backpressured_ms as f64 / 1000.0),
        )?;
        family(
            &mut enc,
            "weir_operator_idle_seconds",
            "Time spent waiting for input.",
            MetricType::Counter,
            &series,
            |m, (l, s)| counter_f(m, l, s.idle_ms as f64 / 1000.0),
        )?;
        let watermarks: Vec<&(Labels, MetricsSnapshot)> = series
            .iter()
            .filter(|(_, s)| s.watermark_ms.is_some())
            .collect();
        family(
            &mut enc,
            "weir_operator_watermark_seconds",
            "The event-time watermark a subtask reached, seconds since the Unix epoch.",
            MetricType::Gauge,
            &watermarks,
            |m, (l, s)| gauge(m, l, s.watermark_ms.unwrap_or_default() as f64 / 1000.0),
        )?;
        let with_watermarks: Vec<&(Labels, MetricsSnapshot)> = series
            .iter()
            .filter(|(_, s)| s.watermark_ms.is_some() || s.watermark_idle_subtasks > 0)
            .collect();
        family(
            &mut enc,
            "weir_operator_watermark_idle",
            "1 while a subtask's watermark status is idle (its source, or every input, went idle).",
            MetricType::Gauge,
            &with_watermarks,
            |m, (l, s)| gauge(m, l, s.watermark_idle_subtasks as f64),
        )?;
        let stateful: Vec<&(Labels, MetricsSnapshot)> = series
            .iter()
            .filter(|(_, s)| s.state_bytes_peak > 0)
            .collect();
        family(
            &mut enc,
            "weir_operator_state_bytes",
            "Bytes a stateful subtask's keyed state holds in memory (approximately).",
            MetricType::Gauge,
            &stateful,
            |m, (l, s)| gauge(m, l, s.state_bytes as f64),
        )?;
        family(
            &mut enc,
            "weir_operator_state_entries",
            "Entries a stateful subtask's state holds (key and window groups, buffered rows).",
            MetricType::Gauge,
            &stateful,
            |m, (l, s)| gauge(m, l, s.state_entries as f64),
        )?;
        let queued: Vec<&(Labels, MetricsSnapshot)> = series
            .iter()
            .filter(|(_, s)| s.queue_capacity_bytes > 0)
            .collect();
        family(
            &mut enc,
            "weir_operator_input_queue_bytes",
            "Bytes waiting in a subtask's input queues.",
            MetricType::Gauge,
            &queued,
            |m, (l, s)| gauge(m, l, s.queued_bytes as f64),
        )?;
        family(
            &mut enc,
            "weir_operator_input_queue_capacity_bytes",
            "Capacity of a subtask's input queues.",
            MetricType::Gauge,
            &queued,
            |m, (l, s)| gauge(m, l, s.queue_capacity_bytes as f64),
        )?;
        let batching: Vec<&(Labels, MetricsSnapshot)> = series
            .iter()
            .filter(|(_, s)| s.batch_latency_buckets.iter().any(|&c| c > 0))
            .collect();
        family(
            &mut enc,
            "weir_operator_batch_latency_seconds",
            "Latency of the batches a batching step (inference) ran.",
            MetricType::Histogram,
            &batching,
            |m, (l, s)| {
                histogram(
                    m,
                    l,
                    &BATCH_LATENCY_BUCKETS_S,
                    &s.batch_latency_buckets,
                    s.batch_latency_sum_us as f64 / 1e6,
                )
            },
        )?;

        // Checkpoints.
        if let Some((t, _)) = w.checkpoints() {
            family(
                &mut enc,
                "weir_checkpoints",
                "Checkpoints by outcome (completed, failed).",
                MetricType::Counter,
                &one,
                |m, _| {
                    counter(m, &with(&jl, "status", "completed"), t.completed)?;
                    counter(m, &with(&jl, "status", "failed"), t.failed)
                },
            )?;
            family(
                &mut enc,
                "weir_checkpoints_in_progress",
                "Checkpoints triggered and not ended.",
                MetricType::Gauge,
                &one,
                |m, _| gauge(m, &jl, t.in_progress as f64),
            )?;
            family(
                &mut enc,
                "weir_checkpoint_duration_seconds",
                "Duration of completed checkpoints, trigger to manifest.",
                MetricType::Histogram,
                &one,
                |m, _| {
                    histogram(
                        m,
                        &jl,
                        &CHECKPOINT_BUCKETS_S,
                        &t.duration_buckets,
                        t.duration_sum_s,
                    )
                },
            )?;
            family(
                &mut enc,
                "weir_checkpoint_last_size_bytes",
                "Bytes of state in the newest completed checkpoint.",
                MetricType::Gauge,
                &one,
                |m, _| gauge(m, &jl, t.last_completed_size_bytes as f64),
            )?;
            family(
                &mut enc,
                "weir_checkpoint_last_referred_bytes",
                "Bytes of unchanged keyed state the newest completed checkpoint refers to in earlier checkpoints instead of writing them (incremental checkpoints).",
                MetricType::Gauge,
                &one,
                |m, _| gauge(m, &jl, t.last_completed_referred_bytes as f64),
            )?;
            family(
                &mut enc,
                "weir_checkpoint_last_completed_id",
                "Id of the newest completed checkpoint.",
                MetricType::Gauge,
                &one,
                |m, _| gauge(m, &jl, t.last_completed.unwrap_or(0) as f64),
            )?;
        }

        // Dead letters by reason.
        if let Some(log) = w.dead_letters() {
            let counts = log.counts();
            family(
                &mut enc,
                "weir_dead_letter_reasons",
                "Dead letters by step and reason.",
                MetricType::Counter,
                &counts,
                |m, c| {
                    let l: Labels = vec![
                        ("job", job.clone()),
                        ("step", c.operator.clone()),
                        ("reason", c.reason.clone()),
                    ];
                    counter(m, &l, c.count)
                },
            )?;
        }

        // Services.
        let services = w.services();
        let sl =
            |name: &str| -> Labels { vec![("job", job.clone()), ("service", name.to_string())] };
        family(
            &mut enc,
            "weir_service_instances",
            "Instances of a service by phase.",
            MetricType::Gauge,
            &services,
            |m, s| {
                gauge(m, &with(&sl(&s.name), "phase", "loading"), s.loading as f64)?;
                gauge(m, &with(&sl(&s.name), "phase", "ready"), s.ready as f64)?;
                gauge(
                    m,
                    &with(&sl(&s.name), "phase", "draining"),
                    s.draining as f64,
                )
            },
        )?;
        family(
            &mut enc,
            "weir_service_target_instances",
            "Instances a service wants.",
            MetricType::Gauge,
            &services,
            |m, s| gauge(m, &sl(&s.name), s.target as f64),
        )?;
        family(
            &mut enc,
            "weir_service_queued_requests",
            "Requests waiting for an instance.",
            MetricType::Gauge,
            &services,
            |m, s| gauge(m, &sl(&s.name), s.queued as f64),
        )?;
        family(
            &mut enc,
            "weir_service_in_flight_requests",
            "Requests sent to instances and not answered.",
            MetricType::Gauge,
            &services,
            |m, s| gauge(m, &sl(&s.name), s.in_flight as f64),
        )?;
        family(
            &mut enc,
            "weir_service_utilisation_ratio",
            "Share of the last interval the ready instances ran batches.",
            MetricType::Gauge,
            &services,
            |m, s| gauge(m, &sl(&s.name), s.utilisation),
        )?;
        family(
            &mut enc,
            "weir_service_requests",
            "Requests by outcome (answered, failed).",
            MetricType::Counter,
            &services,
            |m, s| {
                counter(m, &with(&sl(&s.name), "status", "answered"), s.answered)?;
                counter(m, &with(&sl(&s.name), "status", "failed"), s.failed)
            },
        )?;
        family(
            &mut enc,
            "weir_service_rows",
            "Rows of the answered requests.",
            MetricType::Counter,
            &services,
            |m, s| counter(m, &sl(&s.name), s.answered_rows),
        )?;
        family(
            &mut enc,
            "weir_service_retries",
            "Call attempts retried.",
            MetricType::Counter,
            &services,
            |m, s| counter(m, &sl(&s.name), s.retries),
        )?;
        family(
            &mut enc,
            "weir_service_instance_deaths",
            "Instances that died and were replaced.",
            MetricType::Counter,
            &services,
            |m, s| counter(m, &sl(&s.name), s.deaths),
        )?;
        family(
            &mut enc,
            "weir_service_latency_seconds",
            "Model call latency, first attempt to answer (queueing and retries included).",
            MetricType::Histogram,
            &services,
            |m, s| {
                let (bounds, counts, sum) = service_buckets(&s.latency_buckets);
                histogram(m, &sl(&s.name), &bounds, &counts, sum)
            },
        )?;
        Ok(())
    }
}

/// A service's 90 fine latency buckets (1.15^i ms) folded into every fifth bound, in seconds;
/// the sum is estimated from each bucket's upper bound (the service keeps no exact sum).
fn service_buckets(fine: &[u64]) -> (Vec<f64>, Vec<u64>, f64) {
    let mut bounds = Vec::new();
    let mut counts = Vec::new();
    let mut sum = 0.0;
    let mut acc = 0;
    for (i, &c) in fine.iter().enumerate() {
        let bound_ms = weir_infer::service::latency_bound_ms(i);
        acc += c;
        if bound_ms.is_finite() {
            sum += c as f64 * bound_ms / 1000.0;
        }
        let last = i + 1 == fine.len();
        if (i % 5 == 4 && bound_ms.is_finite()) || last {
            bounds.push(if bound_ms.is_finite() {
                bound_ms / 1000.0
            } else {
                f64::INFINITY
            });
            counts.push(acc);
            acc = 0;
        }
    }
    // The last group has no upper bound: its count goes to +Inf through the total.
    if bounds.last().is_some_and(|b| b.is_infinite()) {
        bounds.pop();
    }
    (bounds, counts, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_buckets_fold_and_keep_the_total() {
        let mut fine = vec![0u64; weir_infer::service::LATENCY_BUCKETS];
        fine[0] = 2;
        fine[7] = 3;
        fine[89] = 1;
        let (bounds, counts, _) = service_buckets(&fine);
        assert_eq!(counts.iter().sum::<u64>(), 6);
        assert_eq!(counts[0], 2);
        assert_eq!(counts[1], 3);
        assert!(bounds.iter().all(|b| b.is_finite()));
        assert_eq!(counts.len(), bounds.len() + 1);
    }
}
