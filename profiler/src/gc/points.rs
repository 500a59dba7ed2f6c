//! Which V8 functions to probe to see every GC, found by symbol in the node
//! binary (`.dynsym` and the full `.symtab`: node 24+ keeps V8 internals only
//! as local symbols) and interpreted by a table keyed by the V8 version read
//! from the same binary.
//!
//! Two plans. Where the V8 version's `GCTracer` layout is known (node 18–26),
//! one or two probes read V8's own record of each pause where it is final —
//! the very figures `--trace-gc` prints, start and end times included (a
//! probe's own timestamp can be late by a scheduling delay). Elsewhere, the
//! [`Plan::Calls`] fallback needs no layout: probe timestamps, the collector
//! function that runs, `Heap::SizeOfObjects` results inside the pause.
//!
//! Names are matched by their mangled prefix up to the parameter list, so a
//! signature change (node 26 added parameters to `Heap::CollectGarbage`)
//! does not hide a function; compiler clones (`.constprop`, `.cold`) are
//! skipped because they are not the function's entry.

use std::path::{Path, PathBuf};

use nodeprof_common::{CallReads, CALL_WORDS};

use crate::probe::CallSite;
use crate::v8::elf::{self, ElfError, SymbolFilter};
use crate::v8::V8Version;

use super::GcKind;

#[derive(Debug, thiserror::Error)]
pub enum PointsError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("{path}: no V8 version symbols: not a Node.js binary, or stripped")]
    NoVersion { path: PathBuf },
    #[error("cannot trace GC in {path} (V8 {version}): {}", missing.join("; "))]
    Unusable {
        path: PathBuf,
        version: V8Version,
        missing: Vec<String>,
    },
}

/// What a probed function tells the tracer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `GCTracer::StartObservablePause`: the JS thread stops for a GC.
    PauseStart,
    /// `GCTracer::StopObservablePause`: it resumes.
    PauseEnd,
    /// `GCTracer::StartCycle(collector, reason, collector_reason, marking)`:
    /// a GC cycle begins; for an incremental mark-compact, when marking starts.
    CycleStart,
    /// `Heap::CollectGarbage(space, reason, …)`: every atomic GC starts here,
    /// with the reason `--trace-gc` prints.
    CollectGarbage,
    /// The collector's own entry (`Heap::Scavenge`, `Heap::MarkCompact`…).
    Collector(GcKind),
    /// Return of `Heap::SizeOfObjects()`: V8 asks it when a pause starts and
    /// ends, for the sizes `--trace-gc` prints.
    ObjectSizes,
    /// Where the tracer's record of the pause is final (`StopObservablePause`
    /// on V8 12+, `UpdateStatistics` before): its fields are read there.
    Record,
}

impl Role {
    pub(crate) fn code(self) -> u64 {
        match self {
            Role::PauseStart => 1,
            Role::PauseEnd => 2,
            Role::CycleStart => 3,
            Role::Collector(GcKind::Scavenge) => 4,
            Role::Collector(GcKind::MinorMarkSweep) => 5,
            Role::Collector(GcKind::MarkCompact) => 6,
            Role::ObjectSizes => 7,
            Role::CollectGarbage => 8,
            Role::Record => 9,
        }
    }

    pub fn from_cookie(cookie: u64) -> Option<Role> {
        Some(match cookie & 0xff {
            1 => Role::PauseStart,
            2 => Role::PauseEnd,
            3 => Role::CycleStart,
            4 => Role::Collector(GcKind::Scavenge),
            5 => Role::Collector(GcKind::MinorMarkSweep),
            6 => Role::Collector(GcKind::MarkCompact),
            7 => Role::ObjectSizes,
            8 => Role::CollectGarbage,
            9 => Role::Record,
            _ => return None,
        })
    }
}

/// A function to probe: role, mangled-name prefix, entry or return.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    role: Role,
    at_return: bool,
    mangled_prefix: &'static str,
    demangled: &'static str,
}

const fn at_entry(role: Role, mangled_prefix: &'static str, demangled: &'static str) -> Candidate {
    Candidate {
        role,
        at_return: false,
        mangled_prefix,
        demangled,
    }
}

/// The functions, in V8 10.2 (node 18) … 14.6 (node 26) alike. Each role
/// lists alternatives; the first found wins.
const CANDIDATES: &[Candidate] = &[
    at_entry(
        Role::PauseStart,
        "_ZN2v88internal8GCTracer20StartObservablePauseE",
        "v8::internal::GCTracer::StartObservablePause",
    ),
    at_entry(
        Role::PauseEnd,
        "_ZN2v88internal8GCTracer19StopObservablePauseE",
        "v8::internal::GCTracer::StopObservablePause",
    ),
    at_entry(
        Role::CollectGarbage,
        "_ZN2v88internal4Heap14CollectGarbageE",
        "v8::internal::Heap::CollectGarbage",
    ),
    at_entry(
        Role::CycleStart,
        "_ZN2v88internal8GCTracer10StartCycleE",
        "v8::internal::GCTracer::StartCycle",
    ),
    at_entry(
        Role::Collector(GcKind::Scavenge),
        "_ZN2v88internal4Heap8ScavengeEv",
        "v8::internal::Heap::Scavenge",
    ),
    at_entry(
        Role::Collector(GcKind::MarkCompact),
        "_ZN2v88internal4Heap11MarkCompactEv",
        "v8::internal::Heap::MarkCompact",
    ),
    // V8 12+ renamed the minor mark-compactor to a mark-sweeper.
    at_entry(
        Role::Collector(GcKind::MinorMarkSweep),
        "_ZN2v88internal4Heap14MinorMarkSweepEv",
        "v8::internal::Heap::MinorMarkSweep",
    ),
    at_entry(
        Role::Collector(GcKind::MinorMarkSweep),
        "_ZN2v88internal4Heap16MinorMarkCompactEv",
        "v8::internal::Heap::MinorMarkCompact",
    ),
    Candidate {
        role: Role::ObjectSizes,
        at_return: true,
        mangled_prefix: "_ZN2v88internal4Heap13SizeOfObjectsEv",
        demangled: "v8::internal::Heap::SizeOfObjects",
    },
];

/// Where V8 keeps a pause's start and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseTimes {
    /// `StartObservablePause(TimeTicks)` / `StopObservablePause(_, TimeTicks)`
    /// arguments: µs of CLOCK_MONOTONIC (V8 12+).
    Arguments,
    /// `GCTracer::current_.start_time` / `end_time`: f64 ms of CLOCK_MONOTONIC, at these offsets.
    Doubles { start: u32, end: u32 },
}

/// The `GCTracer` fields of one V8 version, from its disassembly (the
/// offsets `GCTracer::Print` and `StartInSafepoint`/`StopInSafepoint` use),
/// verified against `--trace-gc` on live processes.
#[derive(Debug)]
pub struct TracerLayout {
    /// V8 `major.minor` this layout was verified on.
    pub v8: (u32, u32),
    /// Demangled name of the function at whose entry the record is final.
    pub record_function: &'static str,
    pub record_prefix: &'static str,
    pub times: PauseTimes,
    /// `current_.type`, `gc_reason` (u32 each).
    pub event_type: u32,
    pub reason: u32,
    /// `current_.start_object_size`, `end_object_size` (u64 each).
    pub size_before: u32,
    pub size_after: u32,
    /// `Event::Type` value → kind and whether marking was incremental.
    pub types: &'static [Option<(GcKind, bool)>],
}

const STOP_OBSERVABLE_PAUSE: &str = "_ZN2v88internal8GCTracer19StopObservablePauseE";
const UPDATE_STATISTICS: &str = "_ZN2v88internal8GCTracer16UpdateStatisticsE";

const SCAVENGE: Option<(GcKind, bool)> = Some((GcKind::Scavenge, false));
const MARK_COMPACT: Option<(GcKind, bool)> = Some((GcKind::MarkCompact, false));
const INCREMENTAL_MARK_COMPACT: Option<(GcKind, bool)> = Some((GcKind::MarkCompact, true));
const MINOR: Option<(GcKind, bool)> = Some((GcKind::MinorMarkSweep, false));
const INCREMENTAL_MINOR: Option<(GcKind, bool)> = Some((GcKind::MinorMarkSweep, true));

const FIVE_TYPES: &[Option<(GcKind, bool)>] = &[
    SCAVENGE,
    MARK_COMPACT,
    INCREMENTAL_MARK_COMPACT,
    MINOR,
    None,
];
const SIX_TYPES: &[Option<(GcKind, bool)>] = &[
    SCAVENGE,
    MARK_COMPACT,
    INCREMENTAL_MARK_COMPACT,
    MINOR,
    INCREMENTAL_MINOR,
    None,
];

/// V8 10–11: the record is final when `UpdateStatistics` prints it; times are
/// the doubles V8 stored.
const fn before_v8_12(v8: (u32, u32), types: &'static [Option<(GcKind, bool)>]) -> TracerLayout {
    TracerLayout {
        v8,
        record_function: "v8::internal::GCTracer::UpdateStatistics",
        record_prefix: UPDATE_STATISTICS,
        times: PauseTimes::Doubles {
            start: 0x20,
            end: 0x28,
        },
        event_type: 0x08,
        reason: 0x10,
        size_before: 0x38,
        size_after: 0x40,
        types,
    }
}

/// V8 12+: `StopObservablePause` prints the record; times are its arguments.
const fn since_v8_12(v8: (u32, u32), size_before: u32) -> TracerLayout {
    TracerLayout {
        v8,
        record_function: "v8::internal::GCTracer::StopObservablePause",
        record_prefix: STOP_OBSERVABLE_PAUSE,
        times: PauseTimes::Arguments,
        event_type: 0x08,
        reason: 0x10,
        size_before,
        size_after: size_before + 8,
        types: SIX_TYPES,
    }
}

/// Node 18 (10.2), 20 (11.3), 22 (12.4), 24 (13.6), 26 (14.6).
pub const TRACER_LAYOUTS: &[TracerLayout] = &[
    before_v8_12((10, 2), FIVE_TYPES),
    before_v8_12((11, 3), SIX_TYPES),
    since_v8_12((12, 4), 0x38),
    since_v8_12((13, 6), 0x40),
    since_v8_12((14, 6), 0x40),
];

/// Where [`TracerLayout::reads`] puts each field in `CallEvent::words`.
pub mod word {
    pub const TYPE: usize = 0;
    pub const REASON: usize = 1;
    pub const SIZE_BEFORE: usize = 2;
    pub const SIZE_AFTER: usize = 3;
    /// [`super::PauseTimes::Doubles`] only.
    pub const START_MS: usize = 4;
    pub const END_MS: usize = 5;
}

impl TracerLayout {
    /// The words the record probe copies, in the order of [`word`].
    pub fn reads(&self) -> CallReads {
        let mut offsets = [0u32; CALL_WORDS];
        let mut fields = vec![
            self.event_type,
            self.reason,
            self.size_before,
            self.size_after,
        ];
        if let PauseTimes::Doubles { start, end } = self.times {
            fields.extend([start, end]);
        }
        offsets[..fields.len()].copy_from_slice(&fields);
        CallReads {
            offsets,
            count: fields.len() as u32,
            _pad: 0,
        }
    }
}

/// How GCs are observed in one binary.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// V8's own record, read where it is final.
    TracerRecord(&'static TracerLayout),
    /// Function calls only (a V8 version whose tracer layout is unknown).
    Calls,
}

impl Plan {
    pub fn name(&self) -> &'static str {
        match self {
            Plan::TracerRecord(_) => "tracer-record",
            Plan::Calls => "calls",
        }
    }
}

/// `NODEPROF_GC_PLAN=calls` forces the layout-free plan (to compare the two,
/// or to get around a layout that turns out wrong on some build).
fn forced_calls_plan() -> bool {
    std::env::var("NODEPROF_GC_PLAN").is_ok_and(|v| v == "calls")
}

/// How to read the probes' values in one range of V8 versions.
#[derive(Debug)]
pub struct Semantics {
    /// Oldest V8 version these semantics apply to.
    pub since: V8Version,
    /// `GarbageCollector` enum value → kind.
    pub collectors: &'static [GcKind],
    /// Register index (0 = `this`) of `StartCycle`'s arguments.
    pub cycle_collector_arg: usize,
    pub cycle_reason_arg: usize,
    pub cycle_marking_arg: usize,
    /// Register index of `Heap::CollectGarbage`'s reason.
    pub collect_reason_arg: usize,
    /// `GCTracer::MarkingType` value of incremental marking.
    pub incremental_marking: u64,
}

/// Newest first. V8's GarbageCollector enum has kept one order since 2021:
/// SCAVENGER, MARK_COMPACTOR, MINOR_MARK_COMPACTOR (renamed MINOR_MARK_SWEEPER in 12.x).
pub(crate) const SEMANTICS: &[Semantics] = &[Semantics {
    since: V8Version::new(10, 0, 0, 0),
    collectors: &[
        GcKind::Scavenge,
        GcKind::MarkCompact,
        GcKind::MinorMarkSweep,
    ],
    cycle_collector_arg: 1,
    cycle_reason_arg: 2,
    cycle_marking_arg: 4,
    collect_reason_arg: 2,
    incremental_marking: 1,
}];

/// `GarbageCollectionReason` values as `Heap::GarbageCollectionReasonToString`
/// prints them. V8 only appends to this enum (it feeds UMA histograms), so
/// one table serves every version; an unknown value prints as its number.
pub const REASONS: &[&str] = &[
    "unknown",
    "allocation failure",
    "allocation limit",
    "context disposal",
    "counters extension",
    "debugger",
    "deserialize",
    "external memory pressure",
    "finalize incremental marking via stack guard",
    "finalize incremental marking via task",
    "full hash-table",
    "heap profiler",
    "task",
    "last resort",
    "low memory notification",
    "make heap iterable",
    "memory pressure",
    "memory reducer",
    "runtime",
    "sampling profiler",
    "snapshot creator",
    "testing",
    "external finalize",
    "global allocation limit",
    "measure memory",
    "background allocation failure",
    "finalize concurrent MinorMS",
    "CppHeap allocation failure",
    "frozen",
    "idle context disposal",
    "finalize MinorMS for major GC",
];

pub fn reason_name(value: u64) -> String {
    REASONS
        .get(value as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("reason {value}"))
}

/// One probe to attach.
#[derive(Debug, Clone)]
pub struct ProbeSite {
    pub role: Role,
    pub site: CallSite,
    /// Demangled name, for messages.
    pub symbol: &'static str,
}

/// The probes for one node binary.
#[derive(Debug, Clone)]
pub struct GcPoints {
    pub path: PathBuf,
    pub version: V8Version,
    pub semantics: &'static Semantics,
    pub plan: Plan,
    pub sites: Vec<ProbeSite>,
    /// What could not be found or attached, and what is lost without it.
    pub missing: Vec<String>,
}

impl GcPoints {
    /// Finds the GC functions of a node binary (e.g. `/proc/PID/exe`).
    pub fn find(path: &Path) -> Result<GcPoints, PointsError> {
        let keep = |name: &str| {
            elf::VERSION_SYMBOLS.contains(&name)
                || (!name.contains('.')
                    && (CANDIDATES
                        .iter()
                        .any(|c| name.starts_with(c.mangled_prefix))
                        || TRACER_LAYOUTS
                            .iter()
                            .any(|l| name.starts_with(l.record_prefix))))
        };
        let filter = SymbolFilter {
            prefixes: &[
                b"_ZN2v88internal8GCTracer",
                b"_ZN2v88internal4Heap",
                b"_ZN2v88internal7Version",
            ],
            keep: &keep,
        };
        let symbols = elf::read_symbols(path, &filter)?;
        let version = elf::v8_version(&symbols).ok_or_else(|| PointsError::NoVersion {
            path: path.to_path_buf(),
        })?;
        let semantics = SEMANTICS
            .iter()
            .find(|s| version >= s.since)
            .unwrap_or(&SEMANTICS[SEMANTICS.len() - 1]);
        let offsets_of = |prefix: &str| -> Vec<u64> {
            let mut offsets: Vec<u64> = symbols
                .map
                .iter()
                .filter(|(name, sym)| name.starts_with(prefix) && sym.executable)
                .filter_map(|(_, sym)| sym.file_offset)
                .collect();
            offsets.sort_unstable();
            offsets.dedup();
            offsets
        };
        let mut missing = Vec::new();
        let layout = TRACER_LAYOUTS
            .iter()
            .find(|l| l.v8 == (version.major, version.minor));
        if forced_calls_plan() {
            missing.push("NODEPROF_GC_PLAN=calls: function probes only".to_string());
        } else if let Some(layout) = layout {
            let pause_start = CANDIDATES
                .iter()
                .find(|c| c.role == Role::PauseStart)
                .expect("the table has a pause start");
            let record = offsets_of(layout.record_prefix);
            let start = offsets_of(pause_start.mangled_prefix);
            let needs_start = layout.times == PauseTimes::Arguments;
            if record.len() == 1 && (!needs_start || start.len() == 1) {
                let mut sites = vec![ProbeSite {
                    role: Role::Record,
                    site: CallSite {
                        file_offset: record[0],
                        at_return: false,
                        cookie: Role::Record.code(),
                        reads: Some(layout.reads()),
                    },
                    symbol: layout.record_function,
                }];
                if needs_start {
                    sites.push(ProbeSite {
                        role: Role::PauseStart,
                        site: CallSite {
                            file_offset: start[0],
                            at_return: false,
                            cookie: Role::PauseStart.code(),
                            reads: None,
                        },
                        symbol: pause_start.demangled,
                    });
                }
                return Ok(GcPoints {
                    path: path.to_path_buf(),
                    version,
                    semantics,
                    plan: Plan::TracerRecord(layout),
                    sites,
                    missing,
                });
            }
            let what = if record.len() != 1 {
                layout.record_function
            } else {
                pause_start.demangled
            };
            missing.push(format!(
                "{what} not found once in the binary: falling back to function probes"
            ));
        } else {
            missing.push(format!(
                "V8 {version}: GC tracer layout not verified for this version \
                 (known: node 18–26); pause times come from probe timestamps"
            ));
        }
        let mut sites = Vec::new();
        for role in roles() {
            let mut found = false;
            for candidate in CANDIDATES.iter().filter(|c| c.role == role) {
                for file_offset in offsets_of(candidate.mangled_prefix) {
                    found = true;
                    sites.push(ProbeSite {
                        role,
                        site: CallSite {
                            file_offset,
                            at_return: candidate.at_return,
                            cookie: role.code(),
                            reads: None,
                        },
                        symbol: candidate.demangled,
                    });
                }
                if found {
                    break;
                }
            }
            if !found {
                missing.push(missing_text(role));
            }
        }
        let points = GcPoints {
            path: path.to_path_buf(),
            version,
            semantics,
            plan: Plan::Calls,
            sites,
            missing,
        };
        points.check_usable()?;
        Ok(points)
    }

    /// Removes probes that failed to attach (index into `sites`, message);
    /// fails when no pause can be timed any more.
    pub fn drop_failed(&mut self, failed: Vec<(usize, String)>) -> Result<(), PointsError> {
        let mut messages = Vec::new();
        for (index, message) in failed.iter().rev() {
            self.sites.remove(*index);
            messages.push(format!("cannot attach to {message}"));
        }
        self.missing.extend(messages.iter().cloned());
        self.check_usable().map_err(|e| match e {
            // The attach failures are the cause, not the binary's symbols.
            PointsError::Unusable { path, version, .. } if !messages.is_empty() => {
                PointsError::Unusable {
                    path,
                    version,
                    missing: messages,
                }
            }
            e => e,
        })
    }

    fn check_usable(&self) -> Result<(), PointsError> {
        let required: &[Role] = match self.plan {
            Plan::TracerRecord(l) if l.times == PauseTimes::Arguments => {
                &[Role::Record, Role::PauseStart]
            }
            Plan::TracerRecord(_) => &[Role::Record],
            Plan::Calls => &[Role::PauseStart, Role::PauseEnd],
        };
        let absent: Vec<String> = required
            .iter()
            .filter(|role| !self.sites.iter().any(|s| s.role == **role))
            .map(|role| missing_text(*role))
            .collect();
        if absent.is_empty() {
            return Ok(());
        }
        Err(PointsError::Unusable {
            path: self.path.clone(),
            version: self.version,
            missing: absent,
        })
    }

    pub fn has(&self, role: Role) -> bool {
        self.sites.iter().any(|s| s.role == role)
    }
}

/// Every role once, in table order.
fn roles() -> Vec<Role> {
    let mut roles: Vec<Role> = Vec::new();
    for c in CANDIDATES {
        if !roles.contains(&c.role) {
            roles.push(c.role);
        }
    }
    roles
}

fn missing_text(role: Role) -> String {
    let names: Vec<&str> = CANDIDATES
        .iter()
        .filter(|c| c.role == role)
        .map(|c| c.demangled)
        .collect();
    let loss = match role {
        Role::PauseStart | Role::PauseEnd => "GC pauses cannot be timed",
        Role::CycleStart => "incremental marking is not told apart",
        Role::CollectGarbage => "GC reasons are unknown",
        Role::Collector(GcKind::MinorMarkSweep) => "minor mark-sweep GCs are not told apart",
        Role::Collector(_) => "the kind of some GCs is unknown",
        Role::ObjectSizes => "heap sizes (and the leak signal) are unavailable",
        Role::Record => "V8's own record of the pause is unavailable",
    };
    format!("no {} in the binary: {loss}", names.join(" or "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip() {
        for role in roles().into_iter().chain([Role::Record]) {
            assert_eq!(Role::from_cookie(role.code()), Some(role));
        }
        assert_eq!(Role::from_cookie(0), None);
        assert_eq!(Role::from_cookie(200), None);
    }

    #[test]
    fn reasons_are_named_and_unknown_values_numbered() {
        assert_eq!(reason_name(1), "allocation failure");
        assert_eq!(reason_name(9), "finalize incremental marking via task");
        assert_eq!(reason_name(999), "reason 999");
    }

    #[test]
    fn record_reads_type_reason_sizes_then_times() {
        let l18 = &TRACER_LAYOUTS[0];
        let r = l18.reads();
        assert_eq!(r.count, 6);
        assert_eq!(r.offsets, [0x08, 0x10, 0x38, 0x40, 0x20, 0x28]);
        let l26 = TRACER_LAYOUTS.iter().find(|l| l.v8 == (14, 6)).unwrap();
        assert_eq!(l26.reads().count, 4);
        assert_eq!(l26.reads().offsets[..4], [0x08, 0x10, 0x40, 0x48]);
    }

    #[test]
    fn every_major_gets_the_record_plan() {
        for major in [18, 20, 22, 24, 26] {
            let node = crate::v8::live_tests::node_binary(major);
            let points = GcPoints::find(&node).unwrap();
            assert!(
                matches!(points.plan, Plan::TracerRecord(_)),
                "node {major}: {:?}",
                points.missing
            );
            assert!(
                points.missing.is_empty(),
                "node {major}: {:?}",
                points.missing
            );
            assert!(points.has(Role::Record));
        }
    }

    #[test]
    fn not_node() {
        let err = GcPoints::find(Path::new("/bin/sh")).unwrap_err();
        assert!(matches!(err, PointsError::NoVersion { .. }), "{err}");
    }
}
