//! `nodeprof heap retainers`: the shortest retaining paths from the roots to
//! the objects of a class (or to one object), like DevTools' Retainers view.
//! Paths follow the distance BFS (weak edges never retain); objects whose
//! paths have the same shape (same classes and edges, element indices aside)
//! are grouped, and one representative path is shown per group, the groups
//! that retain the most first.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::graph::{Graph, NONE, NO_DISTANCE};
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

/// Shape ids of retaining paths. The BFS predecessors form a tree, so a
/// path's shape is its parent's shape plus one step: interning (parent
/// shape, step) gives equal paths equal ids, and each node is visited once
/// whatever the depth of the paths (materialising every path costs the sum
/// of their depths: quadratic for a linked list).
struct Shapes {
    /// Shape id of every node's path, `NONE` until computed.
    of: Vec<u32>,
    ids: HashMap<(u32, u64), u32>,
}

/// The shape id of the root's (empty) path.
const ROOT_SHAPE: u32 = 0;
/// A node whose path does not reach the root.
const NO_SHAPE: u32 = NONE - 1;

impl Shapes {
    fn new(nodes: usize) -> Shapes {
        Shapes {
            of: vec![NONE; nodes],
            ids: HashMap::new(),
        }
    }

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

    /// The shape of `node`'s shortest retaining path; `None` if it has none.
    fn of(&mut self, s: &HeapSnapshot, g: &Graph, node: u32) -> Option<u32> {
        // Climb to the nearest node whose shape is known, then intern down.
        let mut pending = Vec::new();
        let mut at = node;
        let mut shape = loop {
            if at == ROOT {
                break ROOT_SHAPE;
            }
            let known = self.of[at as usize];
            if known != NONE {
                break known;
            }
            let p = g.pred_node[at as usize];
            if g.distance[at as usize] == NO_DISTANCE || p == NONE {
                break NO_SHAPE;
            }
            pending.push(at);
            at = p;
        };
        while let Some(n) = pending.pop() {
            if shape != NO_SHAPE {
                let next = self.ids.len() as u32 + 1;
                let key = (shape, Self::step(s, n, g.pred_edge[n as usize]));
                shape = *self.ids.entry(key).or_insert(next);
            }
            self.of[n as usize] = shape;
        }
        (shape != NO_SHAPE).then_some(shape)
    }
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
    let mut shapes = Shapes::new(s.node_count());
    let mut groups: HashMap<u32, (u64, u64, u32)> = HashMap::new();
    let mut unreachable = 0;
    for &node in &nodes {
        let Some(shape) = shapes.of(s, g, node) else {
            unreachable += 1;
            continue;
        };
        let retained = g.retained[node as usize];
        let entry = groups.entry(shape).or_insert((0, 0, node));
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(retained);
        let best = entry.2;
        if (retained, std::cmp::Reverse(s.node_id[node as usize]))
            > (
                g.retained[best as usize],
                std::cmp::Reverse(s.node_id[best as usize]),
            )
        {
            entry.2 = node;
        }
    }
    drop(shapes);
    let mut groups: Vec<(u64, u64, u32)> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.0.cmp(&a.0))
            .then(s.node_id[a.2 as usize].cmp(&s.node_id[b.2 as usize]))
    });
    let paths = groups
        .into_iter()
        .take(max_paths.max(1))
        .map(|(objects, retained_size, example)| PathGroup {
            objects,
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

pub fn render(r: &Retainers) -> String {
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
