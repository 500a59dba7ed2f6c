//! `nodeprof snapshot`: a `.heapsnapshot` of a live Node.js process; with
//! `--count 2 --interval 30s`, two of them and what grew in between (the
//! `heap diff` of the two).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::capture::interrupt;
use crate::capture::snapshot::{self, SnapshotCapture, SnapshotError, SnapshotOptions};
use crate::heap::{self, diff, HeapError};
use crate::output::{self, format_bytes, CaptureFile, FileError, Report};
use crate::target::{Target, TargetError};

#[derive(Debug, Clone)]
pub struct SnapshotCommand {
    pub pid: u32,
    /// A file, or a directory for the default name. Default: `nodeprof-PID-DATE-TIME.heapsnapshot` in the current directory.
    pub output: Option<PathBuf>,
    pub capture: SnapshotOptions,
    /// Snapshots taken (numbered `-1`, `-2`… when more than one).
    pub count: u32,
    /// Time between the start of one snapshot and the next.
    pub interval: Duration,
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
    #[error("{0}: the snapshots taken so far are kept")]
    Interrupted(&'static str),
    #[error("cannot compare the snapshots: {source}; {}", kept_list(.kept))]
    Diff {
        source: HeapError,
        kept: Vec<PathBuf>,
    },
    #[error("snapshot {n} of {count}: {source}; {}", kept_list(.kept))]
    Series {
        n: u32,
        count: u32,
        source: Box<SnapshotCommandError>,
        kept: Vec<PathBuf>,
    },
}

fn kept_list(kept: &[PathBuf]) -> String {
    if kept.is_empty() {
        return "no snapshot file was written".into();
    }
    let names: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
    format!("written and kept: {}", names.join(", "))
}

/// Every snapshot taken and, for more than one, what grew from the first to
/// the last.
#[derive(Debug)]
pub struct SnapshotsReport {
    pub snapshots: Vec<SnapshotReport>,
    pub diff: Option<diff::Diff>,
}

/// Classes of the diff printed.
const DIFF_TOP: usize = 20;

/// Takes `count` snapshots `interval` apart; then, for two or more, compares
/// the last with the first.
pub fn run_all(options: &SnapshotCommand) -> Result<SnapshotsReport, SnapshotCommandError> {
    if options.count <= 1 {
        return Ok(SnapshotsReport {
            snapshots: vec![run(options)?],
            diff: None,
        });
    }
    // One name for the series, numbered; every name is checked before the
    // target is paused for the first snapshot.
    let base = output::capture_path(options.output.as_deref(), options.pid, "heapsnapshot");
    let paths: Vec<PathBuf> = (1..=options.count).map(|i| numbered(&base, i)).collect();
    if let Some(taken) = paths.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
        return Err(FileError::Exists(taken.clone()).into());
    }
    let mut snapshots: Vec<SnapshotReport> = Vec::new();
    let kept = |snapshots: &[SnapshotReport]| snapshots.iter().map(|s| s.path.clone()).collect();
    for (n, path) in (1..).zip(&paths) {
        let started = Instant::now();
        let one = SnapshotCommand {
            output: Some(path.clone()),
            count: 1,
            ..options.clone()
        };
        let result = run(&one).and_then(|report| {
            snapshots.push(report);
            if n < options.count {
                wait(options.interval.saturating_sub(started.elapsed()))?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            // Already says the snapshots taken are kept.
            Err(e @ SnapshotCommandError::Interrupted(_)) => return Err(e),
            Err(source) => {
                return Err(SnapshotCommandError::Series {
                    n,
                    count: options.count,
                    source: Box::new(source),
                    kept: kept(&snapshots),
                })
            }
        }
    }
    let quiet = options.capture.quiet;
    let load = |r: &SnapshotReport| -> Result<diff::Objects, HeapError> {
        Ok(diff::Objects::of(&heap::load(&r.path, quiet)?))
    };
    let diff_error = |source| SnapshotCommandError::Diff {
        source,
        kept: kept(&snapshots),
    };
    let first = load(&snapshots[0]).map_err(diff_error)?;
    let last = load(&snapshots[snapshots.len() - 1]).map_err(diff_error)?;
    let mut result = diff::compare(&first, &last);
    result.shown = DIFF_TOP;
    Ok(SnapshotsReport {
        snapshots,
        diff: Some(result),
    })
}

/// `x.heapsnapshot` → `x-N.heapsnapshot`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

/// Sleeps, ended early by Ctrl-C, SIGTERM or SIGHUP.
fn wait(duration: Duration) -> Result<(), SnapshotCommandError> {
    interrupt::install().map_err(SnapshotCommandError::Signals)?;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if let Some(signal) = interrupt::pending() {
            return Err(SnapshotCommandError::Interrupted(interrupt::describe(
                signal,
            )));
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
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

impl Report for SnapshotsReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for (i, snapshot) in self.snapshots.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            snapshot.write_text(out)?;
        }
        if let Some(diff) = &self.diff {
            let (first, last) = (
                &self.snapshots[0].path,
                &self.snapshots[self.snapshots.len() - 1].path,
            );
            writeln!(out)?;
            writeln!(
                out,
                "What grew (nodeprof heap diff {} {}):",
                first.display(),
                last.display()
            )?;
            diff.write_text(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_numbered_before_the_extension() {
        assert_eq!(
            numbered(Path::new("/tmp/a.heapsnapshot"), 2),
            Path::new("/tmp/a-2.heapsnapshot")
        );
        assert_eq!(numbered(Path::new("snap"), 1), Path::new("snap-1"));
    }
}
