//! How the launcher confines each process it starts: the settings common to a VM's
//! processes (`bulkhead run --jail`, `--uid`, `--gid`, `--landlock`), and what each kind of
//! process needs of its jail (network namespace, CPU, threads, file size, fds).

use std::sync::OnceLock;

use bulkhead::jail::{CgroupLimits, Jail, NetNs, Rlimits};
use bulkhead_seccomp::landlock::LandlockMode;

/// Headroom above guest memory in each process's memory limit. A backend may be the
/// first to touch guest pages (they are shared memory, charged to whoever faults them in),
/// so every process may need up to all of guest memory; the limit still bounds what a
/// compromised process can take beyond it.
const MEMORY_HEADROOM: u64 = 256 << 20;
/// RLIMIT_NPROC under an identity the user forced (`--uid`): the kernel counts every task
/// of the uid on the host, other VMs' included, so this only stops a fork bomb. With a uid
/// of the VM's own (the default) the limit is the VM's own total ([`vm_tasks`]).
pub const SHARED_NPROC: u64 = 4096;
/// Threads a process gets beyond its workers (main, signals, relay, vhost-user handling).
const SPARE_THREADS: u64 = 12;

/// The settings common to a VM's processes.
#[derive(Clone, Debug)]
pub struct Confinement {
    /// Start processes through the jailer (`--jail on`); else plainly, for debugging.
    pub jail: bool,
    /// The unprivileged uid and gid they run as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// RLIMIT_NPROC of each process: tasks its uid may have on the host.
    pub nproc: u64,
    /// Landlock in each process.
    pub landlock: LandlockMode,
    /// Guest memory in bytes (for the memory limits).
    pub guest_memory: u64,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            jail: true,
            uid: 65534,
            gid: 65534,
            nproc: SHARED_NPROC,
            landlock: LandlockMode::Enforce,
            guest_memory: 256 << 20,
        }
    }
}

static CONFINEMENT: OnceLock<Confinement> = OnceLock::new();

/// Sets the confinement of every process started from now on (once; later calls are
/// ignored).
pub fn configure(c: Confinement) {
    let _ = CONFINEMENT.set(c);
}

/// The confinement in force (the default until [`configure`]).
pub fn confinement() -> Confinement {
    CONFINEMENT.get().cloned().unwrap_or_default()
}

/// What one process needs of its jail.
#[derive(Clone, Debug)]
pub struct Needs {
    /// Its network namespace.
    pub netns: NetNs,
    /// Worker threads (the CPU limit, in CPUs, and most of its thread limit).
    pub workers: u64,
    /// Largest regular file it may write (RLIMIT_FSIZE), `None` for no limit.
    pub max_file_size: Option<u64>,
    /// Highest fd + 1 (RLIMIT_NOFILE).
    pub max_fds: u64,
    /// It reports to the launcher over a control socket of its own (`--control-fd`): the
    /// device backends. (The vmm's first socket is its control socket.)
    pub reports: bool,
}

impl Default for Needs {
    fn default() -> Self {
        Needs {
            netns: NetNs::New,
            workers: 1,
            max_file_size: Some(0),
            max_fds: 256,
            reports: false,
        }
    }
}

/// Tasks (processes and threads) a whole VM may have, for RLIMIT_NPROC when its uid is its
/// own: what the cgroups allow each of its processes together (`workers` + spare threads
/// for each; `workers` lists each process's, as [`Needs::workers`]), so that the limit
/// still holds on a host without a pids controller and a process cannot take what the
/// others of its VM need.
pub fn vm_tasks(workers: impl IntoIterator<Item = u64>) -> u64 {
    workers.into_iter().map(|w| w + SPARE_THREADS).sum()
}

/// [`vm_tasks`] of the VM `args` describe: the vmm (a worker per vCPU), a `bulkhead-blk`
/// per image (per queue), a `bulkhead-net` per device (per queue pair), the console, the
/// vsock device.
pub fn vm_tasks_of(args: &crate::cli::RunArgs) -> u64 {
    use crate::disk_arg::DiskBackend;
    let disks = args
        .disk
        .iter()
        .filter(|d| matches!(d.backend, DiskBackend::Image { .. }))
        .map(|d| u64::from(d.queues));
    let nets = args.net.iter().map(|n| u64::from(n.queues));
    let console = args.console.as_ref().and_then(|c| c.0.as_ref()).map(|_| 1);
    let vsock = args.vsock.as_ref().map(|_| super::vsock::WORKERS);
    vm_tasks(
        std::iter::once(args.cpus)
            .chain(disks)
            .chain(nets)
            .chain(console)
            .chain(vsock),
    )
}

/// The jail for process `name` of this launcher.
pub fn jail_for(name: &str, needs: &Needs, c: &Confinement) -> Jail {
    let id: String = format!("bulkhead-{}-{name}", std::process::id())
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    let mut jail = Jail::new(&id, c.uid, c.gid);
    jail.netns = needs.netns.clone();
    jail.cgroup = CgroupLimits {
        memory_max: Some(c.guest_memory + MEMORY_HEADROOM),
        cpus: Some(needs.workers as f64),
        pids_max: Some(needs.workers + SPARE_THREADS),
    };
    jail.rlimits = Rlimits {
        nofile: Some(needs.max_fds),
        fsize: needs.max_file_size,
        nproc: Some(c.nproc),
    };
    jail.landlock = c.landlock;
    if serial_start() {
        jail.cgroup_entry = bulkhead::jail::CgroupEntry::Moved;
    }
    jail
}

/// `BULKHEAD_START=serial` in the launcher's environment: start the VM as earlier
/// versions did, to measure the difference in one run (`bulkhead bench boot --compare`):
/// each backend waited for (Ready) before the next starts, the vmm after all of them,
/// every process moved into its cgroup by the launcher instead of born there.
pub fn serial_start() -> bool {
    static SERIAL: OnceLock<bool> = OnceLock::new();
    *SERIAL.get_or_init(|| std::env::var_os("BULKHEAD_START").is_some_and(|v| v == "serial"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_limits_follow_the_needs() {
        let c = Confinement {
            guest_memory: 512 << 20,
            ..Confinement::default()
        };
        let needs = Needs {
            workers: 4,
            max_file_size: Some(1 << 30),
            ..Needs::default()
        };
        let j = jail_for("disk0", &needs, &c);
        assert_eq!(j.id, format!("bulkhead-{}-disk0", std::process::id()));
        assert_eq!((j.uid, j.gid), (65534, 65534));
        assert_eq!(j.cgroup.memory_max, Some((512 << 20) + MEMORY_HEADROOM));
        assert_eq!(j.cgroup.cpus, Some(4.0));
        assert_eq!(j.cgroup.pids_max, Some(4 + SPARE_THREADS));
        assert_eq!(j.rlimits.fsize, Some(1 << 30));
        assert_eq!(j.rlimits.nproc, Some(SHARED_NPROC));
        let own = Confinement {
            uid: 2113929216,
            gid: 2113929216,
            nproc: vm_tasks([2, 4]),
            ..c
        };
        let j = jail_for("disk0", &needs, &own);
        assert_eq!((j.uid, j.gid), (2113929216, 2113929216));
        assert_eq!(j.rlimits.nproc, Some(6 + 2 * SPARE_THREADS));
        assert_eq!(j.netns, NetNs::New);
        assert_eq!(
            jail_for("a.b", &needs, &c).id,
            format!("bulkhead-{}-a_b", std::process::id())
        );
    }
}
