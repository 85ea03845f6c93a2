//! The command line of `bulkhead`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use bulkhead_vmm::config::SerialOutput;

/// bulkhead: a microVM monitor whose devices run in separate, confined processes.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start-up and taken apart right away: boxing `RunArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a microVM (the built-in test guest when no --kernel is given).
    ///
    /// Exits with the guest's status: what it wrote to the exit port (the test guest: 0 when
    /// every check passed), 0 when it reset or powered off, 125 when bulkhead itself failed
    /// or the guest crashed (triple fault, KVM error).
    Run(RunArgs),
    /// Control a running VM through its API socket (`bulkhead run --api-socket PATH`).
    Ctl(CtlArgs),
    /// Report whether this host can run bulkhead: KVM, virtualisation kind, confinement.
    Check,
    /// Benchmarks: start-up time and memory (boot), guest block I/O (blk).
    Bench(BenchArgs),
}

/// The default kernel command line with `--transport mmio`: `pci=off` spares a kernel
/// probing for a PCI bus there is no device on.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// The default kernel command line with `--transport pci`: the devices are on PCI.
pub const DEFAULT_CMDLINE_PCI: &str = "console=ttyS0 reboot=k panic=1";

/// `bulkhead run`. With no flags at all: the demo machine (see `demo.rs`).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Seccomp filters in every process and thread: enforce (a call outside a thread's
    /// allowlist is reported and kills the process with SIGSYS), log (allowed and logged
    /// by the kernel: for debugging), or off.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = bulkhead_seccomp::SeccompMode::Enforce)]
    pub seccomp: bulkhead_seccomp::SeccompMode,
    /// Start the vmm and every device process through the jailer (new mount, PID, IPC,
    /// UTS and network namespaces, an empty root, the unprivileged --uid/--gid, no
    /// capabilities, rlimits, a cgroup with memory, CPU and thread limits); off starts them
    /// plainly, for debugging (needs no root).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub jail: bool,
    /// Force the uid every process of the VM runs as (not 0; the gid is the same unless
    /// --gid says otherwise). Without it each VM gets a uid of its own from --uid-range.
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Force the gid the processes run as (not 0; the uid is the same unless --uid says
    /// otherwise).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
    /// The uids (each also the gid) a VM's identity is allocated from, FIRST-LAST; the
    /// default is a block no distribution, systemd or subuid range uses.
    #[arg(long, value_name = "FIRST-LAST", default_value_t = crate::identity::DEFAULT_RANGE, conflicts_with_all = ["uid", "gid"])]
    pub uid_range: crate::identity::UidRange,
    /// Landlock in every process: enforce denies all filesystem access once its resources
    /// are open (a kernel without landlock is refused); off opts out.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = bulkhead_seccomp::landlock::LandlockMode::Enforce)]
    pub landlock: bulkhead_seccomp::landlock::LandlockMode,
    /// Read flags from a JSON object whose fields are these flags ({"memory": 512,
    /// "disk": ["path=a.img"], ...}); flags given beside it override or add to it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel image: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1 pci=off", without
    /// pci=off for --transport pci].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub memory: u64,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u64,
    /// How the guest reaches its virtio devices: mmio (virtio-mmio, announced on the
    /// command line and in ACPI) or pci (virtio-pci with MSI-X, for distribution kernels).
    #[arg(long, value_name = "mmio|pci", default_value = "mmio")]
    pub transport: bulkhead_vmm::config::Transport,
    /// Serial console (8250 at 0x3f8): stdio, file=PATH, or off.
    #[arg(long, value_name = "stdio|file=PATH|off", default_value = "stdio", value_parser = bulkhead_vmm::process::args::parse_serial)]
    pub serial: SerialOutput,
    /// A virtio-blk disk (repeatable): path=IMAGE[,format=raw|qcow2][,lock=on|off][,readonly=on][,serial=ID][,queues=N][,direct=on]
    /// runs a bulkhead-blk process on the image (format= absent: raw, and a file that looks like a qcow2 is refused;
    /// a qcow2's backing files are opened too; every file is locked as QEMU locks it unless lock=off;
    /// direct=on: O_DIRECT, bypassing the page cache); vhost-user=PATH[,queues=N][,listen=on]
    /// uses a vhost-user-blk backend someone else started (e.g. qemu-storage-daemon; socket=PATH is the old spelling).
    /// Every device process bulkhead starts takes restart=off|N|N/SECS: restarted when it
    /// dies, up to N times within SECS seconds (default 5/60); off: its death stops the VM.
    /// Backends someone else started are never restarted by bulkhead.
    #[arg(long, value_name = "path=IMAGE[,format=raw|qcow2][,lock=on|off][,readonly=on][,serial=ID][,queues=N][,restart=off|N/SECS]|vhost-user=PATH[,listen=on]", value_parser = crate::disk_arg::parse)]
    pub disk: Vec<crate::disk_arg::DiskArg>,
    /// A virtio-net device (repeatable): tap=NAME[,mac=MAC][,queues=N] uses (or creates) a
    /// TAP; auto[,mac=MAC][,host-ip=CIDR][,guest-ip=CIDR][,queues=N] creates a TAP in a new
    /// network namespace with the host side addressed (default 10.0.2.1/24), removed at exit;
    /// vhost-user=PATH[,mac=MAC][,queues=N][,listen=on] uses a backend someone else started.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]|auto[,...][,restart=off|N/SECS]|vhost-user=PATH[,...]", value_parser = crate::net_arg::parse)]
    pub net: Vec<crate::net_arg::NetArg>,
    /// The virtio console: stdio (this terminal), socket=PATH (a Unix socket to connect to),
    /// pty (a new pseudo-terminal), file=PATH (output only), off, then ,restart=POLICY; or
    /// vhost-user=PATH[,listen=on] (a vhost-user console backend someone else started).
    #[arg(long, value_name = "stdio|socket=PATH|pty|file=PATH|off[,restart=off|N/SECS]|vhost-user=PATH", value_parser = crate::launch::console::parse)]
    pub console: Option<crate::launch::console::ConsoleChoice>,
    /// A virtio-vsock device (one per VM) in a bulkhead-vsock process, with Firecracker's
    /// hybrid vsock: host programs connect to the Unix socket uds= and send
    /// "CONNECT <port>\n"; the guest's connections to CID 2 port P reach <uds>_P.
    #[arg(long, value_name = "cid=N,uds=PATH[,restart=off|N/SECS]", value_parser = crate::vsock_arg::parse)]
    pub vsock: Option<crate::vsock_arg::VsockArg>,
    /// Restart a device process that seccomp killed (SIGSYS) like any other that died; by
    /// default such a death is a security event: reported, not restarted, and the VM stops.
    #[arg(long)]
    pub restart_on_sigsys: bool,
    /// Serve an API socket at PATH for `bulkhead ctl` (status, pause, resume, shutdown);
    /// created mode 0600, removed when the VM ends.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Open the paths named here (disks, kernel, initrd, serial and console files, socket
    /// directories) with this identity's permissions instead of root's; files created are
    /// its own. The ownership rule for such paths applies either way.
    #[arg(long, value_name = "UID:GID", value_parser = crate::open_as::parse)]
    pub open_as: Option<crate::open_as::Identity>,
    /// Print the vmm's memory use and guest-entry time on exit (used by `bulkhead bench`).
    #[arg(long, hide = true)]
    pub report_stats: bool,
    /// Print a start-up trace on stderr: each step of every process, CLOCK_MONOTONIC ns
    /// (`bulkhead-trace: NS PROCESS STEP`; also `BULKHEAD_BOOT_TRACE=1`).
    #[arg(long)]
    pub boot_timer: bool,
}

impl RunArgs {
    /// The kernel command line: the one given, else the transport's default.
    pub fn cmdline(&self) -> &str {
        match (&self.cmdline, self.transport) {
            (Some(c), _) => c,
            (None, bulkhead_vmm::config::Transport::Mmio) => DEFAULT_CMDLINE,
            (None, bulkhead_vmm::config::Transport::Pci) => DEFAULT_CMDLINE_PCI,
        }
    }
}

/// `bulkhead ctl`.
#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// The VM's API socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `bulkhead ctl` asks.
#[derive(Subcommand, Debug, Clone)]
pub enum CtlAction {
    /// Print the VM's state, size and processes.
    Status,
    /// Pause the vCPUs.
    Pause,
    /// Resume paused vCPUs.
    Resume,
    /// Stop the VM (as SIGTERM to `bulkhead run` does).
    Shutdown,
    /// Serve disk NAME (`disk0`) from another image from now on; the guest is told its
    /// capacity changed. The image is opened by the launcher under the same path rules
    /// (and `--open-as`) as at start-up.
    Disk {
        /// The disk (`disk0`, `disk1`, ...).
        name: String,
        /// The new image (a relative path is taken from this directory).
        #[arg(long, value_name = "IMAGE")]
        path: PathBuf,
    },
    /// Replace device NAME's process (`disk0`, `net0`, `console0`, `vsock0`) while the
    /// guest runs: the old one is asked to stop (killed after a grace period), a new one
    /// starts with the same resources and jail and the vmm reconnects the device to it.
    /// Not counted in the device's restart budget.
    Restart {
        /// The device.
        name: String,
        /// Start this program instead from now on (a new build of the backend; opened by
        /// the launcher under the path rules, as disk images are).
        #[arg(long, value_name = "PATH")]
        exec: Option<PathBuf>,
    },
}

/// `bulkhead bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// The benchmarks.
#[derive(Subcommand, Debug, Clone)]
pub enum BenchWhat {
    /// Time from start to guest entry, first console byte and power-off; vmm RSS overhead.
    Boot(BootBenchArgs),
    /// Guest 4 KiB random and 128 KiB sequential I/O at depth 1 and 32 through bulkhead-blk
    /// on virtio-mmio and virtio-pci (with the vmm's exits per request), through
    /// qemu-storage-daemon, and the host's own pread/pwrite on the same file.
    Blk(BlkBenchArgs),
    /// Guest UDP throughput both ways at 64 and 1400 bytes through bulkhead-net (--net auto)
    /// on virtio-mmio and virtio-pci (with the vmm's exits per packet), beside the host's
    /// own over a veth pair between two namespaces.
    Net(NetBenchArgs),
    /// Start-up time to the first guest line and total RSS minus guest memory of all of a
    /// VM's processes, confined (the default) beside unconfined.
    Confine(ConfineBenchArgs),
    /// Stream throughput and round-trip latency guest<->host through bulkhead-vsock
    /// (hybrid vsock), on both transports, beside a Unix socket pair on the host.
    Vsock(VsockBenchArgs),
    /// bulkhead-blk killed (SIGKILL) at random moments under the guest's blk-soak: kill to
    /// the first completed request (median, worst), the launcher's unavailable time, and
    /// the requests resubmitted from the inflight region.
    Restart(RestartBenchArgs),
    /// N confined VMs (idle test guest, disk, net, console) started at once: start latency
    /// (p50/p99, slowest), VMs per second, memory and CPU per VM, idle CPU; all stopped
    /// and checked to leave nothing; beside --jail off and a bare clone+exec.
    Density(DensityBenchArgs),
}

/// `bulkhead bench density`.
#[derive(Args, Debug, Clone)]
pub struct DensityBenchArgs {
    /// VMs started at once.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub vms: u32,
    /// VMs of the `--jail off` baseline started at once (0: none; default: as many as --vms).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub baseline_vms: Option<u32>,
    /// Seconds over which the idle VMs' CPU is measured.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_secs: u64,
    /// Seconds each phase (all ready, all stopped) may take; then every VM is stopped.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
    /// Guest memory of each VM in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=65536))]
    pub memory: u64,
    /// The statically linked program of the clone+exec baseline, run as `PROGRAM true` and
    /// `PROGRAM sleep SECS` (default: busybox from busybox-static).
    #[arg(long, value_name = "PATH")]
    pub static_program: Option<PathBuf>,
}

/// `bulkhead bench restart`.
#[derive(Args, Debug, Clone)]
pub struct RestartBenchArgs {
    /// How many times bulkhead-blk is killed.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub kills: u32,
    /// The guest's transport: mmio or pci.
    #[arg(long, value_name = "mmio|pci", default_value = "mmio")]
    pub transport: bulkhead_vmm::config::Transport,
}

/// `bulkhead bench vsock`.
#[derive(Args, Debug, Clone)]
pub struct VsockBenchArgs {
    /// MiB echoed per run (throughput).
    #[arg(long, value_name = "MiB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub mib: u64,
    /// Round trips of 64 bytes per run (latency).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Runs per path (medians and spread).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
}

/// `bulkhead bench confine`.
#[derive(Args, Debug, Clone)]
pub struct ConfineBenchArgs {
    /// Runs of each configuration.
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
}

/// `bulkhead bench net`.
#[derive(Args, Debug, Clone)]
pub struct NetBenchArgs {
    /// Milliseconds per test (odd runs take twice that: see --runs).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub ms: u64,
    /// Guest runs per transport (medians and spread; runs alternate between --ms and twice
    /// it, so that the vmm's exits per request can be told from its set-up exits).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
}

/// `bulkhead bench blk`.
#[derive(Args, Debug, Clone)]
pub struct BlkBenchArgs {
    /// Image to run on (its contents are overwritten); default: a scratch file.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// Size of the scratch image in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub size: u64,
    /// Milliseconds per test (odd runs take twice that: see --runs).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub ms: u64,
    /// Guest runs per transport (medians and spread; runs alternate between --ms and twice
    /// it, so that the vmm's exits per request can be told from its set-up exits).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Skip the qemu-storage-daemon run.
    #[arg(long)]
    pub no_qsd: bool,
    /// qcow2: also run raw beside a fully allocated qcow2 copy of the image (standalone
    /// bulkhead-blk on each) and qemu-storage-daemon serving that qcow2, and print ratios.
    #[arg(long, value_name = "raw|qcow2")]
    pub format: Option<bulkhead_devices::image::ImageFormat>,
}

/// `bulkhead bench boot`.
#[derive(Args, Debug, Clone)]
pub struct BootBenchArgs {
    /// How many boots to measure.
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Kernel to boot (default: the built-in test guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u64,
    /// Give the VM a disk (a scratch image), a network device (--net auto) and a console
    /// (to a file), each served by its own process.
    #[arg(long)]
    pub devices: bool,
    /// Start the processes through the jailer (on) or plainly (off).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub jail: bool,
    /// Also start each VM as earlier versions did (BULKHEAD_START=serial: one process
    /// after another, moved into its cgroup), alternating, and print both.
    #[arg(long)]
    pub compare: bool,
    /// Print the median time of every step of the start-up trace (--boot-timer).
    #[arg(long)]
    pub trace: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_takes_on_or_off() {
        let jail = |v: &str| match Cli::try_parse_from(["bulkhead", "run", "--jail", v]) {
            Ok(Cli {
                command: Command::Run(r),
            }) => Some(r.jail),
            _ => None,
        };
        assert_eq!(jail("on"), Some(true));
        assert_eq!(jail("off"), Some(false));
        assert_eq!(jail("yes"), None);
        match Cli::try_parse_from(["bulkhead", "run"]).unwrap().command {
            Command::Run(r) => assert!(
                r.jail
                    && r.uid.is_none()
                    && r.gid.is_none()
                    && r.uid_range == crate::identity::DEFAULT_RANGE
            ),
            _ => unreachable!(),
        }
    }

    #[test]
    fn uid_range_parses_and_excludes_a_forced_identity() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["bulkhead", "run"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Run(r) => (r.uid, r.gid, r.uid_range),
                _ => unreachable!(),
            })
        };
        let (_, _, range) = run(&["--uid-range", "70000-70009"]).unwrap();
        assert_eq!((range.first, range.last), (70000, 70009));
        assert_eq!(run(&["--uid", "1000"]).unwrap().0, Some(1000));
        assert!(run(&["--uid-range", "0-10"]).is_err());
        assert!(run(&["--uid-range", "70000-70009", "--uid", "1000"]).is_err());
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for console in [
            "off",
            "stdio",
            "pty",
            "file=/tmp/c.log",
            "socket=/tmp/c.sock",
        ] {
            assert!(
                Cli::try_parse_from(["bulkhead", "run", "--console", console]).is_ok(),
                "{console}"
            );
        }
        assert!(
            Cli::try_parse_from(["bulkhead", "run", "--net", "auto", "--net", "tap=tap1"]).is_ok()
        );
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["bulkhead", "run"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!((a.memory, a.cpus, a.kernel.as_deref()), (256, 1, None));
        assert_eq!(a.transport, bulkhead_vmm::config::Transport::Mmio);
        assert_eq!(a.cmdline(), DEFAULT_CMDLINE);
    }

    #[test]
    fn transport_flag_and_its_default_command_line() {
        let run = |extra: &[&str]| {
            let mut argv = vec!["bulkhead", "run"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Run(r) => r,
                _ => unreachable!(),
            })
        };
        use bulkhead_vmm::config::Transport;
        let pci = run(&["--transport", "pci"]).unwrap();
        assert_eq!(pci.transport, Transport::Pci);
        // A kernel told pci=off would never look for the devices.
        assert_eq!(pci.cmdline(), DEFAULT_CMDLINE_PCI);
        assert!(!pci.cmdline().contains("pci=off"));
        assert_eq!(
            run(&["--transport", "mmio"]).unwrap().transport,
            Transport::Mmio
        );
        // A command line given is taken as it is, whatever the transport.
        let given = run(&["--transport", "pci", "--cmdline", "x pci=off"]).unwrap();
        assert_eq!(given.cmdline(), "x pci=off");
        let e = run(&["--transport", "isa"]).unwrap_err().to_string();
        assert!(e.contains("isa") && e.contains("mmio or pci"), "{e}");
    }

    #[test]
    fn bad_flags_are_rejected() {
        assert!(Cli::try_parse_from(["bulkhead", "run", "--memory", "lots"]).is_err());
        assert!(Cli::try_parse_from(["bulkhead", "run", "--bogus"]).is_err());
    }
}
