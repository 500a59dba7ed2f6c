//! SIGINT, SIGTERM and SIGHUP as a flag, for captures that run on plain
//! threads (a core or a heap snapshot) and must finish their cleanup (resume
//! the target, close the inspector, remove the partial file) instead of dying.

use std::sync::atomic::{AtomicI32, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);
static COUNT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only atomic operations: async-signal-safe.
    PENDING.store(signal, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst);
}

/// How many stop signals arrived: a second one cuts a cleanup wait short.
pub fn count() -> i32 {
    COUNT.load(Ordering::SeqCst)
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on; they set [`pending`].
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Stops running captures as if `signal` had arrived, for a caller that
/// handles the signals itself (`watch`, through tokio) instead of [`install`].
pub fn request(signal: i32) {
    on_signal(signal);
}

/// The signal that asked nodeprof to stop, if one did.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

pub fn describe(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "interrupted (SIGINT)",
        libc::SIGTERM => "terminated (SIGTERM)",
        libc::SIGHUP => "hung up (SIGHUP)",
        _ => "stopped by a signal",
    }
}
