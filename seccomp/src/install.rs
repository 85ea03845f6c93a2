//! Compiling a role's allowlist to BPF and installing it on the calling thread.
//!
//! Two filters are installed, the kernel applying the stricter answer of the two:
//! - the allowlist: listed calls (with their argument conditions) are allowed, anything
//!   else traps (`enforce`) or is logged and allowed (`log`);
//! - one per [`rules::ANSWERED`] call, answering it with an errno: `clone3` gets ENOSYS
//!   (its flags are in memory where a filter can't read them, so glibc falls back to
//!   `clone`, whose flags the allowlist checks), `openat` ENOENT.
//!
//! In `enforce` mode a SIGSYS handler (installed once per process, before the first
//! filter) writes one [`crate::report`] line on stderr and sends itself SIGSYS with
//! `tgkill`, which a third filter answers with SECCOMP_RET_KILL_PROCESS: the process dies
//! by SIGSYS and its parent sees that in `waitpid`. (A plain re-raise is not enough: a
//! jailed process is pid 1 of its namespace, and the kernel drops signals a namespace's
//! init has no handler for, even its own; seccomp's kill is forced.)
//! No allowlist lets `rt_sigaction` touch SIGSYS, so a confined thread can't disarm it.
//!
//! [`compile`] allocates; [`Filter::apply`] does not, so a forked child of a threaded
//! process may call it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::mode::SeccompMode;
use crate::report::Line;
use crate::role::Role;
use crate::rules::{self, Arg};
use crate::sys::signal_handler;

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// seccompiler refused a rule or the filter.
    #[error("compiling the {role} seccomp filter: {source}")]
    Compile {
        /// The role.
        role: Role,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {role} seccomp filter: {source}")]
    Apply {
        /// The role.
        role: Role,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler for the {role} seccomp filter: {source}")]
    Handler {
        /// The role.
        role: Role,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A role's filters, compiled, ready to install on a thread.
#[derive(Debug)]
pub struct Filter {
    role: Role,
    mode: SeccompMode,
    allowlist: BpfProgram,
    answers: Vec<BpfProgram>,
}

fn condition(arg: &Arg) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (index, len, op, value) = match *arg {
        Arg::Eq(i, v) => (i, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, v),
        Arg::Eq32(i, v) => (i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, u64::from(v)),
        Arg::Ne(i, v) => (i, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, v),
        Arg::Masked(i, mask, v) => (i, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), v),
    };
    SeccompCondition::new(index, len, op, value)
}

/// The allowlist of `role` as seccompiler rules: an unconditional rule for a call makes
/// its conditional ones moot.
fn rule_map(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules::for_role(role) {
        let entry = map.entry(rule.syscall).or_insert_with(|| Some(Vec::new()));
        if rule.args.is_empty() {
            *entry = None;
        } else if let Some(alternatives) = entry {
            let conditions = rule.args.iter().map(condition).collect::<Result<_, _>>()?;
            alternatives.push(SeccompRule::new(conditions)?);
        }
    }
    // Allowed here so that the answering filters' errno wins (a trap would win over it).
    for answer in rules::ANSWERED {
        map.insert(answer.syscall, None);
    }
    Ok(map
        .into_iter()
        .map(|(nr, alternatives)| (nr, alternatives.unwrap_or_default()))
        .collect())
}

/// The filter that turns the SIGSYS handler's `tgkill(pid, tid, SIGSYS)` into the kill of
/// the whole process.
fn kill_on_sigsys() -> Result<BpfProgram, seccompiler::BackendError> {
    let sigsys = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::SIGSYS as u64,
    )?;
    let rules = [(libc::SYS_tgkill, vec![SeccompRule::new(vec![sigsys])?])]
        .into_iter()
        .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
}

/// Compiles `role`'s filters for `mode`; `None` when `mode` is `Off`.
pub fn compile(role: Role, mode: SeccompMode) -> Result<Option<Filter>, Error> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => return Ok(None),
    };
    let err = |source| Error::Compile { role, source };
    let allowlist = SeccompFilter::new(
        rule_map(role).map_err(err)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(err)?;
    let mut answers = rules::ANSWERED
        .iter()
        .map(|a| {
            SeccompFilter::new(
                [(a.syscall, Vec::new())].into_iter().collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(a.errno as u32),
                TargetArch::x86_64,
            )
            .and_then(BpfProgram::try_from)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if mode == SeccompMode::Enforce {
        answers.push(kill_on_sigsys().map_err(err)?);
    }
    Ok(Some(Filter {
        role,
        mode,
        allowlist,
        answers,
    }))
}

/// Compiles and installs `role`'s filters on the calling thread (nothing when `mode` is
/// `Off`).
pub fn install(role: Role, mode: SeccompMode) -> Result<(), Error> {
    let self_test = crate::thread::self_test_wanted(role);
    if let Some(filter) = compile(role, mode)? {
        filter.apply()?;
    }
    if self_test {
        crate::thread::call_outside_every_list(role);
    }
    Ok(())
}

impl Filter {
    /// The role this filter is for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Installs the filters on the calling thread (and on threads it starts later). Sets
    /// `no_new_privs` first, as the kernel requires. Does not allocate.
    pub fn apply(&self) -> Result<(), Error> {
        let role = self.role;
        if self.mode == SeccompMode::Enforce {
            install_handler().map_err(|source| Error::Handler { role, source })?;
        }
        THREAD_ROLE.with(|r| r.set(Some(role)));
        // The answering filters first: installing a filter takes prctl and seccomp, which
        // the allowlist does not allow.
        self.answers
            .iter()
            .chain(std::iter::once(&self.allowlist))
            .try_for_each(|program| seccompiler::apply_filter(program))
            .map_err(|source| Error::Apply { role, source })
    }
}

thread_local! {
    /// The role whose filter this thread installed itself (read by the SIGSYS handler:
    /// a const-initialised `Cell` needs no allocation or lazy set-up to read).
    static THREAD_ROLE: Cell<Option<Role>> = const { Cell::new(None) };
}

static HANDLER_INSTALLED: AtomicBool = AtomicBool::new(false);

fn install_handler() -> std::io::Result<()> {
    if HANDLER_INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let action = SigAction::new(
        SigHandler::SigAction(on_sigsys),
        SaFlags::SA_RESETHAND | SaFlags::SA_NODEFER,
        SigSet::empty(),
    );
    // SAFETY: the handler is an extern "C" fn of the SA_SIGINFO signature (nix adds the
    // flag for SigHandler::SigAction), living for the whole program, and async-signal-safe
    // (see on_sigsys).
    if let Err(e) = unsafe { sigaction(Signal::SIGSYS, &action) } {
        HANDLER_INSTALLED.store(false, Ordering::SeqCst);
        return Err(e.into());
    }
    Ok(())
}

/// The SIGSYS handler: async-signal-safe (no allocation, no locks, only `write`,
/// `prctl(PR_GET_NAME)`, `getpid`, `gettid`, `tgkill`, all in every allowlist; the raw
/// ones are in [`crate::sys::signal_handler`]).
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes this SA_SIGINFO handler a valid SIGSYS siginfo_t.
    let nr = unsafe { signal_handler::sigsys_syscall_nr(info) };
    let mut thread = [0u8; 17];
    let thread_len = signal_handler::thread_name(&mut thread);
    let role = THREAD_ROLE
        .try_with(|r| r.get())
        .ok()
        .flatten()
        .map_or("inherited", Role::name);
    let mut program = [0u8; 17];
    let program_len = program_name(&mut program);
    let line = Line::new(&program[..program_len], &thread[..thread_len], role, nr);
    let bytes = line.as_bytes();
    // Nothing to do if stderr is gone; std's stderr handle is a static, taken lock-free.
    let _ = nix::unistd::write(std::io::stderr(), bytes);
    // The kill filter answers this with SECCOMP_RET_KILL_PROCESS (by SIGSYS); outside a
    // pid namespace's init the reset default action would do the same.
    signal_handler::tgkill_self_sigsys();
}

/// The program's name, the last component of the path it was executed by, copied into
/// `out` without allocating; returns its length.
fn program_name(out: &mut [u8; 17]) -> usize {
    let path = signal_handler::exec_path();
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let n = name.len().min(out.len());
    out[..n].copy_from_slice(&name[..n]);
    n
}
