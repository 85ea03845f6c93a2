//! `Output::assert_guest_line`: a guest line found whole or cut by a kernel message, and
//! nothing else.

use crate::common::Output;

fn console(stdout: &str) -> Output {
    Output {
        status: None,
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

#[test]
fn a_whole_line_or_one_a_kernel_message_cut_into_is_found() {
    console("a\nguest: done\nb\n").assert_guest_line("guest: done");
    console("guest: done[    2.247391] tsc: Refined TSC clocksource calibration\n")
        .assert_guest_line("guest: done");
}

#[test]
#[should_panic(expected = "no line")]
fn a_line_that_goes_on_with_other_text_is_not_found() {
    console("guest: done twice\n").assert_guest_line("guest: done");
}

#[test]
#[should_panic(expected = "no line")]
fn a_bracket_that_is_not_a_timestamp_is_not_found() {
    console("guest: done[x] more\n").assert_guest_line("guest: done");
}
