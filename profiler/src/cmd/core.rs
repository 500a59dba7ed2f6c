//! `nodeprof core`: a core file of a live process, which keeps running.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::capture::core::{self, Compression, CoreCapture, CoreError, CoreOptions};
use crate::capture::interrupt;
use crate::output::{self, format_bytes, CaptureFile, FileError, Report};
use crate::target::{Target, TargetError};

#[derive(Debug, Clone)]
pub struct CoreCommand {
    pub pid: u32,
    /// A file, or a directory for the default name. Default: `nodeprof-PID-DATE-TIME.core` in the current directory.
    pub output: Option<PathBuf>,
    pub capture: CoreOptions,
    /// Write even when the disk looks too small.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreCommandError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("cannot {action}: {source}")]
    Io {
        action: &'static str,
        source: io::Error,
    },
    #[error("{dir} has {free} free, the core needs about {need}: choose another -o, or --force")]
    NoSpace {
        dir: String,
        free: String,
        need: String,
    },
}

/// A core written; the target was resumed.
#[derive(Debug)]
pub struct CoreReport {
    pub target: Target,
    pub path: PathBuf,
    pub capture: CoreCapture,
    pub elapsed: Duration,
}

pub fn run(options: &CoreCommand) -> Result<CoreReport, CoreCommandError> {
    let target = Target::inspect(options.pid)?;
    if target.pid == std::process::id() {
        return Err(TargetError::Inspect {
            pid: target.pid,
            source: io::Error::other("nodeprof cannot take its own core"),
        }
        .into());
    }
    let extension = options.capture.compress.map_or("core", |c| c.extension());
    let path = output::capture_path(options.output.as_deref(), target.pid, extension);
    let mut file = CaptureFile::create(&path)?;
    let (expected, _) = core::expected_size(target.pid, &options.capture)?;
    let free = output::free_disk(&file.dir()).map_err(|source| CoreCommandError::Io {
        action: "read the free disk space",
        source,
    })?;
    // Compressed, a guess: a node core's data shrank about 5 times with
    // zstd -1 in our runs; half is the cautious side of that.
    let expected = match options.capture.compress {
        None => expected,
        Some(_) => expected / 2,
    };
    let need = core::disk_needed(expected);
    if free < need && !options.force {
        return Err(CoreCommandError::NoSpace {
            dir: file.dir().display().to_string(),
            free: format_bytes(free),
            need: format_bytes(need),
        });
    }
    interrupt::install().map_err(|source| CoreCommandError::Io {
        action: "install the signal handlers",
        source,
    })?;
    let progress = progress_bar(options.capture.quiet);
    let started = Instant::now();
    let result = core::capture(target.pid, &options.capture, file.file(), &progress);
    progress.finish_and_clear();
    let capture = result?;
    if let Some(signal) = interrupt::pending() {
        return Err(CoreError::Interrupted(interrupt::describe(signal)).into());
    }
    let path = file.persist()?;
    Ok(CoreReport {
        target,
        path,
        capture,
        elapsed: started.elapsed(),
    })
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "core {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("a valid template"),
    );
    bar
}

impl Report for CoreReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let c = &self.capture;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            out,
            "nodeprof: core of pid {} ({}): {} threads, {} mappings (coredump_filter {:#x})",
            self.target.pid,
            self.target.exe.display(),
            c.threads,
            c.regions,
            c.filter
        )?;
        writeln!(
            out,
            "target stopped for {:.1} ms, then resumed",
            c.stopped.as_secs_f64() * 1e3
        )?;
        writeln!(
            out,
            "memory read: {} in {:.2} s ({}/s); file: {} ({})",
            format_bytes(c.data),
            secs,
            format_bytes((c.data as f64 / secs) as u64),
            format_bytes(c.size),
            match c.compressed {
                None => "zero pages are holes",
                Some(Compression::Zstd) => "zstd",
            }
        )?;
        writeln!(out, "wrote {}", self.path.display())?;
        let exe = self.target.exe.display();
        match c.compressed {
            None => writeln!(out, "read it with: gdb {exe} {}", self.path.display()),
            Some(Compression::Zstd) => {
                // `zstd -d` wants a .zst name; `-o` says where the core goes whatever the name.
                let plain = match self.path.extension() {
                    Some(e) if e == "zst" => self.path.with_extension(""),
                    _ => {
                        let mut name = self.path.clone().into_os_string();
                        name.push(".core");
                        std::path::PathBuf::from(name)
                    }
                };
                writeln!(
                    out,
                    "read it with: zstd -d {} -o {} && gdb {exe} {}",
                    self.path.display(),
                    plain.display(),
                    plain.display()
                )
            }
        }
    }
}
