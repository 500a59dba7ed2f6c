//! V8 introspection of a Node.js target: everything nodeprof knows about V8
//! lives here. It reads the target's memory through the small [`Memory`]
//! trait (a live process today, a core file later).
//!
//! - [`layout`]: the V8 object layout of a node binary, from its `v8dbg_*`
//!   symbols and version-keyed fallbacks; the eBPF sampler's
//!   [`nodeprof_common::V8ProbeConfig`]; frame-type names; the builtins blob.
//! - [`strings`]: V8 strings of every representation, bounded.
//! - [`walk`]: frames of a stack walked in user space, JS ones recognised
//!   as the sampler does.
//! - [`function`]: SharedFunctionInfo → name, script URL, script id, line and
//!   column (what a `.cpuprofile` callFrame holds), cached.
//!
//! Use: `V8Layout::from_binary("/proc/PID/exe")` (for a shared-library
//! build, the `libnode.so` mapping instead), `layout.probe_config()` into the
//! sampler's map, then per sampled [`nodeprof_common::UserFrame`] with a
//! non-zero `sfi`: `resolver.resolve(frame.sfi, frame.sfi_fingerprint)`.
//! Resolve soon after sampling (a compacting GC moves SFIs: a moved one
//! fails the type/fingerprint check and gives `None`, never a wrong name) and
//! call [`JsResolver::clear_caches`] after compacting GCs. A result with an
//! empty url and script id 0 is a JS-linkage builtin (`forEach`, `next`…),
//! which `node --cpu-prof` does not show as its own frame.

mod cache;
pub mod elf;
pub mod function;
mod heap;
pub mod layout;
#[cfg(test)]
pub(crate) mod live_tests;
pub mod memory;
pub mod strings;
pub mod walk;

pub use function::{JsFunctionInfo, JsResolver, Lookup};
pub use layout::{EmbeddedBlob, LayoutError, LayoutReport, V8Layout, V8Version};
pub use memory::ProcessMemory;
