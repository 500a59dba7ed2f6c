use which::which;

/// Rebuild the eBPF object when bpf-linker changes (e.g. rebuilt against a new LLVM).
fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker not found: run `cargo xtask bootstrap`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
