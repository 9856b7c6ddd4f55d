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

// ---------------------------------------------------------------------------
// Naming signals and rewriting them

/// A signal as a user writes it: a number (1-64) or a name in any case, with
/// or without `SIG` (`15`, `TERM`, `sigterm`). Real-time signals have no
/// portable names (glibc and musl disagree on `SIGRTMIN`), so they are
/// numbers.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return if (1..=64).contains(&n) {
            Ok(n as i32)
        } else {
            Err(format!("signal number {n} is out of range (1-64)"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {text:?}"))
}

/// Which forwarded signals the command receives as another signal, or not
/// at all (`TERM:INT` lets a Python program without a SIGTERM handler clean
/// up through KeyboardInterrupt).
///
/// Only forwarding consults it: a signal that stops linking, and the
/// SIGTERM/SIGKILL sharelink sends to leftovers after the command exits,
/// are sharelink's own and never rewritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Source signal -> what the command gets; `0` means nothing.
    map: std::collections::BTreeMap<i32, i32>,
}

/// `0` as a target: drop the signal instead of forwarding it.
pub const DROP: i32 = 0;

impl Rewrites {
    /// Parse `FROM:TO` (`TERM:INT`, `15:2`, `SIGHUP:0`).
    pub fn parse_rule(rule: &str) -> Result<(i32, i32), String> {
        let (from, to) = rule
            .split_once(':')
            .ok_or_else(|| format!("expected FROM:TO (like TERM:INT), got {rule:?}"))?;
        Ok((parse_source(from)?, parse_target(to)?))
    }

    /// Add or replace the rule for `from`.
    pub fn insert(&mut self, from: i32, to: i32) {
        self.map.insert(from, to);
    }

    /// What the command gets for `sig`: `None` when it is dropped.
    pub fn apply(&self, sig: i32) -> Option<i32> {
        match self.map.get(&sig).copied().unwrap_or(sig) {
            DROP => None,
            to => Some(to),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A signal sharelink can receive and would forward.
pub fn parse_source(text: &str) -> Result<i32, String> {
    let sig = parse_signal(text)?;
    match sig {
        libc::SIGKILL | libc::SIGSTOP => Err(format!(
            "{} cannot be caught, so sharelink never receives it to rewrite",
            crate::error::signal_name(sig)
        )),
        libc::SIGCHLD => Err(
            "SIGCHLD is sharelink's own (it reaps with it) and is never \
                              forwarded"
                .into(),
        ),
        _ => Ok(sig),
    }
}

/// What a rewritten signal becomes: any signal, or `0` to drop it.
pub fn parse_target(text: &str) -> Result<i32, String> {
    if text.trim() == "0" {
        return Ok(DROP);
    }
    parse_signal(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        for s in ["15", "TERM", "term", "SIGTERM", "sigterm", " SigTerm "] {
            assert_eq!(parse_signal(s), Ok(libc::SIGTERM), "{s}");
        }
        assert_eq!(parse_signal("pwr"), Ok(libc::SIGPWR));
        assert_eq!(parse_signal("WINCH"), Ok(libc::SIGWINCH));
        assert_eq!(parse_signal("64"), Ok(64));
        for bad in ["0", "65", "-1", "", "SIG", "TERMINATE", "RTMIN"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules() {
        assert_eq!(
            Rewrites::parse_rule("TERM:INT"),
            Ok((libc::SIGTERM, libc::SIGINT))
        );
        assert_eq!(
            Rewrites::parse_rule("15:2"),
            Ok((libc::SIGTERM, libc::SIGINT))
        );
        assert_eq!(Rewrites::parse_rule("sighup:0"), Ok((libc::SIGHUP, DROP)));
        // Any signal may be the target, SIGKILL and SIGSTOP included.
        assert_eq!(
            Rewrites::parse_rule("TSTP:STOP"),
            Ok((libc::SIGTSTP, libc::SIGSTOP))
        );
        for bad in [
            "TERM",
            "TERM:",
            ":INT",
            "TERM:BOGUS",
            "KILL:TERM",
            "STOP:TERM",
            "CHLD:TERM",
            "0:TERM",
        ] {
            assert!(Rewrites::parse_rule(bad).is_err(), "{bad}");
        }
        let e = Rewrites::parse_rule("KILL:TERM").unwrap_err();
        assert!(e.contains("SIGKILL"), "{e}");
    }

    #[test]
    fn apply() {
        let mut r = Rewrites::default();
        assert_eq!(r.apply(libc::SIGTERM), Some(libc::SIGTERM));
        r.insert(libc::SIGTERM, libc::SIGINT);
        r.insert(libc::SIGHUP, DROP);
        assert_eq!(r.apply(libc::SIGTERM), Some(libc::SIGINT));
        assert_eq!(r.apply(libc::SIGHUP), None);
        assert_eq!(r.apply(libc::SIGUSR1), Some(libc::SIGUSR1));
        // Later rules for the same source win (the command line over the
        // config).
        r.insert(libc::SIGTERM, libc::SIGQUIT);
        assert_eq!(r.apply(libc::SIGTERM), Some(libc::SIGQUIT));
    }
}
