//! Unit tests of tests/common/soak.rs: the checks of what a soak left behind.

use crate::common::soak::*;

#[test]
fn console_check_allows_repeats_not_gaps() {
    let log =
        |seqs: &[u64]| -> String { seqs.iter().map(|s| format!("console-soak {s}\n")).collect() };
    assert_eq!(
        check_console_lines(&log(&[0, 1, 2, 3]), 4),
        Ok(ConsoleLines {
            lines: 4,
            repeated: 0
        })
    );
    assert_eq!(
        check_console_lines(&log(&[0, 1, 2, 3, 2, 3, 4]), 5),
        Ok(ConsoleLines {
            lines: 5,
            repeated: 2
        })
    );
    assert!(check_console_lines(&log(&[0, 1, 3]), 4).is_err());
    assert!(check_console_lines(&log(&[0, 2, 1, 3]), 4).is_err());
    assert!(check_console_lines(&log(&[1, 2]), 3).is_err());
    assert!(check_console_lines(&log(&[0, 1, 2]), 4).is_err());
    // A repeat must go on one by one: 3 2 4 skips 3's successor.
    assert!(check_console_lines(&log(&[0, 1, 2, 3, 2, 4]), 5).is_err());
    assert!(check_console_lines("console-soak 0\nxx\n", 1).is_err());
}

#[test]
fn console_check_refuses_a_cut_last_line() {
    // The console file's max-size cuts mid-line: `console-soak 12` of `console-soak 123`
    // would pass as line 12 after 11, `consol` as no soak line; both are a cut.
    let whole: String = (0..12).map(|s| format!("console-soak {s}\n")).collect();
    assert!(check_console_lines(&whole, 12).is_ok());
    for cut in ["console-soak 12", "consol"] {
        let e = check_console_lines(&format!("{whole}{cut}"), 13).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "the output ends mid-line: {cut:?} after 12 whole lines"
            )),
            "{e}"
        );
    }
    assert!(check_console_lines("console-soak 0", 1)
        .unwrap_err()
        .contains("mid-line"));
    assert_eq!(
        check_console_lines("", 0),
        Ok(ConsoleLines {
            lines: 0,
            repeated: 0
        })
    );
}

#[test]
fn blk_image_check_finds_a_missing_write() {
    let area = 4;
    let before = vec![0xeeu8; 8 * 512];
    let mut now = before.clone();
    for n in 1..=6u64 {
        let sector = (n - 1) % area;
        for i in 0..512 {
            now[(sector * 512) as usize + i] = blk_byte(n, sector, i);
        }
    }
    assert_eq!(check_blk_image(&now, &before, 6, area), Ok(()));
    // Write 6 (sector 1) lost: the sector still holds write 2.
    for i in 0..512 {
        now[512 + i] = blk_byte(2, 1, i);
    }
    let e = check_blk_image(&now, &before, 6, area).unwrap_err();
    assert!(
        e.contains("does not hold write 6") && e.contains("say write 2"),
        "{e}"
    );
    let mut now = before.clone();
    now[5 * 512] = 1;
    assert!(check_blk_image(&now, &before, 0, area)
        .unwrap_err()
        .contains("outside"));
}

#[test]
fn pass_counts_and_stalls_are_parsed() {
    let out = "bulkhead-guest: blk-soak: stall 47 ms\nbulkhead-guest: blk-soak: stall 3 ms\n\
               bulkhead-guest: PASS blk-soak writes=3 reads=3 flushes=1 last=3 max-stall-ms=47\n";
    let c = pass_counts(out, "blk-soak").unwrap();
    assert_eq!((c["writes"], c["last"], c["max-stall-ms"]), (3, 3, 47));
    assert_eq!(stalls(out, "blk-soak"), [47, 3]);
    assert!(pass_counts(out, "net-soak").is_none());
    let status = "state: running\nprocess: vmm pid 10 running\nprocess: disk0 (bulkhead-blk) pid 12863 running\n";
    assert_eq!(device_pid(status, "disk0"), Some(12863));
    assert_eq!(device_pid(status, "net0"), None);
}
