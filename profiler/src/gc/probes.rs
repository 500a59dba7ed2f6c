//! The GC probes of one target: found, attached, drained into GC events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{GcError, GcEvent, GcPoints, GcTracer};
use crate::clock::monotonic_ns;
use crate::collect::CallCollector;
use crate::probe::{Probe, ProbeError};
use crate::target::Target;

/// Probes attached to a target's GC, ready to be drained.
pub struct GcProbes {
    pub points: GcPoints,
    pub collector: CallCollector,
    pub tracer: GcTracer,
}

impl GcProbes {
    /// Finds the GC functions of `target`'s node binary and attaches the
    /// call tracer to them. Functions that cannot be probed are reported in
    /// `points.missing` and skipped, as long as a pause can still be timed.
    pub fn attach(probe: &mut Probe, target: &Target) -> Result<GcProbes, GcError> {
        GcProbes::attach_binary(probe, target.pid, &exe_path(target.pid))
    }

    /// Like [`GcProbes::attach`], for process `pid` running (or about to
    /// exec) the node binary at `binary`.
    pub fn attach_binary(probe: &mut Probe, pid: u32, binary: &Path) -> Result<GcProbes, GcError> {
        GcProbes::attach_found(probe, pid, binary, GcPoints::find(binary)?)
    }

    /// Like [`GcProbes::attach_binary`], with the GC functions of `binary`
    /// already found (read while the probe loads).
    pub fn attach_found(
        probe: &mut Probe,
        pid: u32,
        binary: &Path,
        mut points: GcPoints,
    ) -> Result<GcProbes, GcError> {
        attach_sites(probe, pid, binary, &mut points)?;
        let ring = probe
            .take_calls()
            .ok_or(GcError::Probe(ProbeError::Kernel {
                action: "trace GC",
                detail: "the GC event buffer is already in use".into(),
            }))
            .inspect_err(|_| probe.detach_calls())?;
        let mut tracer = GcTracer::new(&points);
        tracer.arm(monotonic_ns());
        Ok(GcProbes {
            tracer,
            points,
            collector: CallCollector::new(ring),
        })
    }

    /// After an exec: the probes move to the new binary's GC functions (the
    /// old ones went with the old image). GCs completed before are drained
    /// first and returned.
    pub fn reattach(
        &mut self,
        probe: &mut Probe,
        pid: u32,
        binary: &Path,
    ) -> Result<Vec<GcEvent>, GcError> {
        let done = self.drain(pid);
        probe.detach_calls();
        self.points = attach_points(probe, pid, binary)?;
        self.tracer = GcTracer::new(&self.points);
        self.tracer.arm(monotonic_ns());
        Ok(done)
    }

    /// Feeds every pending call event to the tracer; returns the GCs completed.
    pub fn drain(&mut self, pid: u32) -> Vec<GcEvent> {
        let mut done = Vec::new();
        let tracer = &mut self.tracer;
        self.collector.drain(|event| {
            if event.tgid == pid {
                done.extend(tracer.feed(&event));
            }
        });
        done
    }
}

/// Finds the GC functions of `binary` and attaches the call tracer to them
/// for process `pid`. Functions that cannot be probed are reported in
/// `missing` and skipped, as long as a pause can still be timed.
fn attach_points(probe: &mut Probe, pid: u32, binary: &Path) -> Result<GcPoints, GcError> {
    let mut points = GcPoints::find(binary)?;
    attach_sites(probe, pid, binary, &mut points)?;
    Ok(points)
}

/// Attaches `points`' sites to process `pid`, dropping those that fail as
/// long as a pause can still be timed; on failure nothing stays attached.
fn attach_sites(
    probe: &mut Probe,
    pid: u32,
    binary: &Path,
    points: &mut GcPoints,
) -> Result<(), GcError> {
    let mut failed = Vec::new();
    for (index, site) in points.sites.iter().enumerate() {
        if let Err(e) = probe.attach_call(pid, binary, site.site) {
            // Permission problems concern every probe: say so at once.
            if matches!(e, ProbeError::NotPermitted { .. }) {
                probe.detach_calls_of(pid);
                return Err(e.into());
            }
            // A process that died meanwhile fails every attach: say that.
            if !crate::target::is_alive(pid) {
                probe.detach_calls_of(pid);
                return Err(crate::target::TargetError::Exited(pid).into());
            }
            failed.push((index, format!("{}: {e}", site.symbol)));
        }
    }
    // Without a usable plan, no probe may stay to trap the target's GCs.
    points
        .drop_failed(failed)
        .map_err(GcError::from)
        .inspect_err(|_| probe.detach_calls_of(pid))
}

/// The GC probes of many processes over one event buffer (`watch`): each
/// process has its own tracer; its events are told apart by their tgid.
pub struct GcFleet {
    collector: Option<CallCollector>,
    tracers: HashMap<u32, GcTracer>,
    /// Probe plans by executable (device, inode): a cluster's workers run
    /// one binary, whose symbols are read once.
    plans: HashMap<(u64, u64), GcPoints>,
    /// Memory reads per distinct record layout, each under its own cookie
    /// tag: the reads map is keyed by cookie, and two V8 versions read
    /// different fields at the same role.
    tags: Vec<nodeprof_common::CallReads>,
}

impl Default for GcFleet {
    fn default() -> Self {
        GcFleet::new()
    }
}

impl GcFleet {
    pub fn new() -> GcFleet {
        GcFleet {
            collector: None,
            tracers: HashMap::new(),
            plans: HashMap::new(),
            tags: Vec::new(),
        }
    }

    /// Attaches GC probes to process `pid`; returns what could not be probed.
    pub fn attach(&mut self, probe: &mut Probe, pid: u32) -> Result<Vec<String>, GcError> {
        let binary = exe_path(pid);
        let meta = std::fs::metadata(&binary).map_err(|source| GcError::Io {
            action: "read the target's executable",
            source,
        })?;
        let key = (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        let mut points = match self.plans.get(&key) {
            Some(points) => points.clone(),
            None => {
                let points = GcPoints::find(&binary)?;
                self.plans.insert(key, points.clone());
                points
            }
        };
        for site in &mut points.sites {
            if let Some(reads) = site.site.reads {
                let tag = match self.tags.iter().position(|r| *r == reads) {
                    Some(tag) => tag,
                    None => {
                        self.tags.push(reads);
                        self.tags.len() - 1
                    }
                };
                // The role stays in the low byte (`Role::from_cookie`).
                site.site.cookie |= ((tag + 1) as u64) << 8;
            }
        }
        attach_sites(probe, pid, &binary, &mut points)?;
        if self.collector.is_none() {
            let ring = probe.take_calls().ok_or(GcError::Probe(ProbeError::Kernel {
                action: "trace GC",
                detail: "the GC event buffer is already in use".into(),
            }));
            match ring {
                Ok(ring) => self.collector = Some(CallCollector::new(ring)),
                Err(e) => {
                    probe.detach_calls_of(pid);
                    return Err(e);
                }
            }
        }
        let mut tracer = GcTracer::new(&points);
        tracer.arm(monotonic_ns());
        self.tracers.insert(pid, tracer);
        Ok(points.missing)
    }

    /// Stops tracing process `pid`.
    pub fn detach(&mut self, probe: &mut Probe, pid: u32) {
        probe.detach_calls_of(pid);
        self.tracers.remove(&pid);
    }

    /// Every GC completed since the last drain, with its process.
    pub fn drain(&mut self) -> Vec<(u32, GcEvent)> {
        let mut done = Vec::new();
        let tracers = &mut self.tracers;
        if let Some(collector) = &mut self.collector {
            collector.drain(|event| {
                if let Some(tracer) = tracers.get_mut(&event.tgid) {
                    done.extend(tracer.feed(&event).map(|gc| (event.tgid, gc)));
                }
            });
        }
        done
    }
}

pub fn exe_path(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("exe")
}
