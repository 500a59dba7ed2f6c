//! The terminal summary: totals, threads, and the top functions.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use super::Report;
use crate::profile::{Frame, FrameKind, Profile, StackId};

/// How every writer names a frame: `name url:line` (1-based line) for JS with
/// a script, otherwise the bare name. Newlines are dropped so a label is
/// always one line.
pub fn frame_label(frame: &Frame) -> String {
    let name = match (frame.name.is_empty(), frame.kind) {
        (false, _) => frame.name.as_str(),
        (true, FrameKind::Js) => "(anonymous)",
        (true, _) => "[unknown]",
    };
    let label = match (frame.kind, frame.line) {
        (FrameKind::Js, Some(line)) if !frame.location.is_empty() => {
            format!("{name} {}:{}", frame.location, line + 1)
        }
        (FrameKind::Js, None) if !frame.location.is_empty() => format!("{name} {}", frame.location),
        _ => name.to_string(),
    };
    label.replace(['\n', '\r'], "")
}

/// Samples of all threads sharing one name (a thread pool counts once).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadStat {
    pub name: String,
    /// Distinct tids with this name.
    pub threads: usize,
    pub samples: u64,
    /// Of `samples`, those of off-CPU time (`record --off-cpu`, `--wall`).
    pub off_cpu: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionStat {
    pub label: String,
    pub kind: FrameKind,
    /// Script URL or module path.
    pub location: String,
    pub samples: u64,
    /// Share of all samples, 0–100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub duration_s: f64,
    pub frequency_hz: u64,
    pub samples: u64,
    /// Of `samples`, those of off-CPU time: one per sampling period a
    /// thread spent blocked or waiting for a CPU.
    pub off_cpu_samples: u64,
    pub lost_samples: u64,
    /// Distinct tids sampled.
    pub thread_count: usize,
    /// By samples, descending; at most `top_n`.
    pub threads: Vec<ThreadStat>,
    /// Functions by samples where they were the leaf.
    pub top_self: Vec<FunctionStat>,
    /// Functions by samples where they were anywhere on the stack.
    pub top_total: Vec<FunctionStat>,
    /// JS functions (and DevTools' pseudo frames such as `(garbage
    /// collector)`) by self samples, native code charged to the innermost
    /// JS frame that called it, as DevTools and `node --cpu-prof` count.
    pub js_self: Vec<FunctionStat>,
    /// JS functions by samples where they were anywhere on the stack.
    pub js_total: Vec<FunctionStat>,
    /// Samples with a JS or pseudo frame on the stack: what `js_self` shares.
    pub js_samples: u64,
    /// The text leads with the native tables (`--summary native`) instead
    /// of the JS ones.
    pub native_view: bool,
}

impl Summary {
    /// The summary with the `top_n` busiest threads and functions (0: all).
    pub fn from_profile(profile: &Profile, top_n: usize) -> Summary {
        let top_n = if top_n == 0 { usize::MAX } else { top_n };
        let total = profile.samples.len() as u64;
        let mut per_stack: HashMap<StackId, u64> = HashMap::new();
        let mut per_tid: HashMap<u32, (u64, u64)> = HashMap::new();
        for s in &profile.samples {
            *per_stack.entry(s.stack).or_default() += 1;
            let counts = per_tid.entry(s.tid).or_default();
            counts.0 += 1;
            counts.1 += u64::from(s.off_cpu);
        }

        let mut by_name: HashMap<&str, ThreadStat> = HashMap::new();
        for (&tid, &(n, off_cpu)) in &per_tid {
            let name = profile.thread_name(tid);
            let t = by_name.entry(name).or_insert_with(|| ThreadStat {
                name: name.into(),
                threads: 0,
                samples: 0,
                off_cpu: 0,
            });
            t.threads += 1;
            t.samples += n;
            t.off_cpu += off_cpu;
        }
        let mut threads: Vec<ThreadStat> = by_name.into_values().collect();
        threads.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.name.cmp(&b.name)));
        threads.truncate(top_n);

        // Keyed by frame value so an empty stack's synthetic `(program)` merges
        // with a real `(program)` frame if the profile has one.
        let program = Frame::meta("(program)");
        let mut self_counts: HashMap<&Frame, u64> = HashMap::new();
        let mut total_counts: HashMap<&Frame, u64> = HashMap::new();
        let mut js_self: HashMap<&Frame, u64> = HashMap::new();
        let mut js_total: HashMap<&Frame, u64> = HashMap::new();
        let mut js_samples = 0;
        for (&stack, &n) in &per_stack {
            let frames: Vec<&Frame> = profile
                .stack(stack)
                .iter()
                .map(|&f| profile.frame(f))
                .collect();
            let leaf = frames.last().copied().unwrap_or(&program);
            *self_counts.entry(leaf).or_default() += n;
            if let Some(&js) = frames.iter().rev().find(|f| counts_as_js(f)).or(
                // An empty stack is `(program)`, as in the `.cpuprofile`.
                frames.is_empty().then_some(&leaf),
            ) {
                *js_self.entry(js).or_default() += n;
                js_samples += n;
                let distinct: HashSet<&Frame> = frames
                    .iter()
                    .copied()
                    .filter(|f| counts_as_js(f))
                    .chain([js])
                    .collect();
                for f in distinct {
                    *js_total.entry(f).or_default() += n;
                }
            }
            // Once per sample: recursion must not push a share past 100%.
            let distinct: HashSet<&Frame> = frames.into_iter().chain([leaf]).collect();
            for f in distinct {
                *total_counts.entry(f).or_default() += n;
            }
        }
        let rank = |counts: HashMap<&Frame, u64>| {
            // One row per label: the same function of two isolates (main
            // thread and a worker) has two script ids but reads the same.
            let mut rows: HashMap<(String, FrameKind, &str), u64> = HashMap::new();
            for (f, n) in counts {
                *rows
                    .entry((frame_label(f), f.kind, f.location.as_str()))
                    .or_default() += n;
            }
            let mut stats: Vec<FunctionStat> = rows
                .into_iter()
                .map(|((label, kind, location), n)| FunctionStat {
                    label,
                    kind,
                    location: location.to_string(),
                    samples: n,
                    percent: 100.0 * n as f64 / total.max(1) as f64,
                })
                .collect();
            stats.sort_by(|a, b| {
                b.samples
                    .cmp(&a.samples)
                    .then_with(|| a.label.cmp(&b.label))
                    .then_with(|| a.location.cmp(&b.location))
            });
            stats.truncate(top_n);
            stats
        };

        Summary {
            duration_s: profile.duration_ns() as f64 / 1e9,
            frequency_hz: profile.frequency_hz,
            samples: total,
            off_cpu_samples: profile.samples.iter().filter(|s| s.off_cpu).count() as u64,
            lost_samples: profile.lost_samples,
            thread_count: per_tid.len(),
            threads,
            top_self: rank(self_counts),
            top_total: rank(total_counts),
            js_self: rank(js_self),
            js_total: rank(js_total),
            js_samples,
            native_view: false,
        }
    }

    /// The same summary, its text leading with native code (`--summary native`).
    pub fn native(self) -> Summary {
        Summary {
            native_view: true,
            ..self
        }
    }
}

/// Frames the JS view keeps: JS functions and DevTools' pseudo frames
/// (`(garbage collector)`, `(program)`); native code is charged to them.
fn counts_as_js(frame: &Frame) -> bool {
    matches!(frame.kind, FrameKind::Js | FrameKind::Meta)
}

/// What a table row adds after the label so native code from different
/// modules, kernel and JIT code can be told apart.
fn hint(f: &FunctionStat) -> String {
    match f.kind {
        FrameKind::Kernel => " [kernel]".into(),
        FrameKind::Jit => " [jit]".into(),
        FrameKind::Native if !f.location.is_empty() => {
            format!(
                " [{}]",
                f.location.rsplit('/').next().unwrap_or(&f.location)
            )
        }
        _ => String::new(),
    }
}

fn table(out: &mut dyn Write, title: &str, column: &str, rows: &[FunctionStat]) -> io::Result<()> {
    writeln!(out, "\n{title}")?;
    if rows.is_empty() {
        return writeln!(out, "  (no samples)");
    }
    writeln!(out, "  {column:>6}  {:>8}  function", "samples")?;
    for r in rows {
        writeln!(
            out,
            "  {:>5.1}%  {:>8}  {}{}",
            r.percent,
            r.samples,
            r.label,
            hint(r)
        )?;
    }
    Ok(())
}

impl Report for Summary {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "Duration:        {:.1} s", self.duration_s)?;
        writeln!(
            out,
            "Samples:         {} (at {} Hz per CPU)",
            self.samples, self.frequency_hz
        )?;
        if self.off_cpu_samples > 0 {
            writeln!(
                out,
                "Off-CPU samples: {}, one per {:.1} ms a thread spent blocked or waiting for a CPU",
                self.off_cpu_samples,
                1e3 / self.frequency_hz.max(1) as f64
            )?;
        }
        writeln!(out, "Lost samples:    {}", self.lost_samples)?;
        let threads: Vec<String> = self
            .threads
            .iter()
            .map(|t| {
                let name = match t.threads {
                    1 => format!("{} {}", t.name, t.samples),
                    n => format!("{} ×{} {}", t.name, n, t.samples),
                };
                if self.off_cpu_samples == 0 {
                    return name;
                }
                let off = 100.0 * t.off_cpu as f64 / t.samples.max(1) as f64;
                format!("{name}: {:.0} % on CPU, {off:.0} % off", 100.0 - off)
            })
            .collect();
        write!(out, "Threads sampled: {}", self.thread_count)?;
        if !threads.is_empty() {
            write!(out, " ({})", threads.join(", "))?;
        }
        writeln!(out)?;
        if self.native_view {
            table(out, "Top functions by self time:", "self", &self.top_self)?;
            return table(
                out,
                "Top functions by total time:",
                "total",
                &self.top_total,
            );
        }
        table(
            out,
            "Top JS functions by self time (native code counted for its JS caller):",
            "self",
            &self.js_self,
        )?;
        table(
            out,
            "Top JS functions by total time:",
            "total",
            &self.js_total,
        )?;
        let native = self.samples - self.js_samples;
        if native > 0 {
            writeln!(
                out,
                "\n{native} samples ({:.1} %) had no JS frame on the stack (libuv threads, V8's helpers).",
                100.0 * native as f64 / self.samples.max(1) as f64
            )?;
        }
        writeln!(out, "Native functions: --summary native")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::testdata::{js, sample_profile};

    fn stat<'a>(stats: &'a [FunctionStat], label: &str) -> &'a FunctionStat {
        stats
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("{label} missing"))
    }

    #[test]
    fn labels() {
        assert_eq!(
            frame_label(&js("fib", "file:///app/fib.js", 2, 12)),
            "fib file:///app/fib.js:3"
        );
        assert_eq!(
            frame_label(&Frame::new(FrameKind::Js, "", "file:///a.js")),
            "(anonymous) file:///a.js"
        );
        assert_eq!(frame_label(&Frame::new(FrameKind::Js, "f", "")), "f");
        assert_eq!(
            frame_label(&Frame::new(FrameKind::Native, "malloc", "/lib/libc.so.6")),
            "malloc"
        );
        assert_eq!(
            frame_label(&Frame::new(FrameKind::Kernel, "do_syscall_64", "")),
            "do_syscall_64"
        );
        assert_eq!(
            frame_label(&Frame::new(FrameKind::Unknown, "", "")),
            "[unknown]"
        );
        assert_eq!(
            frame_label(&Frame::new(FrameKind::Native, "a\nb\r", "")),
            "ab"
        );
    }

    #[test]
    fn numbers() {
        let s = Summary::from_profile(&sample_profile(), 10);
        assert_eq!(s.samples, 9);
        assert_eq!(s.lost_samples, 0);
        assert!((s.duration_s - 0.001).abs() < 1e-12);
        assert_eq!(s.thread_count, 4);
        assert_eq!(
            s.threads,
            [
                ThreadStat {
                    name: "node".into(),
                    threads: 1,
                    samples: 6,
                    off_cpu: 0,
                },
                ThreadStat {
                    name: "libuv-worker".into(),
                    threads: 2,
                    samples: 2,
                    off_cpu: 0,
                },
                ThreadStat {
                    name: "V8 GC".into(),
                    threads: 1,
                    samples: 1,
                    off_cpu: 0,
                },
            ]
        );
        let fib = "fib file:///app/fib.js:3";
        assert_eq!(s.top_self[0].label, fib);
        assert_eq!(s.top_self[0].samples, 3);
        assert!((s.top_self[0].percent - 100.0 / 3.0).abs() < 1e-9);
        // Empty stacks of two threads are self time of (program).
        assert_eq!(stat(&s.top_self, "(program)").samples, 2);
        assert_eq!(stat(&s.top_self, "ksys_write").kind, FrameKind::Kernel);
        // Recursive fib counts once per sample in total.
        assert_eq!(stat(&s.top_total, fib).samples, 3);
        assert_eq!(stat(&s.top_total, "node::Start").samples, 5);
        assert_eq!(stat(&s.top_total, "main file:///app/main.js:1").samples, 4);
        assert_eq!(s.top_total[0].label, "node::Start");
        assert!(s.top_total.iter().all(|f| f.percent <= 100.0));
        let self_sum: u64 = s.top_self.iter().map(|f| f.samples).sum();
        assert_eq!(self_sum, 9);
    }

    #[test]
    fn one_row_per_function_across_isolates() {
        let mut p = Profile::new(1, 99, 0);
        let main = p.intern_frame(Frame {
            script_id: Some(3),
            ..js("hot", "file:///a.js", 1, 0)
        });
        let worker = p.intern_frame(Frame {
            script_id: Some(9),
            ..js("hot", "file:///a.js", 1, 0)
        });
        let a = p.intern_stack(vec![main]);
        let b = p.intern_stack(vec![worker]);
        p.add_sample(1, 1, "main", a);
        p.add_sample(2, 2, "worker 1", b);
        let s = Summary::from_profile(&p, 10);
        assert_eq!(s.js_self.len(), 1);
        assert_eq!(s.js_self[0].samples, 2);
        assert_eq!(s.top_total[0].samples, 2);
    }

    #[test]
    fn top_zero_lists_everything() {
        let all = Summary::from_profile(&sample_profile(), 0);
        assert!(!all.top_self.is_empty());
        assert_eq!(
            all.top_self,
            Summary::from_profile(&sample_profile(), 1000).top_self
        );
    }

    #[test]
    fn top_n_truncates() {
        let s = Summary::from_profile(&sample_profile(), 2);
        assert_eq!(s.top_self.len(), 2);
        assert_eq!(s.top_total.len(), 2);
        assert_eq!(s.threads.len(), 2);
        assert_eq!(s.thread_count, 4);
    }

    #[test]
    fn js_view_charges_native_code_to_its_js_caller() {
        let s = Summary::from_profile(&sample_profile(), 10);
        let rows = |stats: &[FunctionStat]| -> Vec<(String, u64)> {
            stats.iter().map(|f| (f.label.clone(), f.samples)).collect()
        };
        assert_eq!(
            rows(&s.js_self),
            [
                ("fib file:///app/fib.js:3".to_string(), 3),
                ("(program)".to_string(), 2),
                ("(garbage collector)".to_string(), 1),
                // write and ksys_write under a builtin, called from main.
                ("main file:///app/main.js:1".to_string(), 1),
            ]
        );
        assert_eq!(
            rows(&s.js_total),
            [
                ("main file:///app/main.js:1".to_string(), 4),
                ("fib file:///app/fib.js:3".to_string(), 3),
                ("(program)".to_string(), 2),
                ("(garbage collector)".to_string(), 1),
            ]
        );
        // The libuv worker samples have no JS frame.
        assert_eq!(s.js_samples, 7);
        let text = s.to_text();
        assert!(text.contains("\nTop JS functions by self time (native code counted for its JS caller):\n    self   samples  function\n   33.3%         3  fib file:///app/fib.js:3\n"), "{text}");
        assert!(text.contains("\nTop JS functions by total time:\n   total   samples  function\n   44.4%         4  main file:///app/main.js:1\n"), "{text}");
        assert!(
            text.contains("\n2 samples (22.2 %) had no JS frame on the stack"),
            "{text}"
        );
        assert!(
            text.contains("Native functions: --summary native\n"),
            "{text}"
        );
        assert!(!text.contains("node::Start"), "{text}");
    }

    #[test]
    fn display() {
        let text = Summary::from_profile(&sample_profile(), 10)
            .native()
            .to_text();
        assert!(text.contains("Duration:        0.0 s\n"), "{text}");
        assert!(
            text.contains("Samples:         9 (at 99 Hz per CPU)\n"),
            "{text}"
        );
        assert!(text.contains("Lost samples:    0\n"), "{text}");
        assert!(
            text.contains("Threads sampled: 4 (node 6, libuv-worker ×2 2, V8 GC 1)\n"),
            "{text}"
        );
        assert!(text.contains("\nTop functions by self time:\n    self   samples  function\n   33.3%         3  fib file:///app/fib.js:3\n"), "{text}");
        assert!(text.contains("\nTop functions by total time:\n   total   samples  function\n   55.6%         5  node::Start [node]\n"), "{text}");
        assert!(text.contains("  ksys_write [kernel]\n"), "{text}");
        assert!(text.contains("  Builtin:CallFunction [jit]\n"), "{text}");
        assert!(text.contains("  write [libc.so.6]\n"), "{text}");
    }

    #[test]
    fn empty_profile() {
        let mut p = Profile::new(1, 49, 0);
        p.end_ns = 2_260_000_000;
        p.lost_samples = 3;
        let s = Summary::from_profile(&p, 5);
        assert_eq!((s.samples, s.thread_count, s.lost_samples), (0, 0, 3));
        assert!(s.top_self.is_empty() && s.top_total.is_empty());
        assert!(s.js_self.is_empty() && s.js_total.is_empty());
        let text = s.to_text();
        assert!(text.contains("Duration:        2.3 s\n"), "{text}");
        assert!(text.contains("Threads sampled: 0\n"), "{text}");
        assert_eq!(text.matches("(no samples)").count(), 2);
        assert_eq!(s.native().to_text().matches("(no samples)").count(), 2);
    }
}
