//! The `nodeprof` command line. Errors end here as one line, never a backtrace.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nodeprof::record::{self, OutputFormat, RecordOptions};

#[derive(Parser)]
#[command(
    name = "nodeprof",
    version,
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
        #[arg(long, value_enum, default_value_t = nodeprof::heap::graph::Rules::Devtools)]
        rules: nodeprof::heap::graph::Rules,
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
        #[arg(long, value_enum, default_value_t = nodeprof::heap::graph::Rules::Devtools)]
        rules: nodeprof::heap::graph::Rules,
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

impl HeapOutput {
    /// The result as JSON, or as the text `render` makes of it.
    fn print<T: serde::Serialize>(
        &self,
        value: &T,
        render: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<String> {
        if self.json {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            Ok(text)
        } else {
            Ok(render(value))
        }
    }
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
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = OutputFormat::ALL)]
    format: Vec<OutputFormat>,
    /// Functions listed in the summary.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
    /// Do not trace garbage collection: no GC table, and no uprobe trap per
    /// GC in the target. Samples whose stack shows V8's GC functions still
    /// sit under `(garbage collector)`; those the pause alone placed there
    /// (the frame walk missed the GC frames) do not.
    #[arg(long)]
    no_gc: bool,
    /// Command to launch and profile from its first instruction.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct DumpArgs {
    /// Process to dump (all of its threads).
    #[arg(short, long)]
    pid: u32,
    /// One JSON object per thread and line.
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err("duration must be positive".into());
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODEPROF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodeprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Record(args) => record_command(args),
        Command::Gc(args) => gc_command(args),
        Command::Dump(args) => {
            let options = nodeprof::cmd::dump::DumpOptions {
                pid: args.pid,
                json: args.json,
            };
            nodeprof::cmd::dump::run(&options, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { pid } => {
            let info = nodeprof::info::inspect(pid)?;
            print_report(&info.to_string());
            Ok(ExitCode::SUCCESS)
        }
        Command::Heap(cmd) => heap_command(cmd),
    }
}

fn heap_command(cmd: HeapCommand) -> anyhow::Result<ExitCode> {
    use nodeprof::heap::{self, diff, retainers, summary};
    let text = match cmd {
        HeapCommand::Summary {
            file,
            top,
            rules,
            out,
        } => {
            let (snap, graph) = heap::analyse(&file, rules, false, out.quiet)?;
            let mut result = summary::summarize(&snap, &graph);
            if out.json && top != 0 {
                result.classes.truncate(top);
            }
            out.print(&result, |r| summary::render(r, top))?
        }
        HeapCommand::Diff {
            base,
            current,
            top,
            out,
        } => {
            let base_objects = diff::Objects::of(&heap::load(&base, out.quiet)?);
            let current_objects = diff::Objects::of(&heap::load(&current, out.quiet)?);
            let mut result = diff::compare(&base_objects, &current_objects);
            if out.json && top != 0 {
                result.classes.truncate(top);
            }
            out.print(&result, |r| diff::render(r, top))?
        }
        HeapCommand::Retainers {
            file,
            class,
            id,
            rules,
            paths,
            out,
        } => {
            let target = match (&class, id) {
                (Some(name), _) => retainers::Target::Class(name),
                (None, Some(id)) => retainers::Target::Id(id),
                (None, None) => anyhow::bail!("give --class NAME or --id ID"),
            };
            let (snap, graph) = heap::analyse(&file, rules, true, out.quiet)?;
            let result = retainers::find(&snap, &graph, target, paths)?;
            out.print(&result, retainers::render)?
        }
    };
    print_report(&text);
    Ok(ExitCode::SUCCESS)
}

fn record_command(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let options = RecordOptions {
        pid: args.pid,
        command: args.command,
        frequency_hz: args.frequency,
        duration: args.duration,
        output: args.output,
        formats: args.format,
        quiet: args.quiet,
        top: args.top,
        trace_gc: !args.no_gc,
    };
    let recording = record::record(&options).context("recording failed")?;
    let why = recording.stop.describe();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "nodeprof: recorded pid {} ({}), stopped: {why}",
        recording.target.pid,
        recording.target.exe.display()
    );
    if let Some(status) = recording.child_status {
        let _ = writeln!(
            report,
            "nodeprof: command exited with {}",
            describe_wait_status(status)
        );
    }
    let _ = write!(report, "{}", recording.summary);
    if let Some(gc) = &recording.gc {
        let _ = write!(report, "\n{}", nodeprof::gc::run::summary_text(gc));
    }
    for path in &recording.written {
        let _ = writeln!(report, "wrote {}", path.display());
    }
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

fn gc_command(args: GcArgs) -> anyhow::Result<ExitCode> {
    use nodeprof::gc::run::{self, GcOptions};
    let options = GcOptions {
        pid: args.pid,
        duration: args.duration,
        json: args.json,
        leak_threshold: args.leak_after,
    };
    let mut stdout = std::io::stdout();
    let report = run::trace(&options, &mut stdout).context("GC tracing failed")?;
    if args.json {
        let line = run::json_line("summary", &report.summary, serde_json::Value::Null);
        print_report(&format!("{line}\n"));
    } else {
        print_report(&format!("\n{}", run::summary_text(&report.summary)));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints to stdout; a reader that went away (`| head`) is not an error: the
/// files are written already.
fn print_report(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}
