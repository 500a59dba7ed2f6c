#![no_std]
// The eBPF programs are the `probe` binary; this empty library only lets the
// profiler's build script depend on the crate so cargo rebuilds it on change.
