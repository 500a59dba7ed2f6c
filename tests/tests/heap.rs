//! `nodeprof heap`: snapshots written by real node processes, node
//! 18 to 26 (`tests/fixtures/heap/leaks.js`, `v8.writeHeapSnapshot`), compared with
//! the real memlab (`tests/fixtures/heap/memlab-classes.js`), and the three
//! leaks of the debugging guide found by `heap diff` and `heap retainers`.
//!
//! memlab comes from `$NODEPROF_MEMLAB` (set by `cargo xtask test`), else
//! `~/.cache/nodeprof/memlab` (`cargo xtask bootstrap` installs it); a missing
//! memlab is a failure, not a skip. These tests need no root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nodeprof_tests::{fixture, node_major, run_nodeprof, scratch_dir, Proc, Run};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `leaks.js KIND DIR` with `node`: DIR/base.heapsnapshot and DIR/current.heapsnapshot.
fn snapshots(node: &Path, kind: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let mut proc = Proc::node(
        node,
        &[],
        "heap/leaks.js",
        &[kind, dir.to_str().unwrap()],
        dir,
    );
    proc.wait_for_line("done", TIMEOUT);
    let status = proc.wait(TIMEOUT);
    assert!(status.success(), "leaks.js {kind} failed: {status}");
    let (base, current) = (
        dir.join("base.heapsnapshot"),
        dir.join("current.heapsnapshot"),
    );
    assert!(
        base.is_file() && current.is_file(),
        "leaks.js {kind} wrote no snapshots"
    );
    (base, current)
}

fn memlab_dir() -> PathBuf {
    let dir = match std::env::var_os("NODEPROF_MEMLAB") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/nodeprof/memlab"),
    };
    assert!(
        dir.join("node_modules/@memlab/heap-analysis").is_dir(),
        "memlab not found in {}: set NODEPROF_MEMLAB or run `cargo xtask bootstrap` \
         (PUPPETEER_SKIP_DOWNLOAD=1 npm install memlab)",
        dir.display()
    );
    dir
}

fn nodeprof(args: &[&str], dir: &Path) -> Run {
    let run = run_nodeprof(args, dir, TIMEOUT);
    run.assert_success();
    run
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", run.stdout))
}

#[derive(Debug, PartialEq)]
struct Class {
    count: u64,
    shallow: u64,
    retained: u64,
}

fn classes(v: &Value) -> BTreeMap<String, Class> {
    v["classes"]
        .as_array()
        .expect("classes array")
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{k} in {c}")) as u64;
            (
                c["name"].as_str().unwrap().to_string(),
                Class {
                    count: n("count"),
                    shallow: n("shallow_size"),
                    retained: n("retained_size"),
                },
            )
        })
        .collect()
}

/// The same snapshot through memlab and through `nodeprof heap summary`:
/// every class's count and shallow size are equal, and so are the retained
/// sizes of memlab's top 20 classes (with memlab's retaining rules).
fn compare_with_memlab(major: u32) {
    let node = node_major(major);
    let dir = scratch_dir();
    let (_, snapshot) = snapshots(&node, "shapes", dir.path());
    let out = dir.path().join("memlab.json");
    let status = Command::new(&node)
        .arg(fixture("heap/memlab-classes.js"))
        .arg(memlab_dir())
        .arg(&snapshot)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run memlab-classes.js");
    assert!(status.success(), "memlab-classes.js failed: {status}");
    let memlab: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let theirs = classes(&memlab);
    assert!(
        theirs.len() > 50,
        "memlab found only {} classes",
        theirs.len()
    );
    assert!(theirs.contains_key("LeakingClass") && theirs.contains_key("RegExp"));

    let snap = snapshot.to_str().unwrap();
    let ours_run = nodeprof(
        &[
            "heap", "summary", snap, "--top", "0", "--json", "--rules", "memlab",
        ],
        dir.path(),
    );
    let ours = classes(&json(&ours_run));
    for (name, t) in &theirs {
        let o = ours.get(name).unwrap_or_else(|| {
            panic!("node {major}: class {name:?} missing in nodeprof's summary")
        });
        assert_eq!(
            (o.count, o.shallow),
            (t.count, t.shallow),
            "node {major}: class {name:?} count/shallow size (nodeprof vs memlab)"
        );
    }
    let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "node {major}: classes only nodeprof lists: {extra:?}"
    );
    let mut top: Vec<(&String, &Class)> = theirs.iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1.retained));
    for (name, t) in top.iter().take(20) {
        assert_eq!(
            ours[*name].retained, t.retained,
            "node {major}: retained size of {name:?} (nodeprof vs memlab)"
        );
    }

    // DevTools' rules (the default) name the same objects with the same
    // sizes (only DOM detachedness may rename a few native objects) and the
    // root retains everything.
    let dt = json(&nodeprof(
        &["heap", "summary", snap, "--top", "0", "--json"],
        dir.path(),
    ));
    let dt_classes = classes(&dt);
    let total = |m: &BTreeMap<String, Class>| {
        m.values()
            .fold((0, 0), |(c, s), x| (c + x.count, s + x.shallow))
    };
    assert_eq!(
        total(&dt_classes),
        total(&theirs),
        "node {major}: objects and shallow sizes under DevTools rules"
    );
    assert_eq!(
        dt["total_size"].as_u64(),
        Some(total(&theirs).1),
        "root retains the whole heap"
    );
    assert_eq!(dt_classes["LeakingClass"].count, 300);
}

#[test]
fn summary_matches_memlab_node18() {
    compare_with_memlab(18);
}

#[test]
fn summary_matches_memlab_node20() {
    compare_with_memlab(20);
}

#[test]
fn summary_matches_memlab_node22() {
    compare_with_memlab(22);
}

#[test]
fn summary_matches_memlab_node24() {
    compare_with_memlab(24);
}

#[test]
fn summary_matches_memlab_node26() {
    compare_with_memlab(26);
}

#[test]
fn summary_text_lists_the_biggest_classes() {
    let dir = scratch_dir();
    let (_, current) = snapshots(&node_major(20), "array", dir.path());
    let run = nodeprof(
        &["heap", "summary", current.to_str().unwrap(), "--top", "5"],
        dir.path(),
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("Heap: "), "{}", run.stdout);
    assert!(lines[1].starts_with("Top 5 of "), "{}", run.stdout);
    assert!(
        lines[2].starts_with("Constructor") && lines[2].contains("Retained size"),
        "{}",
        run.stdout
    );
    assert_eq!(
        lines.len(),
        8,
        "header, title, column names, 5 classes:\n{}",
        run.stdout
    );
}

/// Leak 1: objects pushed into a global array.
fn global_array_leak(major: u32) {
    let dir = scratch_dir();
    let (base, current) = snapshots(&node_major(major), "array", dir.path());
    let (b, c) = (base.to_str().unwrap(), current.to_str().unwrap());
    let run = nodeprof(&["heap", "diff", b, c], dir.path());
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("LeakingClass +8300 objects, +"),
        "node {major}: first line should name the leak:\n{}",
        run.stdout
    );
    // The files given the wrong way round: nothing grew, and what shrank
    // shows the swap.
    let run = nodeprof(&["heap", "diff", c, b], dir.path());
    assert!(
        run.stdout.starts_with("Nothing grew.")
            && run.stdout.contains("\nLeakingClass -8300 objects, -"),
        "node {major}: a swapped diff should name what shrank:\n{}",
        run.stdout
    );
    let d = json(&nodeprof(&["heap", "diff", b, c, "--json"], dir.path()));
    assert_eq!(d["mode"], "ids");
    let top = &d["classes"][0];
    assert_eq!(top["name"], "LeakingClass");
    assert_eq!(
        (top["new"].as_u64(), top["deleted"].as_u64()),
        (Some(8300), Some(0))
    );
    let each = top["alloc_size"].as_u64().unwrap() / 8300;
    assert!((24..=64).contains(&each), "a LeakingClass is {each} bytes");

    let run = nodeprof(
        &["heap", "retainers", c, "--class", "LeakingClass"],
        dir.path(),
    );
    assert!(
        run.stdout.contains("─.leaks→ Array ─[") && run.stdout.contains("]→ LeakingClass"),
        "node {major}: the path should go global → leaks → Array[i] → LeakingClass:\n{}",
        run.stdout
    );
    let r = json(&nodeprof(
        &["heap", "retainers", c, "--class", "LeakingClass", "--json"],
        dir.path(),
    ));
    assert_eq!(r["objects"], 8400);
    assert_eq!(
        r["paths"][0]["objects"], 8400,
        "one path shape for all of them"
    );
    let steps = r["paths"][0]["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["class"], "LeakingClass");
    assert!(last["edge"].as_str().unwrap().starts_with('['), "{last}");
    let array = &steps[steps.len() - 2];
    assert_eq!(
        (array["class"].as_str(), array["edge"].as_str()),
        (Some("Array"), Some(".leaks"))
    );
    // node ≤ 24: `global`; node 26: `global (global*)`, reached from the native context.
    assert!(
        steps[steps.len() - 3]["name"]
            .as_str()
            .unwrap()
            .starts_with("global"),
        "{steps:?}"
    );
    let distances: Vec<i64> = steps[1..]
        .iter()
        .map(|s| s["distance"].as_i64().unwrap())
        .collect();
    assert_eq!(
        distances,
        (1..=distances.len() as i64).collect::<Vec<_>>(),
        "distances grow by one"
    );

    // The same object by id.
    let id = last["id"].as_u64().unwrap().to_string();
    let run = nodeprof(&["heap", "retainers", c, "--id", &id], dir.path());
    assert!(
        run.stdout
            .starts_with(&format!("LeakingClass @{id}: 1 object;")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("─.leaks→ Array"), "{}", run.stdout);
}

#[test]
fn global_array_leak_node20() {
    global_array_leak(20);
}

#[test]
fn global_array_leak_node26() {
    global_array_leak(26);
}

/// Leak 2: each closure's context keeps the previous object and its 10 MB string.
#[test]
fn closure_chain_leak() {
    let dir = scratch_dir();
    let (base, current) = snapshots(&node_major(20), "closure", dir.path());
    let (b, c) = (base.to_str().unwrap(), current.to_str().unwrap());
    let run = nodeprof(&["heap", "diff", b, c], dir.path());
    let first = run.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("(string) +5 objects, +50.0 MB"),
        "first line:\n{}",
        run.stdout
    );
    let r = json(&nodeprof(
        &[
            "heap",
            "retainers",
            c,
            "--class",
            "(string)",
            "--json",
            "--paths",
            "5",
        ],
        dir.path(),
    ));
    let paths = r["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 5);
    // The largest strings come first: each is kept by the chain of contexts.
    let deepest = paths[0]["steps"].as_array().unwrap();
    let edges: Vec<&str> = deepest.iter().filter_map(|s| s["edge"].as_str()).collect();
    assert_eq!(*edges.last().unwrap(), ".leakStr", "{edges:?}");
    assert!(deepest.last().unwrap()["shallow_size"].as_u64().unwrap() >= 10_000_000);
    let links = edges.iter().filter(|e| **e == "->originLeakObject").count();
    assert_eq!(
        links, 5,
        "the oldest of 6 leaked strings is 5 closures deep: {edges:?}"
    );
    assert!(
        edges.contains(&".leakMethod") && edges.contains(&"{context}"),
        "{edges:?}"
    );
}

/// Leak 3: 10000 listeners added per request.
#[test]
fn event_listener_leak() {
    let dir = scratch_dir();
    let (base, current) = snapshots(&node_major(20), "listeners", dir.path());
    let (b, c) = (base.to_str().unwrap(), current.to_str().unwrap());
    let d = json(&nodeprof(&["heap", "diff", b, c, "--json"], dir.path()));
    let top = &d["classes"][0];
    assert_eq!(top["name"], "Function", "{d}");
    assert!(top["count_delta"].as_i64().unwrap() >= 50_000, "{top}");
    let run = nodeprof(&["heap", "diff", b, c], dir.path());
    assert!(run.stdout.starts_with("Function +500"), "{}", run.stdout);
    let r = json(&nodeprof(
        &["heap", "retainers", c, "--class", "Function", "--json"],
        dir.path(),
    ));
    let group = &r["paths"][0];
    assert!(group["objects"].as_u64().unwrap() >= 50_000, "{group}");
    let edges: Vec<&str> = group["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["edge"].as_str())
        .collect();
    assert!(
        edges.contains(&"._events") && edges.contains(&".request"),
        "{edges:?}"
    );
}

#[test]
fn diff_of_two_processes_compares_counts() {
    let node = node_major(20);
    let (d1, d2) = (scratch_dir(), scratch_dir());
    let (base, _) = snapshots(&node, "array", d1.path());
    let (other, _) = snapshots(&node, "listeners", d2.path());
    let args = [
        "heap",
        "diff",
        base.to_str().unwrap(),
        other.to_str().unwrap(),
    ];
    let run = nodeprof(&args, d1.path());
    assert!(run.stdout.contains("share no object ids"), "{}", run.stdout);
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let d = json(&nodeprof(&with_json, d1.path()));
    assert_eq!(d["mode"], "counts");
    assert!(d["classes"][0]["new"].is_null());
}

#[test]
fn bad_input_ends_in_one_error_line() {
    let dir = scratch_dir();
    let (base, _) = snapshots(&node_major(20), "array", dir.path());
    let bytes = std::fs::read(&base).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let cases = [
        (
            write("half.heapsnapshot", &bytes[..bytes.len() / 2]),
            "truncated",
        ),
        (write("empty.heapsnapshot", b""), "empty"),
        (
            write("text.heapsnapshot", b"hello world\n"),
            "not a heap snapshot",
        ),
        (
            write("other.json", b"{\"a\": [1, 2, 3]}"),
            "not a V8 heap snapshot",
        ),
        (
            dir.path()
                .join("missing.heapsnapshot")
                .to_str()
                .unwrap()
                .to_string(),
            "cannot read",
        ),
    ];
    for (path, needle) in &cases {
        for cmd in [
            vec!["heap", "summary", path],
            vec!["heap", "retainers", path, "--class", "x"],
        ] {
            run_nodeprof(&cmd, dir.path(), TIMEOUT).assert_error(needle);
        }
    }
    let b = base.to_str().unwrap();
    run_nodeprof(&["heap", "diff", b, &cases[0].0], dir.path(), TIMEOUT).assert_error("truncated");
    run_nodeprof(
        &["heap", "retainers", b, "--class", "NoSuchThing"],
        dir.path(),
        TIMEOUT,
    )
    .assert_error("no object of class");
    run_nodeprof(&["heap", "retainers", b, "--id", "2"], dir.path(), TIMEOUT)
        .assert_error("no object with id");
}

/// The parser on damaged copies of a real snapshot: every truncation is an
/// error, garbled bytes are an error or a valid parse (which then analyses),
/// never a panic; a header announcing more than the file can hold is refused
/// before allocating.
#[test]
fn parser_survives_truncation_and_garbage() {
    use nodeprof::heap::graph::{Graph, Rules};
    use nodeprof::heap::parse::read_bytes;
    use nodeprof::heap::summary;
    let dir = scratch_dir();
    let (base, _) = snapshots(&node_major(20), "array", dir.path());
    let bytes = std::fs::read(&base).unwrap();
    assert!(read_bytes(&bytes).is_ok(), "the intact snapshot parses");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let check = |data: &[u8], what: &str, must_fail: bool| {
        // What parses must also analyse without a panic.
        let result = std::panic::catch_unwind(|| {
            read_bytes(data).map(|s| {
                let g = Graph::build(&s, Rules::Devtools);
                summary::summarize(&s, &g).classes.len()
            })
        });
        match result {
            Err(_) => panic!("parser panicked on {what}"),
            Ok(Ok(_)) if must_fail => panic!("{what} parsed without error"),
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Ok(Ok(_)) => {}
        }
    };
    // Truncations: at every structural spot of the head, then spread over the file.
    let mut cuts: Vec<usize> = (0..300).collect();
    cuts.extend((0..60).map(|_| rand(bytes.len())));
    for cut in cuts {
        check(&bytes[..cut], &format!("truncation at {cut}"), true);
    }
    // Byte flips and garbage runs (NODEPROF_FUZZ_ROUNDS for a longer campaign).
    let rounds: usize = std::env::var("NODEPROF_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(120);
    for i in 0..rounds {
        let mut data = bytes.clone();
        let at = if i % 3 == 0 {
            rand(2000)
        } else {
            rand(data.len())
        };
        if i % 2 == 0 {
            data[at] = b"{}[],:\"\\0-x \n\xff"[rand(14)];
        } else {
            let end = (at + 1 + rand(64)).min(data.len());
            for b in &mut data[at..end] {
                *b = rand(256) as u8;
            }
        }
        check(&data, &format!("garbage at {at}"), false);
    }
    // Absurd counts.
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_string();
    let node_count = text
        .split("\"node_count\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let huge = String::from_utf8_lossy(&bytes).replacen(
        &format!("\"node_count\":{node_count}"),
        "\"node_count\":900000000000",
        1,
    );
    let err = read_bytes(huge.as_bytes())
        .err()
        .expect("absurd node_count refused")
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
}

/// A finished run with what it cost: wall time and peak RSS (the kernel's
/// `ru_maxrss` of that one child, from `wait4`).
struct Measured {
    run: Run,
    seconds: f64,
    /// User and system CPU time: unlike wall time, not stretched by other
    /// work on the machine.
    cpu_seconds: f64,
    peak_rss: u64,
}

/// Runs `nodeprof ARGS` with its address space limited to `limit` bytes (a
/// regression that eats memory fails here instead of starving the machine).
fn run_measured(args: &[&str], dir: &Path, limit: u64, timeout: Duration) -> Measured {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let (out, err) = (dir.join("measured.stdout"), dir.join("measured.stderr"));
    let mut cmd = Command::new(nodeprof_tests::nodeprof_bin());
    cmd.args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = std::time::Instant::now();
    // Reaped by wait4 below, which also gives the child's own rusage.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn nodeprof");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, by pid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > timeout {
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("nodeprof {args:?} took more than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = start.elapsed().as_secs_f64();
    Measured {
        run: Run {
            status: std::process::ExitStatus::from_raw(status),
            stdout: std::fs::read_to_string(out).unwrap(),
            stderr: std::fs::read_to_string(err).unwrap(),
        },
        seconds,
        cpu_seconds: [usage.ru_utime, usage.ru_stime]
            .iter()
            .map(|t| t.tv_sec as f64 + t.tv_usec as f64 / 1e6)
            .sum(),
        peak_rss: usage.ru_maxrss as u64 * 1024,
    }
}

/// Writes the snapshot of a linked list of `count` ListNode objects.
fn list_snapshot(count: usize, dir: &Path) -> PathBuf {
    let file = dir.join(format!("list-{count}.heapsnapshot"));
    let mut proc = Proc::node(
        &node_major(20),
        &[],
        "heap/list.js",
        &[&count.to_string(), file.to_str().unwrap()],
        dir,
    );
    proc.wait_for_line("done", TIMEOUT);
    assert!(proc.wait(TIMEOUT).success(), "list.js {count} failed");
    file
}

/// Retaining paths of every object of a long chain: one BFS tree read once,
/// not one path per object (which was quadratic: 1.58 GB for 20,000 list
/// nodes, an abort at 50,000).
#[test]
fn retainers_of_a_long_linked_list_cost_linear_memory() {
    let dir = scratch_dir();
    let count = 100_000;
    let file = list_snapshot(count, dir.path());
    let file_size = std::fs::metadata(&file).unwrap().len();
    let f = file.to_str().unwrap();
    let m = run_measured(
        &["heap", "retainers", f, "--class", "ListNode", "--json"],
        dir.path(),
        2 << 30,
        Duration::from_secs(60),
    );
    m.run.assert_no_panic();
    m.run.assert_success();
    eprintln!(
        "retainers of {count} list nodes ({file_size} bytes): {:.2} s, peak RSS {} MB",
        m.seconds,
        m.peak_rss >> 20
    );
    // The program and its tables take a few tens of MB whatever the file.
    assert!(
        m.peak_rss <= 4 * file_size + (48 << 20),
        "peak RSS {} MB for a {} MB file",
        m.peak_rss >> 20,
        file_size >> 20
    );
    let r: Value = serde_json::from_str(&m.run.stdout).unwrap();
    assert_eq!(r["objects"], count as u64);
    assert_eq!(r["unreachable"], 0);
    // Every node of the list is at another depth: one path shape each. The
    // first path is the head's; the deepest node's path holds the whole list.
    let paths = r["paths"].as_array().unwrap();
    let head = paths[0]["steps"].as_array().unwrap();
    assert_eq!(head.last().unwrap()["class"], "ListNode");
    assert_eq!(head.last().unwrap()["edge"], ".list");
    assert!(paths.iter().all(|p| p["objects"] == 1), "{paths:?}");

    // The far end of the chain (the ListNode whose `next` is null): its
    // path, `count` steps long, as text.
    let snap = nodeprof::heap::load(&file, true).unwrap();
    let tail = (0..snap.node_count() as u32)
        .find(|&n| {
            snap.class_name(n) == "ListNode"
                && !snap.edges(n).any(|e| {
                    snap.edge_label(e) == ".next" && snap.class_name(snap.edge_to[e]) == "ListNode"
                })
        })
        .expect("a last ListNode");
    let id = snap.node_id[tail as usize].to_string();
    drop(snap);
    let m = run_measured(
        &["heap", "retainers", f, "--id", &id],
        dir.path(),
        2 << 30,
        Duration::from_secs(60),
    );
    m.run.assert_success();
    eprintln!(
        "the path of @{id}, {count} steps as text: {:.2} s, peak RSS {} MB",
        m.seconds,
        m.peak_rss >> 20
    );
    // Printing a path costs O(its length): a table row is about half a KB
    // while the text is made.
    assert!(
        m.peak_rss <= 4 * file_size + (48 << 20) + 1024 * count as u64,
        "peak RSS {} MB for a {} MB file and a path of {count} steps",
        m.peak_rss >> 20,
        file_size >> 20
    );
    let chain = m.run.stdout.lines().nth(3).unwrap_or_default();
    assert!(
        chain.starts_with("    (root) → "),
        "{}",
        &m.run.stdout[..m.run.stdout.len().min(2000)]
    );
    assert_eq!(chain.matches("─.next→ ListNode").count(), count - 1);
}

/// A two-node snapshot file (the root and one string) whose string table
/// holds `text` (already JSON-escaped), and node sizes `sizes`.
fn synthetic_snapshot(path: &Path, text_chunks: &mut dyn Iterator<Item = String>, sizes: [u64; 2]) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write!(
        f,
        r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count","trace_node_id"],
"node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic"],"string","number","number","number","number"],
"edge_fields":["type","name_or_index","to_node"],
"edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]}},
"node_count":2,"edge_count":1}},
"nodes":[9,0,1,{},1,0,2,1,3,{},0,0],"edges":[2,2,6],"strings":["",""#,
        sizes[0], sizes[1]
    )
    .unwrap();
    for chunk in text_chunks {
        f.write_all(chunk.as_bytes()).unwrap();
    }
    f.write_all(br#"","big"]}"#).unwrap();
    f.flush().unwrap();
}

/// A snapshot holding one huge string: the parser keeps its text once (it
/// was copied from a scratch buffer into the table, and decoded a third time
/// when it held escapes).
#[test]
fn a_huge_string_is_held_once() {
    let dir = scratch_dir();
    let file = dir.path().join("string.heapsnapshot");
    // 256 MiB of text, with an escaped newline and a quote every 4 KiB.
    let line = format!("{}\\n\\\"", "a".repeat(4093));
    synthetic_snapshot(
        &file,
        &mut std::iter::repeat_n(line, 1 << 16),
        [0, 256 << 20],
    );
    let file_size = std::fs::metadata(&file).unwrap().len();
    let f = file.to_str().unwrap();
    let m = run_measured(
        &["heap", "summary", f, "--json"],
        dir.path(),
        4 << 30,
        Duration::from_secs(120),
    );
    m.run.assert_success();
    eprintln!(
        "summary of a {} MB string: {:.2} s, peak RSS {} MB",
        file_size >> 20,
        m.seconds,
        m.peak_rss >> 20
    );
    assert!(
        m.peak_rss <= file_size + file_size / 4 + (48 << 20),
        "peak RSS {} MB for a {} MB file holding one string",
        m.peak_rss >> 20,
        file_size >> 20
    );
    let s: Value = serde_json::from_str(&m.run.stdout).unwrap();
    assert_eq!(s["total_size"], 256u64 << 20);
    std::fs::remove_file(&file).unwrap();
}

/// Sizes that overflow 64 bits when added (a crafted or corrupt file) are one
/// clear error, not a heap of "0 B".
#[test]
fn implausible_sizes_are_one_error_line() {
    let dir = scratch_dir();
    let file = dir.path().join("huge.heapsnapshot");
    for sizes in [[1 << 63, 1 << 63], [0, u64::MAX], [1 << 62, 1 << 62]] {
        synthetic_snapshot(&file, &mut std::iter::once("x".to_string()), sizes);
        let f = file.to_str().unwrap();
        for cmd in [
            vec!["heap", "summary", f],
            vec!["heap", "retainers", f, "--class", "(string)"],
            vec!["heap", "diff", f, f],
        ] {
            let run = run_nodeprof(&cmd, dir.path(), TIMEOUT);
            run.assert_no_panic();
            run.assert_error("implausible");
        }
    }
}

/// A generated snapshot of `root → global ─.list→ ListNode ─.next→ … ` with
/// `len` list nodes (the shape of a real one, ids and sizes included),
/// written as it is generated.
fn chain_snapshot(len: usize, path: &Path) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write!(
        f,
        r#"{{"snapshot":{{"meta":{{"node_fields":["type","name","id","self_size","edge_count","trace_node_id","detachedness"],
"node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic"],"string","number","number","number","number","number"],
"edge_fields":["type","name_or_index","to_node"],
"edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"]}},
"node_count":{},"edge_count":{}}},
"nodes":[9,0,1,0,1,0,0,
3,2,3,40,1,0,0"#,
        len + 2,
        len + 1
    )
    .unwrap();
    for i in 0..len {
        let edges = usize::from(i + 1 < len);
        write!(f, ",\n3,1,{},32,{edges},0,0", 2 * i + 5).unwrap();
    }
    write!(f, "],\n\"edges\":[1,0,7,\n2,4,14").unwrap();
    for i in 0..len.saturating_sub(1) {
        write!(f, ",\n2,3,{}", (i + 3) * 7).unwrap();
    }
    f.write_all(b"],\n\"strings\":[\"\",\"ListNode\",\"global\",\"next\",\"list\"]}\n")
        .unwrap();
    f.flush().unwrap();
}

/// `heap retainers` on chains of 10^3 … 10^6 list nodes: memory within 4×
/// the file (above what the program takes for the smallest), CPU time per
/// node flat (a quadratic cost is 100× per node from 10^4 to 10^6).
#[test]
fn chains_cost_linear_time_and_memory() {
    let dir = scratch_dir();
    let mut runs = Vec::new();
    for len in [1_000, 10_000, 100_000, 1_000_000] {
        let file = dir.path().join(format!("chain-{len}.heapsnapshot"));
        chain_snapshot(len, &file);
        let size = std::fs::metadata(&file).unwrap().len();
        let f = file.to_str().unwrap();
        let m = run_measured(
            &["heap", "retainers", f, "--class", "ListNode", "--json"],
            dir.path(),
            4 << 30,
            Duration::from_secs(120),
        );
        m.run.assert_success();
        let r: Value = serde_json::from_str(&m.run.stdout).unwrap();
        assert_eq!(r["objects"], len as u64);
        assert_eq!(r["paths"][0]["steps"].as_array().unwrap().len(), 3);
        eprintln!(
            "chain of {len}: {size} bytes, {:.3} s CPU, peak RSS {} KB",
            m.cpu_seconds,
            m.peak_rss >> 10
        );
        runs.push((len, size, m.cpu_seconds, m.peak_rss));
        std::fs::remove_file(&file).unwrap();
    }
    // What the program takes whatever the file, plus the parser's batches of
    // numbers in flight (a few MB once the file fills them).
    let base_rss = runs[0].3 + (4 << 20);
    for &(len, size, _, rss) in &runs {
        assert!(
            rss <= base_rss + 4 * size,
            "chain of {len}: peak RSS {} KB for a {} KB file",
            rss >> 10,
            size >> 10
        );
    }
    let per_node = |i: usize| runs[i].2 / runs[i].0 as f64;
    assert!(
        per_node(3) <= 4.0 * per_node(1).max(per_node(2)),
        "CPU time per node: {:?}",
        (0..4).map(per_node).collect::<Vec<_>>()
    );
}
