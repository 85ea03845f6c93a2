//! Reading the launcher's restart report lines (`bulkhead: disk0: bulkhead-blk (pid 812)
//! killed by signal 9 (SIGKILL); restarted as pid 840 ...`), for the restart benchmark and
//! the restart tests (which include this file).

/// N of `restarted as pid N` in a report line.
pub fn restarted_as(line: &str) -> Option<u32> {
    line.split("restarted as pid ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
