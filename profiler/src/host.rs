//! Facts about the host nodeprof runs on, read from /proc and /sys: the
//! kernel, the settings that gate eBPF and perf events, and whether
//! nodeprof sees the host's processes or only a container's.

use serde::Serialize;

/// The inode of the initial pid namespace: fixed by the kernel
/// (`PROC_PID_INIT_INO`, 0xEFFFFFFC) since Linux 3.8.
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    pub machine: String,
    pub uid: u32,
    /// `kernel.perf_event_paranoid` (None when unreadable).
    pub perf_event_paranoid: Option<i64>,
    /// `kernel.unprivileged_bpf_disabled`.
    pub unprivileged_bpf_disabled: Option<i64>,
    /// The active lockdown mode (`none`, `integrity`, `confidentiality`);
    /// None when the kernel has no lockdown LSM.
    pub lockdown: Option<String>,
    /// The inode of nodeprof's pid namespace.
    pub pid_namespace: Option<u64>,
    /// Signs of a container runtime (`docker`, `kubernetes`, `containerd`, `podman`, `lxc`).
    pub container: Option<String>,
}

impl Host {
    pub fn read() -> Host {
        // SAFETY: uname fills the struct it is given.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        let (kernel, machine) = if unsafe { libc::uname(&mut uts) } == 0 {
            (c_text(&uts.release), c_text(&uts.machine))
        } else {
            (String::from("unknown"), String::from("unknown"))
        };
        Host {
            kernel,
            machine,
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            perf_event_paranoid: sysctl("kernel/perf_event_paranoid"),
            unprivileged_bpf_disabled: sysctl("kernel/unprivileged_bpf_disabled"),
            lockdown: std::fs::read_to_string("/sys/kernel/security/lockdown")
                .ok()
                .and_then(|text| active_choice(&text)),
            pid_namespace: pid_namespace(),
            container: container_runtime(),
        }
    }

    /// The kernel's version as (major, minor).
    pub fn kernel_version(&self) -> Option<(u32, u32)> {
        let mut parts = self.kernel.split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// Whether nodeprof runs in a pid namespace of its own (a container
    /// without the host's pid namespace).
    pub fn in_container_pid_namespace(&self) -> bool {
        self.pid_namespace
            .is_some_and(|inode| inode != INIT_PID_NAMESPACE)
    }
}

/// The sentence `record`, `gc`, `dump`, `watch` and `nodeprof doctor` give
/// when nodeprof runs in a pid namespace of its own: eBPF programs see the
/// host's pids, so pids given in the container name other processes.
pub fn container_pid_namespace() -> Option<String> {
    let host = Host::read();
    host.in_container_pid_namespace().then(|| {
        "nodeprof runs in a pid namespace of its own (a container), where it cannot trace \
         processes with eBPF: run it in the host's pid namespace, with the capabilities: \
         `docker run --pid=host --privileged …` (or --cap-add BPF,PERFMON,SYS_PTRACE,SYS_ADMIN,DAC_READ_SEARCH), \
         in Kubernetes `hostPID: true` and securityContext.capabilities.add \
         [BPF, PERFMON, SYS_PTRACE, SYS_ADMIN, DAC_READ_SEARCH]"
            .to_string()
    })
}

fn c_text(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn sysctl(name: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `none [integrity] confidentiality` → `integrity`.
fn active_choice(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    namespace_inode(link.to_str()?)
}

/// `pid:[4026531836]` → 4026531836.
fn namespace_inode(link: &str) -> Option<u64> {
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Which container runtime started us, from the usual marks it leaves.
fn container_runtime() -> Option<String> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Some("kubernetes".into());
    }
    if std::path::Path::new("/.dockerenv").exists() {
        return Some("docker".into());
    }
    if std::path::Path::new("/run/.containerenv").exists() {
        return Some("podman".into());
    }
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    ["kubepods", "docker", "containerd", "libpod", "lxc"]
        .into_iter()
        .find(|mark| cgroup.contains(mark))
        .map(|mark| match mark {
            "kubepods" => "kubernetes",
            "libpod" => "podman",
            other => other,
        })
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_settings_formats() {
        assert_eq!(
            active_choice("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(active_choice("none integrity"), None);
        assert_eq!(
            namespace_inode("pid:[4026531836]"),
            Some(INIT_PID_NAMESPACE)
        );
        assert_eq!(namespace_inode("net:[1]"), None);
        let host = Host {
            kernel: "6.18.44-fc-v657".into(),
            ..Host::read()
        };
        assert_eq!(host.kernel_version(), Some((6, 18)));
    }
}
