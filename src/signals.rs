//! Signal mask handling shared by linking and the supervisor.
//!
//! `main` blocks every catchable signal before it does anything else, so no
//! signal is lost or acted on by a default disposition while the config is
//! read or links are applied. Linking then polls for the termination signals
//! at safe points ([`check_interrupt`]); the supervisor later collects all of
//! them synchronously with `sigtimedwait`. The child gets the original mask
//! back before `exec` ([`original_mask`]).

use std::sync::OnceLock;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use crate::error::{Error, Result};

static ORIGINAL_MASK: OnceLock<SigSet> = OnceLock::new();

/// The signals that stop linking at a safe point (SPEC: `run`).
pub const TERMINATING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Block every signal that can be blocked and remember the mask we started
/// with. Call first thing in `main`.
pub fn block_all() {
    let mut old = SigSet::empty();
    // SIGKILL/SIGSTOP are silently ignored by the kernel; SIGSEGV and friends
    // stay deliverable for real faults because they are synchronous.
    let mut all = SigSet::all();
    for sig in [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGABRT,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        all.remove(sig);
    }
    // Cannot fail with a valid `how`.
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut old));
    let _ = ORIGINAL_MASK.set(old);
}

/// The mask `main` started with, to restore in the child.
pub fn original_mask() -> SigSet {
    ORIGINAL_MASK.get().copied().unwrap_or_else(SigSet::empty)
}

/// `Err(Interrupted(sig))` if a termination signal is pending. Cheap (one
/// `sigpending`), so it is called between files and between chunks of a
/// large file. The signal is left pending: nothing after this point acts on
/// it except the exit.
pub fn check_interrupt() -> Result<()> {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { libc::sigpending(pending.as_mut_ptr()) } != 0 {
        return Ok(());
    }
    // SAFETY: initialised by the successful call above.
    let pending = unsafe { pending.assume_init() };
    for sig in TERMINATING {
        // SAFETY: valid set and signal number.
        if unsafe { libc::sigismember(&pending, sig as i32) } == 1 {
            return Err(Error::Interrupted(sig as i32));
        }
    }
    Ok(())
}

/// Sleep for `dur`, waking early (with `Err`) if a termination signal comes.
pub fn sleep_interruptible(dur: std::time::Duration) -> Result<()> {
    let mut set = SigSet::empty();
    for sig in TERMINATING {
        set.add(sig);
    }
    let ts = nix::sys::time::TimeSpec::from_duration(dur);
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: valid set, out-pointer and timespec; all signals are blocked so
    // sigtimedwait is the only consumer.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr(), ts.as_ref()) };
    if r > 0 {
        return Err(Error::Interrupted(r));
    }
    Ok(())
}

/// Take a pending `sig` off the queue, if there is one (a signal raised on
/// sharelink's own account, such as SIGIO from a lease it held).
pub fn discard(sig: libc::c_int) {
    let mut set = SigSet::empty();
    if let Ok(s) = Signal::try_from(sig) {
        set.add(s);
    }
    let zero = nix::sys::time::TimeSpec::new(0, 0);
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: valid set, out-pointer and timespec; a zero timeout only
    // takes what is pending.
    while unsafe { libc::sigtimedwait(set.as_ref(), info.as_mut_ptr(), zero.as_ref()) } > 0 {}
}
