//! `watch`'s settings: the command line and the TOML file carry the same
//! keys (`cpu-count = 3` is `--cpu-count 3`); flags win over the file.
//! Everything is checked here, before any process is watched.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::policy::{Limits, MemOf, Thresholds, Trigger};

/// What a trigger does. Each variant is one capture function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// A CPU profile of the next `--profile-duration`, in `record`'s default formats.
    Profile,
    /// Every thread's stack, without stopping the process.
    Dump,
    /// A `.heapsnapshot` through the inspector.
    Snapshot,
    /// A core file; the process keeps running.
    Core,
    /// `--command`, run by `sh -c` with the pid and the reason in its environment.
    Command,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Profile,
        Action::Dump,
        Action::Snapshot,
        Action::Core,
        Action::Command,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Profile => "profile",
            Action::Dump => "dump",
            Action::Snapshot => "snapshot",
            Action::Core => "core",
            Action::Command => "command",
        }
    }

    fn parse(name: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                format!("unknown action {name:?} (profile, dump, snapshot, core, command)")
            })
    }

    /// The defaults users expect: what shows where the CPU goes, what holds
    /// the memory, and what the blocked loop is doing (then where it spins).
    fn defaults(trigger: Trigger) -> Vec<Action> {
        match trigger {
            Trigger::Cpu => vec![Action::Profile],
            Trigger::Memory | Trigger::Leak => vec![Action::Snapshot],
            Trigger::LoopBlocked => vec![Action::Dump, Action::Profile],
        }
    }
}

/// Which processes to watch.
#[derive(Debug, Clone)]
pub enum Select {
    Pids(Vec<u32>),
    /// Every node process.
    All,
    /// Node processes whose command line matches.
    Name(regex::Regex),
    /// Node processes in this cgroup (v2 path, e.g. `/system.slice/app.service`) or below.
    Cgroup(String),
}

/// The settings as given: every key optional, named as its flag.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub pid: Option<Vec<u32>>,
    pub all: Option<bool>,
    pub name: Option<String>,
    pub cgroup: Option<String>,
    pub keep_waiting: Option<bool>,
    pub interval: Option<String>,
    pub cpu: Option<f64>,
    pub cpu_count: Option<u32>,
    pub mem: Option<String>,
    pub mem_of: Option<String>,
    pub mem_count: Option<u32>,
    pub loop_blocked: Option<String>,
    pub on_leak: Option<bool>,
    pub leak_after: Option<u32>,
    pub cpu_action: Option<String>,
    pub mem_action: Option<String>,
    pub leak_action: Option<String>,
    pub loop_action: Option<String>,
    pub command: Option<String>,
    pub profile_duration: Option<String>,
    pub limit: Option<String>,
    pub cooldown: Option<String>,
    pub cluster_max: Option<usize>,
    pub cluster_window: Option<String>,
    pub out: Option<PathBuf>,
    pub max_disk: Option<String>,
    pub min_free: Option<String>,
    pub keep: Option<usize>,
    pub json: Option<bool>,
    pub readings: Option<bool>,
    pub no_loop: Option<bool>,
}

/// Everything `watch` needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub select: Select,
    pub keep_waiting: bool,
    pub interval: Duration,
    pub thresholds: Thresholds,
    /// Consecutive growing full GCs that raise a leak suspicion.
    pub leak_after: u32,
    pub limits: Limits,
    pub actions: BTreeMap<Trigger, Vec<Action>>,
    pub command: Option<String>,
    pub profile_duration: Duration,
    pub out: PathBuf,
    pub max_disk: Option<u64>,
    pub min_free: u64,
    /// Captures kept in `out`; older ones are removed first.
    pub keep: Option<usize>,
    pub json: bool,
    /// Print every check's readings.
    pub readings: bool,
    /// Leave the event loops unmeasured: no syscall tracepoints, whose cost
    /// every system call on the host pays while watch runs.
    pub no_loop: bool,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    /// Each key from `self`, else from `fallback` (flags over the file).
    pub fn or(self, fallback: Config) -> Config {
        macro_rules! pick {
            ($($field:ident),*) => { Config { $($field: self.$field.or(fallback.$field)),* } };
        }
        pick!(
            pid,
            all,
            name,
            cgroup,
            keep_waiting,
            interval,
            cpu,
            cpu_count,
            mem,
            mem_of,
            mem_count,
            loop_blocked,
            on_leak,
            leak_after,
            cpu_action,
            mem_action,
            leak_action,
            loop_action,
            command,
            profile_duration,
            limit,
            cooldown,
            cluster_max,
            cluster_window,
            out,
            max_disk,
            min_free,
            keep,
            json,
            readings,
            no_loop
        )
    }

    pub fn resolve(self) -> Result<Settings, String> {
        let all = self.all.unwrap_or(false);
        let chosen = [
            self.pid.is_some(),
            all,
            self.name.is_some(),
            self.cgroup.is_some(),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if chosen != 1 {
            return Err("choose the processes with one of --pid, --all, --name, --cgroup".into());
        }
        let select = if let Some(pids) = self.pid {
            Select::Pids(pids)
        } else if let Some(name) = self.name {
            Select::Name(regex::Regex::new(&name).map_err(|e| format!("--name: {e}"))?)
        } else if let Some(cgroup) = self.cgroup {
            Select::Cgroup(format!("/{}", cgroup.trim_matches('/')))
        } else {
            Select::All
        };
        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            Some(text) => parse_duration(&text).map_err(|e| format!("--{key}: {e}")),
            None => Ok(default),
        };
        let size = |key: &str, v: Option<String>| {
            v.map(|t| parse_size(&t).map_err(|e| format!("--{key}: {e}")))
                .transpose()
        };
        let mem_of = match self.mem_of.as_deref() {
            None | Some("rss") => MemOf::Rss,
            Some("heap") => MemOf::Heap,
            Some(other) => return Err(format!("--mem-of: {other:?} is neither rss nor heap")),
        };
        if let Some(cpu) = self.cpu {
            if !(cpu.is_finite() && cpu > 0.0) {
                return Err("--cpu: a positive percentage of one core".into());
            }
        }
        let thresholds = Thresholds {
            cpu: self.cpu.map(|p| (p, self.cpu_count.unwrap_or(3).max(1))),
            mem: size("mem", self.mem)?.map(|b| (b, mem_of, self.mem_count.unwrap_or(5).max(1))),
            loop_blocked: self
                .loop_blocked
                .map(|t| parse_duration(&t).map_err(|e| format!("--loop-blocked: {e}")))
                .transpose()?,
            on_leak: self.on_leak.unwrap_or(false),
        };
        let no_loop = self.no_loop.unwrap_or(false);
        if no_loop && thresholds.loop_blocked.is_some() {
            return Err("--no-loop leaves nothing to measure --loop-blocked with".into());
        }
        if thresholds == Thresholds::default() {
            return Err(
                "nothing to watch for: give at least one of --cpu, --mem, --loop-blocked, --on-leak"
                    .into(),
            );
        }
        let (max, per) = match self.limit {
            Some(text) => parse_limit(&text).map_err(|e| format!("--limit: {e}"))?,
            None => (3, Duration::from_secs(3600)),
        };
        let limits = Limits {
            max,
            per,
            cooldown: duration("cooldown", self.cooldown, Duration::from_secs(60))?,
            cluster_max: self.cluster_max.unwrap_or(1).max(1),
            cluster_window: duration(
                "cluster-window",
                self.cluster_window,
                Duration::from_secs(60),
            )?,
        };
        let mut actions = BTreeMap::new();
        for (trigger, given, on) in [
            (Trigger::Cpu, self.cpu_action, thresholds.cpu.is_some()),
            (Trigger::Memory, self.mem_action, thresholds.mem.is_some()),
            (Trigger::Leak, self.leak_action, thresholds.on_leak),
            (
                Trigger::LoopBlocked,
                self.loop_action,
                thresholds.loop_blocked.is_some(),
            ),
        ] {
            let key = match trigger {
                Trigger::Cpu => "cpu-action",
                Trigger::Memory => "mem-action",
                Trigger::Leak => "leak-action",
                Trigger::LoopBlocked => "loop-action",
            };
            let list = match given {
                Some(text) => text
                    .split(',')
                    .map(|name| Action::parse(name.trim()).map_err(|e| format!("--{key}: {e}")))
                    .collect::<Result<Vec<_>, _>>()?,
                None => Action::defaults(trigger),
            };
            if on {
                actions.insert(trigger, list);
            }
        }
        let uses_command = actions.values().flatten().any(|&a| a == Action::Command);
        if uses_command && self.command.is_none() {
            return Err("the command action needs --command".into());
        }
        Ok(Settings {
            select,
            keep_waiting: self.keep_waiting.unwrap_or(false),
            interval: duration("interval", self.interval, Duration::from_secs(1))?,
            thresholds,
            leak_after: self.leak_after.unwrap_or(5).max(1),
            limits,
            actions,
            command: self.command,
            profile_duration: duration(
                "profile-duration",
                self.profile_duration,
                Duration::from_secs(10),
            )?,
            out: self.out.unwrap_or_else(|| PathBuf::from(".")),
            max_disk: size("max-disk", self.max_disk)?,
            min_free: size("min-free", self.min_free)?.unwrap_or(1 << 30),
            keep: self.keep,
            json: self.json.unwrap_or(false),
            readings: self.readings.unwrap_or(false),
            no_loop,
        })
    }
}

/// `1.5G`, `500M`, `1.5GiB`, `800MB`, `4096` (bytes); units are binary.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1.5G, 500M)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown unit (K, M, G, T)")),
    };
    if !(number.is_finite() && number > 0.0) {
        return Err(format!("{text:?}: a positive size"));
    }
    Ok((number * factor as f64) as u64)
}

/// `3/hour`, `10/day`, `2/30m`: at most N per period.
pub fn parse_limit(text: &str) -> Result<(u32, Duration), String> {
    let (n, per) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not N/PERIOD (e.g. 3/hour)"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: N is not a count"))?;
    let per = match per.trim() {
        "second" | "s" => Duration::from_secs(1),
        "minute" | "min" => Duration::from_secs(60),
        "hour" | "h" => Duration::from_secs(3600),
        "day" | "d" => Duration::from_secs(86_400),
        other => parse_duration(other)?,
    };
    if n == 0 {
        return Err(format!("{text:?}: at least 1 per period"));
    }
    Ok((n, per))
}

/// `500ms`, `2s`, `1m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err("a duration must be positive".into());
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_loop_is_refused_with_loop_blocked() {
        let both =
            Config::from_toml("pid = [1]\nloop-blocked = \"500ms\"\nno-loop = true").unwrap();
        assert!(both.resolve().unwrap_err().contains("--no-loop"));
        let alone = Config::from_toml("pid = [1]\ncpu = 90.0\nno-loop = true").unwrap();
        assert!(alone.resolve().unwrap().no_loop);
    }

    #[test]
    fn sizes_limits_durations() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
        assert_eq!(parse_limit("3/hour"), Ok((3, Duration::from_secs(3600))));
        assert_eq!(parse_limit("2/30s"), Ok((2, Duration::from_secs(30))));
        assert!(parse_limit("0/hour").is_err());
        assert!(parse_limit("3").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn the_file_has_the_flags_keys_and_flags_win() {
        let file = Config::from_toml(
            r#"
            all = true
            interval = "2s"
            cpu = 90
            cpu-count = 3
            mem = "1.5G"
            mem-of = "heap"
            loop-blocked = "500ms"
            limit = "3/hour"
            out = "/var/lib/nodeprof"
            max-disk = "2G"
            "#,
        )
        .unwrap();
        let flags = Config {
            cpu: Some(80.0),
            mem_action: Some("command".into()),
            command: Some("logger hi".into()),
            ..Config::default()
        };
        let s = flags.or(file).resolve().unwrap();
        assert!(matches!(s.select, Select::All));
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.thresholds.cpu, Some((80.0, 3)));
        assert_eq!(s.thresholds.mem, Some((3 << 29, MemOf::Heap, 5)));
        assert_eq!(s.actions[&Trigger::Cpu], [Action::Profile]);
        assert_eq!(s.actions[&Trigger::Memory], [Action::Command]);
        assert_eq!(s.max_disk, Some(2 << 30));
        assert!(
            Config::from_toml("cpu-cnt = 3").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn actions_default_by_trigger_and_unknown_ones_are_refused() {
        let base = || Config {
            pid: Some(vec![1]),
            cpu: Some(90.0),
            ..Config::default()
        };
        let s = Config {
            mem: Some("1G".into()),
            on_leak: Some(true),
            loop_blocked: Some("500ms".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.actions[&Trigger::Cpu], [Action::Profile]);
        assert_eq!(s.actions[&Trigger::Memory], [Action::Snapshot]);
        assert_eq!(s.actions[&Trigger::Leak], [Action::Snapshot]);
        assert_eq!(
            s.actions[&Trigger::LoopBlocked],
            [Action::Dump, Action::Profile]
        );
        let s = Config {
            mem: Some("1G".into()),
            mem_action: Some("core, snapshot".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.actions[&Trigger::Memory],
            [Action::Core, Action::Snapshot]
        );
        let err = Config {
            cpu_action: Some("heapdump".into()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.contains("--cpu-action: unknown action \"heapdump\""),
            "{err}"
        );
        assert!(Config {
            command: None,
            cpu_action: Some("command".into()),
            ..base()
        }
        .resolve()
        .is_err());
        assert!(Config {
            pid: None,
            ..base()
        }
        .resolve()
        .is_err());
        assert!(Config {
            all: Some(true),
            ..base()
        }
        .resolve()
        .is_err());
    }
}
