//! `nodeprof heap summary`: DevTools' Summary view, per class.

use crate::output::Report;
use std::fmt::Write as _;

use serde::Serialize;

use super::graph::{Graph, NO_DISTANCE};
use super::report;
use super::snapshot::{HeapSnapshot, ROOT};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassStats {
    pub name: String,
    /// Objects with a non-zero shallow size (DevTools does not list the others).
    pub count: u64,
    pub shallow_size: u64,
    /// Sum of the retained sizes of the class's objects that no other object
    /// of the class dominates.
    pub retained_size: u64,
    /// Smallest distance of an object from the user roots; `None` when none
    /// is reachable.
    pub distance: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub node_count: usize,
    pub edge_count: usize,
    /// Retained size of the root: everything in the snapshot.
    pub total_size: u64,
    /// Nodes not reachable from the root over essential edges.
    pub unreachable_nodes: usize,
    /// Every class, by retained size (largest first), then name.
    pub classes: Vec<ClassStats>,
    /// Classes the text shows (0: all).
    #[serde(skip)]
    pub shown: usize,
}

/// Per-class aggregates, as DevTools' `buildAggregates` and
/// `calculateClassesRetainedSize` compute them.
pub fn summarize(s: &HeapSnapshot, g: &Graph) -> Summary {
    let mut classes: Vec<ClassStats> = s
        .class_names
        .iter()
        .map(|name| ClassStats {
            name: name.clone(),
            count: 0,
            shallow_size: 0,
            retained_size: 0,
            distance: None,
        })
        .collect();
    for node in 0..s.node_count() {
        let size = s.node_self[node];
        if size == 0 {
            continue;
        }
        let c = &mut classes[s.class_of[node] as usize];
        c.count += 1;
        c.shallow_size += size;
        let d = g.distance[node];
        if d != NO_DISTANCE {
            c.distance = Some(c.distance.map_or(d, |m| m.min(d)));
        }
    }
    // Walk the dominator tree, counting per class the ancestors that were
    // added: an object adds its retained size only if none of its dominators
    // of the same class did.
    let mut open = vec![0u32; classes.len()];
    let mut stack: Vec<(u32, bool)> = vec![(ROOT, false)];
    while let Some((node, exit)) = stack.pop() {
        let class = s.class_of[node as usize] as usize;
        if exit {
            open[class] -= 1;
            continue;
        }
        if s.node_self[node as usize] != 0 && open[class] == 0 {
            classes[class].retained_size += g.retained[node as usize];
            open[class] += 1;
            stack.push((node, true));
        }
        stack.extend(g.dominated_by(node).iter().map(|&c| (c, false)));
    }
    classes.retain(|c| c.count > 0);
    classes.sort_by(|a, b| {
        b.retained_size
            .cmp(&a.retained_size)
            .then_with(|| a.name.cmp(&b.name))
    });
    Summary {
        node_count: s.node_count(),
        edge_count: s.edge_count(),
        total_size: g.retained[ROOT as usize],
        unreachable_nodes: g.unreachable,
        classes,
        shown: 0,
    }
}

impl Report for Summary {
    fn write_text(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        w.write_all(render(self, self.shown).as_bytes())
    }
}

/// The Summary as text: a header and the `top` classes by retained size.
fn render(summary: &Summary, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Heap: {} in {} objects ({} nodes, {} edges{})",
        report::bytes(summary.total_size),
        summary.classes.iter().map(|c| c.count).sum::<u64>(),
        summary.node_count,
        summary.edge_count,
        if summary.unreachable_nodes > 0 {
            format!(", {} unreachable from the roots", summary.unreachable_nodes)
        } else {
            String::new()
        }
    );
    let shown = if top == 0 {
        summary.classes.len()
    } else {
        top.min(summary.classes.len())
    };
    let _ = writeln!(
        out,
        "Top {shown} of {} classes by retained size:",
        summary.classes.len()
    );
    let total = summary.total_size.max(1) as f64;
    let rows: Vec<Vec<String>> = summary.classes[..shown]
        .iter()
        .map(|c| {
            vec![
                report::cell(&c.name, 60),
                report::distance(c.distance),
                c.count.to_string(),
                report::bytes(c.shallow_size),
                report::bytes(c.retained_size),
                format!("{:.1} %", c.retained_size as f64 * 100.0 / total),
            ]
        })
        .collect();
    out.push_str(&report::table(
        &[
            "Constructor",
            "Distance",
            "Objects",
            "Shallow size",
            "Retained size",
            "Retained %",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::graph::edge::{ELEMENT, PROPERTY};
    use crate::heap::graph::{test_snapshot, Rules};

    #[test]
    fn a_class_does_not_count_what_its_own_objects_retain_twice() {
        // root → 1 → 2 → 3, all of class "Thing", sizes 2, 3, 4; and root → 4 (size 5).
        let edges = [
            (0, 1, ELEMENT),
            (0, 4, ELEMENT),
            (1, 2, PROPERTY),
            (2, 3, PROPERTY),
        ];
        let s = test_snapshot(5, &edges);
        let g = Graph::build(&s, Rules::Devtools);
        let summary = summarize(&s, &g);
        let thing = summary.classes.iter().find(|c| c.name == "Thing").unwrap();
        assert_eq!((thing.count, thing.shallow_size), (4, 2 + 3 + 4 + 5));
        // 1 retains 2 and 3; 4 is its own: 9 + 5, not 9 + 7 + 4 + 5.
        assert_eq!(thing.retained_size, 14);
        assert_eq!(thing.distance, Some(1));
        assert_eq!(summary.total_size, 14);
    }
}
