//! `nodeprof heap summary | diff | retainers`: a `.heapsnapshot` read in the
//! terminal, as text or `--json`.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::heap::{self, diff, graph::Rules, retainers, summary, HeapError};
use crate::output::{self, Report};

/// One of the heap commands.
#[derive(Debug, Clone)]
pub enum HeapCommand {
    /// Per class: objects, shallow and retained size, distance (DevTools Summary).
    Summary {
        file: PathBuf,
        /// Classes listed, by retained size (0: all).
        top: usize,
        rules: Rules,
    },
    /// What grew between two snapshots (DevTools Comparison).
    Diff {
        base: PathBuf,
        current: PathBuf,
        /// Classes listed, by size growth (0: all).
        top: usize,
    },
    /// Shortest retaining paths to the objects of a class, or to one object.
    Retainers {
        file: PathBuf,
        of: RetainersOf,
        rules: Rules,
        /// Path shapes shown.
        paths: usize,
    },
}

/// Whose retaining paths `heap retainers` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainersOf {
    Class(String),
    Id(u64),
}

#[derive(Debug, Clone)]
pub struct HeapOptions {
    pub command: HeapCommand,
    /// JSON instead of text.
    pub json: bool,
    /// No progress bar.
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HeapCommandError {
    #[error(transparent)]
    Heap(#[from] HeapError),
    #[error("cannot write the result: {0}")]
    Write(#[from] std::io::Error),
}

/// Runs a heap command and writes its result to `out`.
pub fn run(options: &HeapOptions, out: &mut dyn Write) -> Result<(), HeapCommandError> {
    let quiet = options.quiet;
    match &options.command {
        HeapCommand::Summary { file, top, rules } => {
            let (snap, graph) = heap::analyse(file, *rules, false, quiet)?;
            let mut result = summary::summarize(&snap, &graph);
            result.shown = *top;
            if options.json && *top != 0 {
                result.classes.truncate(*top);
            }
            print(options.json, &result, out)
        }
        HeapCommand::Diff { base, current, top } => {
            let base_objects = diff::Objects::of(&heap::load(base, quiet)?);
            let current_objects = diff::Objects::of(&heap::load(current, quiet)?);
            let mut result = diff::compare(&base_objects, &current_objects);
            result.shown = *top;
            if options.json && *top != 0 {
                result.classes.truncate(*top);
            }
            print(options.json, &result, out)
        }
        HeapCommand::Retainers {
            file,
            of,
            rules,
            paths,
        } => {
            let target = match of {
                RetainersOf::Class(name) => retainers::Target::Class(name),
                RetainersOf::Id(id) => retainers::Target::Id(*id),
            };
            let (snap, graph) = heap::analyse(file, *rules, true, quiet)?;
            let result = retainers::find(&snap, &graph, target, *paths)?;
            print(options.json, &result, out)
        }
    }
}

/// The result as pretty JSON, or as text.
fn print(
    json: bool,
    value: &(impl Report + Serialize),
    out: &mut dyn Write,
) -> Result<(), HeapCommandError> {
    Ok(output::print(value, json, out)?)
}
