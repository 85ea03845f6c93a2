//! A token bucket: up to `burst` tokens at once, refilled at `per_sec` tokens a second.
//! Time is passed in, so tests drive it with made-up instants.

use std::time::Instant;

/// Nanoseconds in a second: tokens are kept in nano-tokens so that slow rates refill
/// exactly.
const NANOS: u128 = 1_000_000_000;

/// A token bucket (for lines, bytes, anything counted).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Capacity, in nano-tokens.
    burst: u128,
    per_sec: u128,
    /// Tokens now, in nano-tokens.
    level: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled at `per_sec` a second from `now`.
    pub fn new(burst: u64, per_sec: u64, now: Instant) -> Self {
        let burst = u128::from(burst) * NANOS;
        TokenBucket {
            burst,
            per_sec: u128::from(per_sec),
            level: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // An instant earlier than the last one (clock handed in out of order) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_sec))
            .min(self.burst);
        self.last = self.last.max(now);
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        u64::try_from(self.level / NANOS).unwrap_or(u64::MAX)
    }

    /// Takes `n` tokens if there are that many at `now`; false (nothing taken) otherwise.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let want = u128::from(n) * NANOS;
        if self.level >= want {
            self.level -= want;
            true
        } else {
            false
        }
    }

    /// Takes up to `n` tokens at `now`; returns how many it took.
    pub fn take_up_to(&mut self, n: u64, now: Instant) -> u64 {
        let got = self.available(now).min(n);
        self.level -= u128::from(got) * NANOS;
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 1, t0);
        assert!((0..10).all(|_| b.take(1, t0)), "the burst");
        assert!(!b.take(1, t0), "empty");
        assert!(!b.take(1, t0 + Duration::from_millis(999)));
        assert!(b.take(1, t0 + Duration::from_secs(1)), "one a second");
        assert!(!b.take(1, t0 + Duration::from_secs(1)));
        // An hour later it is full again, not fuller.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 10);
    }

    #[test]
    fn fractions_of_a_token_add_up_and_time_never_runs_backwards() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(4096, 1000, t0);
        assert_eq!(b.take_up_to(10_000, t0), 4096);
        for ms in 1..=3 {
            // 1000 a second: one token per millisecond, in pieces of 0.5 ms.
            let _ = b.available(t0 + Duration::from_micros(ms * 1000 - 500));
            assert_eq!(b.take_up_to(10, t0 + Duration::from_millis(ms)), 1);
        }
        assert_eq!(b.available(t0), 0, "an earlier instant adds nothing");
        assert!(!b.take(1, t0 + Duration::from_millis(3)));
    }
}
