//! `bulkhead bench net`: UDP throughput guest to host and host to guest through
//! `bulkhead-net` (a TAP in a namespace bulkhead creates), at 64- and 1400-byte payloads,
//! beside the host's own throughput over a veth pair between two namespaces (the same
//! kind of set-up without a VM), with the ratios.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cli::NetBenchArgs;

const SIZES: [usize; 2] = [64, 1400];
const PORT: u16 = 5555;

/// Packets per second and bits of payload per second.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    packets: u64,
    secs: f64,
    size: usize,
}

impl Rate {
    fn pps(&self) -> f64 {
        self.packets as f64 / self.secs.max(1e-9)
    }
    fn gbps(&self) -> f64 {
        self.pps() * self.size as f64 * 8.0 / 1e9
    }
}

/// Rates by payload size.
type Rates = HashMap<usize, Rate>;

/// Runs the benchmark; returns the exit status.
pub fn main(args: NetBenchArgs) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bulkhead bench net: {e}");
            crate::run::EXIT_BULKHEAD_FAILED
        }
    }
}

fn run(args: &NetBenchArgs) -> Result<(), String> {
    let ms = args.ms;
    println!("bulkhead bench net: UDP, {ms} ms per test, guest polling its rings");
    println!("running the guest on bulkhead-net (--net auto) ...");
    let (tx, rx) = guest_run(ms)?;
    println!("running the host baseline over a veth pair between two namespaces ...");
    let veth = Veth::create()?;
    let mut base = HashMap::new();
    for size in SIZES {
        base.insert(size, veth.measure(size, Duration::from_millis(ms))?);
    }
    drop(veth);
    println!();
    println!(
        "{:<14} {:>5} | {:>24} | {:>24} | {:>7}",
        "direction", "size", "bulkhead-net", "host veth", "ratio"
    );
    for size in SIZES {
        let b = base.get(&size).copied().unwrap_or_default();
        for (dir, r) in [
            ("guest -> host", tx.get(&size)),
            ("host -> guest", rx.get(&size)),
        ] {
            let cell = |r: &Rate| format!("{:>9.0} pps {:>7.3} Gb/s", r.pps(), r.gbps());
            println!(
                "{dir:<14} {size:>5} | {:>24} | {:>24} | {:>7}",
                r.map(cell).unwrap_or_else(|| "-".into()),
                cell(&b),
                r.map(|r| format!("{:.2}x", r.pps() / b.pps().max(1e-9)))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    println!("(guest -> host counts what the host socket received; host -> guest what the guest counted)");
    Ok(())
}

/// Boots the guest's `net-bench`: returns (guest->host, host->guest) rates per size.
fn guest_run(ms: u64) -> Result<(Rates, Rates), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding bulkhead: {e}"))?;
    let mut child = Command::new(exe)
        .args(["run", "--memory", "512"])
        .args(["--net", "auto,host-ip=10.0.2.1/24,guest-ip=10.0.2.2/24"])
        .arg("--cmdline")
        .arg(format!(
            "bulkhead.test=net-bench bulkhead.net.ip=10.0.2.2/24 bulkhead.net.peer=10.0.2.1 \
             bulkhead.net.port={PORT} bulkhead.net.bench-ms={ms}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting bulkhead: {e}"))?;
    let ns = format!("bulkhead-{}-net0", child.id());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    // Guest -> host: a socket in the namespace counts datagrams by size.
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (ns, counts, stop) = (ns.clone(), counts.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), String> {
            wait_for_namespace(&ns)?;
            enter(&ns)?;
            // The namespace appears a moment before its host address is configured.
            let sock = wait_briefly(|| UdpSocket::bind(("10.0.2.1", PORT)).ok())
                .ok_or_else(|| format!("binding 10.0.2.1:{PORT} in {ns}: no such address"))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if let Some(i) = SIZES.iter().position(|s| *s == n) {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(())
        })
    };
    let (mut tx, mut rx) = (HashMap::new(), HashMap::new());
    let mut tx_seen = 0u64;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let Some(rest) = line.strip_prefix("bulkhead-guest: net-bench ") else {
            if line.contains("FAIL") {
                eprintln!("{line}");
            }
            continue;
        };
        let kv: HashMap<&str, &str> = rest
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let size = num("size") as usize;
        if rest.starts_with("tx ") {
            // What the host received of this size, over the guest's sending time.
            let i = SIZES.iter().position(|s| *s == size).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(200));
            let got = counts[i].load(Ordering::Relaxed);
            tx.insert(
                size,
                Rate {
                    packets: got,
                    secs: num("ms") / 1000.0,
                    size,
                },
            );
            tx_seen += 1;
        } else if rest.starts_with("rx ready ") {
            let (ns, port, dur) = (
                ns.clone(),
                num("port") as u16,
                Duration::from_millis(num("ms") as u64),
            );
            std::thread::spawn(move || {
                let _ = blast(&ns, ("10.0.2.2", port), size, dur);
            });
        } else if rest.starts_with("rx ") {
            rx.insert(
                size,
                Rate {
                    packets: num("packets") as u64,
                    secs: num("ms") / 1000.0,
                    size,
                },
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let status = child.wait().map_err(|e| e.to_string())?;
    receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    if !status.success() || tx_seen == 0 {
        return Err(format!("the guest benchmark failed ({status})"));
    }
    Ok((tx, rx))
}

fn wait_for_namespace(ns: &str) -> Result<(), String> {
    let path = crate::netns::path(ns);
    wait_briefly(|| path.exists().then_some(()))
        .ok_or_else(|| format!("network namespace {ns} did not appear"))
}

/// Calls `f` every 5 ms for up to 20 s until it gives an answer.
fn wait_briefly<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> Result<(), String> {
    crate::netns::enter_thread(&crate::netns::path(ns).to_string_lossy())
        .map_err(|e| format!("entering {ns}: {e}"))
}

/// From namespace `ns`, sends `size`-byte datagrams to `to` for `dur`; returns how many.
fn blast(ns: &str, to: (&str, u16), size: usize, dur: Duration) -> Result<u64, String> {
    enter(ns)?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.connect(to).map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; size];
    let end = Instant::now() + dur;
    let mut sent = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            if sock.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// Two namespaces joined by a veth pair, deleted on drop.
struct Veth {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    crate::netns::ip("the veth baseline", args).map_err(|e| e.to_string())
}

impl Veth {
    fn create() -> Result<Veth, String> {
        let pid = std::process::id();
        let v = Veth {
            a: format!("bulkhead-bench-{pid}-a"),
            b: format!("bulkhead-bench-{pid}-b"),
        };
        ip(&["netns", "add", &v.a])?;
        ip(&["netns", "add", &v.b])?;
        ip(&[
            "-n", &v.a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns",
            &v.b,
        ])?;
        ip(&["-n", &v.a, "addr", "add", "10.0.3.1/24", "dev", "veth0"])?;
        ip(&["-n", &v.b, "addr", "add", "10.0.3.2/24", "dev", "veth1"])?;
        for (ns, dev) in [(&v.a, "veth0"), (&v.b, "veth1")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(v)
    }

    /// Datagrams of `size` sent from a to b for `dur`, counted at b.
    fn measure(&self, size: usize, dur: Duration) -> Result<Rate, String> {
        let b = self.b.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receiver = {
            let (stop, got) = (stop.clone(), got.clone());
            std::thread::spawn(move || -> Result<(), String> {
                enter(&b)?;
                let sock = UdpSocket::bind(("10.0.3.2", PORT)).map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                let _ = ready_tx.send(());
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv_from(&mut buf).is_ok() {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        };
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let start = Instant::now();
        let a = self.a.clone();
        std::thread::spawn(move || blast(&a, ("10.0.3.2", PORT), size, dur))
            .join()
            .map_err(|_| "sender panicked".to_string())??;
        let secs = start.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        receiver
            .join()
            .map_err(|_| "receiver panicked".to_string())??;
        Ok(Rate {
            packets: got.load(Ordering::Relaxed),
            secs,
            size,
        })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("bulkhead bench net: {e}");
            }
        }
    }
}
