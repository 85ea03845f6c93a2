//! One log call site's limit: a [`TokenBucket`] of lines, made on first use, and the count
//! of lines dropped since the last one let through. [`crate::limited!`] puts one in a
//! `static` at each call site, so every site has its own budget, shared by the threads
//! and devices of the process (a flood from any of them is bounded in total).

use std::sync::Mutex;
use std::time::Instant;

use crate::TokenBucket;

/// Lines a site prints at once before it is limited.
pub const LINE_BURST: u64 = 10;
/// Lines a site prints a second once its burst is spent.
pub const LINES_PER_SEC: u64 = 1;

/// A log call site's limit.
#[derive(Debug)]
pub struct LogSite {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    bucket: Option<TokenBucket>,
    suppressed: u64,
}

impl LogSite {
    /// A site that has printed nothing yet.
    pub const fn new() -> Self {
        LogSite {
            state: Mutex::new(State {
                bucket: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be printed now: `Some(n)` with the number of lines dropped since
    /// the last one printed, or `None` (the line is dropped and counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at `now`.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A thread that panicked while holding the lock left a count and a bucket, both
        // still valid.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = state
            .bucket
            .get_or_insert_with(|| TokenBucket::new(LINE_BURST, LINES_PER_SEC, now));
        if bucket.take(1, now) {
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for LogSite {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_counted() {
        let site = LogSite::new();
        let t0 = Instant::now();
        let printed: Vec<u64> = (0..100_000).filter_map(|_| site.admit_at(t0)).collect();
        assert_eq!(printed, vec![0; LINE_BURST as usize]);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(site.admit_at(later), Some(100_000 - LINE_BURST));
        assert_eq!(site.admit_at(later), None);
        assert_eq!(site.admit_at(later + Duration::from_secs(1)), Some(1));
    }

    /// Keeps the lines logged through the `log` macros (the process's logger, for this
    /// test binary).
    struct Keep(Mutex<Vec<String>>);

    impl log::Log for Keep {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                self.0.lock().unwrap().push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    static KEPT: Keep = Keep(Mutex::new(Vec::new()));

    #[test]
    fn the_macros_limit_each_call_site_and_count_what_they_drop() {
        log::set_logger(&KEPT).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        // One call site, many lines.
        let flood = |text: &str| crate::warn_limited!("{text}");
        for i in 0..100 {
            flood(&format!("flood {i}"));
            // A level the logger does not print: nothing, whatever its budget.
            crate::debug_limited!("quiet {}", i);
        }
        for i in 0..3 {
            crate::error_limited!("other site {i}");
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
        flood("flood again");
        let kept = KEPT.0.lock().unwrap().clone();
        let burst: Vec<String> = (0..LINE_BURST).map(|i| format!("flood {i}")).collect();
        assert_eq!(kept[..LINE_BURST as usize], burst[..]);
        assert_eq!(
            kept[LINE_BURST as usize..],
            [
                "other site 0",
                "other site 1",
                "other site 2",
                "flood again (90 similar messages suppressed)"
            ]
        );
    }
}
