//! The `nodeprof` command line. Errors end here as one line, never a backtrace.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nodeprof::record::{self, OutputFormat, RecordOptions, StopReason};

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
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
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
        /// JSON on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
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
        /// JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
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
    /// Command to launch and profile from its first instruction.
    #[arg(last = true)]
    command: Vec<String>,
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
        Command::Info { pid } => {
            let info = nodeprof::info::inspect(pid)?;
            print_report(&info.to_string());
            Ok(ExitCode::SUCCESS)
        }
        Command::Heap(cmd) => heap_command(cmd),
    }
}

fn heap_command(cmd: HeapCommand) -> anyhow::Result<ExitCode> {
    use nodeprof::heap::{self, diff, retainers, summary, Graph};
    let text = match cmd {
        HeapCommand::Summary {
            file,
            top,
            rules,
            json,
            quiet,
        } => {
            let t = std::time::Instant::now();
            let mut snap = heap::load(&file, quiet)?;
            if rules != heap::graph::Rules::Devtools {
                snap.classify(rules);
            }
            tracing::debug!("read {} nodes in {:?}", snap.node_count(), t.elapsed());
            let spin = heap::spinner(
                snap.node_count(),
                quiet,
                "computing dominators and retained sizes",
            );
            let graph = Graph::build(&snap, rules);
            tracing::debug!("graph done at {:?}", t.elapsed());
            let mut result = summary::summarize(&snap, &graph);
            tracing::debug!("summary done at {:?}", t.elapsed());
            spin.finish_and_clear();
            if json {
                if top != 0 {
                    result.classes.truncate(top);
                }
                to_json(&result)?
            } else {
                summary::render(&result, top)
            }
        }
        HeapCommand::Diff {
            base,
            current,
            top,
            json,
            quiet,
        } => {
            let base_objects = diff::Objects::of(&heap::load(&base, quiet)?);
            let current_objects = diff::Objects::of(&heap::load(&current, quiet)?);
            let mut result = diff::compare(&base_objects, &current_objects);
            if json {
                if top != 0 {
                    result.classes.truncate(top);
                }
                to_json(&result)?
            } else {
                diff::render(&result, top)
            }
        }
        HeapCommand::Retainers {
            file,
            class,
            id,
            rules,
            paths,
            json,
            quiet,
        } => {
            let mut snap = heap::load(&file, quiet)?;
            if rules != heap::graph::Rules::Devtools {
                snap.classify(rules);
            }
            let spin = heap::spinner(
                snap.node_count(),
                quiet,
                "computing distances and dominators",
            );
            let graph = Graph::build(&snap, rules);
            spin.finish_and_clear();
            let target = match (&class, id) {
                (Some(name), _) => retainers::Target::Class(name),
                (None, Some(id)) => retainers::Target::Id(id),
                (None, None) => anyhow::bail!("give --class NAME or --id ID"),
            };
            let result = retainers::find(&snap, &graph, target, paths)?;
            if json {
                to_json(&result)?
            } else {
                retainers::render(&result)
            }
        }
    };
    print_report(&text);
    Ok(ExitCode::SUCCESS)
}

/// JSON output of the `heap` commands: one pretty-printed value per run.
fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
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
    };
    let recording = record::record(&options).context("recording failed")?;
    let why = match recording.stop {
        StopReason::DurationElapsed => "duration elapsed",
        StopReason::Interrupted => "interrupted",
        StopReason::Terminated => "terminated",
        StopReason::TargetExited => "target exited",
    };
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
    for path in &recording.written {
        let _ = writeln!(report, "wrote {}", path.display());
    }
    print_report(&report);
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
