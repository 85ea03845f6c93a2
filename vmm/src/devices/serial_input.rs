//! Host input for the serial console: a thread that reads the vmm's standard input and
//! feeds the UART's receive FIFO, waiting while the guest has not drained it.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::serial::SerialDevice;

use bulkhead_seccomp::mode::process_mode;
use bulkhead_seccomp::thread::spawn_confined;
use bulkhead_seccomp::Role;

/// How long to wait for the guest to drain a full FIFO before offering input again.
const FIFO_RETRY: Duration = Duration::from_millis(5);

/// Starts the `serial-in` thread (under the vmm main role's seccomp filter) copying `input`
/// into `serial` until EOF, an error, or `stop`.
pub fn spawn<R: Read + Send + 'static>(
    mut input: R,
    serial: Arc<Mutex<SerialDevice>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<Option<()>>> {
    Ok(spawn_confined(
        "serial-in",
        Role::VmmMain,
        process_mode(),
        move || {
            let mut buf = [0u8; 64];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("serial: reading host input: {e}");
                        return;
                    }
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .enqueue_input(pending);
                    match taken {
                        Ok(0) => std::thread::sleep(FIFO_RETRY),
                        Ok(k) => pending = &pending[k..],
                        Err(e) => {
                            log::warn!("serial: raising the input interrupt: {e}");
                            return;
                        }
                    }
                }
            }
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::BusDevice;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn input_reaches_the_fifo_in_order() {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFd::new(0).unwrap(),
            Box::new(std::io::sink()),
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn(&b"abc"[..], serial.clone(), stop).unwrap();
        h.join().unwrap();
        let mut out = Vec::new();
        let mut b = [0u8];
        for _ in 0..3 {
            serial.lock().unwrap().read(0, &mut b);
            out.push(b[0]);
        }
        assert_eq!(out, b"abc");
    }
}
