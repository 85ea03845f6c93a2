//! End to end: the test guest's soak scenarios against undisturbed device processes, on
//! both transports (`mmio::`, `pci::`). Each soak runs about 2 s and the host checks the
//! real outcome, not only the guest's PASS: the image holds the last write of every sector
//! (`blk-soak`), the host's UDP echo saw the datagrams and the host can ping the guest
//! meanwhile (`net-soak`), the console file has every line in order (`console-soak`).
//! `tests/restart.rs` runs the same soaks while device processes are killed.

mod common;

use common::soak::{check_blk_image, stalls, Kind, SoakVm, AREA};
use common::transport::{assert_guest_used, Transport};
use std::time::Duration;

const SOAK_MS: u64 = 2000;

fn blk_soak_leaves_the_last_writes_in_the_image(t: Transport) {
    require_kvm!();
    let vm = SoakVm::start(Kind::Blk, t, SOAK_MS, "", &[]);
    let done = vm.finish(Duration::from_secs(90));
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert_guest_used(t, &done.stdout);
    let c = done.pass(Kind::Blk);
    assert!(c["writes"] > 0, "{}", done.dump());
    assert_eq!(c["reads"], c["writes"], "{}", done.dump());
    assert_eq!(c["last"], c["writes"], "{}", done.dump());
    assert_eq!(c["flushes"], c["writes"] / 16 + 1, "{}", done.dump());
    let img = done.image.as_ref().expect("an image");
    check_blk_image(&img.read(), &img.original, c["last"], AREA)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", img.path.display(), done.dump()));
    // Every stall line is at most the longest gap the PASS line names.
    let max = c["max-stall-ms"];
    assert!(
        stalls(&done.stdout, "blk-soak").iter().all(|&s| s <= max),
        "{}",
        done.dump()
    );
    eprintln!(
        "blk-soak {t}: writes={} flushes={} max-stall-ms={max}",
        c["writes"], c["flushes"]
    );
}

fn net_soak_is_echoed_and_the_guest_answers_ping(t: Transport) {
    require_kvm!();
    require_netns!();
    let mut vm = SoakVm::start(Kind::Net, t, 3000, "", &[]);
    vm.wait_started();
    let ns = vm.ns.clone().expect("a namespace");
    let ping = common::netns::exec(
        &ns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-w",
            "10",
            common::soak::GUEST_IP,
        ],
    );
    let done = vm.finish(Duration::from_secs(90));
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert_guest_used(t, &done.stdout);
    assert!(
        ping_out.contains("3 received"),
        "{ping_out}\n{}",
        done.dump()
    );
    let c = done.pass(Kind::Net);
    assert!(c["sent"] > 0, "{}", done.dump());
    assert_eq!(c["received"] + c["lost"], c["sent"], "{}", done.dump());
    // Nothing disturbed the device: nothing lost, nothing twice.
    assert_eq!((c["lost"], c["duplicates"]), (0, 0), "{}", done.dump());
    // The host saw every datagram (and the warm-up ones besides).
    let echoed = done.echoed.expect("an echo");
    assert!(echoed > c["received"], "echoed {echoed}\n{}", done.dump());
    eprintln!(
        "net-soak {t}: sent={} received={} max-stall-ms={}",
        c["sent"], c["received"], c["max-stall-ms"]
    );
}

fn console_soak_lines_arrive_in_order(t: Transport) {
    require_kvm!();
    let vm = SoakVm::start(Kind::Console, t, SOAK_MS, "", &[]);
    let done = vm.finish(Duration::from_secs(90));
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert_guest_used(t, &done.stdout);
    let c = done.pass(Kind::Console);
    assert!(c["lines"] > 0, "{}", done.dump());
    let seen = done
        .console_lines(c["lines"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.repeated, 0, "nothing restarted, nothing repeats");
    eprintln!(
        "console-soak {t}: lines={} max-stall-ms={}",
        c["lines"], c["max-stall-ms"]
    );
}

on_both_transports!(
    blk_soak_leaves_the_last_writes_in_the_image,
    net_soak_is_echoed_and_the_guest_answers_ping,
    console_soak_lines_arrive_in_order
);
