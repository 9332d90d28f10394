//! The error budget: whether a run made too many dead letters, and the message that says so
//! with the most frequent reasons. A pure function of the metrics, checked while the job runs and
//! at its end.

use weir_plan::ErrorBudget;
use weir_runtime::{NodeMetrics, NodeRole};

/// How many of the most frequent reasons the message lists.
const TOP: usize = 5;

/// `Some(message)` when the dead letters in `nodes` exceed `budget`. While the job runs
/// (`at_end == false`) nothing is judged before the sources read `budget.min_rows` rows (and at
/// least one). `reasons` (dead letters by step and reason, most frequent first) is asked for only
/// when the budget is exceeded, so a check every half second costs no copy of the log.
pub fn exceeded(
    budget: &ErrorBudget,
    nodes: &[NodeMetrics],
    reasons: impl FnOnce() -> Vec<(String, String, u64)>,
    at_end: bool,
) -> Option<String> {
    // Rows read: what the sources emitted plus what they could not read.
    let rows: u64 = nodes
        .iter()
        .filter(|n| n.role == NodeRole::Source)
        .map(|n| n.totals.rows_out + n.totals.dead_letters)
        .sum();
    let dead: u64 = nodes.iter().map(|n| n.totals.dead_letters).sum();
    if dead == 0 || (!at_end && rows < budget.min_rows.max(1)) {
        return None;
    }
    let fraction = dead as f64 / rows.max(1) as f64;
    if fraction <= budget.max_fraction {
        return None;
    }
    let mut msg = format!(
        "error budget exceeded: {dead} of {rows} rows read ({:.1}%) became dead letters, more than \
         the {:.1}% allowed (error_budget.max_fraction {}); most frequent reasons:",
        fraction * 100.0,
        budget.max_fraction * 100.0,
        budget.max_fraction
    );
    let reasons = reasons();
    for (node, reason, count) in reasons.iter().take(TOP) {
        msg.push_str(&format!("\n  {count:>8} × {node}: {reason}"));
    }
    if reasons.len() > TOP {
        let rest: u64 = reasons[TOP..].iter().map(|r| r.2).sum();
        msg.push_str(&format!("\n  {rest:>8} × other reasons"));
    }
    msg.push_str(
        "\nthe dead-letter output has every row with its error; raise error_budget.max_fraction \
         if this share is expected",
    );
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::MetricsSnapshot;

    fn node(name: &str, role: NodeRole, rows_out: u64, dead: u64) -> NodeMetrics {
        NodeMetrics {
            name: name.into(),
            role,
            parallelism: 1,
            totals: MetricsSnapshot {
                rows_out,
                dead_letters: dead,
                ..Default::default()
            },
            waiting: None,
        }
    }

    #[test]
    fn judges_the_share_of_rows_read() {
        let budget = ErrorBudget::default();
        let reasons = vec![(
            "read".to_string(),
            "json line does not fit the schema: expected string got N".to_string(),
            998,
        )];
        // F2: 998 of 999 rows dead-lettered by the source.
        let nodes = [
            node("read", NodeRole::Source, 1, 998),
            node("out", NodeRole::Sink, 0, 0),
        ];
        let m = exceeded(&budget, &nodes, || reasons.clone(), true).expect("over budget");
        assert!(m.contains("998 of 999 rows") && m.contains("99.9%"), "{m}");
        assert!(m.contains("998 × read: json line does not fit"), "{m}");
        // Half is still within the default budget; dead letters of later steps count too.
        let nodes = [
            node("read", NodeRole::Source, 10, 0),
            node("f", NodeRole::Operator, 5, 5),
        ];
        assert!(exceeded(&budget, &nodes, Vec::new, true).is_none());
        let nodes = [
            node("read", NodeRole::Source, 10, 0),
            node("f", NodeRole::Operator, 4, 6),
        ];
        assert!(exceeded(&budget, &nodes, Vec::new, true).is_some());
        // While running, the default budget waits for 1000 rows: one subtask that read only the
        // bad half of a file first (the flake CI once hit) is not judged alone.
        let nodes = [
            node("read", NodeRole::Source, 0, 495),
            node("out", NodeRole::Sink, 0, 0),
        ];
        assert!(exceeded(&budget, &nodes, Vec::new, false).is_none());
        // A tight budget, judged while running only after min_rows.
        let tight = ErrorBudget {
            max_fraction: 0.01,
            min_rows: 1000,
        };
        let nodes = [node("read", NodeRole::Source, 500, 50)];
        assert!(exceeded(&tight, &nodes, Vec::new, false).is_none());
        assert!(exceeded(&tight, &nodes, Vec::new, true).is_some());
        let nodes = [node("read", NodeRole::Source, 1980, 20)];
        assert!(
            exceeded(&tight, &nodes, Vec::new, false).is_none(),
            "1.0% is allowed"
        );
        let nodes = [node("read", NodeRole::Source, 1979, 21)];
        assert!(exceeded(&tight, &nodes, Vec::new, false).is_some());
    }
}
