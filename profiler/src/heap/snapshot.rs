//! The snapshot model: nodes and edges as columns, the string table, the type
//! names of `meta`, and DevTools' class names.

use std::collections::HashMap;

use super::graph::Rules;

/// The string table: all strings back to back, with their end offsets.
#[derive(Default)]
pub struct Strings {
    pub text: String,
    pub ends: Vec<u64>,
}

impl Strings {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, index: u32) -> &str {
        let i = index as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
}

/// Type indices of the node and edge types nodeprof treats specially (from
/// `meta.node_types`/`meta.edge_types`; `u8::MAX` when a snapshot lacks one).
#[derive(Default, Clone, Copy)]
pub struct Kinds {
    pub hidden: u8,
    pub array: u8,
    pub object: u8,
    pub code: u8,
    pub closure: u8,
    pub regexp: u8,
    pub native: u8,
    pub synthetic: u8,
    pub e_context: u8,
    pub e_element: u8,
    pub e_property: u8,
    pub e_internal: u8,
    pub e_hidden: u8,
    pub e_shortcut: u8,
    pub e_weak: u8,
    pub e_invisible: u8,
}

/// A parsed heap snapshot. Nodes are numbered by ordinal (their position in
/// the file); node 0 is the root. Edges of node `n` are
/// `first_edge[n]..first_edge[n + 1]`.
#[derive(Default)]
pub struct HeapSnapshot {
    pub node_types: Vec<String>,
    pub edge_types: Vec<String>,
    pub kinds: Kinds,
    pub node_type: Vec<u8>,
    pub node_name: Vec<u32>,
    pub node_id: Vec<u32>,
    pub node_self: Vec<u64>,
    /// V8's DOM link state per node (0 unknown, 1 attached, 2 detached); empty
    /// when the snapshot has no `detachedness` field (node 26).
    pub node_detachedness: Vec<u8>,
    pub first_edge: Vec<u32>,
    pub edge_type: Vec<u8>,
    /// String index, or the element index for `element`/`hidden` edges.
    pub edge_name: Vec<u32>,
    /// Target node ordinal.
    pub edge_to: Vec<u32>,
    pub strings: Strings,
    /// Class of every node (index into `class_names`).
    pub class_of: Vec<u32>,
    pub class_names: Vec<String>,
}

pub const ROOT: u32 = 0;

/// No heap is bigger than the 57-bit virtual address space of x86-64 with
/// five-level paging (64 PiB).
pub const MAX_HEAP_BYTES: u64 = 1 << 56;

impl HeapSnapshot {
    pub fn node_count(&self) -> usize {
        self.node_type.len()
    }

    pub fn edge_count(&self) -> usize {
        self.edge_type.len()
    }

    pub fn edges(&self, node: u32) -> std::ops::Range<usize> {
        self.first_edge[node as usize] as usize..self.first_edge[node as usize + 1] as usize
    }

    pub fn raw_name(&self, node: u32) -> &str {
        self.strings.get(self.node_name[node as usize])
    }

    pub fn class_name(&self, node: u32) -> &str {
        &self.class_names[self.class_of[node as usize] as usize]
    }

    pub fn node_type_name(&self, node: u32) -> &str {
        &self.node_types[self.node_type[node as usize] as usize]
    }

    /// Whether an edge's name is a string index (not a number).
    pub fn edge_has_string_name(&self, edge: usize) -> bool {
        let t = self.edge_type[edge];
        t != self.kinds.e_element && t != self.kinds.e_hidden
    }

    /// The edge's name as DevTools shows it: string, or the element index.
    pub fn edge_name(&self, edge: usize) -> String {
        if self.edge_has_string_name(edge) {
            self.strings.get(self.edge_name[edge]).to_string()
        } else {
            self.edge_name[edge].to_string()
        }
    }

    /// The edge as DevTools' `JSHeapSnapshotEdge.toString()` writes it:
    /// `.prop`, `[3]`, `->ctxvar`, `{internal}`, `[[weak]]`.
    pub fn edge_label(&self, edge: usize) -> String {
        let k = &self.kinds;
        let t = self.edge_type[edge];
        let name = self.edge_name(edge);
        if t == k.e_context {
            format!("->{name}")
        } else if t == k.e_element {
            format!("[{name}]")
        } else if t == k.e_weak {
            format!("[[{name}]]")
        } else if t == k.e_property || t == k.e_shortcut {
            if name.contains(' ') {
                format!("[\"{name}\"]")
            } else {
                format!(".{name}")
            }
        } else {
            format!("{{{name}}}")
        }
    }

    /// Checks cross references once all parts are read, resolves the type
    /// names and assigns class names.
    pub(crate) fn finish(
        &mut self,
        node_types: Vec<String>,
        edge_types: Vec<String>,
    ) -> Result<(), String> {
        let n = self.node_count();
        if self.node_name.len() != n
            || !(self.node_detachedness.is_empty() || self.node_detachedness.len() == n)
            || self.node_id.len() != n
            || self.node_self.len() != n
            || self.first_edge.len() != n + 1
        {
            return Err("node records are incomplete".into());
        }
        // Sizes are summed everywhere (retained sizes, class totals, diffs):
        // bounding their total here keeps every such sum exact.
        let total = self
            .node_self
            .iter()
            .try_fold(0u64, |sum, &size| sum.checked_add(size));
        if total.is_none_or(|t| t > MAX_HEAP_BYTES) {
            return Err(format!(
                "implausible object sizes: they add up to more than {} PiB, more than a process can address (corrupt or crafted file)",
                MAX_HEAP_BYTES >> 50
            ));
        }
        let strings = self.strings.len() as u64;
        if let Some(bad) = self.node_name.iter().find(|&&s| u64::from(s) >= strings) {
            return Err(format!(
                "a node name refers to string {bad}, the table has {strings}"
            ));
        }
        let find = |list: &[String], name: &str| {
            list.iter()
                .position(|t| t == name)
                .map_or(u8::MAX, |i| i as u8)
        };
        let kinds = Kinds {
            hidden: find(&node_types, "hidden"),
            array: find(&node_types, "array"),
            object: find(&node_types, "object"),
            code: find(&node_types, "code"),
            closure: find(&node_types, "closure"),
            regexp: find(&node_types, "regexp"),
            native: find(&node_types, "native"),
            synthetic: find(&node_types, "synthetic"),
            e_context: find(&edge_types, "context"),
            e_element: find(&edge_types, "element"),
            e_property: find(&edge_types, "property"),
            e_internal: find(&edge_types, "internal"),
            e_hidden: find(&edge_types, "hidden"),
            e_shortcut: find(&edge_types, "shortcut"),
            e_weak: find(&edge_types, "weak"),
            e_invisible: find(&edge_types, "invisible"),
        };
        self.kinds = kinds;
        self.node_types = node_types;
        self.edge_types = edge_types;
        for e in 0..self.edge_count() {
            if self.edge_has_string_name(e) && u64::from(self.edge_name[e]) >= strings {
                return Err(format!(
                    "an edge name refers to string {}, the table has {strings}",
                    self.edge_name[e]
                ));
            }
        }
        self.classify(Rules::Devtools);
        Ok(())
    }

    /// (Re)assigns class names. Native nodes V8 marks detached are named
    /// `Detached <name>`; DevTools also propagates the state to the native
    /// nodes they reach, memlab uses V8's mark alone.
    pub fn classify(&mut self, rules: Rules) {
        let detached = match rules {
            Rules::Devtools => self.detached_nodes(),
            Rules::Memlab => self.node_detachedness.iter().map(|&d| d == 2).collect(),
        };
        self.assign_classes(&detached);
    }

    /// DevTools' `propagateDOMState`: native nodes reachable (not over
    /// hidden, invisible or weak edges) from an attached native node are
    /// attached; those reachable only from detached ones are detached.
    /// Returns the detached nodes, whose class names get a `Detached ` prefix.
    fn detached_nodes(&self) -> Vec<bool> {
        const ATTACHED: u8 = 1;
        const DETACHED: u8 = 2;
        let n = self.node_count();
        if self.node_detachedness.is_empty() {
            return Vec::new();
        }
        let k = self.kinds;
        let mut state = self.node_detachedness.clone();
        let mut visited = vec![false; n];
        let mut detached = vec![false; n];
        let mut attached_stack = Vec::new();
        let mut detached_stack = Vec::new();
        let mut process = |node: usize,
                           new: u8,
                           state: &mut [u8],
                           attached_stack: &mut Vec<usize>,
                           detached_stack: &mut Vec<usize>| {
            if visited[node] {
                return;
            }
            visited[node] = true;
            if self.node_type[node] != k.native {
                return;
            }
            state[node] = new;
            if new == ATTACHED {
                attached_stack.push(node);
            } else if new == DETACHED {
                detached[node] = true;
                detached_stack.push(node);
            }
        };
        for node in 0..n {
            let st = state[node];
            if st != 0 {
                process(
                    node,
                    st,
                    &mut state,
                    &mut attached_stack,
                    &mut detached_stack,
                );
            }
        }
        let follows = |e: usize| {
            let t = self.edge_type[e];
            t != k.e_hidden && t != k.e_invisible && t != k.e_weak
        };
        while let Some(node) = attached_stack.pop() {
            for e in self.edges(node as u32).filter(|&e| follows(e)) {
                let child = self.edge_to[e] as usize;
                process(
                    child,
                    ATTACHED,
                    &mut state,
                    &mut attached_stack,
                    &mut detached_stack,
                );
            }
        }
        while let Some(node) = detached_stack.pop() {
            if state[node] == ATTACHED {
                continue;
            }
            for e in self.edges(node as u32).filter(|&e| follows(e)) {
                let child = self.edge_to[e] as usize;
                process(
                    child,
                    DETACHED,
                    &mut state,
                    &mut attached_stack,
                    &mut detached_stack,
                );
            }
        }
        detached
    }

    /// DevTools' class names (HeapSnapshot.ts `calculateObjectNames`): hidden →
    /// `(system)`, code → `(compiled code)`, closure → `Function`, regexp →
    /// `RegExp`, object and native → their name (`<div id="a">` → `<div>`),
    /// any other type T → `(T)`.
    fn assign_classes(&mut self, detached: &[bool]) {
        let mut by_string: HashMap<(u32, bool), u32> = HashMap::new();
        let mut by_text: HashMap<String, u32> = HashMap::new();
        let mut names: Vec<String> = Vec::new();
        let mut intern = |text: String, names: &mut Vec<String>| -> u32 {
            *by_text.entry(text).or_insert_with_key(|t| {
                names.push(t.clone());
                (names.len() - 1) as u32
            })
        };
        let type_classes: Vec<u32> = (0..self.node_types.len())
            .map(|t| {
                let name = type_class_name(&self.kinds, t as u8, &self.node_types[t]);
                intern(name.unwrap_or_default(), &mut names)
            })
            .collect();
        let mut class_of = Vec::with_capacity(self.node_count());
        for node in 0..self.node_count() {
            let t = self.node_type[node];
            if t != self.kinds.object && t != self.kinds.native {
                class_of.push(type_classes[t as usize]);
                continue;
            }
            let s = self.node_name[node];
            let is_detached = detached.get(node).copied().unwrap_or(false);
            let class = match by_string.get(&(s, is_detached)) {
                Some(&c) => c,
                None => {
                    let raw = self.strings.get(s);
                    let name = if is_detached {
                        format!("Detached {raw}")
                    } else {
                        raw.to_string()
                    };
                    let c = intern(object_class_name(&name), &mut names);
                    by_string.insert((s, is_detached), c);
                    c
                }
            };
            class_of.push(class);
        }
        self.class_of = class_of;
        self.class_names = names;
    }
}

/// The class of a node of a type whose objects do not keep their own name;
/// `None` for `object` and `native`.
fn type_class_name(k: &Kinds, t: u8, type_name: &str) -> Option<String> {
    Some(if t == k.hidden {
        "(system)".into()
    } else if t == k.code {
        "(compiled code)".into()
    } else if t == k.closure {
        "Function".into()
    } else if t == k.regexp {
        "RegExp".into()
    } else if t == k.object || t == k.native {
        return None;
    } else {
        format!("({type_name})")
    })
}

/// `<div id="a">` → `<div>`, `Detached <div id="a">` → `Detached <div>`.
pub fn object_class_name(name: &str) -> String {
    let cut = |from: usize| match name[from..].find(' ') {
        Some(i) => format!("{}>", &name[..from + i]),
        None => name.to_string(),
    };
    if name.starts_with('<') {
        cut(0)
    } else if name.starts_with("Detached <") {
        cut(10)
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_class_names_drop_attributes() {
        assert_eq!(object_class_name("<div id=\"a\" class=\"b\">"), "<div>");
        assert_eq!(object_class_name("<div>"), "<div>");
        assert_eq!(object_class_name("Detached <span id=x>"), "Detached <span>");
        assert_eq!(object_class_name("Detached <span>"), "Detached <span>");
        assert_eq!(object_class_name("LeakingClass"), "LeakingClass");
        assert_eq!(object_class_name("system / Context"), "system / Context");
        assert_eq!(object_class_name(""), "");
    }

    #[test]
    fn type_classes_follow_devtools() {
        let types = [
            "hidden",
            "array",
            "string",
            "object",
            "code",
            "closure",
            "regexp",
            "number",
            "native",
            "synthetic",
            "concatenated string",
        ];
        let k = Kinds {
            hidden: 0,
            array: 1,
            object: 3,
            code: 4,
            closure: 5,
            regexp: 6,
            native: 8,
            synthetic: 9,
            ..Kinds::default()
        };
        let got: Vec<Option<String>> = types
            .iter()
            .enumerate()
            .map(|(i, t)| type_class_name(&k, i as u8, t))
            .collect();
        let want = [
            Some("(system)"),
            Some("(array)"),
            Some("(string)"),
            None,
            Some("(compiled code)"),
            Some("Function"),
            Some("RegExp"),
            Some("(number)"),
            None,
            Some("(synthetic)"),
            Some("(concatenated string)"),
        ];
        assert_eq!(got, want.map(|w| w.map(String::from)));
    }
}
