//! The web UI: one server-rendered HTML page (the job graph laid out here as SVG, empty tables)
//! and one small script (`ui/app.js`) that polls `GET /api/v1/overview` every second and fills
//! in rates, colours, tables and the checkpoint chart. Both files are compiled into the binary:
//! nothing is fetched from anywhere else, and no request names a file.

use crate::watch::Watch;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use weir_runtime::observe::Topology;

const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");
const PAGE: &str = include_str!("../ui/index.html");

/// Width and height of a step's box, and the gaps between columns and rows.
const NODE_W: f64 = 180.0;
const NODE_H: f64 = 64.0;
const GAP_X: f64 = 70.0;
const GAP_Y: f64 = 26.0;
const MARGIN: f64 = 16.0;

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where each step is drawn: its column (the longest path from a source) and its row within
/// the column; the dead-letter sink below everything, under the last column.
pub fn layout(t: &Topology) -> BTreeMap<String, (usize, usize)> {
    let n = t.nodes.len();
    let index: BTreeMap<&str, usize> = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut col = vec![0usize; n];
    // Longest path by relaxation (the graph is acyclic: at most n rounds).
    for _ in 0..n {
        let mut changed = false;
        for e in t.edges.iter().filter(|e| e.partitioning != "dead letters") {
            if let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str()))
                && col[b] < col[a] + 1
            {
                col[b] = col[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut at: BTreeMap<String, (usize, usize)> = t
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, node)| !node.dead_letter)
        .map(|(i, node)| {
            let r = rows.entry(col[i]).or_insert(0);
            let at = (col[i], *r);
            *r += 1;
            (node.name.clone(), at)
        })
        .collect();
    // The dead-letter sink goes below the rest, under the last column: its dashed edges then
    // run down instead of across the other steps.
    let last_col = at.values().map(|a| a.0).max().unwrap_or(0);
    let below = rows.values().copied().max().unwrap_or(0);
    for node in t.nodes.iter().filter(|n| n.dead_letter) {
        at.insert(node.name.clone(), (last_col, below));
    }
    at
}

fn pos((c, r): (usize, usize)) -> (f64, f64) {
    (
        MARGIN + c as f64 * (NODE_W + GAP_X),
        MARGIN + r as f64 * (NODE_H + GAP_Y),
    )
}

/// The job graph as SVG: one `<g class="node" data-step=NAME>` per step (its name, a rate line
/// and a load line the script fills in) and one path per edge.
pub fn graph_svg(t: &Topology) -> String {
    let at = layout(t);
    let cols = at.values().map(|a| a.0).max().map_or(0, |c| c + 1);
    let rows = at.values().map(|a| a.1).max().map_or(0, |r| r + 1);
    let w = MARGIN * 2.0 + cols as f64 * NODE_W + cols.saturating_sub(1) as f64 * GAP_X;
    let h = MARGIN * 2.0 + rows as f64 * NODE_H + rows.saturating_sub(1) as f64 * GAP_Y;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="graph" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="job graph">"#
    );
    s.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z"/></marker></defs>"#);
    for e in &t.edges {
        let (Some(&a), Some(&b)) = (at.get(&e.from), at.get(&e.to)) else {
            continue;
        };
        let ((x1, y1), (x2, y2)) = (pos(a), pos(b));
        let dead = e.partitioning == "dead letters";
        // Data edges run from a box's right side to the next box's left side; dead letters
        // from a box's bottom down to the dead-letter sink's top.
        let d = if dead {
            let (x1, y1, x2, y2) = (x1 + NODE_W / 2.0, y1 + NODE_H, x2 + NODE_W / 2.0, y2);
            let my = (y1 + y2) / 2.0;
            format!("M{x1:.0},{y1:.0} C{x1:.0},{my:.0} {x2:.0},{my:.0} {x2:.0},{y2:.0}")
        } else {
            let (x1, y1, x2, y2) = (x1 + NODE_W, y1 + NODE_H / 2.0, x2, y2 + NODE_H / 2.0);
            let mx = (x1 + x2) / 2.0;
            format!("M{x1:.0},{y1:.0} C{mx:.0},{y1:.0} {mx:.0},{y2:.0} {x2:.0},{y2:.0}")
        };
        let class = if dead {
            "edge dead"
        } else if e.chained {
            "edge chained"
        } else {
            "edge"
        };
        let _ = write!(
            s,
            r#"<path class="{class}" d="{d}" marker-end="url(#arrow)"><title>{} → {}: {}{}</title></path>"#,
            escape(&e.from),
            escape(&e.to),
            escape(&e.partitioning),
            if e.chained { " (chained)" } else { "" }
        );
    }
    for node in &t.nodes {
        let Some(&a) = at.get(&node.name) else {
            continue;
        };
        let (x, y) = pos(a);
        let name = escape(&node.name);
        let role = serde_json::to_value(node.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            s,
            r#"<g class="node {role}" data-step="{name}" transform="translate({x:.0},{y:.0})" tabindex="0"><title>{name}: {} (parallelism {})</title><rect width="{NODE_W:.0}" height="{NODE_H:.0}" rx="6"/><text class="name" x="10" y="19">{name} ×{}</text><text class="rate" x="10" y="38">–</text><text class="load" x="10" y="55">–</text></g>"#,
            escape(&node.description),
            node.parallelism,
            node.parallelism,
        );
    }
    s.push_str("</svg>");
    s
}

/// `GET /`.
pub(crate) async fn page(State(s): State<Arc<crate::server::AppState>>) -> Response {
    let w: &Watch = &s.watch;
    let html = PAGE
        .replace("{{job}}", &escape(&w.info().name))
        .replace("{{graph}}", &graph_svg(&w.topology()));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

/// `GET /ui/app.js`.
pub(crate) async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// `GET /ui/style.css`.
pub(crate) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::NodeRole;
    use weir_runtime::observe::{TopologyEdge, TopologyNode};

    fn node(name: &str, role: NodeRole, dl: bool) -> TopologyNode {
        TopologyNode {
            name: name.into(),
            role,
            description: format!("{name} <b>"),
            parallelism: 2,
            chain: 0,
            dead_letter: dl,
        }
    }

    fn edge(a: &str, b: &str, p: &str) -> TopologyEdge {
        TopologyEdge {
            from: a.into(),
            to: b.into(),
            partitioning: p.into(),
            chained: false,
        }
    }

    #[test]
    fn columns_follow_the_longest_path_and_names_are_escaped() {
        let t = Topology {
            nodes: vec![
                node("src", NodeRole::Source, false),
                node("a", NodeRole::Operator, false),
                node("b<x>", NodeRole::Operator, false),
                node("out", NodeRole::Sink, false),
                node("dl", NodeRole::Sink, true),
            ],
            edges: vec![
                edge("src", "a", "forward"),
                edge("a", "b<x>", "hash(k)"),
                edge("src", "out", "rebalance"),
                edge("b<x>", "out", "forward"),
                edge("a", "dl", "dead letters"),
            ],
            chains: vec![],
        };
        let l = layout(&t);
        assert_eq!(l["src"], (0, 0));
        assert_eq!(l["a"], (1, 0));
        assert_eq!(l["b<x>"], (2, 0));
        assert_eq!(l["out"], (3, 0));
        assert_eq!(l["dl"], (3, 1));
        let svg = graph_svg(&t);
        assert!(svg.contains(r#"data-step="b&lt;x&gt;""#), "{svg}");
        assert!(!svg.contains("<b>"), "{svg}");
        assert_eq!(svg.matches("class=\"node").count(), 5);
        assert_eq!(svg.matches("<path class=\"edge").count(), 5);
    }
}
