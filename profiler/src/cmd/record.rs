//! `nodeprof record`: a CPU capture of one process, attached by pid or
//! launched by us, written as profile files and summarized in the terminal.

use std::io::{self, Write};
use std::path::PathBuf;

use crate::capture::cpu::{self, CaptureError, Clock, CpuOptions};
use crate::capture::{self, StopReason};
use crate::eventloop::LoopReport;
use crate::gc::GcSummary;
use crate::output::{self, FileError, Format, OutputFiles, Report, Summary, WriteError};
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
    /// The summary lists native functions, not JS ones.
    pub native_summary: bool,
    /// Event-loop turns longer than this are listed with what ran in them.
    pub blocked: std::time::Duration,
    /// A launched command keeps running after the recording ends.
    pub keep_running: bool,
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
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "a duration of {duration:?} is shorter than one sampling period ({period:?} at {hz} Hz): nothing would be sampled"
    )]
    TooShort {
        duration: std::time::Duration,
        period: std::time::Duration,
        hz: u64,
    },
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
    /// The target's event loops (None when they could not be traced).
    pub loops: Option<LoopReport>,
    pub written: Vec<PathBuf>,
    /// An output that could not be written: reported after the summary,
    /// which is shown all the same.
    pub write_error: Option<WriteError>,
}

/// How long a launched command gets to exit on SIGTERM before SIGKILL.
const CHILD_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Records a profile; everything sampled before a stop is written.
pub fn record(options: &RecordOptions) -> Result<Recording, RecordError> {
    let hz = options.sampling.frequency_hz.max(1);
    let period = std::time::Duration::from_nanos(1_000_000_000 / hz);
    if let Some(duration) = options.sampling.duration.filter(|&d| d < period) {
        return Err(RecordError::TooShort {
            duration,
            period,
            hz,
        });
    }
    probe::check_permissions(if options.sampling.clock == Clock::Cpu {
        probe::SAMPLING
    } else {
        // Off-CPU time comes from the sched_switch tracepoint.
        probe::TRACEPOINTS
    })?;
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
    let prefix = match &options.output {
        // A directory: the default names, in it.
        Some(dir) if dir.is_dir() || dir.as_os_str().to_string_lossy().ends_with('/') => {
            dir.join(output::default_prefix(target.pid))
        }
        Some(prefix) => prefix.clone(),
        None => output::default_prefix(target.pid),
    };
    let files = OutputFiles::create(&prefix, &options.formats)?;
    let captured = cpu::capture(&options.sampling, &target, launched.as_mut());
    // The recording is over: a second Ctrl-C ends nodeprof at once. (Here,
    // not in the capture: `watch` captures again and again.)
    capture::signals_after_stop();
    let mut capture = match captured {
        Ok(capture) => capture,
        Err(e) => {
            files.discard();
            if let Some(child) = &launched {
                // Released or not, it must not run on unrecorded.
                child.terminate(CHILD_GRACE);
            }
            return Err(e.into());
        }
    };
    let mut target = target;
    if let Some(exe) = capture.exe.take() {
        // What it runs now: a launched command after its exec, or an exec while recorded.
        target.exe = exe;
    }
    let profile = capture.profile();
    let title = format!("nodeprof: {} (pid {})", target.exe.display(), target.pid);
    let written = files.write(&profile, &title);
    // A launched command ends with its recording, as it would with a
    // terminal's Ctrl-C, unless asked to keep running; after the files are
    // written, so that a command slow to die delays nothing that matters.
    let child_status = match &launched {
        Some(child) if !options.keep_running => child.terminate(CHILD_GRACE),
        Some(child) => child.try_wait(),
        None => None,
    };
    let (written, write_error) = match written {
        Ok(written) => (written, None),
        Err(e) => (e.written.clone(), Some(e)),
    };
    Ok(Recording {
        loops: capture
            .loops()
            .map(|loops| LoopReport::of(&loops, &profile, options.blocked)),
        summary: {
            let summary = Summary::from_profile(&profile, options.top);
            if options.native_summary {
                summary.native()
            } else {
                summary
            }
        },
        gc: capture.gc_summary(),
        stop: capture.stop,
        target,
        child_status,
        written,
        write_error,
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
        if let Some(loops) = &self.loops {
            writeln!(out)?;
            loops.write_text(out)?;
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
