//! `nodeprof dump -p PID`: what every thread of a process is doing right
//! now, without stopping or signalling it. The main thread gets a verdict a
//! person can act on; `--json` prints one object per thread.
//! `nodeprof dump --core FILE --exe NODE`: the same, from a core file.

use std::io::Write;
use std::path::PathBuf;

use crate::output::Report;
pub use crate::stacks::report::{verdict, DumpReport, FrameReport, ThreadReport};
use crate::stacks::{self, SampleWindow, StacksError};

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub source: DumpSource,
    /// One JSON object per thread and line instead of text.
    pub json: bool,
}

/// What to dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpSource {
    /// A live process.
    Pid(u32),
    /// A core file, and the executable the process ran (required: checked at run time, so its
    /// absence is one clear line).
    Core { core: PathBuf, exe: Option<PathBuf> },
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(
        "dump --core needs --exe: the node binary the process ran{named}, whose V8 layout, unwind tables and symbols name the frames"
    )]
    NoExe { named: String },
    #[error(transparent)]
    Stacks(#[from] StacksError),
    /// A reader that went away (`| head`) is told apart by main through the source.
    #[error("cannot write the dump: {0}")]
    Write(#[source] std::io::Error),
}

/// Takes every thread's stack and writes the dump to `out`.
pub fn run(options: &DumpOptions, out: &mut dyn Write) -> Result<DumpReport, DumpError> {
    let stacks = match &options.source {
        DumpSource::Pid(pid) => stacks::capture(*pid, SampleWindow::default())?,
        DumpSource::Core {
            core,
            exe: Some(exe),
        } => stacks::from_core(core, exe)?,
        DumpSource::Core { core, exe: None } => {
            // A file that is no core says so first.
            let named = stacks::executable_in_core(core)?;
            return Err(DumpError::NoExe {
                named: if named.is_empty() {
                    String::new()
                } else {
                    format!(" (the core names {named})")
                },
            });
        }
    };
    let report = DumpReport::of(&stacks);
    let written = if options.json {
        report.write_json_lines(out)
    } else {
        report.write_text(out)
    };
    written
        .and_then(|()| out.flush())
        .map_err(DumpError::Write)?;
    Ok(report)
}
