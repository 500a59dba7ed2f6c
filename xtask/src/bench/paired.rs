//! `cargo xtask bench --paired`: the slowdown measured in windows of one long
//! run instead of whole runs.
//!
//! On this kind of machine (a VM on a shared host) whole runs of the same
//! work differ by 2–6 %, and the drift is slow: neighbouring seconds are
//! alike, minutes apart are not. So the workload runs once, for the whole
//! bench (`harness.js --rate`: units of work done per 100 ms, with
//! CLOCK_MONOTONIC stamps), and the bench alternates windows: none, a
//! profiler attached, none, another profiler, none… Each attached window's
//! work rate is compared with the unattached rate interpolated at its middle
//! from the two windows beside it, which cancels the drift. The profiler
//! starts before its window (it has attached, see `wait_attached`, and had
//! [`SETTLE`] more to name the functions it first sees) and has exited
//! before the next one, so start-up and the final symbolization fall outside
//! every window. No two windows of one variant share a neighbour, so their
//! slowdowns are independent samples. Reported per variant: the mean
//! slowdown over its windows with a 95 % confidence interval, and its median.
//!
//! For nodeprof's variants the kernel's own accounting of BPF program time
//! (`kernel.bpf_stats_enabled`, on for the bench and restored after) gives
//! the time its sampling program (the perf-event one) spends per run: read
//! from nodeprof's `/proc/PID/fdinfo` just before it is stopped.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{
    machine_line, mark, profiler_command, remove_outputs, spawn_workload, start_profiler,
    BenchArgs, Reaper, Setup, Variant,
};
use crate::util::{median, monotonic_ns};

/// JIT warm-up of the workload before the first window.
const WARM_UP: Duration = Duration::from_secs(3);
/// Between a profiler's attach and its window: its first samples name every
/// function they meet, reading the target's memory; a long recording does
/// that once.
const SETTLE: Duration = Duration::from_millis(500);

/// `(stamp ns, units done since the previous stamp)` lines of the workload.
type Progress = Arc<Mutex<Vec<(u64, u64)>>>;

/// One window of the run: which profiler was attached, and when.
struct Window {
    variant: Option<Variant>,
    start_ns: u64,
    end_ns: u64,
    /// The attached nodeprof's sampling program, from its start to the
    /// window's end.
    sampler: Option<ProgStats>,
}

/// `/proc/sys/kernel/bpf_stats_enabled`: the kernel times every BPF program
/// run while it is 1 (two clock reads per run).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// `BPF_PROG_TYPE_PERF_EVENT`, the type of nodeprof's sampling program.
const PROG_TYPE_PERF_EVENT: u64 = 7;

/// Run count and total run time of BPF programs.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct ProgStats {
    runs: u64,
    ns: u64,
}

/// Turns the kernel's BPF run-time accounting on; the previous setting is
/// restored on drop.
struct BpfStatsOn {
    previous: Option<String>,
}

impl BpfStatsOn {
    fn enable() -> BpfStatsOn {
        let previous = fs::read_to_string(BPF_STATS).ok();
        if fs::write(BPF_STATS, "1").is_err() {
            eprintln!("bench: cannot enable {BPF_STATS}: no eBPF program time in the report");
        }
        BpfStatsOn { previous }
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            let _ = fs::write(BPF_STATS, previous.trim());
        }
    }
}

/// The summed stats of the perf-event programs process `pid` holds open.
fn sampler_stats(pid: libc::pid_t) -> Option<ProgStats> {
    let mut total = None::<ProgStats>;
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()? {
        let Ok(text) = fs::read_to_string(entry.ok()?.path()) else {
            continue;
        };
        if let Some(stats) = perf_event_prog_stats(&text) {
            let sum = total.get_or_insert_with(ProgStats::default);
            sum.runs += stats.runs;
            sum.ns += stats.ns;
        }
    }
    total
}

/// A BPF program fd's `fdinfo`: its stats when it is a perf-event program.
fn perf_event_prog_stats(fdinfo: &str) -> Option<ProgStats> {
    let field = |name: &str| -> Option<u64> {
        fdinfo.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().parse().ok())?
        })
    };
    (field("prog_type")? == PROG_TYPE_PERF_EVENT).then_some(())?;
    Some(ProgStats {
        runs: field("run_cnt")?,
        ns: field("run_time_ns")?,
    })
}

pub(super) fn run(args: &BenchArgs, cx: &Setup, variants: &[Variant]) -> Result<String> {
    ensure!(!variants.is_empty(), "--paired needs at least one variant");
    let mut reaper = Reaper { pids: Vec::new() };
    let (mut node, node_reaped_tx) = spawn_workload(cx, &["--rate"], &mut reaper)?;
    let node_pid = node.id() as libc::pid_t;
    let progress: Progress = Arc::default();
    let reader = {
        let progress = Arc::clone(&progress);
        let stdout = node.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut fields = line.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(stamp)), Some(Ok(units))) = (fields.next(), fields.next()) {
                    progress.lock().expect("not poisoned").push((stamp, units));
                }
            }
        })
    };
    let _bpf_stats = variants
        .iter()
        .any(|v| v.is_nodeprof())
        .then(BpfStatsOn::enable);
    thread::sleep(WARM_UP);

    let window = Duration::from_secs_f64(args.window);
    let mut windows = Vec::new();
    let total = args.cycles * variants.len();
    let mut previous = None;
    for cycle in 0..args.cycles {
        let mut order = variants.to_vec();
        // Rotating two variants would put the same one on both sides of a
        // cycle's boundary; alternating them fixed is already fair.
        if variants.len() > 2 {
            order.rotate_left(cycle % variants.len());
        }
        for variant in order {
            if previous == Some(variant) {
                // Its last window's neighbour must not be this one's too.
                windows.push(measure(None, window));
            }
            previous = Some(variant);
            windows.push(measure(None, window));
            let tag = format!("{}-w{}", variant.tag(), cycle + 1);
            let cmd = profiler_command(cx, variant, node_pid, &tag).expect("not the baseline");
            let running = start_profiler(cx, cmd, variant, &tag, &mut reaper)
                .with_context(|| format!("window {} {}", cycle + 1, variant.label()))?;
            thread::sleep(SETTLE);
            let mut attached = measure(Some(variant), window);
            if variant.is_nodeprof() {
                attached.sampler = sampler_stats(running.pid);
            }
            windows.push(attached);
            running
                .interrupt(variant.is_perf())
                .with_context(|| format!("window {} {}", cycle + 1, variant.label()))?;
            remove_outputs(&cx.tmp, &tag);
            println!(
                "bench: {}/{total} windows: {:<34} {:+.2} %",
                windows.iter().filter(|w| w.variant.is_some()).count(),
                variant.label(),
                last_slowdown(&progress, &windows).unwrap_or(f64::NAN)
            );
        }
    }
    windows.push(measure(None, window));
    let _ = node.kill();
    let status = node.wait()?;
    let _ = node_reaped_tx.send(());
    let _ = reader.join();
    let progress = progress.lock().expect("not poisoned").clone();
    ensure!(
        windows
            .iter()
            .all(|w| rate(&progress, w.start_ns, w.end_ns).is_some()),
        "the workload stopped reporting its progress ({status})"
    );
    report(args, cx, variants, &progress, &windows)
}

fn measure(variant: Option<Variant>, length: Duration) -> Window {
    let start_ns = monotonic_ns();
    thread::sleep(length);
    Window {
        variant,
        start_ns,
        end_ns: monotonic_ns(),
        sampler: None,
    }
}

/// Units of work per second in `[start, end]`: the progress intervals
/// inside it, and the share of those crossing its edges in proportion to
/// their overlap (an interval stretched by a pause is not dropped more often).
fn rate(progress: &[(u64, u64)], start: u64, end: u64) -> Option<f64> {
    let (mut units, mut ns) = (0f64, 0u64);
    for pair in progress.windows(2) {
        let ((from, _), (to, done)) = (pair[0], pair[1]);
        let overlap = to.min(end).saturating_sub(from.max(start));
        if overlap > 0 {
            units += done as f64 * overlap as f64 / (to - from) as f64;
            ns += overlap;
        }
    }
    (ns > 0).then(|| units * 1e9 / ns as f64)
}

impl Window {
    fn middle_ns(&self) -> f64 {
        (self.start_ns as f64 + self.end_ns as f64) / 2.0
    }
}

/// The slowdown (%) of attached window `i` against the unattached rate at
/// its middle, interpolated between the windows beside it (start-up before
/// it takes longer than the exit after it, so it is not halfway between).
fn slowdown(progress: &[(u64, u64)], windows: &[Window], i: usize) -> Option<f64> {
    let on = &windows[i];
    let off = |j: Option<usize>| {
        let w = windows.get(j?).filter(|w| w.variant.is_none())?;
        Some((w.middle_ns(), rate(progress, w.start_ns, w.end_ns)?))
    };
    let baseline = match (off(i.checked_sub(1)), off(i.checked_add(1))) {
        (Some((t0, r0)), Some((t1, r1))) => r0 + (r1 - r0) * (on.middle_ns() - t0) / (t1 - t0),
        (Some((_, r)), None) | (None, Some((_, r))) => r,
        (None, None) => return None,
    };
    Some(100.0 * (baseline / rate(progress, on.start_ns, on.end_ns)? - 1.0))
}

/// Progress line: the newest attached window against the one before it.
fn last_slowdown(progress: &Progress, windows: &[Window]) -> Option<f64> {
    let progress = progress.lock().expect("not poisoned");
    slowdown(&progress, windows, windows.len().checked_sub(1)?)
}

/// Mean, standard deviation and the half-width of the 95 % confidence
/// interval of the mean (Student's t).
fn mean_ci95(values: &[f64]) -> (f64, f64, f64) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    (mean, sd, t95(n - 1) * sd / (n as f64).sqrt())
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        // Within 0.005 of the exact quantile above 30.
        _ => 1.96 + 2.4 / df as f64,
    }
}

fn report(
    args: &BenchArgs,
    cx: &Setup,
    variants: &[Variant],
    progress: &[(u64, u64)],
    windows: &[Window],
) -> Result<String> {
    let mut md = String::new();
    let workload = args.workload_file();
    writeln!(md, "# nodeprof {} overhead, paired windows", args.subject())?;
    writeln!(md)?;
    writeln!(
        md,
        "`cargo xtask bench --paired --workload {} --cycles {} --window {} --variants {}` — {}.",
        args.workload,
        args.cycles,
        args.window,
        variants
            .iter()
            .map(|v| v.tag())
            .collect::<Vec<_>>()
            .join(","),
        machine_line(cx),
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "Workload: one run of `node {}xtask/bench/{workload} --rate` (single thread, counts its units of work per 100 ms). \
         Windows of {} s alternate: no profiler, then one variant attached (started and attached before its window, \
         exited before the next), in rotating order. Slowdown of an attached window: the mean work rate of the \
         unattached windows beside it / its own − 1. Per variant: mean over its {} windows ± the 95 % confidence \
         interval of that mean, and the median. A goal is met (✅) when the whole interval is at or below it, \
         missed (❌) when the whole interval is above it, undecided otherwise. With nodeprof variants, \
         `kernel.bpf_stats_enabled` is on for the whole run (two clock reads per BPF program run, in every \
         nodeprof window): the eBPF sampler column is its run time over its runs, read from nodeprof's fdinfo \
         at the end of each window.",
        cx.node_flags.iter().map(|f| format!("{f} ")).collect::<String>(),
        args.window,
        args.cycles
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| variant | slowdown % mean ± 95 % CI | median % | sd of one window % | windows | goal | eBPF sampler µs per run (runs) |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---|---:|")?;
    for &variant in variants {
        let mut values: Vec<f64> = windows
            .iter()
            .enumerate()
            .filter(|(_, w)| w.variant == Some(variant))
            .filter_map(|(i, _)| slowdown(progress, windows, i))
            .collect();
        let (mean, sd, ci) = mean_ci95(&values);
        let med = median(&mut values);
        let goal = match variant.slowdown_goal() {
            Some(goal) if mean + ci <= goal => format!("≤ {goal} % {}", mark(true)),
            Some(goal) if mean - ci > goal => format!("≤ {goal} % {}", mark(false)),
            Some(goal) => format!("≤ {goal} %: undecided (the interval spans it)"),
            None if matches!(variant, Variant::PerfNoStack(_)) => {
                "floor: the sampling interrupt alone".into()
            }
            None => "reference".into(),
        };
        let sampler = sampler_cost(windows, variant)
            .map(|(us, runs)| format!("{us:.2} ({runs})"))
            .unwrap_or_default();
        writeln!(
            md,
            "| {} | {mean:+.2} ± {ci:.2} | {med:+.2} | {sd:.2} | {} | {goal} | {sampler} |",
            variant.label(),
            values.len()
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "<details><summary>Every window (units of work per second)</summary>"
    )?;
    writeln!(md)?;
    writeln!(md, "| # | variant | units/s | slowdown % |")?;
    writeln!(md, "|---:|---|---:|---:|")?;
    for (i, w) in windows.iter().enumerate() {
        let units = rate(progress, w.start_ns, w.end_ns).unwrap_or(f64::NAN);
        let (label, slowdown) = match w.variant {
            Some(v) => (
                v.label(),
                format!("{:+.2}", slowdown(progress, windows, i).unwrap_or(f64::NAN)),
            ),
            None => ("none".to_string(), String::new()),
        };
        writeln!(md, "| {} | {label} | {units:.1} | {slowdown} |", i + 1)?;
    }
    writeln!(md)?;
    writeln!(md, "</details>")?;
    Ok(md)
}

/// Mean µs per run of `variant`'s sampling program over its windows, and
/// the runs counted; None without runs (no nodeprof, or no accounting).
fn sampler_cost(windows: &[Window], variant: Variant) -> Option<(f64, u64)> {
    let total = windows
        .iter()
        .filter(|w| w.variant == Some(variant))
        .filter_map(|w| w.sampler)
        .fold(ProgStats::default(), |a, b| ProgStats {
            runs: a.runs + b.runs,
            ns: a.ns + b.ns,
        });
    (total.runs > 0).then(|| (total.ns as f64 / total.runs as f64 / 1000.0, total.runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_event_programs_are_read_from_fdinfo() {
        let sampler = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t7\n\
                       prog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t42\n\
                       run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\nverified_insns:\t59191\n";
        assert_eq!(
            perf_event_prog_stats(sampler),
            Some(ProgStats {
                runs: 789,
                ns: 123456
            })
        );
        let uprobe = sampler.replace("prog_type:\t7", "prog_type:\t2");
        assert_eq!(perf_event_prog_stats(&uprobe), None);
        assert_eq!(perf_event_prog_stats("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn rate_counts_only_intervals_inside_the_window() {
        // 10 units per 100 ms, then 20 per 100 ms from 300 ms on.
        let progress = [
            (0, 0),
            (100, 10),
            (200, 10),
            (300, 10),
            (400, 20),
            (500, 20),
        ]
        .map(|(ms, n)| (ms * 1_000_000, n));
        assert_eq!(rate(&progress, 0, 300_000_000), Some(100.0));
        assert_eq!(rate(&progress, 300_000_000, 500_000_000), Some(200.0));
        // (250, 450): half of 200–300 (5 units), 300–400 (20), half of 400–500 (10).
        assert_eq!(rate(&progress, 250_000_000, 450_000_000), Some(175.0));
        assert_eq!(rate(&progress, 110_000_000, 190_000_000), Some(100.0));
        assert_eq!(rate(&progress, 600_000_000, 700_000_000), None);
    }

    #[test]
    fn slowdown_is_against_the_neighbours_interpolated_at_its_middle() {
        let progress: Vec<(u64, u64)> = (0..=30u64)
            .map(|i| {
                // 100 units per 100 ms, 80 in the middle second, 120 in the last.
                let units = match i {
                    0 => 0,
                    11..=20 => 80,
                    21..=30 => 120,
                    _ => 100,
                };
                (i * 100_000_000, units)
            })
            .collect();
        let second = |k: u64, variant| Window {
            variant,
            start_ns: k * 1_000_000_000,
            end_ns: (k + 1) * 1_000_000_000,
            sampler: None,
        };
        let windows = [
            second(0, None),
            second(1, Some(Variant::Nodeprof(99))),
            second(2, None),
        ];
        // Neighbours 1000 and 1200 units/s, midway 1100; the attached window did 800.
        let s = slowdown(&progress, &windows, 1).unwrap();
        assert!((s - 37.5).abs() < 1e-9, "{s}");
        // Off centre: a longer gap before the next unattached window.
        let window = |from_s: u64, variant| Window {
            variant,
            start_ns: from_s * 1_000_000_000,
            end_ns: (from_s + 1) * 1_000_000_000,
            sampler: None,
        };
        let windows = [
            window(0, None),
            window(1, Some(Variant::Nodeprof(99))),
            window(3, None),
        ];
        let progress: Vec<(u64, u64)> = (0..=40u64)
            .map(|i| {
                (
                    i * 100_000_000,
                    [0, 100, 180][usize::from(i > 0) + usize::from(i > 30)],
                )
            })
            .collect();
        // 1000 units/s at 0.5 s, 1800 at 3.5 s: 1266.7 at 1.5 s, against 1000.
        let s = slowdown(&progress, &windows, 1).unwrap();
        assert!((s - 80.0 / 3.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn confidence_interval_of_known_samples() {
        let (mean, sd, ci) = mean_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(mean, 3.0);
        assert!((sd - 2.5f64.sqrt()).abs() < 1e-12);
        assert!((ci - 2.78 * 2.5f64.sqrt() / 5f64.sqrt()).abs() < 1e-12);
        assert!((t95(60) - 2.0).abs() < 0.005);
    }
}
