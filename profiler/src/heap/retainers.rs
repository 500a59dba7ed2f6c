//! `nodeprof heap retainers`: the shortest retaining paths from the roots to
//! the objects of a class (or to one object), like DevTools' Retainers view.
//! Paths follow the distance BFS (weak edges never retain); objects whose
//! paths have the same shape (same classes and edges, element indices aside)
//! are grouped, and one representative path is shown per group, the groups
//! that retain the most first.

use crate::output::Report;
use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::graph::{Graph, BASE_SYSTEM_DISTANCE, NONE, NO_DISTANCE};
use super::report;
use super::snapshot::{HeapSnapshot, ROOT};
use super::HeapError;

#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Class(&'a str),
    Id(u64),
}

#[derive(Debug, Serialize)]
pub struct Step {
    /// The edge from the previous step to this node (`None` for the root).
    pub edge: Option<String>,
    pub edge_type: Option<String>,
    /// The node's name as DevTools shows it (`Array`, `leakMethod`, a string's text).
    pub name: String,
    pub class: String,
    pub id: u32,
    pub distance: Option<i32>,
    pub shallow_size: u64,
    pub retained_size: u64,
}

#[derive(Debug, Serialize)]
pub struct PathGroup {
    /// Objects whose shortest retaining path has this shape.
    pub objects: u64,
    /// Sum of their retained sizes.
    pub retained_size: u64,
    /// The path of the group's largest object, from the root to the object.
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
pub struct Retainers {
    pub target: String,
    pub objects: u64,
    /// Objects no path from the roots reaches (kept only by weak edges, or garbage).
    pub unreachable: u64,
    pub paths: Vec<PathGroup>,
}

/// The node as DevTools names it in a retainers tree.
fn display_name(s: &HeapSnapshot, node: u32) -> String {
    let k = &s.kinds;
    let t = s.node_type[node as usize];
    let raw = s.raw_name(node);
    if node == ROOT {
        return "(root)".into();
    }
    if t == k.object
        || t == k.native
        || t == k.synthetic
        || t == k.hidden
        || t == k.array
        || t == k.code
    {
        return report::cell(raw, 60);
    }
    if t == k.closure {
        return format!(
            "{}()",
            report::cell(if raw.is_empty() { "(anonymous)" } else { raw }, 60)
        );
    }
    if t == k.regexp {
        return format!("/{}/", report::cell(raw, 60));
    }
    // Strings, numbers, symbols...: their text.
    format!("{:?}", report::cell(raw, 40))
}

/// The nodes on the shortest path from the root to `node`, root first, with
/// the edge that reaches each (O(depth)); `None` if the BFS never reached it.
fn path_to(g: &Graph, node: u32) -> Option<Vec<(u32, u32)>> {
    if g.distance[node as usize] == NO_DISTANCE {
        return None;
    }
    let mut steps = vec![(node, g.pred_edge[node as usize])];
    let mut at = node;
    while at != ROOT {
        let p = g.pred_node[at as usize];
        if p == NONE || steps.len() > g.distance.len() {
            return None;
        }
        steps.push((p, g.pred_edge[p as usize]));
        at = p;
    }
    steps.reverse();
    Some(steps)
}

/// Shape ids of the shortest retaining paths of every node (`NO_SHAPE` for
/// nodes the BFS did not reach), and how many shapes there are. The BFS
/// predecessors form a tree, so a path's shape is its parent's shape plus
/// one step: interning (parent shape, step) level by level, parents before
/// children, gives equal paths equal ids in O(nodes), with a map no bigger
/// than the widest level (materialising every path costs the sum of their
/// depths: quadratic for a linked list).
fn shapes(s: &HeapSnapshot, g: &Graph) -> (Vec<u32>, u32) {
    let n = s.node_count();
    // Levels: user distances 1.., then system distances BASE_SYSTEM_DISTANCE..;
    // a node's predecessor is on the level before (or is the root).
    let max_user = g
        .distance
        .iter()
        .copied()
        .filter(|&d| d != NO_DISTANCE && d < BASE_SYSTEM_DISTANCE)
        .max()
        .unwrap_or(0) as usize;
    let level = |node: usize| -> Option<usize> {
        let d = g.distance[node];
        if node as u32 == ROOT || d == NO_DISTANCE {
            None
        } else if d >= BASE_SYSTEM_DISTANCE {
            Some(max_user + 1 + (d - BASE_SYSTEM_DISTANCE) as usize)
        } else {
            Some(d as usize)
        }
    };
    let levels = (0..n).filter_map(level).max().map_or(0, |l| l + 1);
    let mut first = vec![0u32; levels + 1];
    for node in 0..n {
        if let Some(l) = level(node) {
            first[l + 1] += 1;
        }
    }
    for l in 0..levels {
        first[l + 1] += first[l];
    }
    let mut order = vec![0u32; first[levels] as usize];
    let mut fill = first.clone();
    for node in 0..n {
        if let Some(l) = level(node) {
            order[fill[l] as usize] = node as u32;
            fill[l] += 1;
        }
    }
    drop(fill);
    let mut shape = vec![NO_SHAPE; n];
    shape[ROOT as usize] = ROOT_SHAPE;
    let mut count = 1u32;
    let mut ids: HashMap<(u32, u64), u32> = HashMap::new();
    for l in 0..levels {
        ids.clear();
        for &node in &order[first[l] as usize..first[l + 1] as usize] {
            let parent = g.pred_node[node as usize];
            if parent == NONE || shape[parent as usize] == NO_SHAPE {
                continue;
            }
            let key = (
                shape[parent as usize],
                step(s, node, g.pred_edge[node as usize]),
            );
            shape[node as usize] = *ids.entry(key).or_insert_with(|| {
                count += 1;
                count - 1
            });
        }
    }
    (shape, count)
}

/// The shape id of the root's (empty) path.
const ROOT_SHAPE: u32 = 0;
/// A node whose path does not reach the root.
const NO_SHAPE: u32 = NONE;

/// One step of a path: the node's class and the edge's name (element
/// indices aside) and type.
fn step(s: &HeapSnapshot, node: u32, edge: u32) -> u64 {
    let e = edge as usize;
    let name = if s.edge_has_string_name(e) {
        u64::from(s.edge_name[e])
    } else {
        u64::from(u32::MAX)
    };
    (u64::from(s.class_of[node as usize]) << 32) | (name ^ (u64::from(s.edge_type[e]) << 28))
}

pub fn find(
    s: &HeapSnapshot,
    g: &Graph,
    target: Target<'_>,
    max_paths: usize,
) -> Result<Retainers, HeapError> {
    let (label, nodes): (String, Vec<u32>) = match target {
        Target::Class(name) => {
            let class = s
                .class_names
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| HeapError::NoSuchClass(name.to_string()))?
                as u32;
            let nodes: Vec<u32> = (0..s.node_count() as u32)
                .filter(|&n| s.class_of[n as usize] == class && s.node_self[n as usize] != 0)
                .collect();
            if nodes.is_empty() {
                return Err(HeapError::NoSuchClass(name.to_string()));
            }
            (name.to_string(), nodes)
        }
        Target::Id(id) => {
            let node = (0..s.node_count() as u32)
                .find(|&n| u64::from(s.node_id[n as usize]) == id)
                .ok_or(HeapError::NoSuchId(id))?;
            (format!("{} @{id}", s.class_name(node)), vec![node])
        }
    };
    // Group objects by path shape: node classes and edge names, element indices aside.
    let (shape, shape_count) = shapes(s, g);
    // Per shape: objects, their retained size, the largest (its path is shown).
    let mut groups: Vec<(u32, u64, u32)> = vec![(0, 0, NONE); shape_count as usize];
    let mut unreachable = 0;
    for &node in &nodes {
        let id = shape[node as usize];
        if id == NO_SHAPE {
            unreachable += 1;
            continue;
        }
        let retained = g.retained[node as usize];
        let entry = &mut groups[id as usize];
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(retained);
        let best = entry.2;
        if best == NONE
            || (retained, std::cmp::Reverse(s.node_id[node as usize]))
                > (
                    g.retained[best as usize],
                    std::cmp::Reverse(s.node_id[best as usize]),
                )
        {
            entry.2 = node;
        }
    }
    drop(shape);
    groups.retain(|group| group.0 > 0);
    groups.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.0.cmp(&a.0))
            .then(s.node_id[a.2 as usize].cmp(&s.node_id[b.2 as usize]))
    });
    let paths = groups
        .into_iter()
        .take(max_paths.max(1))
        .map(|(objects, retained_size, example)| PathGroup {
            objects: u64::from(objects),
            retained_size,
            steps: path_to(g, example)
                .unwrap_or_default()
                .into_iter()
                .map(|(n, e)| {
                    let edge = (n != ROOT).then_some(e as usize);
                    Step {
                        edge: edge.map(|e| s.edge_label(e)),
                        edge_type: edge.map(|e| s.edge_types[s.edge_type[e] as usize].clone()),
                        name: display_name(s, n),
                        class: s.class_name(n).to_string(),
                        id: s.node_id[n as usize],
                        distance: Some(g.distance[n as usize]).filter(|&d| d != NO_DISTANCE),
                        shallow_size: s.node_self[n as usize],
                        retained_size: g.retained[n as usize],
                    }
                })
                .collect(),
        })
        .collect();
    Ok(Retainers {
        target: label,
        objects: nodes.len() as u64,
        unreachable,
        paths,
    })
}

/// One line per path: `(root) → global ─.leaks→ Array ─[7041]→ LeakingClass`
/// (the root's own edges are numbered links to the roots, not names).
pub fn chain(steps: &[Step]) -> String {
    let mut out = String::new();
    for (i, step) in steps.iter().enumerate() {
        match &step.edge {
            None => out.push_str(&step.name),
            Some(_) if i == 1 => {
                let _ = write!(out, " → {}", step.name);
            }
            Some(edge) => {
                let _ = write!(out, " ─{edge}→ {}", step.name);
            }
        }
    }
    out
}

impl Report for Retainers {
    fn write_text(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        w.write_all(render(self).as_bytes())
    }
}

fn render(r: &Retainers) -> String {
    let mut out = String::new();
    let reachable = r.objects - r.unreachable;
    let _ = writeln!(
        out,
        "{}: {} object{}; shortest retaining paths from the GC roots, grouped by shape:",
        r.target,
        r.objects,
        if r.objects == 1 { "" } else { "s" }
    );
    if r.unreachable > 0 {
        let _ = writeln!(
            out,
            "({} unreachable from the roots: only weak references keep them)",
            r.unreachable
        );
    }
    for (i, group) in r.paths.iter().enumerate() {
        let Some(last) = group.steps.last() else {
            continue;
        };
        out.push('\n');
        let _ = writeln!(
            out,
            "#{}  {} of {reachable} objects (retaining {}), e.g. {} @{}:",
            i + 1,
            group.objects,
            report::bytes(group.retained_size),
            last.class,
            last.id
        );
        let _ = writeln!(out, "    {}", chain(&group.steps));
        let rows: Vec<Vec<String>> = group
            .steps
            .iter()
            .map(|st| {
                vec![
                    st.edge.clone().unwrap_or_default(),
                    format!("{} @{}", st.name, st.id),
                    report::distance(st.distance),
                    report::bytes(st.shallow_size),
                    report::bytes(st.retained_size),
                ]
            })
            .collect();
        let table = report::table(
            &[
                "Edge",
                "Object",
                "Distance",
                "Shallow size",
                "Retained size",
            ],
            &rows,
        );
        for line in table.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}
