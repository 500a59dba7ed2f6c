//! `nodeprof info -p PID`: what nodeprof finds in a target, the first thing
//! to run when a profile looks wrong.

use std::io::{self, Write};
use std::path::Path;

use crate::gc::points::Plan;
use crate::gc::GcPoints;
use crate::output::Report;
use crate::target::{discover, Target, TargetError};
use crate::v8::LayoutReport;

pub struct TargetInfo {
    pub target: Target,
    pub is_node: bool,
    /// Node.js version string found in the executable (`v20.20.2`).
    pub node_version: Option<String>,
    pub perf_map: bool,
    pub layout: Result<LayoutReport, String>,
    /// How `nodeprof gc` would trace this binary's GCs, or why it cannot.
    pub gc: Result<GcPoints, String>,
}

/// `nodeprof info`: what nodeprof finds in process `pid`.
pub fn inspect(pid: u32) -> Result<TargetInfo, TargetError> {
    let target = Target::inspect(pid)?;
    let exe = format!("/proc/{pid}/exe");
    let layout = match discover(Path::new(&exe)) {
        Ok(v8) => Ok(v8.report),
        Err(e) => match e.report() {
            Some(report) => Ok(report.clone()),
            None => Err(e.to_string()),
        },
    };
    let gc = GcPoints::find(Path::new(&exe)).map_err(|e| e.to_string());
    let node_version = scan_node_version(Path::new(&exe));
    Ok(TargetInfo {
        gc,
        // By the binary's contents: a renamed or deleted node is still node.
        is_node: node_version.is_some() || layout.is_ok(),
        node_version,
        perf_map: target.perf_map_path().exists(),
        target,
        layout,
    })
}

/// Scans the executable in chunks for the release tag: node is ~100 MB and
/// `info` should not need that much memory.
fn scan_node_version(path: &Path) -> Option<String> {
    use std::io::Read;
    const CHUNK: usize = 1 << 20;
    // Overlap so a tag split across chunks is still seen whole.
    const OVERLAP: usize = 64;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; CHUNK + OVERLAP];
    let mut kept = 0;
    loop {
        let n = file.read(&mut buf[kept..]).ok()?;
        if n == 0 {
            return None;
        }
        let filled = kept + n;
        if let Some(version) = node_version(&buf[..filled]) {
            return Some(version);
        }
        kept = filled.min(OVERLAP);
        buf.copy_within(filled - kept..filled, 0);
    }
}

/// The version node was built as: official binaries embed their release
/// tag (`node.js/v20.20.2`, and the download URL `/release/v20.20.2/`).
fn node_version(binary: &[u8]) -> Option<String> {
    for marker in [&b"node.js/v"[..], b"/download/release/v"] {
        if let Some(at) = find(binary, marker) {
            let rest = &binary[at + marker.len()..];
            let len = rest
                .iter()
                .take(32)
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .count();
            let version = std::str::from_utf8(&rest[..len])
                .ok()?
                .trim_end_matches('.');
            if version.split('.').count() == 3 {
                return Some(format!("v{version}"));
            }
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Report for TargetInfo {
    fn write_text(&self, f: &mut dyn Write) -> io::Result<()> {
        let t = &self.target;
        writeln!(
            f,
            "pid: {}{}",
            t.pid,
            if t.ns_pid != t.pid {
                format!(" ({} in its pid namespace)", t.ns_pid)
            } else {
                String::new()
            }
        )?;
        writeln!(f, "executable: {}", t.exe.display())?;
        writeln!(f, "thread name: {}", t.comm)?;
        writeln!(
            f,
            "Node.js: {}",
            match (&self.node_version, self.is_node) {
                (Some(v), _) => v.clone(),
                (None, true) => "yes, version not found in the binary".into(),
                (None, false) => "no (profiled as a native process)".into(),
            }
        )?;
        writeln!(
            f,
            "perf map: {}",
            if self.perf_map {
                "present (JIT names from it too)"
            } else {
                "none (not needed)"
            }
        )?;
        match &self.layout {
            Ok(report) => write!(f, "{report}")?,
            Err(e) => writeln!(f, "V8: none found ({e})\nJS frame naming: NOT available")?,
        }
        match &self.gc {
            Ok(points) => {
                let how = match points.plan {
                    Plan::TracerRecord(_) => "V8's own pause record",
                    Plan::Calls => "function probes only",
                };
                let functions: Vec<&str> = points.sites.iter().map(|s| s.symbol).collect();
                writeln!(f, "GC tracing: available, {how} ({})", functions.join(", "))?;
                for missing in &points.missing {
                    writeln!(f, "  {missing}")?;
                }
                Ok(())
            }
            Err(e) => writeln!(f, "GC tracing: NOT available ({e})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_file_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        let mut bytes = vec![b'x'; (1 << 20) - 5];
        bytes.extend_from_slice(b"node.js/v22.1.0\0");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scan_node_version(&path).as_deref(), Some("v22.1.0"));
        std::fs::write(&path, b"nothing here").unwrap();
        assert_eq!(scan_node_version(&path), None);
    }

    #[test]
    fn finds_the_release_tag() {
        assert_eq!(
            node_version(b"xx\0node.js/v20.20.2\0yy").as_deref(),
            Some("v20.20.2")
        );
        assert_eq!(
            node_version(b"https://nodejs.org/download/release/v26.10.0/node").as_deref(),
            Some("v26.10.0")
        );
        assert_eq!(node_version(b"node.js/vX"), None);
        assert_eq!(node_version(b""), None);
    }
}
