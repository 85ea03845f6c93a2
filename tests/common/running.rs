//! A VM with all its kinds of processes, for the tests that look at them from outside:
//! `bulkhead run` with a disk, a network device in its own namespace and a console, the
//! guest serving the network for a minute; and what must be gone once it has ended.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::disk::Image;

/// A running `bulkhead run` with a disk, a network device and a console, its guest serving
/// the network for a minute.
pub struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
    img: Image,
    console: std::path::PathBuf,
}

impl Running {
    pub fn start(tag: &str) -> Running {
        Running::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, extra: &[&str]) -> Running {
        Running::start_via(super::bulkhead(), tag, extra, 60_000)
    }

    /// With `restart=off` on every device: a process that dies stops the VM.
    #[allow(dead_code)] // not every test binary uses it
    pub fn start_restart_off(tag: &str) -> Running {
        Running::start_devices(super::bulkhead(), tag, &[], 60_000, ",restart=off")
    }

    /// With `extra` flags and `device_keys` (`,key=value...`) after each device's value.
    #[allow(dead_code)] // not every test binary uses it
    pub fn start_with_keys(tag: &str, extra: &[&str], device_keys: &str) -> Running {
        Running::start_devices(super::bulkhead(), tag, extra, 60_000, device_keys)
    }

    /// Started as `cmd` (`bulkhead` under another name, say), the guest serving for
    /// `serve_ms` and then ending with status 0.
    pub fn start_via(
        cmd: std::process::Command,
        tag: &str,
        extra: &[&str],
        serve_ms: u32,
    ) -> Running {
        Running::start_devices(cmd, tag, extra, serve_ms, "")
    }

    /// [`Running::start_via`] with `device_keys` (`,key=value...`) after each device's
    /// value.
    fn start_devices(
        mut cmd: std::process::Command,
        tag: &str,
        extra: &[&str],
        serve_ms: u32,
        device_keys: &str,
    ) -> Running {
        let img = Image::new(tag, 1 << 20);
        let console =
            std::env::temp_dir().join(format!("bulkhead-{tag}-{}.log", std::process::id()));
        let mut child = cmd
            .arg("run")
            .arg("--disk")
            .arg(img.disk_arg(device_keys))
            .arg("--net")
            .arg(format!("auto{device_keys}"))
            .arg("--console")
            .arg(format!("file={}{device_keys}", console.display()))
            .arg("--cmdline")
            .arg(format!(
                "bulkhead.test=net-serve bulkhead.net.serve-ms={serve_ms}"
            ))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bulkhead");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("serving ip=") {
                    let _ = tx.send(());
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let serving = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        let mut running = Running {
            child,
            stderr,
            img,
            console,
        };
        if !serving {
            let _ = running.child.kill();
            let _ = running.child.wait();
            panic!("the guest never started serving");
        }
        running
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The disk image's path.
    pub fn image(&self) -> String {
        self.img.path.display().to_string()
    }

    /// The console file's path.
    pub fn console(&self) -> String {
        self.console.display().to_string()
    }

    /// Waits for the launcher to end; returns its exit code and stderr.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let status = super::wait_until(&mut self.child, Instant::now() + Duration::from_secs(30));
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        let status = status.unwrap_or_else(|| panic!("bulkhead did not stop:\n{stderr}"));
        (status.code(), stderr)
    }
}

impl Drop for Running {
    /// A failed assertion must not leave the VM running: kill the launcher (by pid; its
    /// children die with it).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.console);
    }
}

/// The launcher's children (pid, program name).
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let list =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(|c| {
            // comm is cut at 15 bytes (bulkhead-consol): the executable's name is whole.
            let name = std::fs::read_link(format!("/proc/{c}/exe"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            (c, name)
        })
        .collect()
}

/// Process `pid`'s arguments (`/proc/PID/cmdline`, lossy), its program first; empty once
/// it is gone.
pub fn args_of(pid: u32) -> Vec<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether `args` hold `flag` directly followed by `value`.
pub fn has_option(args: &[String], flag: &str, value: &str) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

/// Nothing of launcher `pid` is left: no process and no namespace.
pub fn assert_nothing_left(pid: u32, children: &[(u32, String)]) {
    assert_gone(children, "the VM");
    let namespaces = namespaces_of(pid);
    assert!(
        namespaces.is_empty(),
        "network namespaces left behind: {namespaces:?}"
    );
    let cgroups = cgroups_of(pid);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
    let prefix = format!("bulkhead-{pid}-");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

/// Waits (up to 5 s) until every process in `children` is gone; they must not outlive
/// `what`.
pub fn assert_gone(children: &[(u32, String)], what: &str) {
    for (c, name) in children {
        let gone = (0..250).any(|_| {
            let alive = std::path::Path::new(&format!("/proc/{c}")).exists();
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "{name} (pid {c}) outlived {what}");
    }
}

/// Entries of `dir` that belong to launcher `pid` (named `bulkhead-<pid>-...`).
fn named_for(dir: &std::path::Path, pid: u32) -> Vec<String> {
    let prefix = format!("bulkhead-{pid}-");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Launcher `pid`'s network namespaces (`--net auto`).
pub fn namespaces_of(pid: u32) -> Vec<String> {
    named_for(std::path::Path::new("/run/netns"), pid)
}

/// Launcher `pid`'s processes' cgroups: v2 (/sys/fs/cgroup/bulkhead) or v1
/// (/sys/fs/cgroup/<controller>/bulkhead).
pub fn cgroups_of(pid: u32) -> Vec<String> {
    let mut cgroups = named_for(std::path::Path::new("/sys/fs/cgroup/bulkhead"), pid);
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        cgroups.extend(named_for(&controller.path().join("bulkhead"), pid));
    }
    cgroups
}

/// Serialises the tests of one binary that start launchers: a launcher removes what gone
/// launchers left behind, which a test that kills one must still see.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
