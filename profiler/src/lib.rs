//! nodeprof: diagnose a running Node.js process from the outside with eBPF.
//!
//! Layers, each importing only those below it:
//! - [`cmd`]: the commands (`record`, `gc`, `info`, `heap`, `dump`), the only layer
//!   that wires several stages together;
//! - `capture`: evidence from a live process (the CPU sampling loop and its
//!   stop conditions); `stacks`: every thread's stack now (`dump`); domains [`gc`] (V8's garbage collections) and
//!   [`heap`] (`.heapsnapshot` analysis); [`watch`] (when readings become
//!   captures: pure policy, importing nothing of the crate);
//! - the CPU profiling pipeline, one module per stage, each feeding the next:
//!   `target` → `probe` → `collect` → `symbolize` → `profile` → [`output`];
//! - leaves: `v8` (V8 introspection through one `Memory` trait), `clock`.

pub mod cmd;
pub mod gc;
pub mod heap;
pub mod output;
pub mod watch;

pub(crate) mod caps;
pub(crate) mod capture;
pub(crate) mod clock;
pub(crate) mod collect;
pub(crate) mod corefile;
pub(crate) mod eventloop;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod probe;
pub(crate) mod profile;
pub(crate) mod stacks;
pub(crate) mod symbolize;
pub(crate) mod target;
// One reader of V8's objects for live processes and, next, core files:
// parts of its API serve only the tests until those readers arrive.
#[allow(dead_code)]
pub(crate) mod v8;

pub use capture::core::{Compression, CoreOptions};
pub use capture::cpu::{Clock, CpuOptions};
pub use capture::snapshot::SnapshotOptions;
pub use probe::{call_tracer_loaded, sampler_loaded};

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The layer of each top-level module: a module may import its own layer
    /// and those below, never one above.
    const LAYERS: &[(&str, u8)] = &[
        ("cmd", 3),
        ("capture", 2),
        ("stacks", 2),
        ("gc", 2),
        ("eventloop", 2),
        ("heap", 2),
        ("watch", 2),
        ("target", 1),
        ("probe", 1),
        ("collect", 1),
        ("symbolize", 1),
        ("profile", 1),
        ("output", 1),
        ("v8", 0),
        ("image", 0),
        ("corefile", 0),
        ("clock", 0),
        ("caps", 0),
        ("host", 0),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(name, _)| *name == module)
            .unwrap_or_else(|| panic!("module {module} has no layer in LAYERS"))
            .1
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn imports_point_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut upward = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs");
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            if text.contains("use crate::{") {
                upward.push(format!(
                    "{}: a grouped `use crate::{{…}}` hides its modules from this check",
                    relative.display()
                ));
            }
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name.is_empty() || !LAYERS.iter().any(|(m, _)| *m == name) {
                    continue;
                }
                if layer(&name) > layer(top) {
                    upward.push(format!("{} imports crate::{name}", relative.display()));
                }
                // The watch policy is pure: tested with made-up readings, it
                // reaches no stage, only leaves.
                if top == "watch" && layer(&name) > 0 {
                    upward.push(format!(
                        "{} (pure) imports crate::{name}",
                        relative.display()
                    ));
                }
            }
        }
        assert!(upward.is_empty(), "imports pointing up: {upward:#?}");
        // Every module of the crate has a layer.
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_str().unwrap().trim_end_matches(".rs");
            if name != "lib" && name != "main" {
                layer(name);
            }
        }
    }
}
