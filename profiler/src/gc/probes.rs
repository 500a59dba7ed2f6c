//! The GC probes of one target: found, attached, drained into GC events.

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
        let points = attach_points(probe, pid, binary)?;
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
    let mut failed = Vec::new();
    for (index, site) in points.sites.iter().enumerate() {
        if let Err(e) = probe.attach_call(pid, binary, site.site) {
            // Permission problems concern every probe: say so at once.
            if matches!(e, ProbeError::NotPermitted) {
                probe.detach_calls();
                return Err(e.into());
            }
            failed.push((index, format!("{}: {e}", site.symbol)));
        }
    }
    // Without a usable plan, no probe may stay to trap the target's GCs.
    points
        .drop_failed(failed)
        .map_err(GcError::from)
        .inspect_err(|_| probe.detach_calls())?;
    Ok(points)
}

pub fn exe_path(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join("exe")
}
