//! nodeprof: diagnose a running Node.js process from the outside with eBPF.
//!
//! Layers, each importing only those below it:
//! - [`cmd`]: the commands (`record`, `gc`, `info`, `heap`), the only layer
//!   that wires several stages together;
//! - `capture`: evidence from a live process (the CPU sampling loop and its
//!   stop conditions); domains [`gc`] (V8's garbage collections) and
//!   [`heap`] (`.heapsnapshot` analysis);
//! - the CPU profiling pipeline, one module per stage, each feeding the next:
//!   `target` → `probe` → `collect` → `symbolize` → `profile` → [`output`];
//! - leaves: `v8` (V8 introspection through one `Memory` trait), `clock`.

pub mod cmd;
pub mod gc;
pub mod heap;
pub mod output;

pub(crate) mod capture;
pub(crate) mod clock;
pub(crate) mod collect;
pub(crate) mod probe;
pub(crate) mod profile;
pub(crate) mod symbolize;
pub(crate) mod target;
// One reader of V8's objects for live processes and, next, core files:
// parts of its API serve only the tests until those readers arrive.
#[allow(dead_code)]
pub(crate) mod v8;

pub use capture::cpu::CpuOptions;
pub use probe::{call_tracer_loaded, sampler_loaded};
