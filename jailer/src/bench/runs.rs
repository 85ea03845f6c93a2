//! What `bench blk` and `bench net` share to put both transports side by side: several
//! guest runs per transport, a median and a spread per figure, and the vmm's exits per
//! request (from `bulkhead run --report-stats`) separated from its set-up exits.
//!
//! Exits per request: every run has the same set-up (device discovery and configuration,
//! the guest's console lines) and a different number of requests, because the runs
//! alternate between the chosen duration and twice it. The slope of the vmm's exits over
//! the runs' requests (least squares) is what each further request costs; a data path that
//! stays on ioeventfd/irqfd and shared memory shows 0. Port I/O exits are left out of the
//! slope: they are the guest's serial console, one per character, and its lines carry the
//! run's figures, whose digits vary.

use std::collections::HashMap;

use bulkhead_vmm::config::Transport;

/// The transports every run of `bench blk` and `bench net` measures, in table order.
pub const TRANSPORTS: [Transport; 2] = [Transport::Mmio, Transport::Pci];

/// Milliseconds per test of run `i` (0-based): `ms` for even runs, `2 * ms` for odd ones,
/// so that the runs differ in requests but not in set-up.
pub fn run_ms(ms: u64, i: u32) -> u64 {
    if i % 2 == 0 {
        ms
    } else {
        ms.saturating_mul(2)
    }
}

/// A figure measured over several runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `samples`; `None` for none.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let min = samples.iter().copied().reduce(f64::min)?;
        let max = samples.iter().copied().reduce(f64::max)?;
        Some(Spread {
            median: super::median(samples),
            min,
            max,
        })
    }

    /// Half the range, in percent of the median (0 for a median of 0).
    pub fn pct(&self) -> f64 {
        if self.median.abs() < 1e-12 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median * 100.0
        }
    }
}

/// The vmm's exits in one guest run, by kind, and the requests the guest made in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunExits {
    /// Requests (block I/Os, packets) the guest made.
    pub requests: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// Port I/O exits (the guest's serial console).
    pub pio: u64,
    /// Every other exit.
    pub other: u64,
}

impl RunExits {
    /// The exits in the `bulkhead-stats:` line of `bulkhead run --report-stats`'s standard
    /// error `stderr`, with `requests`; `None` if there is no such line.
    pub fn parse(stderr: &str, requests: u64) -> Option<RunExits> {
        // The launcher prefixes the vmm's lines with `vmm| `.
        let line = stderr
            .lines()
            .filter_map(|l| l.split_once("bulkhead-stats: ").map(|(_, r)| r))
            .find(|r| r.contains("exits_mmio="))?;
        let kv: HashMap<&str, u64> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        Some(RunExits {
            requests,
            mmio: *kv.get("exits_mmio")?,
            pio: *kv.get("exits_pio")?,
            other: *kv.get("exits_other")?,
        })
    }

    /// Every exit to the vmm.
    pub fn total(&self) -> u64 {
        self.mmio + self.pio + self.other
    }

    /// The exits a device can cause: all but port I/O (the serial console).
    pub fn device(&self) -> u64 {
        self.mmio + self.other
    }
}

/// Device exits to the vmm per further request: the least-squares slope of
/// [`RunExits::device`] over requests across `runs`; `None` with fewer than two runs or no
/// difference in requests.
pub fn exits_per_request(runs: &[RunExits]) -> Option<f64> {
    if runs.len() < 2 {
        return None;
    }
    let n = runs.len() as f64;
    let mean_x = runs.iter().map(|r| r.requests as f64).sum::<f64>() / n;
    let mean_y = runs.iter().map(|r| r.device() as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for r in runs {
        let dx = r.requests as f64 - mean_x;
        sxy += dx * (r.device() as f64 - mean_y);
        sxx += dx * dx;
    }
    // Runs of ms and 2 ms differ by thousands of requests; equal counts give no slope.
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The exits line of one transport: per run, and per further request.
pub fn exits_summary(t: Transport, runs: &[RunExits]) -> String {
    let per_run: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} req: {} exits ({} mmio, {} pio, {} other)",
                r.requests,
                r.total(),
                r.mmio,
                r.pio,
                r.other
            )
        })
        .collect();
    let slope = match exits_per_request(runs) {
        Some(s) => format!("{s:.4}"),
        None => "- (needs --runs 2 or more)".into(),
    };
    format!(
        "{t:<4} vmm exits (MMIO + other) per request in steady state: {slope}; per run: {}",
        per_run.join("; ")
    )
}

/// A table cell: the median of `what` (formatted by `show`) and its spread.
pub fn cell(s: Option<Spread>, show: impl Fn(f64) -> String) -> String {
    match s {
        Some(s) => format!("{} ±{:>2.0}%", show(s.median), s.pct()),
        None => "-".into(),
    }
}

/// `a` / `b` as `1.23x`, or `-`.
pub fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}x", a.median / b.median),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_half_range() {
        let s = Spread::of(&[90.0, 110.0, 100.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (100.0, 90.0, 110.0));
        assert!((s.pct() - 10.0).abs() < 1e-9);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(cell(Some(s), |v| format!("{v:.0}")), "100 ±10%");
        assert_eq!(cell(Spread::of(&[5.0]), |v| format!("{v:.0}")), "5 ± 0%");
    }

    #[test]
    fn runs_alternate_lengths() {
        assert_eq!(
            (run_ms(500, 0), run_ms(500, 1), run_ms(500, 2)),
            (500, 1000, 500)
        );
    }

    #[test]
    fn exits_are_read_from_the_stats_line() {
        let stderr = "vmm| something\nvmm| bulkhead-stats: first_entry_monotonic_ns=5 \
                      exits_pio=40 exits_mmio=120 exits_other=2\n\
                      vmm| bulkhead-stats: vm_hwm_kib=1 rss_anon_kib=2\n";
        let r = RunExits::parse(stderr, 1000).unwrap();
        assert_eq!(
            (r.requests, r.mmio, r.pio, r.other, r.total()),
            (1000, 120, 40, 2, 162)
        );
        assert_eq!(RunExits::parse("nothing", 1), None);
    }

    #[test]
    fn steady_state_is_the_slope_not_the_set_up() {
        let run = |requests, mmio| RunExits {
            requests,
            mmio,
            pio: 40,
            other: 0,
        };
        // Set-up exits only: the same in every run however many requests (the console's
        // port I/O varies with the digits it prints, and does not count).
        let mut flat = [run(10_000, 150), run(20_500, 150), run(9_800, 150)];
        flat[1].pio += 7;
        assert_eq!(exits_per_request(&flat), Some(0.0));
        // One exit per request on top of the set-up (an ISR read per completion, say).
        let one = [run(10_000, 10_150), run(20_000, 20_150), run(9_000, 9_150)];
        assert!((exits_per_request(&one).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(exits_per_request(&flat[..1]), None);
        assert_eq!(exits_per_request(&[run(5, 1), run(5, 2)]), None);
        assert!(exits_summary(Transport::Pci, &flat).contains("steady state: 0.0000"));
    }
}
