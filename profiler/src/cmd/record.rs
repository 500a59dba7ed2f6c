//! `nodeprof record`: a CPU capture of one process, attached by pid or
//! launched by us, written as profile files and summarized in the terminal.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::capture::cpu::{self, CaptureError, CpuOptions};
use crate::capture::StopReason;
use crate::gc::GcSummary;
use crate::output::{self, FileError, Format, OutputError, OutputFiles, Report, Summary};
use crate::probe;
use crate::target::{Launched, Target, TargetError};

/// The process to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A running process.
    Pid(u32),
    /// A command to launch and record from its first instruction.
    Launch { program: String, args: Vec<String> },
}

/// What to record and where to write it.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub target: TargetSpec,
    pub sampling: CpuOptions,
    /// Output path prefix: `<prefix>.cpuprofile`, `.folded`, `.svg`.
    pub output: Option<PathBuf>,
    pub formats: Vec<Format>,
    /// Top functions in the printed summary.
    pub top: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Output(#[from] FileError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: OutputError },
}

/// A finished recording: what was written, and the summary to show.
pub struct Recording {
    pub target: Target,
    pub stop: StopReason,
    /// Exit status of a launched command that ended while recording.
    pub child_status: Option<i32>,
    pub summary: Summary,
    /// The target's GCs while recording (None when they could not be traced).
    pub gc: Option<GcSummary>,
    pub written: Vec<PathBuf>,
}

/// Records a profile; everything sampled before a stop is written.
pub fn record(options: &RecordOptions) -> Result<Recording, RecordError> {
    probe::check_permissions()?;
    // Fork before the capture's runtime starts threads (see target::launch).
    let mut launched = match &options.target {
        TargetSpec::Pid(_) => None,
        TargetSpec::Launch { program, args } => {
            let argv: Vec<String> = std::iter::once(program.clone())
                .chain(args.iter().cloned())
                .collect();
            Some(Launched::spawn(&argv)?)
        }
    };
    let target = match (&options.target, &launched) {
        (TargetSpec::Pid(pid), _) => Target::inspect(*pid)?,
        // Until released the child is a copy of us; it becomes the command at exec.
        (TargetSpec::Launch { program, .. }, Some(child)) => Target {
            pid: child.pid,
            exe: PathBuf::from(program),
            comm: String::new(),
            ns_pid: child.pid,
        },
        (TargetSpec::Launch { .. }, None) => unreachable!("spawned above"),
    };
    if launched.is_none() && !target.is_node() {
        tracing::warn!(
            "process {} ({}) does not look like Node.js: profiling native code only",
            target.pid,
            target.exe.display()
        );
    }

    let prefix = options
        .output
        .clone()
        .unwrap_or_else(|| output::default_prefix(target.pid));
    let files = OutputFiles::create(&prefix, &options.formats)?;
    let mut capture = match cpu::capture(&options.sampling, &target, launched.as_mut()) {
        Ok(capture) => capture,
        Err(e) => {
            files.discard();
            return Err(e.into());
        }
    };
    let child_status = launched.as_ref().and_then(Launched::try_wait);
    let profile = capture.profile();
    let title = format!("nodeprof: {} (pid {})", target.exe.display(), target.pid);
    let written = files
        .write(&profile, &title)
        .map_err(|(path, source)| RecordError::Write { path, source })?;
    Ok(Recording {
        summary: Summary::from_profile(&profile, options.top),
        gc: capture.gc_summary(),
        stop: capture.stop,
        target,
        child_status,
        written,
    })
}

impl Report for Recording {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "nodeprof: recorded pid {} ({}), stopped: {}",
            self.target.pid,
            self.target.exe.display(),
            self.stop.describe()
        )?;
        if let Some(status) = self.child_status {
            writeln!(
                out,
                "nodeprof: command exited with {}",
                describe_wait_status(status)
            )?;
        }
        self.summary.write_text(out)?;
        if let Some(gc) = &self.gc {
            writeln!(out)?;
            gc.write_text(out)?;
        }
        for path in &self.written {
            writeln!(out, "wrote {}", path.display())?;
        }
        Ok(())
    }
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
