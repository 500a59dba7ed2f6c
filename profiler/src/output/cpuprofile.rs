//! Chrome DevTools `.cpuprofile` JSON (also read by VS Code and speedscope).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use super::OutputError;
use crate::profile::{Frame, FrameId, FrameKind, Profile, StackId};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CpuProfile {
    nodes: Vec<Node>,
    start_time: u64,
    end_time: u64,
    samples: Vec<u32>,
    time_deltas: Vec<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    id: u32,
    call_frame: CallFrame,
    hit_count: u64,
    children: Vec<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallFrame {
    function_name: String,
    script_id: String,
    url: String,
    line_number: i64,
    column_number: i64,
}

impl CallFrame {
    /// A frame DevTools will not try to open: no script, no position.
    fn meta(name: String) -> Self {
        CallFrame {
            function_name: name,
            script_id: "0".into(),
            url: String::new(),
            line_number: -1,
            column_number: -1,
        }
    }
}

/// What distinguishes the children of one node.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Thread(u32),
    Frame(FrameId),
    Program,
}

#[derive(Default)]
struct Tree {
    nodes: Vec<Node>,
    index: HashMap<(u32, Key), u32>,
    /// Script ids per url, so every function of one script shares an id as in V8.
    script_ids: HashMap<String, u32>,
}

impl Tree {
    fn child(&mut self, parent: u32, key: Key, make: impl FnOnce(&mut Self) -> CallFrame) -> u32 {
        if let Some(&id) = self.index.get(&(parent, key)) {
            return id;
        }
        let call_frame = make(self);
        let id = self.push(call_frame);
        self.nodes[parent as usize - 1].children.push(id);
        self.index.insert((parent, key), id);
        id
    }

    fn push(&mut self, call_frame: CallFrame) -> u32 {
        let id = self.nodes.len() as u32 + 1;
        self.nodes.push(Node {
            id,
            call_frame,
            hit_count: 0,
            children: Vec::new(),
        });
        id
    }

    fn call_frame(&mut self, frame: &Frame) -> CallFrame {
        if frame.kind != FrameKind::Js {
            // Native module paths are not scripts: DevTools would try to load them.
            return CallFrame::meta(frame.name.clone());
        }
        let script_id = if let Some(id) = frame.script_id {
            // V8's own id, as `--cpu-prof` writes it.
            id.to_string()
        } else if frame.location.is_empty() {
            "0".to_string()
        } else {
            let next = self.script_ids.len() as u32 + 1;
            self.script_ids
                .entry(frame.location.clone())
                .or_insert(next)
                .to_string()
        };
        CallFrame {
            function_name: frame.name.clone(),
            script_id,
            url: frame.location.clone(),
            line_number: frame.line.map_or(-1, i64::from),
            column_number: frame.column.map_or(-1, i64::from),
        }
    }
}

fn build(profile: &Profile) -> CpuProfile {
    const ROOT: u32 = 1;
    let mut tree = Tree::default();
    tree.push(CallFrame::meta("(root)".into()));
    let mut leaves: HashMap<(u32, StackId), u32> = HashMap::new();
    let start_us = profile.start_ns / 1000;
    let mut last_us = start_us;
    let mut samples = Vec::with_capacity(profile.samples.len());
    let mut time_deltas = Vec::with_capacity(profile.samples.len());

    for s in profile.samples_by_time() {
        let leaf = *leaves.entry((s.tid, s.stack)).or_insert_with(|| {
            // Non-main threads get their own subtree so worker and GC threads
            // don't read as if the main thread's JS had called them.
            let mut parent = ROOT;
            if s.tid != profile.pid {
                let name = format!("[{} {}]", profile.thread_name(s.tid), s.tid);
                parent = tree.child(ROOT, Key::Thread(s.tid), |_| CallFrame::meta(name));
            }
            let stack = profile.stack(s.stack);
            if stack.is_empty() {
                return tree.child(parent, Key::Program, |_| {
                    CallFrame::meta("(program)".into())
                });
            }
            for &fid in stack {
                parent = tree.child(parent, Key::Frame(fid), |t| {
                    t.call_frame(profile.frame(fid))
                });
            }
            parent
        });
        tree.nodes[leaf as usize - 1].hit_count += 1;
        samples.push(leaf);
        let us = s.time_ns / 1000;
        time_deltas.push(us.saturating_sub(last_us));
        last_us = last_us.max(us);
    }

    CpuProfile {
        nodes: tree.nodes,
        start_time: start_us,
        end_time: (profile.end_ns / 1000).max(last_us),
        samples,
        time_deltas,
    }
}

/// Writes `profile` as `.cpuprofile` JSON.
pub fn write_cpuprofile(profile: &Profile, mut w: impl Write) -> Result<(), OutputError> {
    serde_json::to_writer(&mut w, &build(profile))?;
    w.flush()?;
    Ok(())
}

fn uint(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64()
        .ok_or_else(|| format!("{what} is not a non-negative integer: {v}"))
}

fn array<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what} is not an array"))
}

fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("{what} has no {key}"))
}

/// Checks the invariants DevTools, VS Code and speedscope rely on; the error
/// names the first violation found.
pub fn validate_cpuprofile(json: &Value) -> Result<(), String> {
    let obj = json.as_object().ok_or("profile is not an object")?;
    for key in ["nodes", "startTime", "endTime", "samples", "timeDeltas"] {
        if !obj.contains_key(key) {
            return Err(format!("profile has no {key}"));
        }
    }
    let nodes = array(&json["nodes"], "nodes")?;
    let start = uint(&json["startTime"], "startTime")?;
    let end = uint(&json["endTime"], "endTime")?;
    if end < start {
        return Err(format!("endTime {end} < startTime {start}"));
    }
    if nodes.is_empty() {
        return Err("nodes is empty".into());
    }

    // Per node: check shape, collect ids, hit counts and children.
    let n = nodes.len() as u64;
    let mut hit_counts = BTreeMap::new();
    let mut children_of = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let what = format!("nodes[{i}]");
        let id = uint(field(node, "id", &what)?, &format!("{what}.id"))?;
        if id == 0 || id > n {
            return Err(format!(
                "{what}.id {id} is outside 1..={n} (ids must be dense)"
            ));
        }
        let cf = field(node, "callFrame", &what)?;
        if !cf.is_object() {
            return Err(format!("{what}.callFrame is not an object"));
        }
        for key in ["functionName", "scriptId", "url"] {
            if !field(cf, key, &format!("{what}.callFrame"))?.is_string() {
                return Err(format!("{what}.callFrame.{key} is not a string"));
            }
        }
        for key in ["lineNumber", "columnNumber"] {
            match field(cf, key, &format!("{what}.callFrame"))?.as_i64() {
                Some(v) if v >= -1 => {}
                _ => return Err(format!("{what}.callFrame.{key} is not an integer >= -1")),
            }
        }
        let hits = uint(field(node, "hitCount", &what)?, &format!("{what}.hitCount"))?;
        let children = array(field(node, "children", &what)?, &format!("{what}.children"))?
            .iter()
            .map(|c| uint(c, &format!("{what}.children[]")))
            .collect::<Result<Vec<_>, _>>()?;
        if hit_counts.insert(id, hits).is_some() {
            return Err(format!("duplicate node id {id}"));
        }
        children_of.insert(id, children);
        if i == 0 && cf["functionName"] != "(root)" {
            return Err(format!("nodes[0] is {}, not (root)", cf["functionName"]));
        }
    }
    let root = uint(&nodes[0]["id"], "nodes[0].id")?;
    if n > 1 && children_of[&root].is_empty() {
        return Err("(root) has no children".into());
    }

    // Tree shape: every child exists, the root has no parent, every other
    // node exactly one, and all are reachable from the root (no cycles).
    let mut parents: HashMap<u64, u64> = HashMap::new();
    for (&id, children) in &children_of {
        for &c in children {
            if !hit_counts.contains_key(&c) {
                return Err(format!("node {id} names missing child {c}"));
            }
            if c == root {
                return Err(format!("node {id} names (root) as a child"));
            }
            if let Some(other) = parents.insert(c, id) {
                return Err(format!("node {c} has two parents: {other} and {id}"));
            }
        }
    }
    let mut seen = HashSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(id) = queue.pop_front() {
        for &c in &children_of[&id] {
            if seen.insert(c) {
                queue.push_back(c);
            }
        }
    }
    if seen.len() as u64 != n {
        return Err(format!(
            "{} nodes are not reachable from (root)",
            n - seen.len() as u64
        ));
    }

    // Samples and times.
    let samples = array(&json["samples"], "samples")?;
    let deltas = array(&json["timeDeltas"], "timeDeltas")?;
    if samples.len() != deltas.len() {
        return Err(format!(
            "{} samples but {} timeDeltas",
            samples.len(),
            deltas.len()
        ));
    }
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let id = uint(s, &format!("samples[{i}]"))?;
        if !hit_counts.contains_key(&id) {
            return Err(format!("samples[{i}] names missing node {id}"));
        }
        *counts.entry(id).or_default() += 1;
    }
    for (&id, &hits) in &hit_counts {
        let sampled = counts.get(&id).copied().unwrap_or(0);
        if hits != sampled {
            return Err(format!(
                "node {id} has hitCount {hits} but {sampled} samples"
            ));
        }
    }
    let mut t = start;
    for (i, d) in deltas.iter().enumerate() {
        t += uint(d, &format!("timeDeltas[{i}]"))?;
    }
    if t > end {
        return Err(format!("last sample at {t} is after endTime {end}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::{js, sample_profile};

    fn to_json(p: &Profile) -> Value {
        let mut buf = Vec::new();
        write_cpuprofile(p, &mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    fn name(v: &Value, id: u64) -> String {
        let node = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap();
        node["callFrame"]["functionName"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Child of `parent` called `child`, by id.
    fn find(v: &Value, parent: u64, child: &str) -> u64 {
        let node = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == parent)
            .unwrap();
        let ids: Vec<u64> = node["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        let found: Vec<u64> = ids.into_iter().filter(|&c| name(v, c) == child).collect();
        assert_eq!(found.len(), 1, "{child} under {parent}");
        found[0]
    }

    fn node(v: &Value, id: u64) -> &Value {
        &v["nodes"][id as usize - 1]
    }

    #[test]
    fn tree_threads_and_hit_counts() {
        let v = to_json(&sample_profile());
        validate_cpuprofile(&v).unwrap();
        assert_eq!(v["nodes"][0]["id"], 1);
        assert_eq!(name(&v, 1), "(root)");
        // Main thread under root; one node per other thread, even with equal names.
        let start = find(&v, 1, "node::Start");
        let w101 = find(&v, 1, "[libuv-worker 101]");
        let w102 = find(&v, 1, "[libuv-worker 102]");
        let gc_thread = find(&v, 1, "[V8 GC 103]");
        let program = find(&v, 1, "(program)");
        assert_eq!(node(&v, 1)["children"].as_array().unwrap().len(), 5);
        assert_eq!(node(&v, program)["hitCount"], 1);
        assert_eq!(node(&v, find(&v, gc_thread, "(program)"))["hitCount"], 1);
        for w in [w101, w102] {
            let uv = find(&v, w, "uv_work;loop\n");
            assert_eq!(node(&v, uv)["hitCount"], 1);
            assert_eq!(node(&v, uv)["callFrame"]["url"], "");
        }
        // Recursion makes a chain of distinct nodes.
        let main = find(&v, start, "main");
        let fib1 = find(&v, main, "fib");
        let fib2 = find(&v, fib1, "fib");
        let fib3 = find(&v, fib2, "fib");
        assert_eq!(node(&v, fib1)["hitCount"], 1);
        assert_eq!(node(&v, fib2)["hitCount"], 0);
        assert_eq!(node(&v, fib3)["hitCount"], 2);
        let gc = find(&v, start, "(garbage collector)");
        assert_eq!(node(&v, gc)["hitCount"], 1);
        let write = find(&v, find(&v, main, "Builtin:CallFunction"), "write");
        assert_eq!(node(&v, find(&v, write, "ksys_write"))["hitCount"], 1);
        let total: u64 = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["hitCount"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 9);
    }

    #[test]
    fn call_frames() {
        let v = to_json(&sample_profile());
        let start = find(&v, 1, "node::Start");
        let main = find(&v, start, "main");
        let fib = find(&v, main, "fib");
        let cf = &node(&v, fib)["callFrame"];
        assert_eq!(cf["url"], "file:///app/fib.js");
        assert_eq!(cf["lineNumber"], 2);
        assert_eq!(cf["columnNumber"], 12);
        assert_eq!(node(&v, main)["callFrame"]["scriptId"], "1");
        assert_eq!(cf["scriptId"], "2");
        // Native: no url (DevTools would try to open it), script 0, no position.
        let cf = &node(&v, start)["callFrame"];
        assert_eq!(cf["url"], "");
        assert_eq!(cf["scriptId"], "0");
        assert_eq!(cf["lineNumber"], -1);
        assert_eq!(cf["columnNumber"], -1);
    }

    #[test]
    fn script_ids_are_per_url_and_unknown_positions_are_minus_one() {
        let mut p = Profile::new(1, 99, 0);
        let a = p.intern_frame(js("a", "file:///x.js", 0, 0));
        let b = p.intern_frame(js("b", "file:///x.js", 5, 1));
        let c = p.intern_frame(Frame::new(FrameKind::Js, "c", ""));
        let s = p.intern_stack(vec![a, b, c]);
        p.add_sample(5000, 1, "node", s);
        let v = to_json(&p);
        validate_cpuprofile(&v).unwrap();
        assert_eq!(node(&v, 2)["callFrame"]["scriptId"], "1");
        assert_eq!(node(&v, 3)["callFrame"]["scriptId"], "1");
        assert_eq!(node(&v, 4)["callFrame"]["scriptId"], "0");
        assert_eq!(node(&v, 4)["callFrame"]["lineNumber"], -1);
        assert_eq!(node(&v, 4)["callFrame"]["columnNumber"], -1);
    }

    #[test]
    fn v8_script_ids_are_kept_also_without_url() {
        // `new Function` code: no URL, a script id of its own, a position.
        let mut p = Profile::new(1, 99, 0);
        let f = p.intern_frame(Frame {
            script_id: Some(37),
            ..js("anonymous", "", 0, 9)
        });
        let g = p.intern_frame(Frame {
            script_id: Some(4),
            ..js("g", "file:///x.js", 2, 0)
        });
        let s = p.intern_stack(vec![g, f]);
        p.add_sample(5000, 1, "node", s);
        let v = to_json(&p);
        validate_cpuprofile(&v).unwrap();
        let (g, f) = (&node(&v, 2)["callFrame"], &node(&v, 3)["callFrame"]);
        assert_eq!(
            (&g["scriptId"], &g["url"]),
            (&"4".into(), &"file:///x.js".into())
        );
        assert_eq!((&f["scriptId"], &f["url"]), (&"37".into(), &"".into()));
        assert_eq!(
            (&f["lineNumber"], &f["columnNumber"]),
            (&0.into(), &9.into())
        );
    }

    #[test]
    fn times_are_microseconds_in_order() {
        let v = to_json(&sample_profile());
        assert_eq!(v["startTime"], 1000);
        assert_eq!(v["endTime"], 2000);
        let deltas: Vec<u64> = v["timeDeltas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        // Samples at 1010,1020,1025,1030,1035,1040,1045,1050,1060 µs.
        assert_eq!(deltas, vec![10, 10, 5, 5, 5, 5, 5, 5, 10]);
        let samples: Vec<String> = v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| name(&v, s.as_u64().unwrap()))
            .collect();
        assert_eq!(
            samples,
            [
                "fib",
                "fib",
                "uv_work;loop\n",
                "fib",
                "uv_work;loop\n",
                "ksys_write",
                "(program)",
                "(garbage collector)",
                "(program)"
            ]
        );
    }

    #[test]
    fn empty_profile_is_valid() {
        let v = to_json(&Profile::new(1, 99, 5_000_000));
        validate_cpuprofile(&v).unwrap();
        assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
        assert_eq!(v["samples"].as_array().unwrap().len(), 0);
        assert_eq!(v["startTime"], 5000);
        assert_eq!(v["endTime"], 5000);
    }

    #[test]
    fn validator_rejects_broken_profiles() {
        let good = to_json(&sample_profile());
        let broken = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            validate_cpuprofile(&v).unwrap_err()
        };
        let n = good["nodes"].as_array().unwrap().len();
        assert!(broken(&|v| v["nodes"][0]["hitCount"] = 7.into()).contains("hitCount"));
        assert!(
            broken(&|v| drop(v["timeDeltas"].as_array_mut().unwrap().pop())).contains("timeDeltas")
        );
        assert!(broken(&|v| v["timeDeltas"][0] = (-1).into()).contains("timeDeltas[0]"));
        assert!(broken(&|v| v["samples"][0] = 999.into()).contains("missing node"));
        assert!(broken(&|v| v["nodes"][1]["id"] = 999.into()).contains("dense"));
        assert!(broken(&|v| v["nodes"][2]["id"] = 2.into()).contains("duplicate"));
        assert!(broken(&|v| v["nodes"][0]["children"]
            .as_array_mut()
            .unwrap()
            .push(999.into()))
        .contains("missing child"));
        assert!(broken(&|v| v["nodes"][0]["children"]
            .as_array_mut()
            .unwrap()
            .push(3.into()))
        .contains("two parents"));
        assert!(broken(&|v| v["nodes"][1]["children"]
            .as_array_mut()
            .unwrap()
            .push(1.into()))
        .contains("(root)"));
        assert!(
            broken(&|v| v["nodes"][0]["callFrame"]["functionName"] = "x".into())
                .contains("not (root)")
        );
        assert!(
            broken(&|v| v["nodes"][1]["callFrame"]["scriptId"] = 1.into()).contains("scriptId")
        );
        assert!(
            broken(&|v| v["nodes"][1]["callFrame"]["lineNumber"] = (-2).into())
                .contains("lineNumber")
        );
        assert!(broken(&|v| v["endTime"] = 1001.into()).contains("endTime"));
        assert!(broken(&|v| v["endTime"] = 1.into()).contains("endTime"));
        assert!(
            broken(&|v| drop(v.as_object_mut().unwrap().remove("samples"))).contains("samples")
        );
        assert!(
            broken(&|v| drop(v["nodes"][1].as_object_mut().unwrap().remove("children")))
                .contains("children")
        );
        // A detached cycle: every node still has one parent, but not all are reachable.
        let cyc = broken(&|v| {
            let last = v["nodes"][n - 1]["id"].as_u64().unwrap();
            let parent_idx = (0..n)
                .find(|&i| {
                    v["nodes"][i]["children"]
                        .as_array()
                        .unwrap()
                        .contains(&last.into())
                })
                .unwrap();
            let kids = v["nodes"][parent_idx]["children"].as_array_mut().unwrap();
            kids.retain(|c| c != last);
            v["nodes"][n - 1]["children"] = vec![last].into();
        });
        assert!(
            cyc.contains("two parents") || cyc.contains("reachable"),
            "{cyc}"
        );
        assert!(
            broken(&|v| v["nodes"][1]["children"].as_array_mut().unwrap().clear())
                .contains("reachable")
        );
    }
}
