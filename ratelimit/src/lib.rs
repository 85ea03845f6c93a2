//! Rate limits for what a guest or a peer process can make bulkhead do over and over:
//! [`TokenBucket`] (a burst, then a steady rate; for lines or bytes), and log lines
//! limited per call site ([`limited!`] and its per-level forms, for our own sites;
//! [`LimitedLogger`] around the process's logger, for every site including other crates'),
//! so that a guest looping on a register write or a peer sending bad replies cannot flood
//! the host's logs.
//!
//! ```
//! # let device = "disk0";
//! // At most LINE_BURST lines at once, then LINES_PER_SEC; the next line to get through
//! // says how many were dropped since the last one.
//! bulkhead_ratelimit::warn_limited!("{device}: DRIVER_OK without FEATURES_OK");
//! ```

mod bucket;
mod logger;
mod site;

pub use bucket::TokenBucket;
pub use logger::{admitted, init_env_logger, install, LimitedLogger};
pub use site::{LogSite, LINES_PER_SEC, LINE_BURST};

#[doc(hidden)]
pub use log as __log;

/// Logs at `level` (a `log::Level`) like `log::log!`, limited per call site: [`LINE_BURST`]
/// lines, then [`LINES_PER_SEC`] a second; the next line let through after some were
/// dropped ends with `(N similar messages suppressed)`. Costs one atomic load when the
/// level is disabled.
#[macro_export]
macro_rules! limited {
    ($level:expr, $($arg:tt)+) => {{
        static SITE: $crate::LogSite = $crate::LogSite::new();
        let level = $level;
        if $crate::__log::log_enabled!(level) {
            if let Some(suppressed) = SITE.admit() {
                $crate::admitted(|| {
                    if suppressed == 0 {
                        $crate::__log::log!(level, $($arg)+);
                    } else {
                        $crate::__log::log!(
                            level,
                            "{} ({} similar messages suppressed)",
                            format_args!($($arg)+),
                            suppressed
                        );
                    }
                })
            }
        }
    }};
}

/// [`limited!`] at error level.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::limited!($crate::__log::Level::Error, $($arg)+) };
}

/// [`limited!`] at warn level.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::limited!($crate::__log::Level::Warn, $($arg)+) };
}

/// [`limited!`] at info level.
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::limited!($crate::__log::Level::Info, $($arg)+) };
}

/// [`limited!`] at debug level.
#[macro_export]
macro_rules! debug_limited {
    ($($arg:tt)+) => { $crate::limited!($crate::__log::Level::Debug, $($arg)+) };
}

/// [`limited!`] at trace level.
#[macro_export]
macro_rules! trace_limited {
    ($($arg:tt)+) => { $crate::limited!($crate::__log::Level::Trace, $($arg)+) };
}
