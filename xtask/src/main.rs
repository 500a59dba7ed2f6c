//! Project tasks: `cargo xtask <bootstrap|test|demo|dist|bench|bench-heap|bench-capture|bench-watch|bench-startup|bench-fidelity|soak>` (see README.md).

mod bench;
mod bootstrap;
mod capture_bench;
mod dist;
mod fidelity_bench;
mod heap_bench;
mod soak;
mod startup_bench;
mod util;
mod watch_bench;

use std::fs;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "nodeprof project tasks",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly + rust-src, bpf-linker against the
    /// nightly's LLVM, perf, unshare, node, memlab. Idempotent.
    Bootstrap,
    /// Bootstrap, build nodeprof, run every unit and integration test (as root).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap, build nodeprof (release) and profile the demo Node workload
    /// for 10 s into target/demo/demo.{cpuprofile,folded,svg} (as root).
    Demo,
    /// Release artifacts in target/dist/: the static binary, a tarball with man
    /// pages and completions, a .deb, the npm packages, SHA256SUMS.
    Dist,
    /// Benchmark the overhead of `nodeprof record` against a baseline and perf (as root).
    Bench(bench::BenchArgs),
    /// `nodeprof heap summary` against memlab on a 200 MB+ snapshot: wall time
    /// and peak RSS, alternately in one run (target/bench/heap.md).
    BenchHeap(heap_bench::BenchHeapArgs),
    /// `nodeprof snapshot` and `nodeprof core` of a ~1 GB heap, beside gcore:
    /// target stall, tool peak RSS, bytes/s (target/bench/capture.md; as root).
    BenchCapture(capture_bench::BenchCaptureArgs),
    /// Long recording of a loopback server with thousands of JS functions:
    /// nodeprof's peak RSS, CPU and time to symbolize (as root).
    Soak(soak::SoakArgs),
    /// The release binary's size and its start-up to the first sample
    /// (target/bench/startup.md; as root, after `cargo xtask dist`).
    BenchStartup(startup_bench::BenchStartupArgs),
    /// What `nodeprof watch` costs while watching N node processes (no
    /// capture): its CPU and memory, and the targets' slowdown (as root).
    BenchWatch(watch_bench::BenchWatchArgs),
    /// JS self time per function, nodeprof against node's --cpu-prof on the
    /// same process, on third-party code from npm (TypeScript, express,
    /// fastify), beside two --cpu-prof runs (target/bench/fidelity.md; as root).
    BenchFidelity(fidelity_bench::BenchFidelityArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Bootstrap => bootstrap::bootstrap().map(|()| ExitCode::SUCCESS),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo(),
        Cmd::Dist => bootstrap::bootstrap()
            .and_then(|()| dist::dist())
            .map(|()| ExitCode::SUCCESS),
        Cmd::Bench(args) => bench::bench(&args).map(|()| ExitCode::SUCCESS),
        Cmd::Soak(args) => soak::soak(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchHeap(args) => heap_bench::bench_heap(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchCapture(args) => capture_bench::bench_capture(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchStartup(args) => startup_bench::bench_startup(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchWatch(args) => watch_bench::bench_watch(&args).map(|()| ExitCode::SUCCESS),
        Cmd::BenchFidelity(args) => {
            fidelity_bench::bench_fidelity(&args).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(util::exit_code(status).clamp(1, 255) as u8)
}

fn test(extra: &[String]) -> Result<ExitCode> {
    util::require_root("test")?;
    bootstrap::bootstrap()?;
    util::run(util::cargo().args(["build", "-p", "nodeprof"]))?;
    let bin = util::target_dir().join("debug/nodeprof");
    anyhow::ensure!(bin.is_file(), "{} was not built", bin.display());
    println!("xtask test: NODEPROF_BIN={}", bin.display());
    println!(
        "xtask test: NODEPROF_MEMLAB={}",
        bootstrap::memlab_dir()?.display()
    );
    let status = util::status(
        util::cargo()
            .args(["test", "--workspace", "--exclude", "probe-ebpf"])
            .args(extra)
            .env("NODEPROF_BIN", &bin)
            .env("NODEPROF_MEMLAB", bootstrap::memlab_dir()?)
            .envs(node_binaries()?),
    )?;
    if status.success() {
        println!("xtask test: all tests passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask test: tests FAILED ({status})");
        Ok(exit_code(status))
    }
}

/// `NODEPROF_NODE_<major>` for every installed major: the tests run each.
fn node_binaries() -> Result<Vec<(String, std::path::PathBuf)>> {
    bootstrap::NODE_MAJORS
        .iter()
        .map(|&major| {
            Ok((
                format!("NODEPROF_NODE_{major}"),
                bootstrap::node_binary(major)?,
            ))
        })
        .collect()
}

fn demo() -> Result<ExitCode> {
    util::require_root("demo")?;
    bootstrap::bootstrap()?;
    util::run(util::cargo().args(["build", "--release", "-p", "nodeprof"]))?;
    let bin = util::target_dir().join("release/nodeprof");
    let out_dir = util::target_dir().join("demo");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    // nodeprof refuses to overwrite: clear the previous run's files.
    for entry in fs::read_dir(&out_dir)?.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().starts_with("demo.") {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    let prefix = out_dir.join("demo");
    let workload = util::root().join("xtask/demo/workload.js");
    let status = util::status(
        Command::new(&bin)
            .args(["record", "-F", "99", "-d", "10", "-o"])
            .arg(&prefix)
            .arg("--")
            .arg("node")
            .arg(&workload)
            .current_dir(util::root()),
    )?;
    if !status.success() {
        eprintln!("xtask demo: nodeprof record failed ({status})");
        return Ok(exit_code(status));
    }
    println!();
    println!("xtask demo: outputs");
    for ext in ["cpuprofile", "folded", "svg"] {
        let path = prefix.with_extension(ext);
        match fs::metadata(&path) {
            Ok(m) => println!("  {}  ({} bytes)", path.display(), m.len()),
            Err(_) => println!("  {}  (MISSING)", path.display()),
        }
    }
    println!("Open the .svg in a browser; load the .cpuprofile in Chrome DevTools (Performance), VS Code or speedscope.");
    Ok(ExitCode::SUCCESS)
}
