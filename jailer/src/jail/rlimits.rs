//! Resource limits a jailed process starts with: open files (NOFILE), file size (FSIZE) and
//! processes of its uid (NPROC). Each unset one is inherited from the jailer.

/// rlimits to set in the child (soft and hard alike); `None` keeps the jailer's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_NOFILE: highest fd number + 1 the process may open.
    pub nofile: Option<u64>,
    /// RLIMIT_FSIZE: largest file size in bytes it may write.
    pub fsize: Option<u64>,
    /// RLIMIT_NPROC: processes and threads of its real uid.
    pub nproc: Option<u64>,
}

/// One limit to apply, prepared before clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub resource: libc::__rlimit_resource_t,
    pub value: u64,
}

impl Rlimits {
    /// The limits to set, at most three; a fixed array so the child needs no allocation.
    pub(crate) fn prepare(&self) -> [Option<Limit>; 3] {
        let limit = |resource, value: Option<u64>| value.map(|value| Limit { resource, value });
        [
            limit(libc::RLIMIT_NOFILE, self.nofile),
            limit(libc::RLIMIT_FSIZE, self.fsize),
            limit(libc::RLIMIT_NPROC, self.nproc),
        ]
    }
}

/// Sets each prepared limit (soft = hard). Allocation-free; on failure, the errno.
pub(crate) fn apply(limits: &[Option<Limit>; 3]) -> Result<(), i32> {
    for limit in limits.iter().flatten() {
        crate::sys::jail_child::set_rlimit(limit.resource, limit.value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_limits_are_prepared() {
        let limits = Rlimits {
            nofile: Some(64),
            fsize: None,
            nproc: Some(8),
        }
        .prepare();
        assert_eq!(
            limits,
            [
                Some(Limit {
                    resource: libc::RLIMIT_NOFILE,
                    value: 64
                }),
                None,
                Some(Limit {
                    resource: libc::RLIMIT_NPROC,
                    value: 8
                }),
            ]
        );
    }
}
