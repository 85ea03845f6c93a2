//! The microVM as the API sees it: its configuration until `InstanceStart`, then the
//! running launcher; Firecracker's pre-boot and post-boot rules.

use std::path::PathBuf;

use bulkhead_protocol::{ApiRequest, VmState};

use super::launcher::Launcher;
use super::log::{Logger, Metrics};
use super::model::{self, FullConfig};
use super::stop::Stop;

/// Firecracker's refusal of a pre-boot request after boot.
pub const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";
/// Firecracker's refusal of a post-boot request before boot.
pub const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";

/// The instance.
pub struct Instance {
    /// `--id`.
    pub id: String,
    /// What was configured.
    pub config: FullConfig,
    /// The VM, once started.
    pub launcher: Option<Launcher>,
    /// Whether the vCPUs are paused.
    pub paused: bool,
    /// Where the launcher's own API socket goes.
    pub ctl: PathBuf,
    /// `--enable-pci`.
    pub pci: bool,
    /// The logger.
    pub logger: Logger,
    /// The metrics.
    pub metrics: Metrics,
    /// The stop signals (see [`super::stop`]).
    pub stop: Stop,
}

impl Instance {
    /// A VM not started, configured with nothing.
    pub fn new(id: &str, ctl: PathBuf) -> Instance {
        Instance {
            id: id.to_owned(),
            config: FullConfig::default(),
            launcher: None,
            paused: false,
            ctl,
            pci: false,
            logger: Logger::new(id),
            metrics: Metrics::default(),
            stop: Stop::default(),
        }
    }

    /// Refuses a pre-boot request once started.
    pub fn pre_boot(&self) -> Result<(), String> {
        match self.launcher {
            Some(_) => Err(POST_BOOT.into()),
            None => Ok(()),
        }
    }

    /// The running launcher, or the pre-boot refusal.
    pub fn running(&self) -> Result<&Launcher, String> {
        self.launcher.as_ref().ok_or_else(|| PRE_BOOT.into())
    }

    /// "Not started", "Running" or "Paused".
    pub fn state(&self) -> &'static str {
        match (&self.launcher, self.paused) {
            (None, _) => "Not started",
            (Some(_), false) => "Running",
            (Some(_), true) => "Paused",
        }
    }

    /// Applies a whole configuration (a config file): each part checked as its API
    /// request would be.
    pub fn configure(&mut self, c: FullConfig) -> Result<(), String> {
        let unsupported = [
            ("balloon", c.balloon.is_some()),
            ("mmds-config", c.mmds_config.is_some()),
            ("entropy", c.entropy.is_some()),
            ("cpu-config", c.cpu_config.is_some()),
        ];
        if let Some((what, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(format!("The requested operation is not supported: {what}."));
        }
        if let Some(l) = &c.logger {
            self.set_logger(l)?;
        }
        if let Some(m) = &c.metrics {
            self.metrics.configure(&m.metrics_path)?;
        }
        if let Some(m) = &c.machine_config {
            m.check()?;
        }
        for d in &c.drives {
            check_drive(d)?;
        }
        for n in &c.network_interfaces {
            check_net(n)?;
        }
        if let Some(v) = &c.vsock {
            check_vsock(v)?;
        }
        self.config = c;
        Ok(())
    }

    /// `PUT /logger`.
    pub fn set_logger(&mut self, l: &model::Logger) -> Result<(), String> {
        self.logger.configure(
            l.log_path.as_deref(),
            l.level.as_deref(),
            l.show_level.unwrap_or(false),
            l.show_log_origin.unwrap_or(false),
        )
    }

    /// `InstanceStart`.
    pub fn start(&mut self) -> Result<(), String> {
        self.pre_boot()?;
        let args = super::run_args::run_args(&self.config, &self.ctl, self.pci)?;
        self.logger
            .info("instance", "InstanceStart: starting bulkhead run");
        let launcher = Launcher::start(&args, &self.ctl, &self.stop)?;
        self.logger.info(
            "instance",
            &format!("the VM runs: launcher pid {}", launcher.pid()),
        );
        self.launcher = Some(launcher);
        Ok(())
    }

    /// `SendCtrlAltDel`.
    pub fn ctrl_alt_del(&mut self) -> Result<(), String> {
        self.running()?.ask(ApiRequest::CtrlAltDel)?;
        Ok(())
    }

    /// `PATCH /drives/{id}` with a `path_on_host`: the running disk serves the new image
    /// (opened by the launcher under its path rules) and the guest is told its capacity
    /// changed; the configuration then shows the new path. A refusal changes nothing.
    pub fn swap_drive(&mut self, id: &str, path: &std::path::Path) -> Result<(), String> {
        let device =
            disk_name(&self.config, id).ok_or_else(|| format!("Invalid block device ID: {id}"))?;
        let text = path
            .to_str()
            .ok_or_else(|| format!("Drive {id}: path_on_host is not UTF-8"))?;
        self.running()?
            .ask(ApiRequest::SwapDisk {
                device,
                path: text.to_owned(),
            })
            .map_err(|e| format!("Unable to patch the block device: {e}"))?;
        if let Some(d) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
            d.path_on_host = Some(path.to_owned());
        }
        self.logger.info(
            "instance",
            &format!("drive {id}: now backed by {}", path.display()),
        );
        Ok(())
    }

    /// `PATCH /vm`.
    pub fn set_paused(&mut self, pause: bool) -> Result<(), String> {
        let request = if pause {
            ApiRequest::Pause
        } else {
            ApiRequest::Resume
        };
        let state = self.running()?.ask(request)?;
        self.paused = state == VmState::Paused;
        Ok(())
    }
}

/// The launcher's name (`disk<n>`) of drive `id`: the root device is disk 0, the others
/// follow in the order configured (as `run_args` passes them).
pub fn disk_name(config: &FullConfig, id: &str) -> Option<String> {
    let root = config.drives.iter().filter(|d| d.is_root_device);
    let others = config.drives.iter().filter(|d| !d.is_root_device);
    root.chain(others)
        .position(|d| d.drive_id == id)
        .map(|n| format!("disk{n}"))
}

/// `PUT /drives/{id}`'s checks.
pub fn check_drive(d: &model::Drive) -> Result<(), String> {
    model::check_id(&d.drive_id)?;
    if d.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
        return Err("The requested operation is not supported: rate limiters.".into());
    }
    if d.path_on_host.is_some() == d.socket.is_some() {
        return Err(format!(
            "Unable to create the block device: drive {} needs exactly one of path_on_host and socket.",
            d.drive_id
        ));
    }
    for (what, v) in [("cache_type", &d.cache_type), ("io_engine", &d.io_engine)] {
        let ok = match what {
            "cache_type" => ["Unsafe", "Writeback"].as_slice(),
            _ => ["Sync", "Async"].as_slice(),
        };
        if let Some(v) = v.as_deref().filter(|v| !ok.contains(v)) {
            return Err(format!("Invalid {what}: {v}."));
        }
    }
    Ok(())
}

/// `PUT /network-interfaces/{id}`'s checks.
pub fn check_net(n: &model::NetworkInterface) -> Result<(), String> {
    model::check_id(&n.iface_id)?;
    let limited = |r: &Option<serde_json::Value>| r.as_ref().is_some_and(|r| !r.is_null());
    if limited(&n.rx_rate_limiter) || limited(&n.tx_rate_limiter) {
        return Err("The requested operation is not supported: rate limiters.".into());
    }
    if let Some(mac) = &n.guest_mac {
        crate::net_arg::parse_mac(mac).map_err(|e| format!("Invalid guest MAC: {e}."))?;
    }
    crate::tap::check_name(&n.host_dev_name)
        .map_err(|e| format!("Open tap device failed: {e}."))?;
    Ok(())
}

/// `PUT /vsock`'s checks.
pub fn check_vsock(v: &model::Vsock) -> Result<(), String> {
    if v.guest_cid < 3 {
        return Err(format!("Invalid guest CID {}: 3 or more.", v.guest_cid));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_drive_is_disk0_and_the_others_follow_in_order() {
        let drive = |id: &str, root: bool| {
            serde_json::from_value::<model::Drive>(serde_json::json!({
                "drive_id": id, "path_on_host": "/x", "is_root_device": root
            }))
            .unwrap()
        };
        let config = FullConfig {
            drives: vec![drive("a", false), drive("rootfs", true), drive("b", false)],
            ..FullConfig::default()
        };
        let names: Vec<_> = ["rootfs", "a", "b", "c"]
            .iter()
            .map(|id| disk_name(&config, id))
            .collect();
        assert_eq!(
            names,
            [
                Some("disk0".into()),
                Some("disk1".into()),
                Some("disk2".into()),
                None
            ]
        );
    }
}
