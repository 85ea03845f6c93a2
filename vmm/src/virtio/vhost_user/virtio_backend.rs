//! [`VhostUserDevice`] as a virtio device: activation, config space through
//! GET_CONFIG/SET_CONFIG (or the cache while no backend serves it), reset, and taking a new
//! backend over.

use super::*;

impl VirtioBackend for VhostUserDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn features(&self) -> u64 {
        let mut features = self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES;
        if self.net_ctrl.is_some() {
            // The vmm serves the control queue MQ needs.
            features |= 1 << VIRTIO_NET_F_CTRL_VQ;
        } else if self.device_type == VIRTIO_ID_NET && features & (1 << VIRTIO_NET_F_CTRL_VQ) == 0 {
            // virtio-net's MQ requires CTRL_VQ: without one, one pair only.
            features &= !(1 << VIRTIO_NET_F_MQ);
        }
        if let Some(local) = &self.local {
            features = local.features(features, self.net_ctrl.is_some());
        } else if self.device_type == VIRTIO_ID_CONSOLE {
            features = local_config::console_features(features, self.kicks.len());
        }
        features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(local) = &self.local {
            return local.read(offset, data);
        }
        data.fill(0);
        // The whole config space from offset 0: see config_size.rs for why.
        let size = self.config_size;
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()))
        else {
            return;
        };
        if end > size {
            debug_limited!(
                "{}: config read at {offset:#x} past its {size} bytes",
                self.name
            );
            return;
        }
        // While no backend answers (a restartable device's backend is being replaced),
        // the last config space one gave: a vCPU must neither fail nor wait for a timeout.
        // A device that is not restartable reads zeros when its backend fails, as before.
        let fresh = self.reachable() && self.fetch_config().is_some();
        if !fresh && (self.reachable() || !self.link.restartable()) {
            return;
        }
        if let Some(config) = &self.config_cache {
            data.copy_from_slice(&config[offset as usize..end]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.local.is_some() {
            return debug_limited!("{}: config write ignored (the vmm serves it)", self.name);
        }
        let Ok(off) = u32::try_from(offset) else {
            return;
        };
        if !self.reachable() {
            warn_limited!(
                "{}: config write at {offset:#x} while no backend serves the device; dropped",
                self.name
            );
            return;
        }
        let guard = self.guard();
        if let Err(e) = self
            .frontend
            .set_config(off, VhostUserConfigFlags::WRITABLE, data)
        {
            let e = timed_out_text(e, &guard);
            warn_limited!("{}: writing config space at {offset:#x}: {e}", self.name);
            self.backend_failed("SET_CONFIG", &e);
        }
    }

    fn activate(
        &mut self,
        features: u64,
        queues: &[Option<QueueConfig>],
    ) -> Result<(), ActivateError> {
        let name = self.name.clone();
        let error = |what| ActivateError {
            device: name.clone(),
            what,
        };
        if let Some(why) = &self.stopped {
            return Err(error(format!("no backend serves it: {why}")));
        }
        // The control queue of a multiqueue net device is the vmm's own, whatever the
        // backend does.
        if let Some(ctrl) = &mut self.net_ctrl {
            ctrl.queue = match queues.get(ctrl.index as usize) {
                Some(Some(q)) => {
                    Some(CtrlQueue::new(q, features).map_err(|e| error(e.to_string()))?)
                }
                _ => None,
            };
        }
        let act = self.activation_of(features, queues);
        if !self.link.is_up() {
            // Its backend is being restarted: the new one gets this set-up.
            info_limited!(
                "{}: driver started the device while its backend restarts",
                self.name
            );
            self.activation = Some(act);
            return Ok(());
        }
        // Whatever part of the set-up reaches the backend (a started ring) is undone by
        // the next reset, even if a later step fails.
        self.active = true;
        let guard = self.guard();
        let started = self.start(&act, false).map_err(|e| e.timed_out(&guard));
        drop(guard);
        match started {
            Ok(()) => {}
            Err(StartError::Backend(what)) if self.backend_failed("starting", &what) => {
                // Lost: the launcher restarts the backend, and the new one gets the set-up.
                self.activation = Some(act);
                return Ok(());
            }
            Err(e) => return Err(error(e.what())),
        }
        self.activation = Some(act);
        info_limited!(
            "{}: started, features {features:#x}, protocol features {:#x}",
            self.name,
            self.protocol_features.bits()
        );
        Ok(())
    }

    fn notify(&mut self, queue: u32) {
        let Some(ctrl) = &mut self.net_ctrl else {
            debug_limited!("{}: queue notify {queue} reached the vmm", self.name);
            return;
        };
        let (Some(cq), true) = (ctrl.queue.as_mut(), queue == ctrl.index) else {
            return;
        };
        let pairs_max = (self.kicks.len() / 2) as u16;
        let reachable = self.stopped.is_none() && self.link.is_up();
        let _guard = watchdog::arm(self.frontend.as_raw_fd(), REPLY_TIMEOUT);
        let (frontend, name, link) = (&mut self.frontend, &self.name, &self.link);
        let mut enabled = None;
        let interrupt = cq.process(&self.memory.mem, |pairs| {
            if pairs == 0 || pairs > pairs_max {
                return false;
            }
            // While the backend restarts, the new one gets the pairs with the replay.
            for i in (0..usize::from(pairs_max) * 2).filter(|_| reachable) {
                if let Err(e) = frontend.set_vring_enable(i, i < usize::from(pairs) * 2) {
                    warn_limited!("{name}: enabling queue {i}: {e}");
                    if !link.fail(format!("SET_VRING_ENABLE: {e}")) {
                        return false;
                    }
                    break;
                }
            }
            info_limited!("{name}: the driver uses {pairs} queue pairs");
            enabled = Some(usize::from(pairs) * 2);
            true
        });
        if let (Some(n), Some(act)) = (enabled, self.activation.as_mut()) {
            act.enabled = n;
        }
        let call = self.interrupts.queues.get(queue as usize);
        if let (true, Some(call)) = (interrupt, call) {
            if let Err(e) = call.write(1) {
                warn_limited!("{}: control queue interrupt: {e}", self.name);
            }
        }
    }

    fn interrupt(&mut self) -> std::io::Result<()> {
        self.interrupts.config.write(1)
    }

    fn config_size(&self) -> usize {
        self.config_size
    }

    fn reset(&mut self) {
        if let Some(ctrl) = &mut self.net_ctrl {
            ctrl.queue = None;
        }
        self.activation = None;
        // A new region for the next start: nothing is in flight after a reset.
        self.inflight = None;
        if !std::mem::take(&mut self.active) || !self.reachable() {
            return;
        }
        // Stop every ring: GET_VRING_BASE makes the backend stop processing it.
        let _guard = self.guard();
        for i in 0..self.kicks.len() {
            if let Err(e) = self.frontend.set_vring_enable(i, false) {
                warn_limited!("{}: disabling queue {i}: {e}", self.name);
            }
            if let Err(e) = self.frontend.get_vring_base(i) {
                warn_limited!("{}: stopping queue {i}: {e}", self.name);
                if self.backend_failed("GET_VRING_BASE", &e) {
                    return;
                }
            }
        }
    }

    fn reconnect(&mut self, socket: UnixStream) -> Result<(), ReconnectError> {
        replay::reconnect(self, socket)
    }

    fn stop(&mut self, why: &str) {
        self.stopped = Some(why.to_owned());
    }
}
