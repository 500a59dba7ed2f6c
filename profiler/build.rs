/// Builds `probe-ebpf` for the BPF target with the nightly toolchain; the object
/// is embedded in the `nodeprof` binary (see `probe::load`).
fn main() -> anyhow::Result<()> {
    version_facts();
    let package = aya_build::Package {
        name: "probe-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

/// The commit and target `nodeprof --version` shows. `cargo xtask dist`
/// passes the commit in NODEPROF_GIT_COMMIT; otherwise git is asked.
fn version_facts() {
    println!("cargo:rerun-if-env-changed=NODEPROF_GIT_COMMIT");
    let commit = std::env::var("NODEPROF_GIT_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=NODEPROF_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    println!(
        "cargo:rustc-env=NODEPROF_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}
