//! The fds a jailed process keeps: a list of (fd in the jailer, fd number in the child)
//! pairs, 0/1/2 included when wanted. Every other fd is closed at exec.
//!
//! In the child, each source (and each fd the child itself still needs until exec) is first
//! duplicated close-on-exec above every number in play, so that placing one pair cannot
//! clobber another's source; then each copy is `dup2`ed to its number, the numbers below the
//! highest target that are no target are closed, and `close_range(CLOSE_RANGE_CLOEXEC)`
//! marks everything above it, so exec closes the rest. Allocation-free.

use std::os::fd::RawFd;

use crate::sys::jail_child as sys;

/// Why a list of fd pairs was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdPlanError {
    /// A number was negative.
    #[error("fd pair {from} -> {to}: negative fd number")]
    Negative {
        /// Source fd in the jailer.
        from: RawFd,
        /// Number in the child.
        to: RawFd,
    },
    /// Two pairs target one number.
    #[error("fd {to} in the child is the target of two pairs")]
    DuplicateTarget {
        /// Number in the child.
        to: RawFd,
    },
}

/// The fd placement, prepared before clone.
#[derive(Debug)]
pub(crate) struct FdPlan {
    pairs: Vec<(RawFd, RawFd)>,
    /// Where each source's high copy goes in the child (same length as `pairs`).
    copies: Vec<RawFd>,
    /// Every copy is made at or above this number.
    base: RawFd,
    /// The highest target, -1 with none.
    max_to: RawFd,
}

impl FdPlan {
    /// Checks the pairs; `extra` are fds the child still uses until exec (they are moved up).
    pub(crate) fn new(pairs: &[(RawFd, RawFd)], extra: &[RawFd]) -> Result<FdPlan, FdPlanError> {
        for (i, &(from, to)) in pairs.iter().enumerate() {
            if from < 0 || to < 0 {
                return Err(FdPlanError::Negative { from, to });
            }
            if pairs[..i].iter().any(|&(_, other)| other == to) {
                return Err(FdPlanError::DuplicateTarget { to });
            }
        }
        let highest = pairs
            .iter()
            .flat_map(|&(from, to)| [from, to])
            .chain(extra.iter().copied())
            .max()
            .unwrap_or(2);
        Ok(FdPlan {
            pairs: pairs.to_vec(),
            copies: vec![-1; pairs.len()],
            base: highest.max(2) + 1,
            max_to: pairs.iter().map(|&(_, to)| to).max().unwrap_or(-1),
        })
    }

    /// The child's placement (see the module doc). `extra` fds are replaced by their high
    /// close-on-exec copies. On failure, the errno.
    pub(crate) fn place(&mut self, extra: &mut [RawFd]) -> Result<(), i32> {
        for fd in extra.iter_mut() {
            *fd = sys::dup_cloexec_above(*fd, self.base)?;
        }
        for (copy, &(from, _)) in self.copies.iter_mut().zip(&self.pairs) {
            *copy = sys::dup_cloexec_above(from, self.base)?;
        }
        for (&copy, &(_, to)) in self.copies.iter().zip(&self.pairs) {
            sys::dup2(copy, to)?;
        }
        for fd in 0..=self.max_to {
            if !self.pairs.iter().any(|&(_, to)| to == fd) {
                sys::close(fd);
            }
        }
        // Marks (does not close) every fd above the targets, so the copies and `extra` stay
        // usable until exec.
        sys::cloexec_from((self.max_to + 1) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_go_above_every_number_in_play() {
        let plan = FdPlan::new(&[(0, 0), (9, 3), (4, 12)], &[20]).unwrap();
        assert_eq!(plan.base, 21);
        assert_eq!(plan.max_to, 12);
        let none = FdPlan::new(&[], &[]).unwrap();
        assert_eq!((none.base, none.max_to), (3, -1));
    }

    #[test]
    fn refuses_bad_pairs() {
        assert_eq!(
            FdPlan::new(&[(3, 3), (4, 3)], &[]).unwrap_err(),
            FdPlanError::DuplicateTarget { to: 3 }
        );
        assert_eq!(
            FdPlan::new(&[(-1, 3)], &[]).unwrap_err(),
            FdPlanError::Negative { from: -1, to: 3 }
        );
    }
}
