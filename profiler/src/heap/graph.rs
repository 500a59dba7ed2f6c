//! Graph analyses with DevTools' semantics (devtools-frontend
//! `HeapSnapshot.ts`): retainer lists, distances from the user roots, the
//! dominator tree over essential edges, and retained sizes.

use std::collections::{HashMap, HashSet};

use super::snapshot::{HeapSnapshot, ROOT};

/// Distance of a node no BFS reached (DevTools' `#noDistance`).
pub const NO_DISTANCE: i32 = -5;
/// Distances of nodes reached only from the root's synthetic children (GC
/// roots) start here (DevTools' `baseSystemDistance`).
pub const BASE_SYSTEM_DISTANCE: i32 = 100_000_000;
/// "No node"/"no edge" in the u32 columns.
pub const NONE: u32 = u32::MAX;

/// Everything computed from the graph once.
pub struct Graph {
    /// Retainers of node `n`: `ret_edge[first_ret[n]..first_ret[n + 1]]`
    /// (edge indices) and `ret_node[...]` (their source nodes).
    pub first_ret: Vec<u32>,
    pub ret_edge: Vec<u32>,
    pub ret_node: Vec<u32>,
    pub distance: Vec<i32>,
    /// The node and edge through which the distance BFS first reached a node:
    /// following them leads back to a root along a shortest path (empty when
    /// built without paths).
    pub pred_node: Vec<u32>,
    pub pred_edge: Vec<u32>,
    /// Immediate dominator of every node (the root dominates itself).
    pub dominator: Vec<u32>,
    pub retained: Vec<u64>,
    /// Children of node `n` in the dominator tree:
    /// `dominated[first_dominated[n]..first_dominated[n + 1]]`.
    pub first_dominated: Vec<u32>,
    pub dominated: Vec<u32>,
    /// Nodes the dominator pass found unreachable from the root over essential edges.
    pub unreachable: usize,
}

/// WeakMap ephemeron edges are named like
/// `3 / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @9)`:
/// returns the part after the leading number and the table's id.
pub fn parse_weakmap_edge(name: &str) -> Option<(&str, u64)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &name[digits..];
    let body = rest.strip_prefix(" / part of key (")?;
    let tail = ") pair in WeakMap (table @";
    let at = body.rfind(tail)?;
    let table = body[at + tail.len()..].strip_suffix(')')?;
    if table.is_empty() || !table.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // "<key> @<id>) -> value (<value> @<id>"
    let pair = &body[..at];
    let arrow = pair.find(") -> value (")?;
    let ends_with_id = |s: &str| {
        s.rfind(" @")
            .is_some_and(|i| i + 2 < s.len() && s[i + 2..].bytes().all(|b| b.is_ascii_digit()))
    };
    if !ends_with_id(&pair[..arrow]) || !ends_with_id(&pair[arrow + ") -> value (".len()..]) {
        return None;
    }
    Some((rest, table.parse().ok()?))
}

/// Memoized `parse_weakmap_edge` per string index.
struct WeakMapNames<'s> {
    snap: &'s HeapSnapshot,
    /// Per string: 0 not parsed yet, 1 not a WeakMap edge name, 2 in `matches`.
    state: Vec<u8>,
    matches: HashMap<u32, (&'s str, u64)>,
}

impl<'s> WeakMapNames<'s> {
    fn new(snap: &'s HeapSnapshot) -> Self {
        WeakMapNames {
            snap,
            state: vec![0; snap.strings.len()],
            matches: HashMap::new(),
        }
    }

    fn get(&mut self, edge: usize) -> Option<(&'s str, u64)> {
        let s = self.snap;
        if s.edge_type[edge] != s.kinds.e_internal {
            return None;
        }
        let name = s.edge_name[edge];
        match self.state[name as usize] {
            1 => None,
            2 => self.matches.get(&name).copied(),
            _ => {
                let parsed = parse_weakmap_edge(s.strings.get(name));
                self.state[name as usize] = if parsed.is_some() { 2 } else { 1 };
                if let Some(p) = parsed {
                    self.matches.insert(name, p);
                }
                parsed
            }
        }
    }
}

/// A bit per edge.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i >> 6] |= 1 << (i & 63);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i >> 6] & (1 << (i & 63)) != 0
    }
}

/// Whose rules decide which edges retain (only the dominator tree and the
/// retained sizes differ; classes, counts, shallow sizes and distances do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rules {
    /// devtools-frontend `HeapSnapshot.ts`: objects reachable from the global
    /// objects (the root's shortcut edges) are the page's; edges from other
    /// objects to them do not retain, nor does a WeakMap table's edge to a value.
    #[default]
    Devtools,
    /// memlab (`TraceFinder.calculateAllNodesRetainedSizes`): the owned objects
    /// are those reachable from the root's other edges (the GC roots), and
    /// WeakMap table edges retain.
    Memlab,
}

impl Rules {
    pub const ALL: [Rules; 2] = [Rules::Devtools, Rules::Memlab];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Rules::Devtools => "devtools",
            Rules::Memlab => "memlab",
        }
    }
}

impl std::str::FromStr for Rules {
    type Err = String;

    fn from_str(name: &str) -> Result<Rules, String> {
        Rules::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| format!("unknown rules {name:?}"))
    }
}

impl Graph {
    /// Everything, including the shortest paths (`pred_node`/`pred_edge`).
    pub fn build(s: &HeapSnapshot, rules: Rules) -> Graph {
        Graph::build_inner(s, rules, true)
    }

    /// Without the shortest paths (`pred_node`/`pred_edge` stay empty): what
    /// a Summary needs, in less memory.
    pub fn build_without_paths(s: &HeapSnapshot, rules: Rules) -> Graph {
        Graph::build_inner(s, rules, false)
    }

    fn build_inner(s: &HeapSnapshot, rules: Rules, paths: bool) -> Graph {
        let mut g = Graph {
            first_ret: Vec::new(),
            ret_edge: Vec::new(),
            ret_node: Vec::new(),
            distance: Vec::new(),
            pred_node: Vec::new(),
            pred_edge: Vec::new(),
            dominator: Vec::new(),
            retained: Vec::new(),
            first_dominated: Vec::new(),
            dominated: Vec::new(),
            unreachable: 0,
        };
        // The retainer lists and the distances + essential edges do not
        // depend on each other: build them on two threads.
        let t = std::time::Instant::now();
        let essential = std::thread::scope(|scope| {
            let reverse = scope.spawn(|| retainers(s));
            let mut weakmaps = WeakMapNames::new(s);
            g.distances(s, &mut weakmaps, paths);
            tracing::debug!("distances at {:?}", t.elapsed());
            let essential = essential_edges(s, &mut weakmaps, rules);
            tracing::debug!("essential edges at {:?}", t.elapsed());
            let (first_ret, ret_edge, ret_node) = reverse
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            g.first_ret = first_ret;
            g.ret_edge = ret_edge;
            g.ret_node = ret_node;
            essential
        });
        tracing::debug!("retainers at {:?}", t.elapsed());
        g.dominators(s, &essential, rules);
        tracing::debug!("dominators at {:?}", t.elapsed());
        g.dominated_lists();
        g
    }

    pub fn retainers_of(&self, node: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        let r = self.first_ret[node as usize] as usize..self.first_ret[node as usize + 1] as usize;
        r.map(|i| (self.ret_node[i], self.ret_edge[i]))
    }

    pub fn dominated_by(&self, node: u32) -> &[u32] {
        &self.dominated[self.first_dominated[node as usize] as usize
            ..self.first_dominated[node as usize + 1] as usize]
    }

    /// DevTools' `calculateDistances` for JS snapshots: BFS from the user
    /// roots (the root's children that are not synthetic, or the
    /// `(Document DOM trees)` root) at distance 1, never over weak edges, with
    /// `JSHeapSnapshot`'s edge filter; then BFS from the root for what is left,
    /// at `BASE_SYSTEM_DISTANCE`.
    fn distances(&mut self, s: &HeapSnapshot, weakmaps: &mut WeakMapNames<'_>, paths: bool) {
        let n = s.node_count();
        let k = s.kinds;
        let mut dist = vec![NO_DISTANCE; n];
        let kept = if paths { n } else { 0 };
        let mut pred_node = vec![NONE; kept];
        let mut pred_edge = vec![NONE; kept];
        let mut queue: Vec<u32> = Vec::with_capacity(n);
        for e in s.edges(ROOT) {
            let child = s.edge_to[e];
            let user = s.node_type[child as usize] != k.synthetic
                || s.raw_name(child) == "(Document DOM trees)";
            if user && dist[child as usize] == NO_DISTANCE {
                dist[child as usize] = 1;
                if paths {
                    pred_node[child as usize] = ROOT;
                    pred_edge[child as usize] = e as u32;
                }
                queue.push(child);
            }
        }
        let had_user_roots = !queue.is_empty();
        let sloppy = "sloppy_function_map";
        let mut pending: HashSet<&str> = HashSet::new();
        let mut filter = |node: u32, edge: usize| -> bool {
            let t = s.node_type[node as usize];
            if t == k.hidden
                && s.edge_has_string_name(edge)
                && s.strings.get(s.edge_name[edge]) == sloppy
                && s.raw_name(node) == "system / NativeContext"
            {
                return false;
            }
            if t == k.array && s.raw_name(node) == "(map descriptors)" {
                // Descriptor arrays may be shared by maps; DevTools skips their descriptor links.
                let index = if s.edge_has_string_name(edge) {
                    js_parse_int(s.strings.get(s.edge_name[edge]))
                } else {
                    Some(u64::from(s.edge_name[edge]))
                };
                return match index {
                    Some(i) => i < 2 || i % 3 != 1,
                    None => true,
                };
            }
            if let Some((pair, _)) = weakmaps.get(edge) {
                // A WeakMap value is reached through the table and the key:
                // count the second of the two edges, as DevTools does.
                if !pending.remove(pair) {
                    pending.insert(pair);
                    return false;
                }
            }
            true
        };
        let mut bfs = |queue: &mut Vec<u32>, start: usize, dist: &mut Vec<i32>| {
            let mut head = start;
            while head < queue.len() {
                let node = queue[head];
                head += 1;
                let d = dist[node as usize] + 1;
                for e in s.edges(node) {
                    if s.edge_type[e] == k.e_weak {
                        continue;
                    }
                    let child = s.edge_to[e] as usize;
                    if dist[child] != NO_DISTANCE || !filter(node, e) {
                        continue;
                    }
                    dist[child] = d;
                    if paths {
                        pred_node[child] = node;
                        pred_edge[child] = e as u32;
                    }
                    queue.push(child as u32);
                }
            }
        };
        bfs(&mut queue, 0, &mut dist);
        dist[ROOT as usize] = if had_user_roots {
            BASE_SYSTEM_DISTANCE
        } else {
            0
        };
        let start = queue.len();
        queue.push(ROOT);
        bfs(&mut queue, start, &mut dist);
        self.distance = dist;
        self.pred_node = pred_node;
        self.pred_edge = pred_edge;
    }

    /// Lengauer–Tarjan ("A fast algorithm for finding dominators in a
    /// flowgraph", 1979, the simple version) over essential edges, from the
    /// root; then, as DevTools does, from each unvisited node that has only
    /// non-essential retainers, and finally every node still unvisited
    /// becomes a child of the root. Vertices are numbered from 1 (0 = none).
    fn dominators(&mut self, s: &HeapSnapshot, essential: &Bits, rules: Rules) {
        let n = s.node_count();
        let len = n + 1;
        let mut parent = vec![0u32; len];
        let mut ancestor = vec![0u32; len];
        let mut vertex = vec![0u32; len];
        let mut label = vec![0u32; len];
        let mut semi = vec![0u32; len];
        let mut next_edge = vec![0u32; n];
        let mut count = 0u32;
        let r = ROOT + 1;

        let mut dfs = |root: u32,
                       count: &mut u32,
                       parent: &mut [u32],
                       semi: &mut [u32],
                       vertex: &mut [u32],
                       label: &mut [u32]| {
            next_edge[(root - 1) as usize] = s.first_edge[(root - 1) as usize];
            let mut v = root;
            while v != 0 {
                if semi[v as usize] == 0 {
                    *count += 1;
                    semi[v as usize] = *count;
                    vertex[*count as usize] = v;
                    label[v as usize] = v;
                }
                let mut v_next = parent[v as usize];
                let o = (v - 1) as usize;
                let end = s.first_edge[o + 1];
                while next_edge[o] < end {
                    let e = next_edge[o] as usize;
                    next_edge[o] += 1;
                    if !essential.get(e) {
                        continue;
                    }
                    let w = s.edge_to[e] + 1;
                    if semi[w as usize] == 0 {
                        parent[w as usize] = v;
                        next_edge[(w - 1) as usize] = s.first_edge[(w - 1) as usize];
                        v_next = w;
                        break;
                    }
                }
                v = v_next;
            }
        };
        dfs(
            r,
            &mut count,
            &mut parent,
            &mut semi,
            &mut vertex,
            &mut label,
        );
        let reached = count as usize;
        if (count as usize) < n {
            for v in 1..=n as u32 {
                // Orphans: only weak retainers (memlab: only weak or shortcut edges).
                let orphan = match rules {
                    Rules::Devtools => self
                        .retainers_of(v - 1)
                        .all(|(_, e)| !essential.get(e as usize)),
                    Rules::Memlab => self.retainers_of(v - 1).all(|(_, e)| {
                        let t = s.edge_type[e as usize];
                        t == s.kinds.e_weak || t == s.kinds.e_shortcut
                    }),
                };
                if semi[v as usize] == 0 && orphan {
                    parent[v as usize] = r;
                    dfs(
                        v,
                        &mut count,
                        &mut parent,
                        &mut semi,
                        &mut vertex,
                        &mut label,
                    );
                }
            }
        }
        if (count as usize) < n {
            for v in 1..=n as u32 {
                if semi[v as usize] == 0 {
                    parent[v as usize] = r;
                    count += 1;
                    semi[v as usize] = count;
                    vertex[count as usize] = v;
                    label[v as usize] = v;
                }
            }
        }
        self.unreachable = n - reached;
        drop(next_edge);

        let mut dom = vec![0u32; len];
        let mut bucket_head = vec![0u32; len];
        let mut bucket_next = vec![0u32; len];
        let mut stack: Vec<u32> = Vec::new();
        let mut eval = |v: u32, ancestor: &mut [u32], label: &mut [u32], semi: &[u32]| -> u32 {
            if ancestor[v as usize] == 0 {
                return v;
            }
            // compress(v), iteratively.
            let mut x = v;
            while ancestor[ancestor[x as usize] as usize] != 0 {
                stack.push(x);
                x = ancestor[x as usize];
            }
            while let Some(w) = stack.pop() {
                let a = ancestor[w as usize] as usize;
                if semi[label[a] as usize] < semi[label[w as usize] as usize] {
                    label[w as usize] = label[a];
                }
                ancestor[w as usize] = ancestor[a];
            }
            label[v as usize]
        };
        for i in (2..=count).rev() {
            let w = vertex[i as usize];
            let wo = w - 1;
            let mut orphan = true;
            let range =
                self.first_ret[wo as usize] as usize..self.first_ret[wo as usize + 1] as usize;
            for ri in range {
                if !essential.get(self.ret_edge[ri] as usize) {
                    continue;
                }
                orphan = false;
                let v = self.ret_node[ri] + 1;
                let u = eval(v, &mut ancestor, &mut label, &semi);
                if semi[u as usize] < semi[w as usize] {
                    semi[w as usize] = semi[u as usize];
                }
            }
            if orphan {
                semi[w as usize] = semi[r as usize];
            }
            let sd = vertex[semi[w as usize] as usize] as usize;
            bucket_next[w as usize] = bucket_head[sd];
            bucket_head[sd] = w;
            let p = parent[w as usize];
            ancestor[w as usize] = p; // link(parent[w], w)
            let mut v = std::mem::take(&mut bucket_head[p as usize]);
            while v != 0 {
                let u = eval(v, &mut ancestor, &mut label, &semi);
                dom[v as usize] = if semi[u as usize] < semi[v as usize] {
                    u
                } else {
                    p
                };
                v = bucket_next[v as usize];
            }
        }
        // The root dominates itself; dom[0] = r also makes the root the
        // dominator of nodes whose bucket was never processed (unreachable
        // cycles), as in DevTools.
        dom[0] = r;
        dom[r as usize] = r;
        for i in 2..=count {
            let w = vertex[i as usize] as usize;
            if dom[w] != vertex[semi[w] as usize] {
                dom[w] = dom[dom[w] as usize];
            }
        }
        // Free the work arrays before the results are allocated (this is the
        // peak of nodeprof's memory), and turn `dom` into the ordinal-indexed
        // dominator array in place.
        drop((parent, ancestor, label, semi, bucket_head, bucket_next));
        for o in 0..n {
            dom[o] = dom[o + 1] - 1;
        }
        dom.truncate(n);
        let dominator = dom;
        let mut retained: Vec<u64> = s.node_self.clone();
        for i in (2..=count).rev() {
            let o = (vertex[i as usize] - 1) as usize;
            retained[dominator[o] as usize] += retained[o];
        }
        self.dominator = dominator;
        self.retained = retained;
    }

    fn dominated_lists(&mut self) {
        let n = self.dominator.len();
        let mut first = vec![0u32; n + 1];
        for (o, &d) in self.dominator.iter().enumerate() {
            if o as u32 != ROOT {
                first[d as usize + 1] += 1;
            }
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut fill = first.clone();
        let mut dominated = vec![0u32; n.saturating_sub(1)];
        for (o, &d) in self.dominator.iter().enumerate() {
            if o as u32 != ROOT {
                dominated[fill[d as usize] as usize] = o as u32;
                fill[d as usize] += 1;
            }
        }
        self.first_dominated = first;
        self.dominated = dominated;
    }
}

/// JavaScript's `parseInt(s, 10)` for non-negative results: the leading
/// decimal digits after optional whitespace, `None` (NaN) if there are none.
fn js_parse_int(s: &str) -> Option<u64> {
    let t = s.trim_start();
    let digits: &str = &t[..t.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// Retainer lists (reverse edges), grouped by target, in edge order.
fn retainers(s: &HeapSnapshot) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let n = s.node_count();
    let mut first = vec![0u32; n + 1];
    for &to in &s.edge_to {
        first[to as usize + 1] += 1;
    }
    for i in 0..n {
        first[i + 1] += first[i];
    }
    let mut fill = first.clone();
    let mut ret_edge = vec![0u32; s.edge_count()];
    let mut ret_node = vec![0u32; s.edge_count()];
    for node in 0..n as u32 {
        for e in s.edges(node) {
            let to = s.edge_to[e] as usize;
            let slot = fill[to] as usize;
            fill[to] += 1;
            ret_edge[slot] = e as u32;
            ret_node[slot] = node;
        }
    }
    (first, ret_edge, ret_node)
}

/// DevTools' `computeIsEssentialEdge` for every edge: weak edges, self
/// references, the WeakMap table's edge to a value, shortcuts (except from
/// the root) and edges from objects not owned by the page (not reachable from
/// the root's shortcut children) to page-owned ones do not retain.
fn essential_edges(s: &HeapSnapshot, weakmaps: &mut WeakMapNames<'_>, rules: Rules) -> Bits {
    let k = s.kinds;
    let n = s.node_count();
    // DevTools' markPageOwnedNodes: from the root's shortcut edges (global
    // objects) and the (Document DOM trees) root, over non-weak edges.
    // memlab's flagReachableNodesFromWindow: from the root's other edges.
    let mut page = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    for e in s.edges(ROOT) {
        let child = s.edge_to[e];
        let t = s.edge_type[e];
        let dom_trees = t == k.e_element
            && s.node_type[child as usize] == k.synthetic
            && s.raw_name(child) == "(Document DOM trees)";
        let entry = match rules {
            Rules::Devtools => dom_trees || t == k.e_shortcut,
            Rules::Memlab => !dom_trees && t != k.e_shortcut,
        };
        if entry && !page[child as usize] {
            page[child as usize] = true;
            stack.push(child);
        }
    }
    while let Some(node) = stack.pop() {
        for e in s.edges(node) {
            let child = s.edge_to[e] as usize;
            if page[child] || s.edge_type[e] == k.e_weak {
                continue;
            }
            page[child] = true;
            stack.push(child as u32);
        }
    }
    let mut bits = Bits::new(s.edge_count());
    for node in 0..n as u32 {
        for e in s.edges(node) {
            let t = s.edge_type[e];
            if t == k.e_weak {
                continue;
            }
            if rules == Rules::Devtools {
                if let Some((_, table)) = weakmaps.get(e) {
                    if u64::from(s.node_id[node as usize]) == table {
                        continue;
                    }
                }
            }
            let child = s.edge_to[e];
            if child == node {
                continue;
            }
            if node != ROOT {
                if t == k.e_shortcut {
                    continue;
                }
                if page[child as usize] && !page[node as usize] {
                    continue;
                }
            }
            bits.set(e);
        }
    }
    bits
}

/// Test graphs: edge types of [`test_snapshot`] (V8's order).
#[cfg(test)]
pub(crate) mod edge {
    pub const ELEMENT: u32 = 1;
    pub const PROPERTY: u32 = 2;
    pub const INTERNAL: u32 = 3;
    pub const SHORTCUT: u32 = 5;
    pub const WEAK: u32 = 6;
}

#[cfg(test)]
/// A snapshot file for a graph: node 0 is the synthetic root, node i > 0
/// an object of `i + 1` bytes; edges are (from, to, type).
pub(crate) fn test_snapshot(n: usize, edges: &[(usize, usize, u32)]) -> HeapSnapshot {
    use crate::heap::parse::read_bytes;
    let mut nodes = Vec::new();
    let mut edge_nums = Vec::new();
    for i in 0..n {
        let mine: Vec<_> = edges.iter().filter(|e| e.0 == i).collect();
        let (t, name, size) = if i == 0 { (9, 0, 0) } else { (3, 1, i + 1) };
        nodes.push(format!("{t},{name},{},{size},{},0", 2 * i + 1, mine.len()));
        for (k, e) in mine.iter().enumerate() {
            let name = if e.2 == 1 { k } else { 2 };
            edge_nums.push(format!("{},{name},{}", e.2, e.1 * 6));
        }
    }
    let json = format!(
        r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count","trace_node_id"],
        "node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic"],"string","number","number","number","number"],
        "edge_fields":["type","name_or_index","to_node"],
        "edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]}},
        "node_count":{n},"edge_count":{}}},
        "nodes":[{}],"edges":[{}],"strings":["","Thing","prop"]}}"#,
        edges.len(),
        nodes.join(","),
        edge_nums.join(",")
    );
    read_bytes(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

#[cfg(test)]
mod tests {
    use super::edge::*;
    use super::*;

    /// Nodes reachable from the root over non-weak edges, without `removed`.
    fn reachable(n: usize, edges: &[(usize, usize, u32)], removed: Option<usize>) -> Vec<bool> {
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(v) = stack.pop() {
            for e in edges.iter().filter(|e| e.0 == v && e.2 != WEAK) {
                if Some(e.1) != removed && !seen[e.1] {
                    seen[e.1] = true;
                    stack.push(e.1);
                }
            }
        }
        seen
    }

    /// Dominators by definition: d dominates v if v is unreachable without d.
    fn brute_force(n: usize, edges: &[(usize, usize, u32)]) -> (Vec<usize>, Vec<u64>) {
        let doms: Vec<Vec<usize>> = (0..n)
            .map(|v| {
                (0..n)
                    .filter(|&d| d == v || d == 0 || !reachable(n, edges, Some(d))[v])
                    .collect()
            })
            .collect();
        let idom = (0..n)
            .map(|v| {
                if v == 0 {
                    return 0;
                }
                *doms[v]
                    .iter()
                    .filter(|&&d| d != v)
                    .max_by_key(|&&d| doms[d].len())
                    .unwrap()
            })
            .collect();
        let retained = (0..n)
            .map(|v| {
                (0..n)
                    .filter(|&w| doms[w].contains(&v))
                    .map(|w| if w == 0 { 0 } else { w as u64 + 1 })
                    .sum()
            })
            .collect();
        (idom, retained)
    }

    #[test]
    fn dominators_match_the_definition_on_random_graphs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for round in 0..300 {
            let n = 2 + rand(11);
            // A random tree from the root reaches every node; then extra
            // edges (some weak, some to self) make it a general graph.
            let mut edges: Vec<(usize, usize, u32)> = (1..n)
                .map(|v| (rand(v), v, if rand(2) == 0 { ELEMENT } else { PROPERTY }))
                .collect();
            for _ in 0..rand(3 * n) {
                let t = [ELEMENT, PROPERTY, WEAK][rand(3)];
                edges.push((rand(n), 1 + rand(n - 1), t));
            }
            edges.sort_by_key(|e| e.0);
            let s = test_snapshot(n, &edges);
            for rules in [Rules::Devtools, Rules::Memlab] {
                let g = Graph::build(&s, rules);
                let (idom, retained) = brute_force(n, &edges);
                let got: Vec<usize> = g.dominator.iter().map(|&d| d as usize).collect();
                assert_eq!(
                    got, idom,
                    "round {round} {rules:?}: dominators of {edges:?}"
                );
                assert_eq!(
                    g.retained, retained,
                    "round {round} {rules:?}: retained sizes of {edges:?}"
                );
                assert_eq!(g.unreachable, 0);
            }
        }
    }

    #[test]
    fn weakly_held_and_unreachable_nodes_hang_off_the_root() {
        // 1 → 2 (weak only); 2 → 3; 4 and 5 hold each other, nothing else holds them.
        let edges = [
            (0, 1, ELEMENT),
            (1, 2, WEAK),
            (2, 3, PROPERTY),
            (4, 5, PROPERTY),
            (5, 4, PROPERTY),
        ];
        let s = test_snapshot(6, &edges);
        let g = Graph::build(&s, Rules::Devtools);
        assert_eq!(g.dominator, vec![0, 0, 0, 2, 0, 0]);
        assert_eq!(g.unreachable, 4);
        assert_eq!(g.retained[2], 3 + 4);
        assert_eq!(g.retained[0], (2..=6).sum::<u64>());
        // Distances: weak edges do not count, the rest is never reached.
        assert_eq!(g.distance[1], 1);
        assert_eq!(g.distance[2], NO_DISTANCE);
        assert_eq!(g.distance[4], NO_DISTANCE);
    }

    #[test]
    fn distances_start_at_user_roots() {
        // Root → 1 (an object: a user root) → 2; root → 3 synthetic (like
        // "(GC roots)") → 4 → 2.
        let edges = [
            (0, 1, ELEMENT),
            (0, 3, ELEMENT),
            (1, 2, PROPERTY),
            (3, 4, ELEMENT),
            (4, 2, PROPERTY),
        ];
        let mut s = test_snapshot(5, &edges);
        s.node_type[3] = s.kinds.synthetic;
        let g = Graph::build(&s, Rules::Devtools);
        assert_eq!(
            g.distance,
            vec![
                BASE_SYSTEM_DISTANCE,
                1,
                2,
                BASE_SYSTEM_DISTANCE + 1,
                BASE_SYSTEM_DISTANCE + 2
            ]
        );
        assert_eq!((g.pred_node[2], g.pred_node[4]), (1, 3));
    }

    #[test]
    fn weakmap_edge_names() {
        let name = "3 / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @9)";
        assert_eq!(
            parse_weakmap_edge(name),
            Some((
                " / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @9)",
                9
            ))
        );
        let spaced = "12 / part of key (system / Context @7) -> value (Foo bar @8) pair in WeakMap (table @123)";
        assert_eq!(parse_weakmap_edge(spaced).map(|p| p.1), Some(123));
        for bad in [
            "map",
            " / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @9)",
            "3 / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @x)",
            "3 / part of key (Object) -> value (Object @13) pair in WeakMap (table @9)",
            "3 / part of key (Object @11) -> value (Object @13) pair in WeakMap (table @9) ",
        ] {
            assert_eq!(parse_weakmap_edge(bad), None, "{bad}");
        }
    }

    #[test]
    fn parse_int_like_javascript() {
        assert_eq!(js_parse_int("12"), Some(12));
        assert_eq!(js_parse_int("7abc"), Some(7));
        assert_eq!(js_parse_int("abc"), None);
        assert_eq!(js_parse_int(""), None);
    }

    #[test]
    fn owned_objects_decide_which_edges_retain() {
        // root ─shortcut→ G (a global) → A; root ─element→ R (GC roots) → A, R → B → A.
        let edges = [
            (0, 1, SHORTCUT),
            (0, 2, ELEMENT),
            (1, 3, PROPERTY),
            (2, 3, ELEMENT),
            (2, 4, ELEMENT),
            (4, 3, PROPERTY),
        ];
        let mut s = test_snapshot(5, &edges);
        s.node_type[2] = s.kinds.synthetic;
        // DevTools: G's world is the page's; R and B are not, their edges to A do not retain.
        let g = Graph::build(&s, Rules::Devtools);
        assert_eq!(g.dominator, vec![0, 0, 0, 1, 2]);
        // memlab: what R reaches is owned; G's edge into it does not retain.
        let g = Graph::build(&s, Rules::Memlab);
        assert_eq!(g.dominator, vec![0, 0, 0, 2, 2]);
    }

    #[test]
    fn weakmap_values_hang_off_their_key() {
        // Table T (id 3) and key K (id 5) both reach value V (id 7).
        let edges = [
            (0, 1, ELEMENT),
            (0, 2, ELEMENT),
            (1, 3, INTERNAL),
            (2, 3, INTERNAL),
        ];
        let mut s = test_snapshot(4, &edges);
        let name = "1 / part of key (Object @5) -> value (Object @7) pair in WeakMap (table @3)";
        s.strings.text.push_str(name);
        s.strings.ends.push(s.strings.text.len() as u64);
        let index = (s.strings.len() - 1) as u32;
        s.edge_name[2] = index;
        s.edge_name[3] = index;
        let g = Graph::build(&s, Rules::Devtools);
        assert_eq!(
            g.dominator[3], 2,
            "the table's edge does not retain the value"
        );
        assert_eq!(
            (g.distance[3], g.pred_node[3]),
            (2, 2),
            "distance through the second edge"
        );
        let g = Graph::build(&s, Rules::Memlab);
        assert_eq!(g.dominator[3], 0, "memlab counts both edges");
    }
}
