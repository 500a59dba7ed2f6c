//! `nodeprof snapshot`: a `.heapsnapshot` of a live Node.js process.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::capture::interrupt;
use crate::capture::snapshot::{self, SnapshotCapture, SnapshotError, SnapshotOptions};
use crate::output::{self, format_bytes, CaptureFile, FileError, Report};
use crate::target::{Target, TargetError};

#[derive(Debug, Clone)]
pub struct SnapshotCommand {
    pub pid: u32,
    /// A file, or a directory for the default name. Default: `nodeprof-PID-DATE-TIME.heapsnapshot` in the current directory.
    pub output: Option<PathBuf>,
    pub capture: SnapshotOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotCommandError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(io::Error),
}

#[derive(Debug)]
pub struct SnapshotReport {
    pub target: Target,
    pub path: PathBuf,
    pub capture: SnapshotCapture,
}

pub fn run(options: &SnapshotCommand) -> Result<SnapshotReport, SnapshotCommandError> {
    let target = Target::inspect(options.pid)?;
    let path = output::capture_path(options.output.as_deref(), target.pid, "heapsnapshot");
    let mut file = CaptureFile::create(&path)?;
    interrupt::install().map_err(SnapshotCommandError::Signals)?;
    let progress = progress_bar(options.capture.quiet);
    let dir = file.dir();
    let result = snapshot::capture(&target, file.file(), &dir, &options.capture, &progress);
    progress.finish_and_clear();
    let capture = result?;
    let path = file.persist()?;
    Ok(SnapshotReport {
        target,
        path,
        capture,
    })
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("snapshot {bar:30} {pos}/{len} {msg} {elapsed}")
            .expect("a valid template"),
    );
    bar
}

impl Report for SnapshotReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let c = &self.capture;
        writeln!(
            out,
            "nodeprof: heap snapshot of pid {} ({}): heap {} used of {}",
            self.target.pid,
            self.target.exe.display(),
            format_bytes(c.heap_used),
            format_bytes(c.heap_total)
        )?;
        let secs = c.took.as_secs_f64().max(1e-9);
        writeln!(
            out,
            "snapshot took {:.2} s (the target's JS waits meanwhile): {} at {}/s",
            secs,
            format_bytes(c.bytes),
            format_bytes((c.bytes as f64 / secs) as u64)
        )?;
        match (c.opened, c.closed) {
            (true, true) => writeln!(
                out,
                "inspector: started with SIGUSR1 at {}, closed again",
                c.inspector
            )?,
            (true, false) => writeln!(
                out,
                "inspector: started with SIGUSR1 at {}; it did NOT close: port {} may still be listening",
                c.inspector,
                c.inspector.port()
            )?,
            (false, _) => writeln!(
                out,
                "inspector: used the one already listening at {} (left open)",
                c.inspector
            )?,
        }
        writeln!(out, "wrote {}", self.path.display())
    }
}
