//! `nodeprof doctor`: what works on this host, for this process, and why
//! not. Every kernel feature is tried (`probe::features`), the capabilities
//! read from the effective set, the settings that gate eBPF read; then each
//! command gets one verdict, in the words the command itself fails with
//! ([`crate::caps::denied`], [`crate::host::container_pid_namespace`]).

use std::io::{self, Write};

use serde::Serialize;

use crate::caps;
use crate::host::{self, Host};
use crate::output::Report;
use crate::probe::features::{self, Feature, Outcome, Trial};
use crate::probe::{EVERYTHING, SAMPLING, TRACEPOINTS, UPROBES};

#[derive(Debug, Clone, Serialize)]
pub struct Doctor {
    pub host: Host,
    pub capabilities: Vec<Capability>,
    pub features: Vec<Trial>,
    pub commands: Vec<CommandVerdict>,
    /// What to do about what does not work, one action per line.
    pub fixes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandVerdict {
    pub command: &'static str,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
pub enum Verdict {
    Works,
    /// Works, without these parts (each "what: why").
    WorksWithout(Vec<String>),
    Cannot(String),
}

/// What a command needs, and what it does without.
struct Needs {
    command: &'static str,
    /// Traces with eBPF: needs the host's pid namespace.
    ebpf: bool,
    caps: &'static [u32],
    features: &'static [Feature],
    /// (what the command does without, its capabilities, its features).
    optional: &'static [(&'static str, &'static [u32], &'static [Feature])],
}

const LOADING: [Feature; 3] = [Feature::BpfSyscall, Feature::Btf, Feature::RingBuffer];
const GC_TABLE: (&str, &[u32], &[Feature]) = ("the GC table", UPROBES, &[Feature::Uprobes]);
const LOOP_TURNS: (&str, &[u32], &[Feature]) = (
    "event-loop turns",
    TRACEPOINTS,
    &[Feature::EpollTracepoints],
);
const OTHER_USERS: &[u32] = &[caps::CAP_SYS_PTRACE];

const COMMANDS: &[Needs] = &[
    Needs {
        command: "record",
        ebpf: true,
        caps: SAMPLING,
        features: &[
            LOADING[0],
            LOADING[1],
            LOADING[2],
            Feature::PerfEventPrograms,
        ],
        optional: &[GC_TABLE, LOOP_TURNS],
    },
    Needs {
        command: "record --off-cpu",
        ebpf: true,
        caps: TRACEPOINTS,
        features: &[
            LOADING[0],
            LOADING[1],
            LOADING[2],
            Feature::PerfEventPrograms,
            Feature::SchedSwitch,
        ],
        optional: &[
            (
                "exact stacks of threads blocked before the recording",
                SAMPLING,
                &[Feature::TaskIterator, Feature::TaskPtRegs],
            ),
            GC_TABLE,
            LOOP_TURNS,
        ],
    },
    Needs {
        command: "gc",
        ebpf: true,
        caps: UPROBES,
        features: &[LOADING[0], LOADING[2], Feature::Uprobes],
        optional: &[],
    },
    Needs {
        command: "dump",
        ebpf: true,
        caps: SAMPLING,
        features: &[
            LOADING[0],
            LOADING[1],
            LOADING[2],
            Feature::TaskIterator,
            Feature::TaskPtRegs,
            Feature::PerfEventPrograms,
        ],
        optional: &[],
    },
    Needs {
        command: "watch",
        ebpf: true,
        caps: UPROBES,
        features: &[LOADING[0], LOADING[2], Feature::Uprobes],
        optional: &[
            (
                "the event-loop check",
                TRACEPOINTS,
                &[Feature::EpollTracepoints],
            ),
            (
                "profile and dump captures",
                SAMPLING,
                &[Feature::PerfEventPrograms, Feature::TaskIterator],
            ),
        ],
    },
    Needs {
        command: "snapshot",
        ebpf: false,
        caps: &[],
        features: &[],
        optional: &[
            (
                "processes of other users",
                &[caps::CAP_KILL, caps::CAP_SYS_PTRACE],
                &[],
            ),
            (
                "targets in another network namespace",
                &[caps::CAP_SYS_ADMIN],
                &[],
            ),
        ],
    },
    Needs {
        command: "core",
        ebpf: false,
        caps: &[],
        features: &[],
        optional: &[("processes of other users", OTHER_USERS, &[])],
    },
    Needs {
        command: "info",
        ebpf: false,
        caps: &[],
        features: &[],
        optional: &[("processes of other users", OTHER_USERS, &[])],
    },
    Needs {
        command: "heap",
        ebpf: false,
        caps: &[],
        features: &[],
        optional: &[],
    },
];

/// `nodeprof doctor`: tries everything and judges every command.
pub fn examine() -> Doctor {
    let host = Host::read();
    let trials = features::try_all();
    let effective = caps::effective();
    let capabilities = caps::KNOWN
        .iter()
        .map(|&(cap, name)| Capability {
            name,
            held: effective & (1u64 << cap) != 0,
        })
        .collect();
    let container = host::container_pid_namespace();
    let commands: Vec<CommandVerdict> = COMMANDS
        .iter()
        .map(|needs| CommandVerdict {
            command: needs.command,
            verdict: judge(needs, &trials, container.as_deref(), effective),
        })
        .collect();
    let fixes = fixes(&host, &trials, container.as_deref());
    Doctor {
        host,
        capabilities,
        features: trials,
        commands,
        fixes,
    }
}

fn judge(needs: &Needs, trials: &[Trial], container: Option<&str>, effective: u64) -> Verdict {
    if needs.ebpf {
        if let Some(why) = container {
            return Verdict::Cannot(why.to_string());
        }
    }
    if let Some(why) = missing(needs.caps, needs.features, trials, effective) {
        return Verdict::Cannot(why);
    }
    let mut without: Vec<String> = needs
        .optional
        .iter()
        .filter_map(|(what, caps, features)| {
            missing(caps, features, trials, effective).map(|why| format!("{what} ({why})"))
        })
        .collect();
    if !needs.ebpf && container.is_some() {
        without
            .push("processes outside this container (not visible from its pid namespace)".into());
    }
    if without.is_empty() {
        Verdict::Works
    } else {
        Verdict::WorksWithout(without)
    }
}

/// Why `caps` and `features` are not all there, in the words the commands use.
fn missing(
    needed: &[u32],
    features: &[Feature],
    trials: &[Trial],
    effective: u64,
) -> Option<String> {
    let lacking = caps::lacking_in(effective, needed);
    if !lacking.is_empty() {
        return Some(caps::denied(&lacking));
    }
    features.iter().find_map(|feature| {
        let trial = trials.iter().find(|t| t.feature == *feature)?;
        match &trial.outcome {
            Outcome::Works => None,
            Outcome::Denied(why) | Outcome::Fails(why) => Some(format!(
                "{}: {why}; Linux {}+ needed",
                feature.describe(),
                feature.since()
            )),
        }
    })
}

fn fixes(host: &Host, trials: &[Trial], container: Option<&str>) -> Vec<String> {
    let mut fixes = Vec::new();
    if let Some(why) = container {
        fixes.push(why.to_string());
    }
    let lacking = caps::lacking(EVERYTHING);
    if !lacking.is_empty() {
        fixes.push(format!(
            "nodeprof lacks {}: run it as root (sudo), or grant the capabilities once: {}",
            lacking.join(", "),
            caps::SETCAP
        ));
    }
    let refused_with_caps = lacking.is_empty()
        && trials
            .iter()
            .any(|t| matches!(t.outcome, Outcome::Denied(_)));
    if refused_with_caps {
        fixes.push(caps::denied(&[]));
    }
    if host.lockdown.as_deref() == Some("confidentiality") {
        fixes.push(
            "kernel lockdown is `confidentiality`: it forbids BPF reading kernel memory; boot with lockdown=integrity or none"
                .into(),
        );
    }
    let kernel_lacks = trials
        .iter()
        .any(|t| matches!(t.outcome, Outcome::Fails(_)));
    if kernel_lacks {
        fixes.push(format!(
            "this kernel ({}) lacks what the failed features need: see the Linux version of each",
            host.kernel
        ));
    }
    fixes
}

impl Report for Doctor {
    fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        let host = &self.host;
        writeln!(
            w,
            "kernel          Linux {} ({})",
            host.kernel, host.machine
        )?;
        let held: Vec<String> = self
            .capabilities
            .iter()
            .map(|c| format!("{} {}", c.name, if c.held { "yes" } else { "no" }))
            .collect();
        writeln!(w, "user            uid {}; {}", host.uid, held.join(", "))?;
        let perfmon = caps::has_all(&[caps::CAP_PERFMON]);
        match host.perf_event_paranoid {
            Some(level) if perfmon => writeln!(
                w,
                "perf_event_paranoid {level} (no limit for nodeprof: it holds CAP_PERFMON)"
            )?,
            Some(level) if level > 0 => writeln!(
                w,
                "perf_event_paranoid {level} (without CAP_PERFMON no perf event of other processes)"
            )?,
            Some(level) => writeln!(w, "perf_event_paranoid {level}")?,
            None => writeln!(
                w,
                "perf_event_paranoid unknown (no /proc/sys/kernel/perf_event_paranoid)"
            )?,
        }
        match host.unprivileged_bpf_disabled {
            Some(0) => writeln!(w, "unprivileged_bpf_disabled 0 (BPF without CAP_BPF allowed, not enough for nodeprof)")?,
            Some(level) => writeln!(w, "unprivileged_bpf_disabled {level} (BPF needs CAP_BPF)")?,
            None => writeln!(w, "unprivileged_bpf_disabled unknown")?,
        }
        writeln!(
            w,
            "lockdown        {}",
            host.lockdown.as_deref().unwrap_or("none (no lockdown LSM)")
        )?;
        let runtime = host
            .container
            .as_deref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        if host.in_container_pid_namespace() {
            writeln!(
                w,
                "pid namespace   a container's{runtime}: host processes are not visible"
            )?;
        } else {
            writeln!(w, "pid namespace   the host's{runtime}")?;
        }
        writeln!(w, "\nkernel features, each tried:")?;
        for trial in &self.features {
            let (mark, detail) = match &trial.outcome {
                Outcome::Works => ("yes", String::new()),
                Outcome::Denied(why) => ("denied", format!(": {why}")),
                Outcome::Fails(why) => ("no", format!(": {why}")),
            };
            writeln!(
                w,
                "  {mark:<6}  {} [Linux {}+]{detail}",
                trial.feature.describe(),
                trial.feature.since()
            )?;
        }
        writeln!(w, "\ncommands:")?;
        for command in &self.commands {
            match &command.verdict {
                Verdict::Works => writeln!(w, "  {:<17} works", command.command)?,
                Verdict::WorksWithout(parts) => writeln!(
                    w,
                    "  {:<17} works without {}",
                    command.command,
                    parts.join("; without ")
                )?,
                Verdict::Cannot(why) => writeln!(w, "  {:<17} cannot: {why}", command.command)?,
            }
        }
        for fix in &self.fixes {
            writeln!(w, "\nfix: {fix}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trials(failing: &[Feature]) -> Vec<Trial> {
        Feature::ALL
            .iter()
            .map(|&feature| Trial {
                feature,
                outcome: if failing.contains(&feature) {
                    Outcome::Fails("not in this kernel".into())
                } else {
                    Outcome::Works
                },
            })
            .collect()
    }

    fn needs(command: &str) -> &'static Needs {
        COMMANDS.iter().find(|n| n.command == command).unwrap()
    }

    #[test]
    fn a_missing_feature_decides_what_needs_it() {
        let root = u64::MAX;
        let no_uprobes = trials(&[Feature::Uprobes]);
        assert!(matches!(
            judge(needs("gc"), &no_uprobes, None, root),
            Verdict::Cannot(why) if why.contains("uprobes") && why.contains("5.15")
        ));
        assert!(matches!(
            judge(needs("record"), &no_uprobes, None, root),
            Verdict::WorksWithout(parts) if parts.len() == 1 && parts[0].starts_with("the GC table")
        ));
        assert_eq!(
            judge(needs("heap"), &trials(&Feature::ALL), None, 0),
            Verdict::Works
        );
        let no_iterator = trials(&[Feature::TaskIterator]);
        assert!(matches!(
            judge(needs("dump"), &no_iterator, None, root),
            Verdict::Cannot(_)
        ));
        assert_eq!(
            judge(needs("dump"), &no_iterator, Some("in a container"), root),
            Verdict::Cannot("in a container".into())
        );
        assert!(matches!(
            judge(needs("core"), &no_iterator, Some("in a container"), root),
            Verdict::WorksWithout(_)
        ));
        // Without privileges, the words of the commands' own error.
        let bpf_only = 1u64 << caps::CAP_BPF;
        assert_eq!(
            judge(needs("record"), &trials(&[]), None, bpf_only),
            Verdict::Cannot(caps::denied(&["CAP_PERFMON", "CAP_SYS_PTRACE"]))
        );
    }
}
