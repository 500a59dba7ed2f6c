//! One event loop measured check by check from its thread's entries into
//! and exits from `epoll_wait`: a turn runs from an exit to the next entry.
//! Unlike a whole-recording cut into turns, this keeps the state between
//! checks, so a turn that began checks ago and still runs is seen growing.

/// The loop over one check's interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopWindow {
    /// Share of the interval spent in turns, 0–1.
    pub utilization: f64,
    /// The longest turn that ended in the interval or still runs, whole
    /// (also the part before the interval), ns.
    pub longest_ns: u64,
    /// The loop is in a turn now.
    pub in_turn: bool,
}

#[derive(Debug, Clone)]
pub struct LoopMeter {
    /// Where the loop is: `Some(Some(t))` in a turn since t, `Some(None)`
    /// waiting, `None` not known yet (no event seen, not asked).
    state: Option<Option<u64>>,
    window_start: u64,
    busy_ns: u64,
    longest_ns: u64,
}

impl LoopMeter {
    /// Starts measuring at `now`.
    pub fn new(now: u64) -> LoopMeter {
        LoopMeter {
            state: None,
            window_start: now,
            busy_ns: 0,
            longest_ns: 0,
        }
    }

    /// The loop thread entered `epoll_wait` (`entered`) or left it, at
    /// `time_ns`; events come in time order.
    pub fn event(&mut self, time_ns: u64, entered: bool) {
        let time_ns = time_ns.max(self.window_start);
        match (self.state, entered) {
            (Some(Some(since)), true) => self.end_turn(since, time_ns),
            (None, true) => {
                // It was in a turn since before the window's start at least.
                self.end_turn(self.window_start, time_ns)
            }
            (_, false) => self.state = Some(Some(time_ns)),
            // An entry while waiting: an exit was lost; nothing to count.
            (Some(None), true) => self.state = Some(None),
        }
    }

    fn end_turn(&mut self, since: u64, at: u64) {
        self.busy_ns += at.saturating_sub(since.max(self.window_start));
        self.longest_ns = self.longest_ns.max(at.saturating_sub(since));
        self.state = Some(None);
    }

    /// How long the turn running now has lasted, if one is known to run:
    /// lets a check come early, while a blocked loop is still blocked.
    pub fn ongoing_ns(&self, now: u64) -> Option<u64> {
        match self.state {
            Some(Some(since)) => Some(now.saturating_sub(since)),
            _ => None,
        }
    }

    /// Ends the interval at `now`. `outside_wait` tells, when the meter has
    /// seen no event yet, whether the thread is outside `epoll_wait` now (a
    /// loop blocked since before watching began never enters or leaves it).
    pub fn finish(&mut self, now: u64, outside_wait: Option<bool>) -> Option<LoopWindow> {
        if self.state.is_none() {
            match outside_wait {
                Some(true) => self.state = Some(Some(self.window_start)),
                Some(false) => self.state = Some(None),
                None => {
                    self.window_start = now;
                    return None;
                }
            }
        }
        let window = now.saturating_sub(self.window_start).max(1);
        let mut busy = self.busy_ns;
        let mut longest = self.longest_ns;
        let in_turn = matches!(self.state, Some(Some(_)));
        if let Some(Some(since)) = self.state {
            busy += now.saturating_sub(since.max(self.window_start));
            longest = longest.max(now.saturating_sub(since));
        }
        self.window_start = now;
        self.busy_ns = 0;
        self.longest_ns = 0;
        Some(LoopWindow {
            utilization: (busy as f64 / window as f64).min(1.0),
            longest_ns: longest,
            in_turn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn turns_and_waits_within_intervals() {
        let mut m = LoopMeter::new(0);
        m.event(100 * MS, false); // leaves epoll_wait: a turn starts
        m.event(300 * MS, true); // 200 ms turn
        m.event(900 * MS, false); // a turn still running at the check
        let w = m.finish(1000 * MS, None).unwrap();
        assert!((w.utilization - 0.3).abs() < 1e-9, "{w:?}");
        assert_eq!(w.longest_ns, 200 * MS);
        assert!(w.in_turn);
        // It ends 600 ms after it began: whole, in the interval where it ended.
        m.event(1500 * MS, true);
        let w = m.finish(2000 * MS, None).unwrap();
        assert_eq!(w.longest_ns, 600 * MS);
        assert!((w.utilization - 0.5).abs() < 1e-9, "{w:?}");
        assert!(!w.in_turn);
        // Then idle.
        let w = m.finish(3000 * MS, None).unwrap();
        assert_eq!((w.longest_ns, w.utilization), (0, 0.0));
    }

    #[test]
    fn a_running_turn_is_seen_before_the_check() {
        let mut m = LoopMeter::new(0);
        assert_eq!(m.ongoing_ns(100 * MS), None);
        m.event(100 * MS, false);
        assert_eq!(m.ongoing_ns(450 * MS), Some(350 * MS));
        m.event(500 * MS, true);
        assert_eq!(m.ongoing_ns(600 * MS), None);
    }

    #[test]
    fn a_loop_blocked_before_watching_began_is_seen_growing() {
        let mut m = LoopMeter::new(0);
        // No event ever: the thread is asked where it is.
        let w = m.finish(1000 * MS, Some(true)).unwrap();
        assert_eq!(w.longest_ns, 1000 * MS);
        assert_eq!(w.utilization, 1.0);
        let w = m.finish(2000 * MS, None).unwrap();
        assert_eq!(w.longest_ns, 2000 * MS);
    }

    #[test]
    fn unknown_until_known() {
        let mut m = LoopMeter::new(0);
        assert_eq!(m.finish(1000 * MS, None), None);
        let w = m.finish(2000 * MS, Some(false)).unwrap();
        assert_eq!((w.longest_ns, w.utilization), (0, 0.0));
        // A first event that is an entry closes a turn open since the window began.
        let mut m = LoopMeter::new(0);
        m.event(400 * MS, true);
        let w = m.finish(1000 * MS, None).unwrap();
        assert_eq!(w.longest_ns, 400 * MS);
    }
}
