//! The API's routes (Firecracker's swagger): a parsed request to the [`Instance`], its
//! answer. Features bulkhead does not have are refused with a fault naming them, as
//! Firecracker answers a build without them; never a hang.

use super::http::{Request, Response};
use super::instance::{self, Instance};
use super::model::{self, from_body, ActionType, WantedState};

/// The version of Firecracker's API served.
pub const FIRECRACKER_API_VERSION: &str = "1.10.0";

/// Answers `req`.
pub fn handle(vm: &mut Instance, req: &Request) -> Response {
    let answer = route(vm, req);
    match &answer {
        Ok(_) => vm.metrics.requests_ok += 1,
        Err(_) => vm.metrics.requests_failed += 1,
    }
    let what = format!("{} {}", req.method, req.path);
    match answer {
        Ok(r) => {
            vm.logger.info("routes", &format!("{what}: {}", r.status));
            r
        }
        Err(msg) => {
            vm.logger.error("routes", &format!("{what}: {msg}"));
            Response::bad_request(&msg)
        }
    }
}

fn route(vm: &mut Instance, req: &Request) -> Result<Response, String> {
    let mut parts = req.path.trim_start_matches('/').split_terminator('/');
    let first = parts.next().unwrap_or("");
    let second = parts.next();
    let extra = parts.next().is_some();
    let body = &req.body[..];
    let has_body = !body.is_empty();
    let method = req.method.as_str();
    let invalid = || {
        Err(format!(
            "Invalid request method and/or path: {method} {}.",
            req.path
        ))
    };
    if extra {
        return invalid();
    }
    match (method, first, second, has_body) {
        ("GET", _, _, true) => Err("GET request cannot have a body.".into()),
        ("PUT", _, _, false) => Err("Empty PUT request.".into()),
        ("PATCH", _, _, false) => Err("Empty PATCH request.".into()),
        ("GET", "", None, _) => Ok(Response::json(&model::InstanceInfo {
            app_name: "Firecracker".into(),
            id: vm.id.clone(),
            state: vm.state().into(),
            vmm_version: FIRECRACKER_API_VERSION.into(),
        })),
        ("GET", "version", None, _) => Ok(Response::json(
            &serde_json::json!({ "firecracker_version": FIRECRACKER_API_VERSION }),
        )),
        ("GET", "machine-config", None, _) => Ok(Response::json(
            &vm.config.machine_config.clone().unwrap_or_default(),
        )),
        ("GET", "vm", Some("config"), _) => {
            let mut full = vm.config.clone();
            full.machine_config.get_or_insert_with(Default::default);
            Ok(Response::json(&full))
        }
        ("PUT", "machine-config", None, _) => {
            vm.pre_boot()?;
            let m: model::MachineConfig = from_body(body)?;
            m.check()?;
            vm.config.machine_config = Some(m);
            Ok(Response::no_content())
        }
        ("PATCH", "machine-config", None, _) => {
            vm.pre_boot()?;
            let u: model::MachineConfigUpdate = from_body(body)?;
            let m = vm
                .config
                .machine_config
                .clone()
                .unwrap_or_default()
                .patched(u)?;
            vm.config.machine_config = Some(m);
            Ok(Response::no_content())
        }
        ("PUT", "boot-source", None, _) => {
            vm.pre_boot()?;
            vm.config.boot_source = Some(from_body(body)?);
            Ok(Response::no_content())
        }
        ("PUT", "drives", id, _) => {
            let d: model::Drive = from_body(body)?;
            same_id(id, &d.drive_id)?;
            vm.pre_boot()?;
            instance::check_drive(&d)?;
            if d.is_root_device
                && vm
                    .config
                    .drives
                    .iter()
                    .any(|o| o.is_root_device && o.drive_id != d.drive_id)
            {
                return Err("A root block device already exists!".into());
            }
            upsert(&mut vm.config.drives, d, |x| &x.drive_id);
            Ok(Response::no_content())
        }
        ("PATCH", "drives", id, _) => {
            let u: model::DriveUpdate = from_body(body)?;
            same_id(id, &u.drive_id)?;
            vm.running()?;
            if !vm.config.drives.iter().any(|d| d.drive_id == u.drive_id) {
                return Err(format!("Invalid block device ID: {}", u.drive_id));
            }
            if u.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
                return Err("The requested operation is not supported: rate limiters.".into());
            }
            match &u.path_on_host {
                None => Ok(Response::no_content()),
                Some(path) => {
                    vm.swap_drive(&u.drive_id, path)?;
                    Ok(Response::no_content())
                }
            }
        }
        ("PUT", "network-interfaces", id, _) => {
            let n: model::NetworkInterface = from_body(body)?;
            same_id(id, &n.iface_id)?;
            vm.pre_boot()?;
            instance::check_net(&n)?;
            if vm
                .config
                .network_interfaces
                .iter()
                .any(|o| o.iface_id != n.iface_id && o.host_dev_name == n.host_dev_name)
            {
                return Err(format!(
                    "The host device name {} is already in use.",
                    n.host_dev_name
                ));
            }
            upsert(&mut vm.config.network_interfaces, n, |x| &x.iface_id);
            Ok(Response::no_content())
        }
        ("PATCH", "network-interfaces", id, _) => {
            let u: model::NetworkInterfaceUpdate = from_body(body)?;
            same_id(id, &u.iface_id)?;
            vm.running()?;
            if !vm
                .config
                .network_interfaces
                .iter()
                .any(|n| n.iface_id == u.iface_id)
            {
                return Err(format!("Invalid network interface ID: {}", u.iface_id));
            }
            let limited = |r: &Option<serde_json::Value>| r.as_ref().is_some_and(|r| !r.is_null());
            if limited(&u.rx_rate_limiter) || limited(&u.tx_rate_limiter) {
                return Err("The requested operation is not supported: rate limiters.".into());
            }
            Ok(Response::no_content())
        }
        ("PUT", "vsock", None, _) => {
            vm.pre_boot()?;
            let v: model::Vsock = from_body(body)?;
            instance::check_vsock(&v)?;
            vm.config.vsock = Some(v);
            Ok(Response::no_content())
        }
        ("PUT", "logger", None, _) => {
            vm.pre_boot()?;
            let l: model::Logger = from_body(body)?;
            vm.set_logger(&l)?;
            vm.config.logger = Some(l);
            Ok(Response::no_content())
        }
        ("PUT", "metrics", None, _) => {
            vm.pre_boot()?;
            let m: model::Metrics = from_body(body)?;
            vm.metrics.configure(&m.metrics_path)?;
            vm.config.metrics = Some(m);
            Ok(Response::no_content())
        }
        ("PUT", "actions", None, _) => {
            let a: model::Action = from_body(body)?;
            match a.action_type {
                ActionType::InstanceStart => vm.start()?,
                ActionType::SendCtrlAltDel => vm.ctrl_alt_del()?,
                ActionType::FlushMetrics => {
                    let state = vm.state();
                    vm.metrics.flush(state)?
                }
            }
            Ok(Response::no_content())
        }
        ("PATCH", "vm", None, _) => {
            let s: model::VmState = from_body(body)?;
            vm.set_paused(s.state == WantedState::Paused)?;
            Ok(Response::no_content())
        }
        (
            _,
            what @ ("mmds" | "snapshot" | "balloon" | "entropy" | "cpu-config" | "serial" | "pmem"
            | "hotplug"),
            _,
            _,
        ) => Err(format!(
            "The requested operation is not supported: {what} (bulkhead-firecracker does not \
             serve it yet)."
        )),
        _ => invalid(),
    }
}

/// Firecracker's rule: the id in the path and the body's agree.
fn same_id(path_id: Option<&str>, body_id: &str) -> Result<(), String> {
    match path_id {
        None | Some("") => Err("The ID cannot be empty.".into()),
        Some(id) if id != body_id => {
            Err("The id from the path does not match the id from the body!".into())
        }
        Some(id) => model::check_id(id),
    }
}

/// Replaces the entry with `item`'s id, or appends it.
fn upsert<T>(list: &mut Vec<T>, item: T, id: impl Fn(&T) -> &String) {
    match list.iter().position(|x| id(x) == id(&item)) {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    fn fault(r: &Response) -> String {
        let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        v["fault_message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn pre_boot_configuration_and_its_faults() {
        let mut vm = Instance::new("t", "/nonexistent/ctl".into());
        let ok = |vm: &mut Instance, m, p, b| handle(vm, &req(m, p, b)).status;
        assert_eq!(
            ok(
                &mut vm,
                "PUT",
                "/machine-config",
                r#"{"vcpu_count":2,"mem_size_mib":256}"#
            ),
            204
        );
        assert_eq!(
            ok(
                &mut vm,
                "PATCH",
                "/machine-config",
                r#"{"mem_size_mib":128}"#
            ),
            204
        );
        assert_eq!(vm.config.machine_config.as_ref().unwrap().mem_size_mib, 128);
        assert_eq!(
            ok(
                &mut vm,
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path":"/k"}"#
            ),
            204
        );
        assert_eq!(
            ok(
                &mut vm,
                "PUT",
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}"#
            ),
            204
        );
        let r = handle(
            &mut vm,
            &req(
                "PUT",
                "/drives/other",
                r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}"#,
            ),
        );
        assert_eq!(
            (r.status, fault(&r).as_str()),
            (
                400,
                "The id from the path does not match the id from the body!"
            )
        );
        let r = handle(
            &mut vm,
            &req(
                "PUT",
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":64,"bogus":1}"#,
            ),
        );
        assert!(fault(&r).contains("unknown field `bogus`"), "{}", fault(&r));
        let r = handle(&mut vm, &req("DELETE", "/foo", ""));
        assert_eq!(
            fault(&r),
            "Invalid request method and/or path: DELETE /foo."
        );
        let r = handle(&mut vm, &req("PATCH", "/vm", r#"{"state":"Paused"}"#));
        assert_eq!(fault(&r), instance::PRE_BOOT);
        let r = handle(
            &mut vm,
            &req("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        );
        assert_eq!(fault(&r), instance::PRE_BOOT);
        let r = handle(&mut vm, &req("PUT", "/mmds", "{}"));
        assert!(fault(&r).contains("not supported: mmds"));
        assert_eq!(
            fault(&handle(&mut vm, &req("PUT", "/logger", ""))),
            "Empty PUT request."
        );
        let r = handle(&mut vm, &req("GET", "/", ""));
        assert!(r.body.unwrap().contains("\"state\":\"Not started\""));
        let r = handle(&mut vm, &req("GET", "/vm/config", ""));
        assert!(r
            .body
            .unwrap()
            .contains("\"boot-source\":{\"kernel_image_path\":\"/k\"}"));
    }
}
