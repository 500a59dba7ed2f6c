//! JS self time per function from a `.cpuprofile` (node's `--cpu-prof` or
//! nodeprof's), counted the same way for both, so that two profiles can be
//! compared: the integration tests check nodeprof against `--cpu-prof` on
//! fixtures with it, and `cargo xtask bench-fidelity` on third-party code.
//!
//! How a sample is attributed ([`Attribution`]): a call frame is *JS* when
//! it has a script URL or a source position (`url != ""` or
//! `lineNumber >= 0`); everything else is native (V8 builtins, C++, the
//! regex engine, kernel) or a meta node (`(root)`, `(program)`, `(idle)`,
//! `(garbage collector)`, nodeprof's `[thread TID]`). A sample belongs to
//! the innermost JS frame of its stack — native frames fold into their
//! nearest JS caller, as DevTools' "self time" does with the builtins it
//! hides. Samples with no JS frame (idle, program, threads that run no JS)
//! and samples in the garbage collector are left out of the JS total:
//! `--cpu-prof` takes no stack during a GC (it puts the sample under a
//! `(garbage collector)` root child), while nodeprof keeps the JS frames
//! that allocated and puts `(garbage collector)` inside the stack.
//! Samples nodeprof takes inside V8's own profiler's signal handler
//! ([`V8_PROFILER_SIGNAL_HANDLER`]) are left out too: that is `--cpu-prof`'s
//! own work on the same process, which it never samples, not the program's
//! (on this VM a signal costs tens of µs, and under load the handler's share
//! of nodeprof's samples grows to a few percent, charged to whatever JS
//! frame its frame-pointer walk reaches).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde_json::Value;

/// Whether a root child is nodeprof's `[NAME TID]` node of a thread other
/// than the main one.
pub fn is_thread_node(name: &str) -> bool {
    name.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .and_then(|n| n.rsplit_once(' '))
        .is_some_and(|(_, tid)| !tid.is_empty() && tid.bytes().all(|b| b.is_ascii_digit()))
}

/// The pseudo frame both profilers put GC samples under.
pub const GARBAGE_COLLECTOR: &str = "(garbage collector)";

/// V8's SIGPROF handler, where `--cpu-prof` takes its samples.
pub const V8_PROFILER_SIGNAL_HANDLER: &str = "v8::sampler::SignalHandler::HandleProfilerSignal";

/// A JS function as a `.cpuprofile` names it: name (`(anonymous)` for an
/// empty name, as DevTools shows it), URL, 0-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JsFn {
    pub name: String,
    pub url: String,
    pub line: i64,
    pub column: i64,
}

impl fmt::Display for JsFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` {} line {} column {} (0-based)",
            self.name, self.url, self.line, self.column
        )
    }
}

pub fn is_js(call_frame: &Value) -> bool {
    call_frame["url"].as_str().is_some_and(|u| !u.is_empty())
        || call_frame["lineNumber"].as_i64().is_some_and(|l| l >= 0)
}

pub fn js_fn(call_frame: &Value) -> JsFn {
    let name = call_frame["functionName"].as_str().unwrap_or_default();
    JsFn {
        name: if name.is_empty() {
            "(anonymous)".to_string()
        } else {
            name.to_string()
        },
        url: call_frame["url"].as_str().unwrap_or_default().to_string(),
        line: call_frame["lineNumber"].as_i64().unwrap_or(-1),
        column: call_frame["columnNumber"].as_i64().unwrap_or(-1),
    }
}

/// One sample's stack, innermost frame first: (function name, JS function if JS).
pub type Stack = Vec<(String, Option<JsFn>)>;

/// A parsed `.cpuprofile` (node's or nodeprof's).
pub struct Profile {
    /// id → (call frame, parent id).
    pub nodes: HashMap<u64, (Value, Option<u64>)>,
    pub root: u64,
    pub samples: Vec<u64>,
    /// Each sample's time, µs (`startTime` plus the running sum of
    /// `timeDeltas`); CLOCK_MONOTONIC for both node and nodeprof on Linux.
    pub times_us: Vec<i64>,
}

impl Profile {
    /// Panics on a file that is not a `.cpuprofile` (callers are tests and
    /// benches, which check the profiles they were handed).
    pub fn new(profile: &Value) -> Profile {
        let list = profile["nodes"].as_array().expect("cpuprofile nodes");
        let mut parent = HashMap::new();
        for node in list {
            let id = node["id"].as_u64().expect("node id");
            for child in node["children"].as_array().into_iter().flatten() {
                parent.insert(child.as_u64().expect("child id"), id);
            }
        }
        let nodes = list
            .iter()
            .map(|n| {
                let id = n["id"].as_u64().unwrap();
                (id, (n["callFrame"].clone(), parent.get(&id).copied()))
            })
            .collect();
        let mut t = profile["startTime"].as_i64().unwrap_or(0);
        let times_us = profile["timeDeltas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                t += d.as_i64().unwrap_or(0);
                t
            })
            .collect();
        Profile {
            nodes,
            root: list[0]["id"].as_u64().unwrap(),
            samples: profile["samples"]
                .as_array()
                .expect("cpuprofile samples")
                .iter()
                .map(|s| s.as_u64().expect("sample id"))
                .collect(),
            times_us,
        }
    }

    /// The stack of node `id`, innermost first, without (root).
    pub fn stack(&self, mut id: u64) -> Stack {
        let mut stack = Vec::new();
        while id != self.root {
            let Some((cf, parent)) = self.nodes.get(&id) else {
                break;
            };
            let name = cf["functionName"].as_str().unwrap_or_default().to_string();
            stack.push((name, is_js(cf).then(|| js_fn(cf))));
            match parent {
                Some(p) => id = *p,
                None => break,
            }
        }
        stack
    }

    /// The outermost frame below (root) of node `id` (nodeprof puts the
    /// samples of non-main threads under a `[NAME TID]` node there).
    pub fn root_child_name(&self, id: u64) -> String {
        self.stack(id)
            .last()
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    /// Every JS function of the profile's call frames.
    pub fn functions(&self) -> BTreeSet<JsFn> {
        self.nodes
            .values()
            .filter(|(cf, _)| is_js(cf))
            .map(|(cf, _)| js_fn(cf))
            .collect()
    }

    /// The node ids whose call frame is `f`.
    pub fn nodes_of(&self, f: &JsFn) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, (cf, _))| is_js(cf) && &js_fn(cf) == f)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The JS function a sample at node `id` counts for, if any (see the
    /// crate doc).
    pub fn self_function(&self, id: u64) -> Option<JsFn> {
        let stack = self.stack(id);
        if stack.iter().any(|(name, _)| {
            name == GARBAGE_COLLECTOR || name.starts_with(V8_PROFILER_SIGNAL_HANDLER)
        }) {
            return None;
        }
        stack.into_iter().find_map(|(_, f)| f)
    }
}

/// Samples per function by the innermost JS frame (see the crate doc).
#[derive(Default)]
pub struct Attribution {
    pub per_fn: BTreeMap<JsFn, u64>,
    /// Samples with a JS frame (the denominator of shares).
    pub js_total: u64,
    /// All samples.
    pub total: u64,
}

impl Attribution {
    pub fn of(profiles: &[&Profile]) -> Attribution {
        let mut a = Attribution::default();
        for p in profiles {
            a.add(p, |_| true);
        }
        a
    }

    /// The samples of `p` taken in `[start_us, end_us]`.
    pub fn of_window(p: &Profile, start_us: i64, end_us: i64) -> Attribution {
        let mut a = Attribution::default();
        a.add(p, |i| {
            p.times_us
                .get(i)
                .is_some_and(|&t| (start_us..=end_us).contains(&t))
        });
        a
    }

    fn add(&mut self, p: &Profile, keep: impl Fn(usize) -> bool) {
        let mut memo: HashMap<u64, Option<JsFn>> = HashMap::new();
        for (i, &id) in p.samples.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            self.total += 1;
            let f = memo
                .entry(id)
                .or_insert_with(|| p.self_function(id))
                .clone();
            if let Some(f) = f {
                self.js_total += 1;
                *self.per_fn.entry(f).or_default() += 1;
            }
        }
    }

    pub fn samples(&self, f: &JsFn) -> u64 {
        self.per_fn.get(f).copied().unwrap_or(0)
    }

    /// `f`'s share of the JS samples, %.
    pub fn share(&self, f: &JsFn) -> f64 {
        if self.js_total == 0 {
            0.0
        } else {
            100.0 * self.samples(f) as f64 / self.js_total as f64
        }
    }

    /// The busiest functions, for failure messages.
    pub fn top(&self, n: usize) -> String {
        let mut v: Vec<_> = self.per_fn.iter().collect();
        v.sort_by_key(|(_, &c)| std::cmp::Reverse(c));
        v.iter()
            .take(n)
            .map(|(f, &c)| format!("  {c:5} {:5.1}%  {f}", self.share(f)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Each function's share of the JS samples, %.
pub type Shares = BTreeMap<JsFn, f64>;

impl Attribution {
    pub fn shares(&self) -> Shares {
        self.per_fn
            .keys()
            .map(|f| (f.clone(), self.share(f)))
            .collect()
    }
}

/// How much two profiles agree on where JS time goes: the sum over
/// functions of the smaller of the two shares, % (100: the same shares
/// everywhere; 0: no function in common).
pub fn overlap(a: &Shares, b: &Shares) -> f64 {
    a.iter()
        .filter_map(|(f, sa)| b.get(f).map(|sb| sa.min(*sb)))
        .sum()
}

/// Each function's mean share over `runs` (every run weighs the same).
pub fn mean_shares(runs: &[Shares]) -> Shares {
    let mut mean = Shares::new();
    for run in runs {
        for (f, s) in run {
            *mean.entry(f.clone()).or_default() += s / runs.len() as f64;
        }
    }
    mean
}

/// The `n` functions whose shares differ most between `a` and `b`, with
/// their shares in `a` and in `b`, largest difference first.
pub fn largest_differences(a: &Shares, b: &Shares, n: usize) -> Vec<(JsFn, f64, f64)> {
    let functions: BTreeSet<&JsFn> = a.keys().chain(b.keys()).collect();
    let share = |s: &Shares, f: &JsFn| s.get(f).copied().unwrap_or(0.0);
    let mut rows: Vec<(JsFn, f64, f64)> = functions
        .into_iter()
        .map(|f| (f.clone(), share(a, f), share(b, f)))
        .collect();
    rows.sort_by(|x, y| (y.1 - y.2).abs().total_cmp(&(x.1 - x.2).abs()));
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A .cpuprofile: nodes as (id, parent, name, url, line), samples as
    /// (node id, time delta µs).
    fn profile(nodes: &[(u64, Option<u64>, &str, &str, i64)], samples: &[(u64, i64)]) -> Profile {
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|&(id, _, name, url, line)| {
                let children: Vec<u64> = nodes
                    .iter()
                    .filter(|n| n.1 == Some(id))
                    .map(|n| n.0)
                    .collect();
                json!({"id": id, "callFrame": {"functionName": name, "url": url,
                    "lineNumber": line, "columnNumber": if line >= 0 { 4 } else { -1 }},
                    "children": children})
            })
            .collect();
        Profile::new(&json!({
            "nodes": nodes, "startTime": 1000, "endTime": 2000,
            "samples": samples.iter().map(|s| s.0).collect::<Vec<_>>(),
            "timeDeltas": samples.iter().map(|s| s.1).collect::<Vec<_>>(),
        }))
    }

    fn f(name: &str, line: i64) -> JsFn {
        JsFn {
            name: name.into(),
            url: "file:///a.js".into(),
            line,
            column: 4,
        }
    }

    /// (root) → main (JS) → parse (JS) → memcpy (native); main → GC inside
    /// nodeprof's stack; (root) → (garbage collector) as --cpu-prof has it;
    /// (root) → (idle).
    fn sample_tree() -> Vec<(u64, Option<u64>, &'static str, &'static str, i64)> {
        vec![
            (1, None, "(root)", "", -1),
            (2, Some(1), "main", "file:///a.js", 0),
            (3, Some(2), "parse", "file:///a.js", 10),
            (4, Some(3), "memcpy", "", -1),
            (5, Some(2), GARBAGE_COLLECTOR, "", -1),
            (6, Some(5), "v8::internal::Heap::Scavenge", "", -1),
            (7, Some(1), GARBAGE_COLLECTOR, "", -1),
            (8, Some(1), "(idle)", "", -1),
        ]
    }

    #[test]
    fn native_leaves_count_for_their_js_caller_and_gc_for_nobody() {
        let p = profile(
            &sample_tree(),
            &[(4, 1), (3, 1), (2, 1), (6, 1), (7, 1), (8, 1)],
        );
        let a = Attribution::of(&[&p]);
        assert_eq!(a.total, 6);
        assert_eq!(a.js_total, 3, "memcpy→parse, parse, main; not GC, not idle");
        assert_eq!(a.samples(&f("parse", 10)), 2);
        assert_eq!(a.samples(&f("main", 0)), 1);
    }

    #[test]
    fn samples_in_v8s_profiler_signal_handler_count_for_nobody() {
        // (root) → main → (the handler, interrupting main) → DoSample.
        let tree = vec![
            (1, None, "(root)", "", -1),
            (2, Some(1), "main", "file:///a.js", 0),
            (
                3,
                Some(2),
                "v8::sampler::SignalHandler::HandleProfilerSignal(int, siginfo_t*, void*)",
                "",
                -1,
            ),
            (
                4,
                Some(3),
                "v8::sampler::SamplerManager::DoSample(v8::RegisterState const&)",
                "",
                -1,
            ),
        ];
        let p = profile(&tree, &[(4, 1), (3, 1), (2, 1)]);
        let a = Attribution::of(&[&p]);
        assert_eq!((a.total, a.js_total), (3, 1));
        assert_eq!(a.samples(&f("main", 0)), 1);
    }

    #[test]
    fn a_window_keeps_the_samples_taken_in_it() {
        // Times: 1010, 1020, 1030, 1040.
        let p = profile(&sample_tree(), &[(3, 10), (3, 10), (2, 10), (2, 10)]);
        let a = Attribution::of_window(&p, 1015, 1030);
        assert_eq!((a.total, a.js_total), (2, 2));
        assert_eq!(a.samples(&f("parse", 10)), 1);
        assert_eq!(a.samples(&f("main", 0)), 1);
    }

    fn shares(counts: &[(&str, u64)]) -> Shares {
        let mut a = Attribution::default();
        for &(name, n) in counts {
            a.per_fn.insert(f(name, 0), n);
            a.js_total += n;
            a.total += n;
        }
        a.shares()
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-9
    }

    #[test]
    fn overlap_sums_the_smaller_share_of_each_function() {
        let a = shares(&[("x", 50), ("y", 30), ("z", 20)]);
        let b = shares(&[("x", 40), ("y", 40), ("w", 20)]);
        // min(50,40) + min(30,40); z and w are in one profile only.
        assert!(close(overlap(&a, &b), 70.0));
        assert!(close(overlap(&b, &a), 70.0));
        assert!(close(overlap(&a, &a), 100.0));
        assert_eq!(overlap(&a, &shares(&[("w", 5)])), 0.0);
        assert_eq!(overlap(&a, &Shares::new()), 0.0);
        // Shares, not counts: twice the samples, same overlap.
        let a2 = shares(&[("x", 100), ("y", 60), ("z", 40)]);
        assert!(close(overlap(&a, &a2), 100.0));
    }

    #[test]
    fn mean_shares_weigh_every_run_alike() {
        let m = mean_shares(&[shares(&[("x", 1)]), shares(&[("x", 300), ("y", 100)])]);
        assert!(close(m[&f("x", 0)], 87.5));
        assert!(close(m[&f("y", 0)], 12.5));
    }

    #[test]
    fn largest_differences_come_first() {
        let a = shares(&[("x", 50), ("y", 30), ("z", 20)]);
        let b = shares(&[("x", 40), ("y", 40), ("w", 20)]);
        let d = largest_differences(&a, &b, 2);
        let names: Vec<&str> = d.iter().map(|r| r.0.name.as_str()).collect();
        // w and z differ by 20 (equals in key order), x and y by 10.
        assert_eq!(names, ["w", "z"]);
        assert_eq!((d[0].1, d[0].2), (0.0, 20.0));
    }
}
