//! `bulkhead bench net`: UDP throughput guest to host and host to guest through
//! `bulkhead-net` (a TAP in a namespace bulkhead creates), at 64- and 1400-byte payloads,
//! over virtio-mmio and virtio-pci side by side (several runs each: medians and spread,
//! and the vmm's exits per packet), beside the host's own throughput over a veth pair
//! between two namespaces (the same kind of set-up without a VM), with the ratios.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_vmm::config::Transport;

use super::guest_transport;
use super::runs::{self, run_ms, RunExits, Spread, TRANSPORTS};
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

/// One direction's rates of a guest run.
type Direction = fn(&GuestRun) -> &Rates;

/// What one guest run measured: rates guest -> host and host -> guest by size, and the
/// vmm's exits.
struct GuestRun {
    tx: Rates,
    rx: Rates,
    exits: RunExits,
}

/// Runs the benchmark; returns the exit status.
pub fn main(args: NetBenchArgs) -> i32 {
    super::exit_status(run(&args))
}

fn run(args: &NetBenchArgs) -> Result<(), String> {
    let ms = args.ms;
    println!(
        "bulkhead bench net: UDP, {} runs per transport of {ms} ms per test (odd runs twice \
         that), guest polling its rings",
        args.runs
    );
    let mut ours: Vec<(Transport, Result<Vec<GuestRun>, String>)> = Vec::new();
    for t in TRANSPORTS {
        println!("running the guest on bulkhead-net (--net auto) over {t} ...");
        let runs = (0..args.runs)
            .map(|i| guest_run(t, run_ms(ms, i)))
            .collect::<Result<Vec<_>, _>>();
        if let Err(e) = &runs {
            println!("  {t} failed: {e}");
        }
        ours.push((t, runs));
    }
    println!("running the host baseline over a veth pair between two namespaces ...");
    let veth = Veth::create()?;
    let mut base = HashMap::new();
    for size in SIZES {
        base.insert(size, veth.measure(size, Duration::from_millis(ms))?);
    }
    drop(veth);
    println!();
    println!(
        "packets per second and Gb/s: median over the runs, ± half their range in percent of it"
    );
    println!(
        "{:<14} {:>5} | {:>31} | {:>31} | {:>8} | {:>24} | {:>8}",
        "direction",
        "size",
        "bulkhead-net mmio",
        "bulkhead-net pci",
        "pci/mmio",
        "host veth",
        "pci/veth"
    );
    // The runs' rates in one direction (`pick`) at `size` on transport `t`.
    let spread = |t: Transport, pick: Direction, size: usize, f: fn(&Rate) -> f64| {
        let runs = ours.iter().find(|(o, _)| *o == t)?.1.as_ref().ok()?;
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| pick(r).get(&size))
            .map(f)
            .collect();
        Spread::of(&v)
    };
    for size in SIZES {
        let b = base.get(&size).copied().unwrap_or_default();
        let dirs: [(&str, Direction); 2] =
            [("guest -> host", |r| &r.tx), ("host -> guest", |r| &r.rx)];
        for (dir, pick) in dirs {
            let ours_cell = |t| {
                let gbps = spread(t, pick, size, Rate::gbps).map_or(0.0, |s| s.median);
                runs::cell(spread(t, pick, size, Rate::pps), |v| {
                    format!("{v:>9.0} pps {gbps:>6.3} Gb/s")
                })
            };
            let pci = spread(Transport::Pci, pick, size, Rate::pps);
            println!(
                "{dir:<14} {size:>5} | {:>31} | {:>31} | {:>8} | {:>24} | {:>8}",
                ours_cell(Transport::Mmio),
                ours_cell(Transport::Pci),
                runs::ratio(pci, spread(Transport::Mmio, pick, size, Rate::pps)),
                format!("{:>9.0} pps {:>7.3} Gb/s", b.pps(), b.gbps()),
                runs::ratio(pci, Spread::of(&[b.pps()])),
            );
        }
    }
    println!("(guest -> host counts what the host socket received; host -> guest what the guest counted)");
    println!();
    let mut failed = Vec::new();
    for (t, runs) in &ours {
        match runs {
            Ok(runs) => {
                let exits: Vec<RunExits> = runs.iter().map(|r| r.exits.clone()).collect();
                println!("{}", runs::exits_summary(*t, &exits));
            }
            Err(e) => {
                println!("{t:<4} failed: {e}");
                failed.push(t.as_str());
            }
        }
    }
    println!("(a request here is a packet the guest sent or received)");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the guest benchmark failed on {}",
            failed.join(", ")
        ))
    }
}

/// Boots the guest's `net-bench` over transport `t` for `ms` per test: its rates and the
/// vmm's exits; checks it had its NIC on `t`.
fn guest_run(t: Transport, ms: u64) -> Result<GuestRun, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding bulkhead: {e}"))?;
    let mut child = Command::new(exe)
        .args(["run", "--report-stats", "--memory", "512"])
        .args(["--transport", t.as_str()])
        .args(["--net", "auto,host-ip=10.0.2.1/24,guest-ip=10.0.2.2/24"])
        .arg("--cmdline")
        .arg(format!(
            "bulkhead.test=net-bench bulkhead.net.ip=10.0.2.2/24 bulkhead.net.peer=10.0.2.1 \
             bulkhead.net.port={PORT} bulkhead.net.bench-ms={ms}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting bulkhead: {e}"))?;
    let ns = format!("bulkhead-{}-net0", child.id());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Guest -> host: a socket in the namespace counts datagrams by size.
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (ns, counts, stop) = (ns.clone(), counts.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), String> {
            enter_when_made(&ns)?;
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
    // Packets the guest sent and received: its requests.
    let mut requests = 0u64;
    let mut console = String::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        console.push_str(&line);
        console.push('\n');
        let Some(rest) = line.strip_prefix("bulkhead-guest: net-bench ") else {
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
            requests += num("packets") as u64;
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
            requests += num("packets") as u64;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = stderr.join().unwrap_or_default();
    receiver
        .join()
        .map_err(|_| "receiver panicked".to_string())??;
    if !status.success() || tx_seen == 0 {
        return Err(format!(
            "the guest benchmark over {t} failed ({status}):\n{console}\n{stderr}"
        ));
    }
    guest_transport::check(t, &console)?;
    let exits = RunExits::parse(&stderr, requests)
        .ok_or_else(|| format!("no bulkhead-stats line from the vmm:\n{stderr}"))?;
    Ok(GuestRun { tx, rx, exits })
}

/// Moves the calling thread into namespace `ns` once the launcher has made it. Its file
/// appears a moment before the namespace is bound there (entering the bare file fails
/// with EINVAL), so the entering is what is retried, not a look at the path.
fn enter_when_made(ns: &str) -> Result<(), String> {
    let mut last = String::new();
    wait_briefly(|| match enter(ns) {
        Ok(()) => Some(()),
        Err(e) => {
            last = e;
            None
        }
    })
    .ok_or_else(|| format!("network namespace {ns} did not appear ({last})"))
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
