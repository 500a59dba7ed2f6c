//! The `nodeprof` command line. Errors end here as one line, never a backtrace.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use nodeprof::cmd::core::CoreCommand;
use nodeprof::cmd::dump::{DumpOptions, DumpSource};
use nodeprof::cmd::heap::{HeapCommand as Heap, HeapOptions, RetainersOf};
use nodeprof::cmd::record::{RecordOptions, TargetSpec};
use nodeprof::cmd::snapshot::SnapshotCommand;
use nodeprof::cmd::{self, gc::GcOptions};
use nodeprof::heap::graph::Rules;
use nodeprof::output::{Format, Report};
use nodeprof::watch::Config as WatchConfig;
use nodeprof::{Clock, Compression, CoreOptions, CpuOptions, SnapshotOptions};

/// `nodeprof --version`: what a bug report needs, and what the binary supports.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NODEPROF_GIT_COMMIT"),
    ", ",
    env!("NODEPROF_TARGET"),
    ")\nNode.js: 18, 20, 22, 24, 26 (official x86-64 builds; their v8dbg_* symbols name JS frames)",
    "\nkernel: Linux 5.15+ with BPF, BTF, BPF ring buffers, perf events, uprobes and tracepoints;",
    " `dump` needs 6.1+ (task iterators). `nodeprof doctor` says what works on this host."
);

#[derive(Parser)]
#[command(
    name = "nodeprof",
    version,
    long_version = LONG_VERSION,
    about = "Diagnose a running Node.js process from the outside, with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a CPU profile of every thread of a process: flame graph, .cpuprofile, folded stacks.
    ///
    /// Attach to a running process with -p PID, or launch one after `--`:
    /// `nodeprof record -- node app.js`. Records until Ctrl-C, the duration, or the target's exit;
    /// everything sampled is written.
    Record(RecordArgs),
    /// Trace every garbage collection of a Node.js process: kind, pause, heap
    /// before and after, reason; a leak suspicion when the heap left after full
    /// GCs keeps growing; a summary at the end.
    Gc(GcArgs),
    /// What every thread of a process is doing right now, without stopping
    /// or signalling it: state, system call, kernel, native and JS frames,
    /// and a verdict for the main thread (idle event loop, blocked in a
    /// synchronous call, running JavaScript, in GC).
    Dump(DumpArgs),
    /// Show what nodeprof finds in a process: Node.js and V8 versions, where
    /// the V8 layout comes from, and whether JS frames can be named.
    Info {
        /// Process to inspect.
        #[arg(short, long)]
        pid: u32,
    },
    /// Read .heapsnapshot files: Summary, Comparison and Retainers, as in DevTools.
    #[command(subcommand)]
    Heap(HeapCommand),
    /// Write a core file of a live process, which keeps running: every
    /// thread's registers and the memory its coredump_filter selects; gdb
    /// and lldb read it. The target is stopped only while its memory is
    /// copied, and resumed on every path (Ctrl-C, errors, a full disk).
    Core(CoreArgs),
    /// Take a .heapsnapshot of a live Node.js process started with no flag:
    /// its inspector is started with SIGUSR1 (or the one listening is used),
    /// the snapshot streamed to disk, and an inspector nodeprof started is
    /// closed again. Works while JS is stuck in a loop. `nodeprof heap
    /// summary`, DevTools and memlab read the file.
    Snapshot(SnapshotArgs),
    /// Watch Node.js processes and capture evidence when thresholds are
    /// crossed on consecutive checks: CPU, memory, a blocked event loop, a leak.
    ///
    /// Every --interval it reads each process from outside (CPU of all
    /// threads, RSS, V8 heap from GC tracing, event-loop utilization and
    /// longest turn), so a blocked event loop is caught too. Captures run one
    /// at a time, within --limit, with a cool-down, a disk budget and a
    /// free-space floor; each prints one line (--json: a JSON line).
    /// Every option can also come from --config FILE (TOML, same names).
    Watch(Box<WatchArgs>),
    /// What works on this host and why not: kernel features (each tried),
    /// capabilities, perf_event_paranoid, lockdown, containers; then one
    /// verdict per command, with the fix.
    Doctor {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Writes the man pages and shell completions of this command line into DIR
    /// (for packaging: `cargo xtask dist`).
    #[command(hide = true)]
    GenerateAssets {
        /// Directory to write nodeprof.1, nodeprof-*.1 and completions/ into.
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// Node.js process to snapshot.
    #[arg(short, long)]
    pid: u32,
    /// The snapshot file, or a directory for the default name
    /// nodeprof-PID-DATE-TIME.heapsnapshot (default: the current directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Take it even when free memory or disk look too small for this heap.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Take this many snapshots (FILE-1, FILE-2…), then print what grew
    /// between the first and the last (as `nodeprof heap diff`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    count: u32,
    /// Time between snapshots (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "30s", requires = "count")]
    interval: Duration,
    /// The heap of this worker thread (its `threadId`: 1 is the first
    /// worker) instead of the main thread's.
    #[arg(long, value_name = "THREAD_ID")]
    worker: Option<u32>,
}

#[derive(clap::Args)]
struct CoreArgs {
    /// Process to dump (any process, not only Node.js).
    #[arg(short, long)]
    pid: u32,
    /// The core file, or a directory for the default name nodeprof-PID-DATE-TIME.core
    /// (default: the current directory).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Include file-backed mappings whole (the target's coredump_filter decides otherwise).
    #[arg(long, overrides_with = "no_file_backed")]
    file_backed: bool,
    /// Leave file-backed mappings out (gdb reads them from the binaries).
    #[arg(long)]
    no_file_backed: bool,
    /// Include hugetlb mappings.
    #[arg(long, overrides_with = "no_huge")]
    huge: bool,
    /// Leave hugetlb mappings out.
    #[arg(long)]
    no_huge: bool,
    /// Write even when the disk looks too small for the core.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
    /// Compress the core as it is written (FILE.core.zst; `zstd -d` restores it).
    #[arg(long, value_enum, value_name = "zstd")]
    compress: Option<Compression>,
}

/// `watch`'s flags: the same keys as its TOML file (`nodeprof::watch::Config`).
#[derive(clap::Args)]
struct WatchArgs {
    /// TOML file with any of these options (`cpu = 90`, `loop-blocked = "500ms"`); flags win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Process(es) to watch (repeat -p for more).
    #[arg(short, long)]
    pid: Option<Vec<u32>>,
    /// Every node process, now and as they start.
    #[arg(long)]
    all: bool,
    /// Node processes whose command line matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    name: Option<String>,
    /// Node processes in this cgroup or below (e.g. /system.slice/app.service).
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// Keep watching for new processes when none is left.
    #[arg(long)]
    keep_waiting: bool,
    /// Time between checks (default 1s).
    #[arg(long, value_name = "DURATION")]
    interval: Option<String>,
    /// CPU threshold, % of one core (all threads).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    cpu: Option<f64>,
    /// Consecutive checks over --cpu that trigger (default 3).
    #[arg(long, value_name = "N")]
    cpu_count: Option<u32>,
    /// Memory threshold (1.5G, 800M), of --mem-of.
    #[arg(long, value_name = "SIZE")]
    mem: Option<String>,
    /// Which memory --mem compares: rss, or heap (V8 heap used after the latest GC). Default rss.
    #[arg(long, value_name = "rss|heap")]
    mem_of: Option<String>,
    /// Consecutive checks over --mem that trigger (default 5).
    #[arg(long, value_name = "N")]
    mem_count: Option<u32>,
    /// Trigger when an event-loop turn lasts this long (500ms); one check suffices.
    #[arg(long, value_name = "DURATION")]
    loop_blocked: Option<String>,
    /// Trigger on a GC leak suspicion (heap after full GCs growing).
    #[arg(long)]
    on_leak: bool,
    /// Consecutive growing full GCs that raise a leak suspicion (default 5).
    #[arg(long, value_name = "N")]
    leak_after: Option<u32>,
    /// What --cpu does (comma separated: profile, dump, snapshot, core, command). Default profile.
    #[arg(long, value_name = "ACTIONS")]
    cpu_action: Option<String>,
    /// What --mem does. Default snapshot.
    #[arg(long, value_name = "ACTIONS")]
    mem_action: Option<String>,
    /// What --on-leak does. Default snapshot.
    #[arg(long, value_name = "ACTIONS")]
    leak_action: Option<String>,
    /// What --loop-blocked does. Default dump,profile.
    #[arg(long, value_name = "ACTIONS")]
    loop_action: Option<String>,
    /// Shell command of the `command` action; NODEPROF_PID, NODEPROF_TRIGGER,
    /// NODEPROF_REASON and NODEPROF_OUT are set.
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    /// Length of a `profile` capture (default 10s).
    #[arg(long, value_name = "DURATION")]
    profile_duration: Option<String>,
    /// At most N captures per trigger and process per period (default 3/hour).
    #[arg(long, value_name = "N/PERIOD")]
    limit: Option<String>,
    /// After a capture, the process's checks feed no counter for this long (default 1m).
    #[arg(long, value_name = "DURATION")]
    cooldown: Option<String>,
    /// Processes captured when many cross one threshold together (default 1).
    #[arg(long, value_name = "N")]
    cluster_max: Option<usize>,
    /// Crossings this close belong together (default 1m).
    #[arg(long, value_name = "DURATION")]
    cluster_window: Option<String>,
    /// Directory of the captures (default: the current directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Budget for everything watch writes in --out; once spent, nothing more is captured.
    #[arg(long, value_name = "SIZE")]
    max_disk: Option<String>,
    /// Capture nothing while the free space of --out is under this (default 1G).
    #[arg(long, value_name = "SIZE")]
    min_free: Option<String>,
    /// Captures kept in --out; the oldest are removed first (default: all).
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Print every check's readings.
    #[arg(long)]
    readings: bool,
    /// Do not measure event loops: no system-call tracepoints, which slow
    /// every system call on the host by ~20 ns while watch runs.
    #[arg(long, conflicts_with = "loop_blocked")]
    no_loop: bool,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    text.trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| format!("{text:?} is not a percentage"))
}

impl WatchArgs {
    /// The flags as a config, over the file's.
    fn into_options(self) -> anyhow::Result<cmd::watch::WatchOptions> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                WatchConfig::from_toml(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
            None => WatchConfig::default(),
        };
        let flag = |on: bool| on.then_some(true);
        let flags = WatchConfig {
            pid: self.pid,
            all: flag(self.all),
            name: self.name,
            cgroup: self.cgroup,
            keep_waiting: flag(self.keep_waiting),
            interval: self.interval,
            cpu: self.cpu,
            cpu_count: self.cpu_count,
            mem: self.mem,
            mem_of: self.mem_of,
            mem_count: self.mem_count,
            loop_blocked: self.loop_blocked,
            on_leak: flag(self.on_leak),
            leak_after: self.leak_after,
            cpu_action: self.cpu_action,
            mem_action: self.mem_action,
            leak_action: self.leak_action,
            loop_action: self.loop_action,
            command: self.command,
            profile_duration: self.profile_duration,
            limit: self.limit,
            cooldown: self.cooldown,
            cluster_max: self.cluster_max,
            cluster_window: self.cluster_window,
            out: self.out,
            max_disk: self.max_disk,
            min_free: self.min_free,
            keep: self.keep,
            json: flag(self.json),
            readings: flag(self.readings),
            no_loop: flag(self.no_loop),
        };
        flags.or(file).resolve().map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum HeapCommand {
    /// Per class: objects, shallow size, retained size, distance from the roots (DevTools Summary).
    Summary {
        /// The .heapsnapshot file.
        file: PathBuf,
        /// Classes listed, by retained size (0: all).
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Whose rules decide which edges retain: DevTools' or memlab's.
        #[arg(long, value_parser = rules_parser(), default_value = "devtools")]
        rules: Rules,
        #[command(flatten)]
        out: HeapOutput,
    },
    /// What grew between two snapshots of one process: #New, #Deleted, #Delta per class
    /// (DevTools Comparison, by object id).
    Diff {
        /// The earlier snapshot.
        base: PathBuf,
        /// The later snapshot.
        current: PathBuf,
        /// Classes listed, by size growth (0: all).
        #[arg(long, default_value_t = 20)]
        top: usize,
        #[command(flatten)]
        out: HeapOutput,
    },
    /// Shortest retaining paths from the GC roots to the objects of a class, or to one object.
    Retainers {
        /// The .heapsnapshot file.
        file: PathBuf,
        /// Class (constructor) name, as `heap summary` lists it.
        #[arg(long, required_unless_present = "id", conflicts_with = "id")]
        class: Option<String>,
        /// Object id (the `@N` of DevTools).
        #[arg(long)]
        id: Option<u64>,
        /// Whose rules decide which edges retain: DevTools' or memlab's.
        #[arg(long, value_parser = rules_parser(), default_value = "devtools")]
        rules: Rules,
        /// Path shapes shown.
        #[arg(long, default_value_t = 3)]
        paths: usize,
        #[command(flatten)]
        out: HeapOutput,
    },
}

/// Output options shared by the `heap` commands.
#[derive(clap::Args)]
struct HeapOutput {
    /// JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// Process to profile (all of its threads).
    #[arg(
        short,
        long,
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    pid: Option<u32>,
    /// Samples per second on each CPU.
    #[arg(short = 'F', long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    frequency: u64,
    /// Stop after this long (e.g. 30s, 2m; a bare number is seconds). Default: until Ctrl-C or exit.
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Output path prefix; writes PREFIX.cpuprofile, PREFIX.folded, PREFIX.svg.
    /// Default: nodeprof-PID-DATE-TIME in the current directory.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Formats to write (comma separated).
    #[arg(long, value_parser = format_parser(), value_delimiter = ',', default_value = "cpuprofile,folded,svg")]
    format: Vec<Format>,
    /// Functions listed in the summary (0: all).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Which functions the summary lists: `js` (JS functions, native code
    /// counted for its JS caller, as DevTools does) or `native` (every
    /// frame, C++ and kernel included).
    #[arg(long, value_parser = ["js", "native"], default_value = "js")]
    summary: String,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
    /// Do not trace garbage collection: no GC table, and no uprobe trap per
    /// GC in the target. Samples whose stack shows V8's GC functions still
    /// sit under `(garbage collector)`; those the pause alone placed there
    /// (the frame walk missed the GC frames) do not.
    #[arg(long)]
    no_gc: bool,
    /// Do not measure event-loop turns: no event-loop section in the
    /// summary. Measuring them turns on the `epoll_wait` tracepoints, which
    /// add about 20 ns to every system call of the machine while recording.
    #[arg(long)]
    no_loop: bool,
    /// Off-CPU time instead of CPU time: where threads wait (blocked in a
    /// system call, a lock, or for a CPU), weighted by how long, in samples of
    /// one sampling period each.
    #[arg(long, conflicts_with = "wall")]
    off_cpu: bool,
    /// On-CPU and off-CPU time together: each thread's samples add up to
    /// the wall-clock time ("where does my request's time go").
    #[arg(long)]
    wall: bool,
    /// Event-loop turns longer than this are listed with what ran in them.
    #[arg(
        long,
        default_value_t = 100,
        value_name = "MS",
        conflicts_with = "no_loop"
    )]
    blocked_ms: u64,
    /// A launched command keeps running when the recording ends (by default
    /// it gets SIGTERM, as Ctrl-C in its terminal would end it).
    #[arg(long, requires = "command")]
    keep_running: bool,
    /// Command to launch and profile from its first instruction.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["pid", "core"])))]
struct DumpArgs {
    /// Process to dump (all of its threads).
    #[arg(short, long)]
    pid: Option<u32>,
    /// A core file to read instead of a live process (`nodeprof core`, the kernel's, or gdb's gcore).
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    core: Option<PathBuf>,
    /// With --core: the node binary the process ran (its V8 layout, unwind tables and symbols).
    #[arg(long, value_name = "NODE", conflicts_with = "pid")]
    exe: Option<PathBuf>,
    /// One JSON object per thread and line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct GcArgs {
    /// Process to trace.
    #[arg(short, long)]
    pid: u32,
    /// Stop after this long (e.g. 30s, 2m). Default: until Ctrl-C or exit.
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// JSON lines: one object per GC (`"type":"gc"`), leak suspicion and the summary.
    #[arg(long)]
    json: bool,
    /// Consecutive full GCs with a growing heap that raise a leak suspicion.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    leak_after: u32,
}

/// `--format`'s values: the names of [`Format`], one list for parsing and help.
fn format_parser() -> impl TypedValueParser<Value = Format> {
    PossibleValuesParser::new(Format::ALL.map(|f| PossibleValue::new(f.name()).help(f.help())))
        .map(|name| name.parse::<Format>().expect("a possible value"))
}

fn rules_parser() -> impl TypedValueParser<Value = Rules> {
    PossibleValuesParser::new(Rules::ALL.map(|r| r.name()))
        .map(|name| name.parse::<Rules>().expect("a possible value"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err("duration must be positive".into());
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("duration must be positive".into()),
        result => result.map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEPROF_LOG");
    // Asked for diagnostics: each line says when since start-up, which is
    // how the cost of each step of a command is read (docs/benchmarks.md).
    let uptime = filter.is_ok();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter.unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if uptime {
        logs.with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    } else {
        logs.without_time().init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, as every other error; exit 2 marks a usage error.
            eprintln!("nodeprof: error: {}", usage_error_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodeprof: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line: its lines up to the usage block, without
/// the `error: ` prefix.
fn usage_error_line(error: &clap::Error) -> String {
    let text = error.render().to_string();
    let words: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .flat_map(str::split_whitespace)
        .collect();
    let line = words.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("{line} (--help for usage)")
}

/// The error and its causes on one line. A cause the message already
/// quotes (many errors show their source in their own text) is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// A reader that went away (`nodeprof heap summary … | head`) ends the
/// command as a success: what it had to say was read as far as wanted.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Record(args) => {
            let mut recording = cmd::record::record(&args.into_options())?;
            print(&recording, &mut stdout)?;
            if let Some(e) = recording.write_error.take() {
                return Err(cmd::record::RecordError::from(e).into());
            }
        }
        Command::Gc(args) => {
            cmd::gc::run(&args.into_options(), &mut stdout)?;
        }
        Command::Dump(args) => {
            cmd::dump::run(&args.into_options(), &mut stdout)?;
        }
        Command::Info { pid } => print(&cmd::info::inspect(pid)?, &mut stdout)?,
        Command::Heap(command) => cmd::heap::run(&command.into_options(), &mut stdout)?,
        Command::Snapshot(args) => {
            let command = SnapshotCommand {
                pid: args.pid,
                output: args.output,
                capture: SnapshotOptions {
                    room: None,
                    force: args.force,
                    quiet: args.quiet,
                    worker: args.worker,
                },
                count: args.count,
                interval: args.interval,
            };
            print(&cmd::snapshot::run_all(&command)?, &mut stdout)?
        }
        Command::Core(args) => print(&cmd::core::run(&args.into_options())?, &mut stdout)?,
        Command::Watch(args) => {
            let options = args.into_options()?;
            cmd::watch::run(&options, &mut stdout)?;
        }
        Command::Doctor { json } => {
            let doctor = cmd::doctor::examine();
            if json {
                serde_json::to_writer_pretty(&mut stdout, &doctor)?;
                writeln!(stdout)?;
            } else {
                print(&doctor, &mut stdout)?;
            }
        }
        Command::GenerateAssets { dir } => generate_assets(&dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Man pages (one for nodeprof, one per command) and bash, zsh and fish
/// completions, from the command line definition itself.
fn generate_assets(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("cannot create {}", completions.display()))?;
    let mut cli = Cli::command();
    cli.build();
    let write_page = |name: String, command: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        // A page is named after its command: `nodeprof-record(1)`. clap takes
        // owned names only with its `string` feature; this runs once per page.
        let name: &'static str = Box::leak(name.into_boxed_str());
        clap_mangen::Man::new(command.name(name)).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    write_page("nodeprof".into(), cli.clone())?;
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(format!("nodeprof-{}", sub.get_name()), sub.clone())?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cli, "nodeprof", &completions)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}

/// Prints a report on stdout. A reader that went away (`| head`) is not an
/// error: the files are written already.
fn print(report: &impl Report, out: &mut dyn Write) -> std::io::Result<()> {
    match report.write_text(out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

impl RecordArgs {
    fn into_options(self) -> RecordOptions {
        let target = match (self.pid, self.command.split_first()) {
            (_, Some((program, args))) => TargetSpec::Launch {
                program: program.clone(),
                args: args.to_vec(),
            },
            // clap requires one of -p and the command.
            (Some(pid), None) => TargetSpec::Pid(pid),
            (None, None) => unreachable!("clap requires --pid or a command"),
        };
        RecordOptions {
            target,
            sampling: CpuOptions {
                frequency_hz: self.frequency,
                clock: match (self.off_cpu, self.wall) {
                    (true, _) => Clock::OffCpu,
                    (_, true) => Clock::Wall,
                    _ => Clock::Cpu,
                },
                duration: self.duration,
                quiet: self.quiet,
                trace_gc: !self.no_gc,
                trace_loop: !self.no_loop,
            },
            output: self.output,
            formats: self.format,
            top: self.top,
            native_summary: self.summary == "native",
            blocked: Duration::from_millis(self.blocked_ms),
            keep_running: self.keep_running,
        }
    }
}

/// `--x` / `--no-x`: Some(true), Some(false), or None (the target decides).
fn either(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

impl CoreArgs {
    fn into_options(self) -> CoreCommand {
        CoreCommand {
            pid: self.pid,
            output: self.output,
            capture: CoreOptions {
                file_backed: either(self.file_backed, self.no_file_backed),
                huge: either(self.huge, self.no_huge),
                quiet: self.quiet,
                compress: self.compress,
            },
            force: self.force,
        }
    }
}

impl DumpArgs {
    fn into_options(self) -> DumpOptions {
        DumpOptions {
            source: match (self.pid, self.core) {
                (Some(pid), _) => DumpSource::Pid(pid),
                (None, core) => DumpSource::Core {
                    core: core.unwrap_or_default(),
                    exe: self.exe,
                },
            },
            json: self.json,
        }
    }
}

impl GcArgs {
    fn into_options(self) -> GcOptions {
        GcOptions {
            pid: self.pid,
            duration: self.duration,
            json: self.json,
            leak_threshold: self.leak_after,
        }
    }
}

impl HeapCommand {
    fn into_options(self) -> HeapOptions {
        let (command, out) = match self {
            HeapCommand::Summary {
                file,
                top,
                rules,
                out,
            } => (Heap::Summary { file, top, rules }, out),
            HeapCommand::Diff {
                base,
                current,
                top,
                out,
            } => (Heap::Diff { base, current, top }, out),
            HeapCommand::Retainers {
                file,
                class,
                id,
                rules,
                paths,
                out,
            } => {
                let of = match (class, id) {
                    (Some(name), _) => RetainersOf::Class(name),
                    (None, Some(id)) => RetainersOf::Id(id),
                    (None, None) => unreachable!("clap requires --class or --id"),
                };
                (
                    Heap::Retainers {
                        file,
                        of,
                        rules,
                        paths,
                    },
                    out,
                )
            }
        };
        HeapOptions {
            command,
            json: out.json,
            quiet: out.quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_name_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Quoting {
            source: std::io::Error,
        }
        let e = anyhow::Error::from(Quoting {
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert_eq!(
            one_line(&e),
            "cannot read x: No such file or directory (os error 2)"
        );
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("cannot write y");
        assert_eq!(
            one_line(&e),
            "cannot write y: No space left on device (os error 28)"
        );
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("cannot write the result");
        assert!(is_broken_pipe(&pipe) && !is_broken_pipe(&e));
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn record(args: &[&str]) -> RecordOptions {
        let cli = Cli::try_parse_from(std::iter::once("nodeprof").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Record(args) => args.into_options(),
            _ => panic!("not record"),
        }
    }

    #[test]
    fn flags_after_dashdash_belong_to_the_command() {
        let options = record(&["record", "-F", "49", "--", "node", "-p", "1", "app.js"]);
        assert_eq!(
            options.target,
            TargetSpec::Launch {
                program: "node".into(),
                args: vec!["-p".into(), "1".into(), "app.js".into()],
            }
        );
        assert_eq!(options.sampling.frequency_hz, 49);
    }

    #[test]
    fn dump_takes_a_pid_and_json() {
        let cli = Cli::try_parse_from(["nodeprof", "dump", "-p", "7", "--json"]).unwrap();
        let Command::Dump(args) = cli.command else {
            panic!("not dump")
        };
        let options = args.into_options();
        assert_eq!((options.source, options.json), (DumpSource::Pid(7), true));
        assert!(Cli::try_parse_from(["nodeprof", "dump"]).is_err());
        let core = |args: &[&str]| {
            let cli = Cli::try_parse_from(["nodeprof", "dump"].iter().chain(args)).ok()?;
            let Command::Dump(args) = cli.command else {
                panic!("not dump")
            };
            Some(args.into_options().source)
        };
        assert_eq!(
            core(&["--core", "c", "--exe", "n"]),
            Some(DumpSource::Core {
                core: "c".into(),
                exe: Some("n".into())
            })
        );
        // Missing --exe is the command's own one-line error.
        assert_eq!(
            core(&["--core", "c"]),
            Some(DumpSource::Core {
                core: "c".into(),
                exe: None
            })
        );
        assert_eq!(core(&["--core", "c", "-p", "7"]), None);
        assert_eq!(core(&["-p", "7", "--exe", "n"]), None);
    }

    #[test]
    fn a_pid_or_a_command_but_not_both() {
        assert_eq!(record(&["record", "-p", "42"]).target, TargetSpec::Pid(42));
        for args in [&["record"][..], &["record", "-p", "1", "--", "node"]] {
            assert!(
                Cli::try_parse_from(std::iter::once("nodeprof").chain(args.iter().copied()))
                    .is_err(),
                "{args:?} accepted"
            );
        }
    }

    #[test]
    fn watch_flags_and_config_file_agree() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("watch.toml");
        std::fs::write(
            &file,
            "cpu = 50\ncpu-count = 2\nloop-blocked = \"300ms\"\nlimit = \"2/hour\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "nodeprof",
            "watch",
            "--all",
            "--cpu",
            "90%",
            "--config",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("not watch")
        };
        let options = args.into_options().unwrap();
        assert_eq!(options.thresholds.cpu, Some((90.0, 2)));
        assert_eq!(
            options.thresholds.loop_blocked,
            Some(Duration::from_millis(300))
        );
        assert_eq!(options.limits.max, 2);
        // The sample configuration of the docs is valid.
        let sample = include_str!("../../docs/watch.toml");
        nodeprof::watch::Config::from_toml(sample)
            .and_then(|c| c.resolve())
            .unwrap_or_else(|e| panic!("docs/watch.toml: {e}"));
    }

    #[test]
    fn formats_and_rules_parse_by_name() {
        let options = record(&["record", "-p", "1", "--format", "svg,cpuprofile"]);
        assert_eq!(options.formats, [Format::Svg, Format::Cpuprofile]);
        assert_eq!(record(&["record", "-p", "1"]).formats, Format::DEFAULT);
        assert!(!record(&["record", "-p", "1"]).native_summary);
        assert!(record(&["record", "-p", "1", "--summary", "native"]).native_summary);
        assert!(Cli::try_parse_from(["nodeprof", "record", "-p", "1", "--summary", "c"]).is_err());
        let cli =
            Cli::try_parse_from(["nodeprof", "heap", "summary", "f", "--rules", "memlab"]).unwrap();
        let Command::Heap(heap) = cli.command else {
            panic!("not heap")
        };
        assert!(matches!(
            heap.into_options().command,
            Heap::Summary {
                rules: Rules::Memlab,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["nodeprof", "record", "-p", "1", "--format", "pdf"]).is_err());
    }
}
