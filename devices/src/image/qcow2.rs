//! A qcow2 chain served through `imago`.
//!
//! CONTRACT (issue 13, branch `qcow2` fills this in): opened from the files of a
//! [`Chain`](super::chain::Chain) (no path is opened here), with bounded caches; reads,
//! writes, DISCARD, WRITE_ZEROES and FLUSH (data made durable before metadata).
