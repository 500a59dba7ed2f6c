//! Property tests of the snapshot parser and `heap retainers` on generated
//! graphs: random graphs with cycles, weak and shortcut edges, long chains
//! and rings, and damaged copies of their files. Every file either parses or
//! is an error (never a panic), and what parses keeps the properties a
//! retaining path must have. `NODEPROF_FUZZ_ROUNDS` runs a longer campaign.

use std::fmt::Write as _;

use super::graph::{Graph, Rules, NO_DISTANCE};
use super::parse::read_bytes;
use super::retainers::{self, Target};
use super::snapshot::ROOT;
use crate::output::Report;

/// xorshift64: the same graphs on every run.
struct Rand(u64);

impl Rand {
    fn below(&mut self, m: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % m.max(1) as u64) as usize
    }
}

/// V8's edge types, in the order of [`CLASSES`]' file header.
const CONTEXT: usize = 0;
const ELEMENT: usize = 1;
const PROPERTY: usize = 2;
const INTERNAL: usize = 3;
const HIDDEN: usize = 4;
const SHORTCUT: usize = 5;
const WEAK: usize = 6;

/// Object class names; string 0 is the empty string, 1.. these, then the
/// edge names.
const CLASSES: [&str; 5] = ["ListNode", "Cache", "Entry", "Session", "Array"];
const EDGE_NAMES: [&str; 4] = ["next", "list", "value", "a b"];

/// A graph to write as a snapshot: node 0 is the root; node types are V8's
/// indices (3 object, 9 synthetic, 2 string...); edges (type, name, to).
struct Spec {
    types: Vec<usize>,
    classes: Vec<usize>,
    sizes: Vec<u64>,
    edges: Vec<Vec<(usize, usize, usize)>>,
}

impl Spec {
    fn new() -> Spec {
        Spec {
            types: vec![9],
            classes: vec![0],
            sizes: vec![0],
            edges: vec![Vec::new()],
        }
    }

    fn node(&mut self, ty: usize, class: usize, size: u64) -> usize {
        self.types.push(ty);
        self.classes.push(class);
        self.sizes.push(size);
        self.edges.push(Vec::new());
        self.types.len() - 1
    }

    fn edge(&mut self, from: usize, ty: usize, name: usize, to: usize) {
        self.edges[from].push((ty, name, to));
    }

    /// The `.heapsnapshot` text, written in one pass.
    fn file(&self) -> String {
        let n = self.types.len();
        let e: usize = self.edges.iter().map(Vec::len).sum();
        let mut out = String::with_capacity(32 * (n + e) + 1024);
        let _ = write!(
            out,
            r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count","trace_node_id","detachedness"],
"node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic","concatenated string","sliced string","symbol","bigint","object shape"],"string","number","number","number","number","number"],
"edge_fields":["type","name_or_index","to_node"],
"edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]}},
"node_count":{n},"edge_count":{e}}},
"nodes":["#
        );
        for i in 0..n {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}{},{},{},{},{},0,0",
                self.types[i],
                self.classes[i],
                2 * i + 1,
                self.sizes[i],
                self.edges[i].len()
            );
        }
        out.push_str("],\n\"edges\":[");
        let mut first = true;
        for list in &self.edges {
            for &(ty, name, to) in list {
                let sep = if first { "" } else { "," };
                first = false;
                let _ = write!(out, "{sep}{ty},{name},{}", to * 7);
            }
        }
        out.push_str("],\n\"strings\":[\"\"");
        for s in CLASSES.iter().chain(EDGE_NAMES.iter()) {
            let _ = write!(out, ",\"{s}\"");
        }
        out.push_str("]}\n");
        out
    }
}

/// String index of an edge name.
fn edge_name(i: usize) -> usize {
    1 + CLASSES.len() + i
}

/// A random graph: a few user roots (objects) and a GC root (synthetic)
/// under the root, random edges of every type (cycles, self edges, weak and
/// shortcut edges), some nodes left unreachable.
fn random_graph(r: &mut Rand, n: usize) -> Spec {
    let mut g = Spec::new();
    for _ in 1..n {
        let ty = [3, 3, 3, 2, 5, 9, 1][r.below(7)];
        let class = 1 + r.below(CLASSES.len());
        g.node(ty, class, r.below(200) as u64);
    }
    for _ in 0..1 + r.below(3) {
        let to = 1 + r.below(n - 1);
        let ty = if r.below(3) == 0 { SHORTCUT } else { ELEMENT };
        g.edge(ROOT as usize, ty, r.below(10), to);
    }
    for _ in 0..r.below(3 * n) {
        let from = r.below(n);
        let to = 1 + r.below(n - 1);
        let ty = [CONTEXT, ELEMENT, PROPERTY, INTERNAL, HIDDEN, SHORTCUT, WEAK][r.below(7)];
        let name = if ty == ELEMENT || ty == HIDDEN {
            r.below(50)
        } else {
            edge_name(r.below(EDGE_NAMES.len()))
        };
        g.edge(from, ty, name, to);
    }
    g
}

/// `root → global ─.list→ ListNode ─.next→ ListNode …` of `len` list
/// nodes; `ring` links the last back to the first.
fn chain(len: usize, ring: bool) -> Spec {
    let mut g = Spec::new();
    let global = g.node(3, 5, 40);
    g.edge(0, ELEMENT, 1, global);
    let mut prev = global;
    let mut first = None;
    for i in 0..len {
        let node = g.node(3, 1, 32);
        let name = if i == 0 { edge_name(1) } else { edge_name(0) };
        g.edge(prev, PROPERTY, name, node);
        first.get_or_insert(node);
        prev = node;
    }
    if ring {
        g.edge(prev, PROPERTY, edge_name(0), first.unwrap_or(global));
    }
    g
}

/// Checks what `heap retainers` finds for every class: each path runs from
/// the root along real, non-weak edges, one step per unit of distance, and
/// the groups account for every reachable object.
fn check_retainers(text: &str, what: &str) {
    let s = read_bytes(text.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let g = Graph::build(&s, Rules::Devtools);
    for class in &s.class_names {
        let r = match retainers::find(&s, &g, Target::Class(class), usize::MAX) {
            Ok(r) => r,
            // A class whose objects all have size 0 lists nothing, as DevTools.
            Err(super::HeapError::NoSuchClass(_)) => continue,
            Err(e) => panic!("{what}: {e}"),
        };
        let grouped: u64 = r.paths.iter().map(|p| p.objects).sum();
        assert_eq!(grouped + r.unreachable, r.objects, "{what}: {class}");
        for group in &r.paths {
            let steps = &group.steps;
            assert_eq!(
                steps[0].id, s.node_id[ROOT as usize],
                "{what}: starts at the root"
            );
            assert_eq!(
                steps.last().map(|st| st.class.as_str()),
                Some(class.as_str())
            );
            let nodes: Vec<u32> = steps
                .iter()
                .map(|st| s.node_id.iter().position(|&id| id == st.id).unwrap() as u32)
                .collect();
            for w in nodes.windows(2) {
                // The root's edges lead to the roots whatever their type
                // (DevTools); past them weak edges never retain.
                let linked = s.edges(w[0]).any(|e| {
                    s.edge_to[e] == w[1] && (w[0] == ROOT || s.edge_type[e] != s.kinds.e_weak)
                });
                assert!(linked, "{what}: no edge {} → {}", w[0], w[1]);
            }
            for (k, &n) in nodes.iter().enumerate().skip(1) {
                let d = g.distance[n as usize];
                assert_ne!(d, NO_DISTANCE, "{what}");
                // Distances grow by one along a path (from 1 or from the
                // system roots' base).
                if k > 1 {
                    assert_eq!(d, g.distance[nodes[k - 1] as usize] + 1, "{what}");
                }
            }
        }
    }
}

#[test]
fn random_graphs_give_real_retaining_paths() {
    let rounds: usize = std::env::var("NODEPROF_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    let mut r = Rand(0x5eed_1234_abcd_0001);
    for round in 0..rounds {
        let n = 2 + r.below(40);
        let g = random_graph(&mut r, n);
        check_retainers(&g.file(), &format!("round {round}"));
    }
    for ring in [false, true] {
        check_retainers(&chain(500, ring).file(), &format!("chain, ring {ring}"));
    }
}

#[test]
fn damaged_files_are_errors_or_analyse() {
    let rounds: usize = std::env::var("NODEPROF_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    let mut r = Rand(0x0bad_f11e_5eed_0002);
    for round in 0..rounds {
        let g = if round % 4 == 0 {
            chain(20 + r.below(50), round % 8 == 0)
        } else {
            let n = 2 + r.below(30);
            random_graph(&mut r, n)
        };
        let mut bytes = g.file().into_bytes();
        match round % 3 {
            0 => {
                let at = r.below(bytes.len());
                let alphabet = b"{}[],:\"\\0123456789-x \n\xff";
                bytes[at] = alphabet[r.below(alphabet.len())];
            }
            1 => {
                let at = r.below(bytes.len());
                let end = (at + 1 + r.below(16)).min(bytes.len());
                for b in &mut bytes[at..end] {
                    *b = r.below(256) as u8;
                }
            }
            _ => {
                // A digit changed inside the number arrays: sizes, ids,
                // edge counts and targets that do not add up.
                let digits: Vec<usize> = (0..bytes.len())
                    .filter(|&i| bytes[i].is_ascii_digit())
                    .collect();
                let at = digits[r.below(digits.len())];
                bytes[at] = b"0123456789"[r.below(10)];
            }
        }
        let result = std::panic::catch_unwind(|| {
            let Ok(s) = read_bytes(&bytes) else {
                return;
            };
            let g = Graph::build(&s, Rules::Devtools);
            for class in &s.class_names {
                let _ = retainers::find(&s, &g, Target::Class(class), 3).map(|r| r.to_text());
            }
        });
        assert!(
            result.is_ok(),
            "round {round}: panicked on {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// Seconds to parse a chain of `len` list nodes and find every ListNode's
/// retaining path, and the file's size.
fn time_chain(len: usize) -> (f64, usize) {
    let text = chain(len, false).file();
    let start = std::time::Instant::now();
    let s = read_bytes(text.as_bytes()).unwrap();
    let g = Graph::build(&s, Rules::Devtools);
    let r = retainers::find(&s, &g, Target::Class("ListNode"), 3).unwrap();
    assert_eq!(r.objects, len as u64);
    assert_eq!(r.paths[0].steps.len(), 3);
    (start.elapsed().as_secs_f64(), text.len())
}

/// Time per node stays flat from 10^3 to 10^6 nodes on chains: building and
/// grouping paths is linear (it was quadratic: one path per object).
#[test]
fn chains_cost_linear_time() {
    let mut per_node = Vec::new();
    for len in [1_000, 10_000, 100_000, 1_000_000] {
        // The best of a few runs: the machine is shared.
        let best = (0..3).map(|_| time_chain(len).0).fold(f64::MAX, f64::min);
        per_node.push((len, best / len as f64));
    }
    let at = |len: usize| per_node.iter().find(|p| p.0 == len).map(|p| p.1).unwrap();
    // Caches make big graphs somewhat slower per node; a quadratic cost is
    // 100 times slower per node at 10^6 than at 10^4.
    assert!(
        at(1_000_000) < 4.0 * at(10_000),
        "time per node (s): {per_node:?}"
    );
}
