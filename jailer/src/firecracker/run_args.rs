//! The VM configured through the API (or a config file) as the flags of `bulkhead run`:
//! the launcher is started with them, so a Firecracker-driven VM is built by exactly the
//! code, checks, processes and jails of `bulkhead run` (its parser checks every value).

use std::ffi::OsString;
use std::path::Path;

use super::jailed::resolve;
use super::model::{Drive, FullConfig, MachineConfig};

/// The command line when `boot_args` is not given: `bulkhead run`'s default for
/// virtio-mmio (Firecracker's own default adds options for its kernels' drivers).
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
/// The same with `--enable-pci` (the devices are on PCI).
pub const DEFAULT_BOOT_ARGS_PCI: &str = "console=ttyS0 reboot=k panic=1";

/// `bulkhead run`'s arguments (after `run`) for `config`, with the launcher's own API
/// socket at `ctl` (where pause, resume and Ctrl+Alt+Del are sent); `pci`: `--enable-pci`.
pub fn run_args(config: &FullConfig, ctl: &Path, pci: bool) -> Result<Vec<OsString>, String> {
    let boot = config
        .boot_source
        .as_ref()
        .ok_or("Start microvm error: Cannot start microvm without kernel configuration.")?;
    let machine = config.machine_config.clone().unwrap_or_default();
    machine.check()?;
    let mut a: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        a.push(format!("--{name}").into());
        a.push(value);
    };
    flag("kernel", resolve(&boot.kernel_image_path).into());
    if let Some(initrd) = &boot.initrd_path {
        flag("initrd", resolve(initrd).into());
    }
    let MachineConfig {
        vcpu_count,
        mem_size_mib,
        ..
    } = machine;
    flag("memory", mem_size_mib.to_string().into());
    flag("cpus", vcpu_count.to_string().into());
    // The root device first (it becomes /dev/vda), the others in the order configured.
    let mut drives: Vec<&Drive> = config.drives.iter().filter(|d| d.is_root_device).collect();
    drives.extend(config.drives.iter().filter(|d| !d.is_root_device));
    let mut cmdline = boot.boot_args.clone().unwrap_or_else(|| {
        if pci {
            DEFAULT_BOOT_ARGS_PCI
        } else {
            DEFAULT_BOOT_ARGS
        }
        .to_owned()
    });
    if let Some(root) = drives.first().filter(|d| d.is_root_device) {
        // As Firecracker: the kernel is told where its root is.
        let rw = if root.is_read_only == Some(true) {
            "ro"
        } else {
            "rw"
        };
        match &root.partuuid {
            Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid} {rw}")),
            None => cmdline.push_str(&format!(" root=/dev/vda {rw}")),
        }
    }
    flag("cmdline", cmdline.into());
    for d in drives {
        flag("disk", disk_value(d)?);
    }
    for n in &config.network_interfaces {
        let mut v = format!("tap={}", n.host_dev_name);
        if let Some(mac) = &n.guest_mac {
            v.push_str(&format!(",mac={}", mac.to_ascii_lowercase()));
        }
        flag("net", v.into());
    }
    if let Some(vsock) = &config.vsock {
        let mut v = OsString::from(format!("cid={},uds=", vsock.guest_cid));
        v.push(resolve(&vsock.uds_path));
        flag("vsock", v);
    }
    if pci {
        flag("transport", "pci".into());
    }
    if let Some(identity) = super::jailed::open_as() {
        // Under Firecracker's jailer: the chroot's files are the jail identity's.
        flag("open-as", identity.into());
    }
    flag("api-socket", ctl.as_os_str().to_owned());
    Ok(a)
}

fn disk_value(d: &Drive) -> Result<OsString, String> {
    let mut v = match (&d.path_on_host, &d.socket) {
        (Some(path), None) => {
            let mut v = OsString::from("path=");
            v.push(resolve(path));
            v
        }
        (None, Some(socket)) => {
            let mut v = OsString::from("socket=");
            v.push(resolve(socket));
            v
        }
        _ => {
            return Err(format!(
                "Drive {}: exactly one of path_on_host and socket is needed.",
                d.drive_id
            ))
        }
    };
    if d.socket.is_none() {
        // Firecracker's drives are raw files, whatever their first bytes look like; they
        // are locked as any disk is.
        v.push(",format=raw");
        if d.is_read_only == Some(true) {
            v.push(",readonly=on");
        }
        // The guest reads the drive id as the disk's serial (virtio-blk GET_ID), as in
        // Firecracker.
        v.push(format!(",serial={}", d.drive_id));
    }
    let named = d.path_on_host.as_ref().or(d.socket.as_ref());
    if named.is_some_and(|p| p.as_os_str().as_encoded_bytes().contains(&b',')) {
        return Err(format!(
            "Drive {}: a path with a comma is not supported.",
            d.drive_id
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firecracker::model::{BootSource, NetworkInterface, Vsock};

    #[test]
    fn the_api_model_becomes_bulkhead_runs_flags() {
        let drive = |id: &str, root: bool, ro| Drive {
            drive_id: id.into(),
            path_on_host: Some(format!("/img/{id}").into()),
            is_root_device: root,
            partuuid: None,
            is_read_only: Some(ro),
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        };
        let config = FullConfig {
            boot_source: Some(BootSource {
                kernel_image_path: "/k".into(),
                initrd_path: None,
                boot_args: Some("console=ttyS0".into()),
            }),
            drives: vec![drive("data", false, true), drive("rootfs", true, false)],
            machine_config: Some(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..Default::default()
            }),
            network_interfaces: vec![NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("06:00:AC:10:00:02".into()),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            }],
            vsock: Some(Vsock {
                vsock_id: None,
                guest_cid: 3,
                uds_path: "/v.sock".into(),
            }),
            ..Default::default()
        };
        let a = run_args(&config, Path::new("/ctl.sock"), false).unwrap();
        let a: Vec<_> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "--kernel",
                "/k",
                "--memory",
                "256",
                "--cpus",
                "2",
                "--cmdline",
                "console=ttyS0 root=/dev/vda rw",
                "--disk",
                "path=/img/rootfs,format=raw,serial=rootfs",
                "--disk",
                "path=/img/data,format=raw,readonly=on,serial=data",
                "--net",
                "tap=tap0,mac=06:00:ac:10:00:02",
                "--vsock",
                "cid=3,uds=/v.sock",
                "--api-socket",
                "/ctl.sock"
            ]
        );
        assert!(run_args(&FullConfig::default(), Path::new("/c"), false).is_err());
        let mut bare = config.clone();
        bare.drives.clear();
        bare.boot_source.as_mut().unwrap().boot_args = None;
        let a = run_args(&bare, Path::new("/c"), true).unwrap();
        let a: Vec<_> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert!(
            a.windows(2)
                .any(|w| w == ["--cmdline", DEFAULT_BOOT_ARGS_PCI]),
            "{a:?}"
        );
        assert!(a.windows(2).any(|w| w == ["--transport", "pci"]), "{a:?}");
    }
}
