/// Builds `probe-ebpf` for the BPF target with the nightly toolchain; the object
/// is embedded in the `nodeprof` binary (see `probe::load`).
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "probe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
