//! nodeprof: diagnose a running Node.js process from the outside with eBPF.
//!
//! The CPU profiling pipeline, one module per stage, each feeding the next:
//! [`target`] → [`probe`] → [`collect`] → [`symbolize`] → [`profile`] → [`output`].
//! [`record`] runs it for `nodeprof record`. Beside it: [`gc`] traces V8's
//! garbage collections with uprobes (`nodeprof gc`), [`heap`] reads
//! `.heapsnapshot` files (`nodeprof heap`).

pub mod cmd;
pub mod collect;
pub mod gc;
pub mod heap;
pub mod info;
pub mod output;
pub mod probe;
pub mod profile;
pub mod record;
pub mod session;
pub mod stacks;
pub mod symbolize;
pub mod target;
pub mod v8;
