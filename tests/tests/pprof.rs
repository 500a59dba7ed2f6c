//! `record --format pprof`, read by the reference reader: `go tool pprof`
//! (Debian's golang-go, installed by `cargo xtask bootstrap`). A missing
//! `go` is a failure, never a skip.
//!
//! - `pprof_reads_as_go_tool_pprof_expects`: busy.js with a worker thread,
//!   launched: go reads the profile; the hot JS function is there with its
//!   file and line; the sample counts equal the `.cpuprofile`'s; every
//!   sample carries its thread's name and tid; every JS function's leaf
//!   samples are the same in both files.
//! - `wall_profile_is_wall_time`: `record --wall --format pprof`: go reads
//!   wall nanoseconds as the default sample type, with the on-CPU part as
//!   `cpu` nanoseconds beside it.
//! - `summary_leads_with_js_functions`: the terminal summary of the same
//!   kind of run lists JS functions first (hotLoop at the top, none of the
//!   boilerplate every node stack has), and `--summary native` lists
//!   native frames.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nodeprof_tests::*;
use selftime::is_js;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample of `go tool pprof -raw`: its count, leaf-first location ids
/// and labels.
#[derive(Debug)]
struct RawSample {
    count: u64,
    locations: Vec<u64>,
    labels: BTreeMap<String, String>,
}

/// A location of `go tool pprof -raw`: function name, file, line and the
/// function's start line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RawFunction {
    name: String,
    file: String,
    start_line: i64,
}

#[derive(Debug)]
struct Raw {
    sample_types: Vec<String>,
    samples: Vec<RawSample>,
    locations: BTreeMap<u64, RawFunction>,
}

fn go_pprof(args: &[&str], file: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("PPROF_TMPDIR", file.parent().unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `go tool pprof` ({e}): install it with `cargo xtask bootstrap` (Debian golang-go)")
        });
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("pprof output is UTF-8")
}

/// Parses `go tool pprof -raw`:
/// ```text
/// Samples:
/// samples/count cpu/nanoseconds
///           3   30303030: 1 2 3
///                 thread name:[node]
///                 thread id:[123]
/// Locations
///      1: 0x0 M=0 fib file:///app/fib.js:3 s=3
/// ```
fn parse_raw(text: &str) -> Raw {
    let mut raw = Raw {
        sample_types: Vec::new(),
        samples: Vec::new(),
        locations: BTreeMap::new(),
    };
    let mut section = "";
    for line in text.lines() {
        let trimmed = line.trim();
        match trimmed {
            "Samples:" => {
                section = "types";
                continue;
            }
            "Locations" => {
                section = "locations";
                continue;
            }
            "Mappings" => {
                section = "mappings";
                continue;
            }
            _ => {}
        }
        match section {
            "types" => {
                raw.sample_types = trimmed.split_whitespace().map(str::to_string).collect();
                section = "samples";
            }
            "samples" if trimmed.is_empty() => {}
            "samples" => {
                if let Some((values, ids)) = trimmed.split_once(':').filter(|(v, _)| {
                    v.split_whitespace()
                        .all(|n| n.bytes().all(|b| b.is_ascii_digit()))
                }) {
                    raw.samples.push(RawSample {
                        count: values
                            .split_whitespace()
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or_else(|| panic!("sample without a count: {line}")),
                        locations: ids
                            .split_whitespace()
                            .map(|id| id.parse().expect("location id"))
                            .collect(),
                        labels: BTreeMap::new(),
                    });
                } else {
                    // `key:[value]`, under the sample it labels.
                    let (key, value) = trimmed
                        .split_once(":[")
                        .unwrap_or_else(|| panic!("unexpected line in Samples: {line}"));
                    raw.samples
                        .last_mut()
                        .expect("a label after a sample")
                        .labels
                        .insert(key.to_string(), value.trim_end_matches(']').to_string());
                }
            }
            "locations" if !trimmed.is_empty() => {
                // `ID: 0xADDR M=N NAME FILE:LINE s=START[(SYSTEM NAME)]`; NAME may contain spaces.
                let (id, rest) = trimmed.split_once(": ").expect("location id");
                let rest = rest.split_once(" M=").map_or(rest, |(_, r)| r);
                let rest = rest.split_once(' ').map_or("", |(_, r)| r);
                let (body, start) = rest.rsplit_once(" s=").expect("location start line");
                let (name, file_line) = body.rsplit_once(' ').unwrap_or((body, ""));
                let file = file_line
                    .rsplit_once(':')
                    .map_or(file_line, |(file, _)| file);
                raw.locations.insert(
                    id.parse().expect("location id"),
                    RawFunction {
                        name: name.to_string(),
                        file: file.to_string(),
                        start_line: start
                            .split('(')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap_or_else(|_| panic!("start line in {line}")),
                    },
                );
            }
            _ => {}
        }
    }
    raw
}

#[test]
fn pprof_reads_as_go_tool_pprof_expects() {
    let _lock = serial();
    let dir = scratch_dir();
    let prefix = dir.path().join("busy");
    let node = node_major(22);
    let busy = fixture("busy.js");
    let args: Vec<String> = [
        "record",
        "-q",
        "-F",
        "199",
        "--format",
        "cpuprofile,folded,pprof",
        "-o",
        &prefix.display().to_string(),
        "--",
        &node.display().to_string(),
        &busy.display().to_string(),
        "2",
        "2",
        "pprof-worker",
    ]
    .map(String::from)
    .to_vec();
    let run = run_nodeprof(&args, dir.path(), RUN_TIMEOUT);
    run.assert_success();
    let out = Outputs::load_formats(&prefix, &["cpuprofile", "folded"]);
    let file = prefix.with_extension("pb.gz");
    assert!(file.exists(), "no {}", file.display());

    let raw = parse_raw(&go_pprof(&["-raw"], &file));
    // cpu is the default sample type (`[dflt]`), counts beside it.
    assert_eq!(raw.sample_types, ["samples/count", "cpu/nanoseconds[dflt]"]);
    let total: u64 = raw.samples.iter().map(|s| s.count).sum();
    assert_eq!(
        total,
        out.sample_count() as u64,
        "pprof and .cpuprofile disagree on the number of samples"
    );

    // Every sample has its thread's name and tid; the main thread (tid ==
    // pid) and the worker are both there.
    let mut threads: BTreeMap<String, u64> = BTreeMap::new();
    for s in &raw.samples {
        let name = s.labels.get("thread name").expect("thread name label");
        let tid = s.labels.get("thread id").expect("thread id label");
        assert!(tid.parse::<u32>().is_ok(), "thread id {tid}");
        *threads.entry(name.clone()).or_default() += s.count;
    }
    assert!(
        threads.len() >= 2,
        "main thread and worker expected: {threads:?}"
    );

    // The hot JS function, with its file and line (busy.js:12).
    let hot = raw
        .locations
        .values()
        .find(|f| f.name == "hotLoop")
        .unwrap_or_else(|| panic!("no hotLoop location: {:?}", raw.locations));
    assert!(hot.file.ends_with("/busy.js"), "{hot:?}");
    assert_eq!(hot.start_line, 12, "{hot:?}");
    let top = go_pprof(&["-top"], &file);
    let rows: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .take(3)
        .collect();
    assert!(
        rows.iter().any(|r| r.ends_with(" hotLoop")),
        "busy.js's hotLoop is not among the 3 hottest functions of go tool pprof -top:\n{top}"
    );

    // Leaf samples per JS function: the same in both files.
    let mut np_leaf: BTreeMap<RawFunction, u64> = BTreeMap::new();
    for s in &raw.samples {
        let leaf = &raw.locations[&s.locations[0]];
        if leaf.start_line > 0 {
            *np_leaf.entry(leaf.clone()).or_default() += s.count;
        }
    }
    let mut cpu_leaf: BTreeMap<RawFunction, u64> = BTreeMap::new();
    for node in out.cpuprofile["nodes"].as_array().unwrap() {
        let frame = &node["callFrame"];
        let hits = node["hitCount"].as_u64().unwrap();
        if hits == 0 || !is_js(frame) {
            continue;
        }
        let name = frame["functionName"].as_str().unwrap();
        let key = RawFunction {
            name: if name.is_empty() {
                "(anonymous)".into()
            } else {
                name.into()
            },
            file: frame["url"].as_str().unwrap().into(),
            start_line: frame["lineNumber"].as_i64().unwrap() + 1,
        };
        *cpu_leaf.entry(key).or_default() += hits;
    }
    assert!(
        !cpu_leaf.is_empty(),
        "no JS leaf samples in the .cpuprofile"
    );
    assert_eq!(np_leaf, cpu_leaf, "JS leaf samples, pprof vs .cpuprofile");
}

/// The rows of the summary table whose title starts with `title`.
fn table_rows<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

#[test]
fn summary_leads_with_js_functions() {
    let _lock = serial();
    let dir = scratch_dir();
    let node = node_major(22);
    let busy = fixture("busy.js");
    let mut texts = Vec::new();
    for view in ["js", "native"] {
        let prefix = dir.path().join(view);
        let args: Vec<String> = [
            "record",
            "-q",
            "-F",
            "199",
            "--summary",
            view,
            "--format",
            "cpuprofile,folded",
            "-o",
            &prefix.display().to_string(),
            "--",
            &node.display().to_string(),
            &busy.display().to_string(),
            "1",
        ]
        .map(String::from)
        .to_vec();
        let run = run_nodeprof(&args, dir.path(), RUN_TIMEOUT);
        run.assert_success();
        texts.push(run.stdout);
    }
    let (js, native) = (&texts[0], &texts[1]);

    let self_rows = table_rows(js, "Top JS functions by self time");
    let first = self_rows
        .first()
        .unwrap_or_else(|| panic!("no JS self table:\n{js}"));
    assert!(
        first.contains(" hotLoop file://") && first.contains("/busy.js:12"),
        "hotLoop (its ieee754::sin counted for it) leads the JS self table:\n{js}"
    );
    let total_rows = table_rows(js, "Top JS functions by total time");
    assert!(!total_rows.is_empty(), "no JS total table:\n{js}");
    for boilerplate in ["Builtins_JSEntry", "uv_run", "node::Start", "ieee754"] {
        assert!(
            !self_rows
                .iter()
                .chain(&total_rows)
                .any(|r| r.contains(boilerplate)),
            "{boilerplate} in the JS tables:\n{js}"
        );
    }
    assert!(js.contains("Native functions: --summary native"), "{js}");

    let native_total = table_rows(native, "Top functions by total time");
    assert!(
        native_total.iter().any(|r| r.contains("node::Start")),
        "--summary native lists native frames:\n{native}"
    );
    assert!(!native.contains("Top JS functions"), "{native}");
}

#[test]
fn wall_profile_is_wall_time() {
    let _lock = serial();
    let dir = scratch_dir();
    let prefix = dir.path().join("wall");
    let node = node_major(22);
    let busy = fixture("busy.js");
    let args: Vec<String> = [
        "record",
        "-q",
        "--wall",
        "--format",
        "cpuprofile,folded,pprof",
        "-o",
        &prefix.display().to_string(),
        "--",
        &node.display().to_string(),
        &busy.display().to_string(),
        "1",
    ]
    .map(String::from)
    .to_vec();
    let run = run_nodeprof(&args, dir.path(), RUN_TIMEOUT);
    run.assert_success();
    let out = Outputs::load_formats(&prefix, &["cpuprofile", "folded"]);
    let file = prefix.with_extension("pb.gz");
    let text = go_pprof(&["-raw"], &file);
    let raw = parse_raw(&text);
    assert_eq!(
        raw.sample_types,
        ["samples/count", "wall/nanoseconds[dflt]", "cpu/nanoseconds"],
        "{text}"
    );
    let total: u64 = raw.samples.iter().map(|s| s.count).sum();
    assert_eq!(total, out.sample_count() as u64);
    assert!(text.contains("PeriodType: wall nanoseconds"), "{text}");
    // The spinning main thread is on CPU, node's idle helper threads are not.
    let (mut wall, mut cpu) = (0u64, 0u64);
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(2)
    {
        let Some((values, _)) = line.trim().split_once(':') else {
            continue;
        };
        let v: Vec<u64> = values
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if v.len() == 3 {
            wall += v[1];
            cpu += v[2];
        }
    }
    assert!(cpu > 0 && cpu < wall, "cpu {cpu} ns of wall {wall} ns");
}
