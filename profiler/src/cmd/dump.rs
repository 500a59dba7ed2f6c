//! `nodeprof dump -p PID`: what every thread of a process is doing right
//! now, without stopping or signalling it. The main thread gets a verdict a
//! person can act on; `--json` prints one object per thread.

use std::io::Write;

use crate::output::Report;
pub use crate::stacks::report::{verdict, DumpReport, FrameReport, ThreadReport};
use crate::stacks::{self, SampleWindow, StacksError};

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: u32,
    /// One JSON object per thread and line instead of text.
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Stacks(#[from] StacksError),
    /// A reader that went away (`| head`) is told apart by main through the source.
    #[error("cannot write the dump: {0}")]
    Write(#[source] std::io::Error),
}

/// Takes every thread's stack and writes the dump to `out`.
pub fn run(options: &DumpOptions, out: &mut dyn Write) -> Result<DumpReport, DumpError> {
    let stacks = stacks::capture(options.pid, SampleWindow::default())?;
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
