//! One backoff for every retry loop: store retries, mailbox sessions, the
//! outbox's claims and records, and the delay before a reply's next attempt.
//!
//! Not the `backon` crate: its builders drive a closure through an iterator
//! of delays, while our loops keep their own attempt counts (a mailbox
//! session resets it after a healthy connection; the outbox stores it with
//! the reply and computes the next attempt's time from it). A delay as a
//! function of the attempt number fits all of them.

use std::time::Duration;

/// Exponential backoff: `first`, doubling per attempt, capped at `max`, then
/// spread by `jitter` (a fraction either side) so that work which failed
/// together does not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Backoff {
    /// Database retries (locks, busy files, a connection blip): 50–100 ms
    /// first, at most 1–2 s.
    pub const STORE: Backoff = Backoff {
        first: Duration::from_millis(75),
        max: Duration::from_millis(1500),
        jitter: 1.0 / 3.0,
    };

    /// A failed mailbox session: about 1 s, 2 s, 4 s … up to 5 minutes.
    pub const SESSION: Backoff = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(300),
        jitter: 1.0 / 8.0,
    };

    /// Without jitter: the same attempt always waits the same time.
    pub fn exact(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            jitter: 0.0,
        }
    }

    /// The wait before attempt `attempt + 1`, after `attempt` (≥ 1) failures.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self
            .first
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max);
        if self.jitter <= 0.0 {
            return base;
        }
        let spread = 1.0 + self.jitter * (2.0 * rand::random::<f64>() - 1.0);
        base.mul_f64(spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stop_at_the_cap() {
        let exact = Backoff::exact(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<u128> = (1..=5).map(|a| exact.delay(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 400, 400]);
        assert_eq!(exact.delay(u32::MAX), Duration::from_millis(400));
    }

    #[test]
    fn jitter_stays_inside_its_band() {
        for attempt in 1..40 {
            let d = Backoff::SESSION.delay(attempt);
            assert!(d <= Duration::from_secs(300) * 9 / 8, "{attempt}: {d:?}");
            let store = Backoff::STORE.delay(attempt);
            assert!(store >= Duration::from_millis(50) && store <= Duration::from_secs(2));
        }
        assert!(Backoff::SESSION.delay(1) < Duration::from_secs(2));
        assert!(Backoff::SESSION.delay(4) >= Duration::from_secs(7));
    }
}
