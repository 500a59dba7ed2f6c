//! Evidence taken from a live process: [`cpu`] samples it into a
//! [`cpu::Capture`]. Every capture shares when and why it stops
//! ([`Stopper`], [`StopReason`]).

mod blocked;
pub mod cpu;

use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::target::Target;

/// Why a recording or trace stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    DurationElapsed,
    Interrupted,
    Terminated,
    /// SIGHUP: the terminal went away (an SSH session dropped).
    HungUp,
    TargetExited,
    /// The reader of nodeprof's output went away (`nodeprof gc | head`).
    OutputClosed,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::DurationElapsed => "duration elapsed",
            StopReason::Interrupted => "interrupted",
            StopReason::Terminated => "terminated",
            StopReason::HungUp => "hung up",
            StopReason::TargetExited => "target exited",
            StopReason::OutputClosed => "output closed",
        }
    }
}

/// The stop conditions of a session: Ctrl-C, SIGTERM, SIGHUP, the duration,
/// the target's exit.
pub struct Stopper {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    started: Instant,
    duration: Option<Duration>,
}

impl Stopper {
    /// Installs the signal handlers; the duration counts from now.
    pub fn new(duration: Option<Duration>) -> std::io::Result<Stopper> {
        Ok(Stopper {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            started: Instant::now(),
            duration,
        })
    }

    /// Resolves when SIGINT, SIGTERM or SIGHUP arrives: each ends the
    /// session with everything taken so far written.
    pub async fn signalled(&mut self) -> StopReason {
        tokio::select! {
            _ = self.interrupt.recv() => StopReason::Interrupted,
            _ = self.terminate.recv() => StopReason::Terminated,
            _ = self.hangup.recv() => StopReason::HungUp,
        }
    }

    /// Whether the duration ran out or the target is gone (checked on a tick).
    pub fn due(&self, target: &Target) -> Option<StopReason> {
        if self.duration.is_some_and(|d| self.started.elapsed() >= d) {
            return Some(StopReason::DurationElapsed);
        }
        // A launched child that exited stays a zombie until reaped: not alive.
        (!target.is_alive()).then_some(StopReason::TargetExited)
    }
}
