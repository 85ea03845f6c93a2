//! Restart policy of a device process (`restart=off|N/SECS` on `--disk`, `--net`,
//! `--vsock` and `--console`), and the budget that enforces it: a process that dies is
//! started again as long as fewer than N restarts happened within the last SECS seconds.
//! The default, for every device process bulkhead starts, is [`DEFAULT`] (5 within 60 s).
//! Restarts asked for with `bulkhead ctl restart` are not counted.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Most restarts a policy may allow per window (a larger number is no budget at all).
pub const MAX_RESTARTS: u32 = 1000;
/// Longest window, in seconds (a day).
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// The window of `restart=N`.
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// `restart=` when none is given: 5 restarts within 60 s.
pub const DEFAULT: RestartPolicy = RestartPolicy::Budget {
    restarts: 5,
    window_secs: DEFAULT_WINDOW_SECS,
};

/// What to do when a device process dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart it: its death stops the VM (bulkhead's behaviour before restarts).
    Off,
    /// Restart it up to `restarts` times within any `window_secs` seconds.
    Budget {
        /// Restarts allowed per window (1 or more).
        restarts: u32,
        /// The window, in seconds (1 or more).
        window_secs: u64,
    },
}

impl Default for RestartPolicy {
    fn default() -> Self {
        DEFAULT
    }
}

impl RestartPolicy {
    /// Whether the process is ever restarted.
    pub fn restarts(&self) -> bool {
        *self != RestartPolicy::Off
    }
}

impl fmt::Display for RestartPolicy {
    /// As it is spelt: `off` or `N/SECS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::Off => write!(f, "off"),
            RestartPolicy::Budget {
                restarts,
                window_secs,
            } => write!(f, "{restarts}/{window_secs}"),
        }
    }
}

/// Parses the value of `restart=`: `off`, `N` (N per 60 s) or `N/SECS`.
pub fn parse(value: &str) -> Result<RestartPolicy, String> {
    let bad = |why: &str| format!("restart={value}: {why} (expected off, N or N/SECS, e.g. 5/60)");
    if value == "off" {
        return Ok(RestartPolicy::Off);
    }
    let (n, secs) = value.split_once('/').unwrap_or((value, "60"));
    let restarts = n
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_RESTARTS).contains(n))
        .ok_or_else(|| bad(&format!("the number of restarts is 1 to {MAX_RESTARTS}")))?;
    let window_secs = secs
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=MAX_WINDOW_SECS).contains(s))
        .ok_or_else(|| bad(&format!("the window is 1 to {MAX_WINDOW_SECS} seconds")))?;
    Ok(RestartPolicy::Budget {
        restarts,
        window_secs,
    })
}

/// Splits a trailing `,restart=VALUE` off a value whose own syntax has no such key (the
/// `--console` value); returns the rest and the policy (the default when absent).
pub fn split_policy(s: &str) -> Result<(&str, RestartPolicy), String> {
    match s.rsplit_once(",restart=") {
        Some((rest, value)) => Ok((rest, parse(value)?)),
        None if s.starts_with("restart=") => Err(format!(
            "{s:?}: restart= comes after the value (e.g. socket=PATH,restart=off)"
        )),
        None => Ok((s, DEFAULT)),
    }
}

/// The restarts of one device: when each happened, to tell whether another is allowed.
#[derive(Debug)]
pub struct Budget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    /// Restarts so far, by the budget and asked for (`ctl restart`).
    pub total: u32,
}

/// A refusal: the budget is spent.
#[derive(Debug, PartialEq, Eq)]
pub struct Spent;

impl Budget {
    /// An unused budget under `policy`.
    pub fn new(policy: RestartPolicy) -> Budget {
        Budget {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> RestartPolicy {
        self.policy
    }

    /// Takes one restart at `now` if the policy allows it: returns which restart within
    /// the window this is (1 for the first).
    pub fn take(&mut self, now: Instant) -> Result<u32, Spent> {
        let RestartPolicy::Budget {
            restarts,
            window_secs,
        } = self.policy
        else {
            return Err(Spent);
        };
        let window = Duration::from_secs(window_secs);
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= restarts as usize {
            return Err(Spent);
        }
        self.recent.push_back(now);
        self.total += 1;
        Ok(self.recent.len() as u32)
    }

    /// Counts a restart that was asked for (`ctl restart`): not against the budget.
    pub fn count_asked(&mut self) {
        self.total += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!(parse("off"), Ok(RestartPolicy::Off));
        assert_eq!(
            parse("3"),
            Ok(RestartPolicy::Budget {
                restarts: 3,
                window_secs: 60
            })
        );
        assert_eq!(
            parse("10/5"),
            Ok(RestartPolicy::Budget {
                restarts: 10,
                window_secs: 5
            })
        );
        assert_eq!(RestartPolicy::default().to_string(), "5/60");
        for bad in [
            "", "on", "0", "-1", "5/0", "5/", "/60", "x/60", "5/60/1", "1001", "5/86401",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("restart={bad}: ")), "{e}");
        }
    }

    #[test]
    fn a_policy_is_split_off_a_value() {
        assert_eq!(split_policy("pty"), Ok(("pty", DEFAULT)));
        assert_eq!(
            split_policy("file=/x,max-size=1M,restart=off"),
            Ok(("file=/x,max-size=1M", RestartPolicy::Off))
        );
        assert!(split_policy("socket=/s,restart=maybe").is_err());
        assert!(split_policy("restart=off").is_err());
    }

    #[test]
    fn the_budget_refuses_the_restart_beyond_it_and_recovers_after_the_window() {
        let mut b = Budget::new(DEFAULT);
        let t0 = Instant::now();
        for i in 1..=5 {
            assert_eq!(b.take(t0 + Duration::from_secs(i)), Ok(i as u32));
        }
        assert_eq!(b.take(t0 + Duration::from_secs(10)), Err(Spent));
        // 60 s after the first restart, one slot is free again.
        assert_eq!(b.take(t0 + Duration::from_secs(61)), Ok(5));
        assert_eq!(b.take(t0 + Duration::from_secs(61)), Err(Spent));
        assert_eq!(b.total, 6);
        b.count_asked();
        assert_eq!(b.total, 7);
        let mut off = Budget::new(RestartPolicy::Off);
        assert_eq!(off.take(t0), Err(Spent));
    }
}
