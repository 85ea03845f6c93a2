//! A logger that limits every call site of the process, ours and other crates' alike
//! (virtio-queue and vhost-user-backend log an error for each bad ring a guest hands
//! them): each record's source location gets a [`LogSite`], the rest of the work is the
//! wrapped logger's. [`install`] it in place of `env_logger::Builder::init`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record, SetLoggerError};

use crate::LogSite;

/// Most distinct call sites tracked; records from further sites share one budget (a
/// process has a few hundred sites at most, so this is never reached in practice).
const MAX_SITES: usize = 4096;

thread_local! {
    /// Set while a line that a [`crate::limited!`] site let through is being logged: it
    /// was limited once already, and limiting it again would count its drops twice.
    static ADMITTED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `log` (the logging of one line a limited site let through) so that a
/// [`LimitedLogger`] passes it on without limiting it a second time.
#[doc(hidden)]
pub fn admitted(log: impl FnOnce()) {
    ADMITTED.with(|a| a.set(true));
    log();
    ADMITTED.with(|a| a.set(false));
}

/// Wraps a logger so that each call site is limited as [`LogSite`] says.
pub struct LimitedLogger<L> {
    inner: L,
    sites: Mutex<HashMap<(&'static str, u32), &'static LogSite>>,
    overflow: LogSite,
}

impl<L: Log> LimitedLogger<L> {
    /// Wraps `inner`.
    pub fn new(inner: L) -> Self {
        LimitedLogger {
            inner,
            sites: Mutex::new(HashMap::new()),
            overflow: LogSite::new(),
        }
    }

    /// The site of `record`: its static file and line (records built at run time, without
    /// a static location, share the overflow site).
    fn admit(&self, record: &Record<'_>) -> Option<u64> {
        let (Some(file), Some(line)) = (record.file_static(), record.line()) else {
            return self.overflow.admit();
        };
        let site = {
            let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(site) = sites.get(&(file, line)) {
                Some(*site)
            } else if sites.len() < MAX_SITES {
                // Leaked on purpose: sites live as long as the process, like the statics
                // the macros make, and there are at most MAX_SITES of them.
                let site: &'static LogSite = Box::leak(Box::new(LogSite::new()));
                sites.insert((file, line), site);
                Some(site)
            } else {
                None
            }
        };
        site.unwrap_or(&self.overflow).admit()
    }
}

impl<L: Log> Log for LimitedLogger<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if ADMITTED.with(Cell::get) {
            return self.inner.log(record);
        }
        match self.admit(record) {
            None => {}
            Some(0) => self.inner.log(record),
            Some(n) => self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .args(format_args!(
                        "{} ({n} similar messages suppressed)",
                        record.args()
                    ))
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Makes `inner`, limited per call site, the process's logger, with `max` as the level
/// filter (env_logger's `Logger::filter()`).
pub fn install(inner: impl Log + 'static, max: LevelFilter) -> Result<(), SetLoggerError> {
    log::set_boxed_logger(Box::new(LimitedLogger::new(inner)))?;
    log::set_max_level(max);
    Ok(())
}

/// Every bulkhead program's logging: env_logger on stderr (`RUST_LOG`, default `warn`,
/// millisecond timestamps), limited per call site. A second call (several daemons in one
/// test process) changes nothing and says so.
pub fn init_env_logger() -> Result<(), SetLoggerError> {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
            .format_timestamp_millis()
            .build();
    let max = logger.filter();
    install(logger, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LINE_BURST;

    /// Keeps what reaches it.
    #[derive(Default)]
    struct Keep(Mutex<Vec<String>>);

    impl Log for Keep {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &Record<'_>) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    fn record_at(line: u32, logger: &impl Log) {
        logger.log(
            &Record::builder()
                .args(format_args!("bad ring"))
                .file_static(Some("virtio-queue/src/queue.rs"))
                .line(Some(line))
                .build(),
        );
    }

    #[test]
    fn every_site_is_limited_on_its_own() {
        let logger = LimitedLogger::new(Keep::default());
        for _ in 0..10_000 {
            record_at(314, &logger);
            record_at(573, &logger);
        }
        let kept = logger.inner.0.lock().unwrap().len();
        assert_eq!(kept, 2 * LINE_BURST as usize);
    }

    #[test]
    fn a_line_a_limited_site_let_through_is_not_limited_again() {
        let logger = LimitedLogger::new(Keep::default());
        for _ in 0..100 {
            admitted(|| record_at(1, &logger));
        }
        assert_eq!(logger.inner.0.lock().unwrap().len(), 100);
        record_at(1, &logger);
        assert_eq!(
            logger.inner.0.lock().unwrap().len(),
            101,
            "its own budget is whole"
        );
    }

    #[test]
    fn the_count_of_dropped_lines_comes_with_the_next_one() {
        let logger = LimitedLogger::new(Keep::default());
        let site = logger.admit(
            &Record::builder()
                .file_static(Some("x.rs"))
                .line(Some(1))
                .build(),
        );
        assert_eq!(site, Some(0));
        // Runs one second of a flood through the site's own bucket, then checks the note.
        let sites = logger.sites.lock().unwrap();
        let s = sites[&("x.rs", 1)];
        let t0 = std::time::Instant::now();
        let dropped = (0..50).filter(|_| s.admit_at(t0).is_none()).count() as u64;
        let note = s.admit_at(t0 + std::time::Duration::from_secs(2));
        assert_eq!(note, Some(dropped));
    }
}
