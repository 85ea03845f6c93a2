//! Firecracker's API data model (its swagger definitions), as far as bulkhead serves it:
//! unknown fields are refused, as Firecracker refuses them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `GET /`.
#[derive(Debug, Serialize)]
pub struct InstanceInfo {
    /// Always "Firecracker": what clients expect to see.
    pub app_name: String,
    /// `--id`.
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: String,
    /// The Firecracker API version spoken, and bulkhead's.
    pub vmm_version: String,
}

/// `PUT|GET|PATCH /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// 1 to 32 vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (only false is supported).
    #[serde(default)]
    pub smt: bool,
    /// Dirty page tracking (accepted; snapshots are not supported).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// CPU template: only none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Huge pages: only "None".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `PATCH /machine-config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// See [`MachineConfig`].
    pub vcpu_count: Option<u8>,
    /// See [`MachineConfig`].
    pub mem_size_mib: Option<u64>,
    /// See [`MachineConfig`].
    pub smt: Option<bool>,
    /// See [`MachineConfig`].
    pub track_dirty_pages: Option<bool>,
    /// See [`MachineConfig`].
    pub cpu_template: Option<String>,
    /// See [`MachineConfig`].
    pub huge_pages: Option<String>,
}

impl MachineConfig {
    /// Refuses what bulkhead cannot do, in Firecracker's words where it has them.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.vcpu_count) {
            return Err("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.".into());
        }
        if self.mem_size_mib == 0 {
            return Err("The memory size (MiB) is invalid.".into());
        }
        if self.smt {
            return Err("The requested operation is not supported: SMT (bulkhead gives each vCPU its own core).".into());
        }
        if self.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err("The requested operation is not supported: CPU templates.".into());
        }
        if self.huge_pages.as_deref().is_some_and(|h| h != "None") {
            return Err("The requested operation is not supported: huge pages.".into());
        }
        Ok(())
    }

    /// This configuration with `u`'s fields applied; an update setting nothing is refused.
    pub fn patched(&self, u: MachineConfigUpdate) -> Result<MachineConfig, String> {
        if u.vcpu_count.is_none()
            && u.mem_size_mib.is_none()
            && u.smt.is_none()
            && u.track_dirty_pages.is_none()
            && u.cpu_template.is_none()
            && u.huge_pages.is_none()
        {
            return Err("Empty PATCH request.".into());
        }
        let mut m = self.clone();
        m.vcpu_count = u.vcpu_count.unwrap_or(m.vcpu_count);
        m.mem_size_mib = u.mem_size_mib.unwrap_or(m.mem_size_mib);
        m.smt = u.smt.unwrap_or(m.smt);
        m.track_dirty_pages = u.track_dirty_pages.unwrap_or(m.track_dirty_pages);
        m.cpu_template = u.cpu_template.or(m.cpu_template);
        m.huge_pages = u.huge_pages.or(m.huge_pages);
        m.check()?;
        Ok(m)
    }
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel (an ELF vmlinux, a bzImage, or the test guest's ELF).
    pub kernel_image_path: PathBuf,
    /// The initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Its id (the path's must match).
    pub drive_id: String,
    /// The backing file (absent with `socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether it is the root device (`root=/dev/vda` on the command line).
    pub is_root_device: bool,
    /// The partition holding the root, if not the whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// "Unsafe" or "Writeback" (accepted: bulkhead-blk flushes when the guest asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// "Sync" or "Async" (accepted; bulkhead-blk's own engine serves both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Rate limiter: refused unless null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    /// A vhost-user-blk backend's socket instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `PATCH /drives/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// Its id.
    pub drive_id: String,
    /// The new backing file.
    pub path_on_host: Option<PathBuf>,
    /// A new rate limiter.
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /network-interfaces/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Its id (the path's must match).
    pub iface_id: String,
    /// The host's TAP device.
    pub host_dev_name: String,
    /// The guest's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Rate limiter: refused unless null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// Rate limiter: refused unless null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PATCH /network-interfaces/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// Its id.
    pub iface_id: String,
    /// A new rate limiter.
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// A new rate limiter.
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated in Firecracker; accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's CID (3 or more).
    pub guest_cid: u32,
    /// The host's Unix socket for the hybrid vsock.
    pub uds_path: PathBuf,
}

/// `PUT /logger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// A file or FIFO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// The level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Print levels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print origins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// A module filter (accepted, unused: bulkhead-firecracker logs from one module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A file or FIFO.
    pub metrics_path: PathBuf,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What to do.
    pub action_type: ActionType,
}

/// The actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Boot.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the i8042.
    SendCtrlAltDel,
    /// Write the metrics.
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// The state wanted.
    pub state: WantedState,
}

/// `Paused` or `Resumed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum WantedState {
    /// Pause the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `GET /vm/config`, and the `--config-file` JSON: the same keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    /// `boot-source`.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// `drives`.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// `machine-config`.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    /// `network-interfaces`.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `vsock`.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// `logger`.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// `metrics`.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Not supported: must be absent or null.
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    /// Not supported: must be absent or null.
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    /// Not supported: must be absent or null.
    #[serde(default)]
    pub entropy: Option<serde_json::Value>,
    /// Not supported: must be absent or null.
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
}

/// Firecracker's rule for resource ids: alphanumerics and underscores, not empty.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("The ID cannot be empty.".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || id.len() > 64 {
        return Err(
            "API Resource IDs can only contain alphanumeric characters and underscores.".into(),
        );
    }
    Ok(())
}

/// Parses a JSON body into `T` with Firecracker's fault wording.
pub fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(
            from_body::<MachineConfig>(br#"{"vcpu_count":1,"mem_size_mib":64,"x":1}"#).is_err()
        );
        assert!(from_body::<Action>(br#"{"action_type":"Reboot"}"#).is_err());
        let e = from_body::<Drive>(b"{").unwrap_err();
        assert!(e.starts_with("An error occurred when deserializing"), "{e}");
        let m: MachineConfig = from_body(br#"{"vcpu_count":2,"mem_size_mib":64}"#).unwrap();
        assert_eq!((m.vcpu_count, m.smt), (2, false));
        assert!(MachineConfig {
            vcpu_count: 0,
            ..m.clone()
        }
        .check()
        .is_err());
        assert!(check_id("root_fs1").is_ok() && check_id("a-b").is_err() && check_id("").is_err());
    }

    #[test]
    fn a_firecracker_config_file_parses() {
        let c: FullConfig = serde_json::from_str(
            r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
                "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}],
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024},
                "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}],
                "vsock": {"guest_cid": 3, "uds_path": "/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.drives[0].drive_id, "rootfs");
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
        assert!(serde_json::from_str::<FullConfig>(r#"{"bogus": 1}"#).is_err());
    }
}
