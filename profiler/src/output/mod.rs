//! Writers that turn a [`Profile`](crate::profile::Profile) into files and text
//! for people and tools: `.cpuprofile` JSON, folded stacks, a flame graph SVG,
//! pprof's `profile.proto` and a terminal summary.

mod cpuprofile;
mod files;
mod flamegraph;
mod folded;
mod format;
mod label;
mod pprof;
mod summary;

pub use cpuprofile::{validate_cpuprofile, write_cpuprofile};
pub use files::{
    available_memory, capture_path, default_prefix, free_disk, CaptureFile, FileError, OutputFiles,
    WriteError,
};
pub use flamegraph::write_flamegraph;
pub use folded::{folded_lines, write_folded};
pub use format::Format;
pub use label::{short_label, short_native_name};
pub use pprof::write_pprof;
pub use summary::{frame_label, FunctionStat, Summary, ThreadStat};

/// A result shown to a person as text. Commands with `--json` serialize the
/// same value instead ([`print`]).
pub trait Report {
    fn write_text(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;

    /// The text as a string (tests, and text embedded in other text).
    fn to_text(&self) -> String {
        let mut text = Vec::new();
        self.write_text(&mut text)
            .expect("writing to memory cannot fail");
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Writes `report` as text or as one JSON document, and flushes.
pub fn print(
    report: &(impl Report + serde::Serialize),
    json: bool,
    w: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *w, report)?;
        writeln!(w)?;
    } else {
        report.write_text(w)?;
    }
    w.flush()
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON encoding failed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("flame graph failed: {0}")]
    FlameGraph(String),
}

/// A small profile shared by the writers' tests: a main thread (tid 100 ==
/// pid) running recursive JS, a worker thread, a GC thread with an empty
/// stack, and frames of every kind.
/// 1.2 GiB, 340.0 MiB, 12.0 KiB.
pub fn format_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
pub(crate) mod testdata {
    use crate::profile::{Frame, FrameKind, Profile};

    pub fn js(name: &str, url: &str, line: u32, column: u32) -> Frame {
        Frame {
            line: Some(line),
            column: Some(column),
            ..Frame::new(FrameKind::Js, name, url)
        }
    }

    pub fn sample_profile() -> Profile {
        let mut p = Profile::new(100, 99, 1_000_000);
        let start = p.intern_frame(Frame::new(
            FrameKind::Native,
            "node::Start",
            "/usr/bin/node",
        ));
        let main = p.intern_frame(js("main", "file:///app/main.js", 0, 0));
        let fib = p.intern_frame(js("fib", "file:///app/fib.js", 2, 12));
        let write = p.intern_frame(Frame::new(FrameKind::Native, "write", "/usr/lib/libc.so.6"));
        let ksys = p.intern_frame(Frame::new(FrameKind::Kernel, "ksys_write", ""));
        let stub = p.intern_frame(Frame::new(FrameKind::Jit, "Builtin:CallFunction", ""));
        let gc = p.intern_frame(Frame::meta("(garbage collector)"));
        let uv = p.intern_frame(Frame::new(
            FrameKind::Native,
            "uv_work;loop\n",
            "/usr/bin/node",
        ));

        let s_fib1 = p.intern_stack(vec![start, main, fib]);
        let s_fib3 = p.intern_stack(vec![start, main, fib, fib, fib]);
        let s_write = p.intern_stack(vec![start, main, stub, write, ksys]);
        let s_gc = p.intern_stack(vec![start, gc]);
        let s_empty = p.intern_stack(vec![]);
        let s_uv = p.intern_stack(vec![uv]);

        // Deliberately out of time order: writers must sort.
        p.add_sample(1_030_000, 100, "node", s_fib3);
        p.add_sample(1_010_000, 100, "node", s_fib1);
        p.add_sample(1_020_000, 100, "node", s_fib3);
        p.add_sample(1_040_000, 100, "node", s_write);
        p.add_sample(1_050_000, 100, "node", s_gc);
        p.add_sample(1_060_000, 100, "node", s_empty);
        p.add_sample(1_025_000, 101, "libuv-worker", s_uv);
        p.add_sample(1_035_000, 102, "libuv-worker", s_uv);
        p.add_sample(1_045_000, 103, "V8 GC", s_empty);
        p.end_ns = 2_000_000;
        p
    }
}
