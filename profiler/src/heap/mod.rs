//! `nodeprof heap`: reading V8 `.heapsnapshot` files in the terminal.
//!
//! [`parse`] streams a file into compact columns ([`snapshot::HeapSnapshot`],
//! with DevTools' class names); [`graph`] computes distances, the dominator
//! tree and retained sizes with DevTools' rules; [`summary`], [`diff`] and
//! [`retainers`] answer the three questions of a leak hunt (what is big, what
//! grew, what keeps it alive); [`report`] formats numbers for the terminal.

pub mod diff;
#[cfg(test)]
mod fuzz_tests;
pub mod graph;
pub mod parse;
pub mod report;
pub mod retainers;
pub mod snapshot;
pub mod summary;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use graph::Graph;
pub use snapshot::HeapSnapshot;

#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid heap snapshot: {message} (at byte {offset})")]
    Format {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("no object of class {0:?} in the snapshot (class names are case sensitive; see `nodeprof heap summary`)")]
    NoSuchClass(String),
    #[error("no object with id @{0} in the snapshot")]
    NoSuchId(u64),
}

/// Files smaller than this load without a progress bar.
const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// Reads a snapshot, with a progress bar on stderr for big files when stderr
/// is a terminal (`quiet` hides it).
pub fn load(path: &Path, quiet: bool) -> Result<HeapSnapshot, HeapError> {
    let bar = ProgressBar::hidden();
    let mut progress = |done: u64, total: u64| {
        if done == 0 && total >= PROGRESS_MIN_BYTES && !quiet {
            bar.set_length(total);
            if let Ok(style) =
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            let name = path.file_name().unwrap_or(path.as_os_str());
            bar.set_message(format!("reading {}", name.to_string_lossy()));
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_position(done);
    };
    let result = parse::read_file(path, &mut progress);
    bar.finish_and_clear();
    result
}

/// Reads a snapshot and computes its graph (distances, dominators, retained
/// sizes) under `rules`, with the shortest retaining paths if `paths`, and a
/// spinner for big snapshots.
pub fn analyse(
    path: &Path,
    rules: graph::Rules,
    paths: bool,
    quiet: bool,
) -> Result<(HeapSnapshot, Graph), HeapError> {
    let t = std::time::Instant::now();
    let mut snap = load(path, quiet)?;
    if rules != graph::Rules::Devtools {
        snap.classify(rules);
    }
    tracing::debug!("read {} nodes in {:?}", snap.node_count(), t.elapsed());
    let spin = spinner(
        snap.node_count(),
        quiet,
        "computing distances, dominators and retained sizes",
    );
    let graph = if paths {
        Graph::build(&snap, rules)
    } else {
        Graph::build_without_paths(&snap, rules)
    };
    spin.finish_and_clear();
    tracing::debug!("graph done at {:?}", t.elapsed());
    Ok((snap, graph))
}

/// A spinner on stderr for the analysis of a big snapshot.
fn spinner(snapshot_nodes: usize, quiet: bool, message: &str) -> ProgressBar {
    if quiet || snapshot_nodes < 500_000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
