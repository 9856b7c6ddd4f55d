//! Signals, shared by both halves: the mask, waiting, names and rewrite
//! rules.
//!
//! `main` blocks every signal before it does anything else, so no signal is
//! lost or acted on by a default disposition while the config is read or
//! links are applied. Linking then polls for the termination signals at
//! safe points ([`check_interrupt`]); the init later collects all of
//! them synchronously with [`wait`]. The child gets back the mask and the
//! ignored signals sharelink was started with ([`original_mask`],
//! [`inherited_ignored`]).
//!
//! Sets are the kernel's 64-bit masks (bit `N-1` for signal `N`) and the
//! calls are raw system calls: libc's `sigset_t` helpers refuse the
//! real-time signals libc keeps for itself (32 and 33 in glibc, 32 to 34 in
//! musl), and those must be blocked and forwarded like any other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{Error, Result};

/// A set of signals 1 to 64 in the kernel's layout.
pub(crate) type SigMask = u64;

/// Every signal. The kernel never blocks SIGKILL and SIGSTOP and silently
/// drops them from any mask.
pub(crate) const ALL: SigMask = !0;

/// The signals that stop linking at a safe point.
const TERMINATING: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// `sig` as a one-signal mask.
pub(crate) const fn bit(sig: i32) -> SigMask {
    1 << (sig - 1)
}

fn mask_of(sigs: &[i32]) -> SigMask {
    sigs.iter().fold(0, |m, &s| m | bit(s))
}

/// Size of the kernel's mask, the last argument of the rt_sig* calls.
const KERNEL_MASK_BYTES: usize = 8;

static ORIGINAL_MASK: AtomicU64 = AtomicU64::new(0);
static INHERITED_IGNORED: AtomicU64 = AtomicU64::new(0);

/// Block every signal and remember the mask we started with. Call first
/// thing in `main`.
///
/// The fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP,
/// SIGSYS) are blocked too: a real fault is forced through by the kernel
/// (it unblocks the signal and kills), so blocking them loses nothing,
/// while the same signals sent with `kill` are then forwarded like any
/// other instead of being dropped (PID 1) or killing sharelink.
pub fn block_all() {
    let mut old: SigMask = 0;
    // SAFETY: rt_sigprocmask with valid pointers to 8-byte masks; cannot
    // fail with these arguments.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &ALL as *const SigMask,
            &mut old as *mut SigMask,
            KERNEL_MASK_BYTES,
        )
    };
    ORIGINAL_MASK.store(old, Ordering::Relaxed);
}

/// Record which signals sharelink was started with ignored (`nohup` ignores
/// SIGHUP), so the command keeps them. Must run before the Rust runtime
/// starts, because the runtime sets SIGPIPE to ignored: `main.rs` calls it
/// from `.init_array`. Async-signal-safe; no allocation, no runtime.
pub fn record_inherited_dispositions() {
    let mut ignored: SigMask = 0;
    for sig in 1..=64 {
        // The kernel's struct sigaction: handler, flags, restorer, mask.
        let mut old = [0u64; 4];
        // SAFETY: rt_sigaction reading into a buffer of the kernel's
        // struct's size; no action is installed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u8>(),
                old.as_mut_ptr(),
                KERNEL_MASK_BYTES,
            )
        };
        if r == 0 && old[0] == libc::SIG_IGN as u64 {
            ignored |= bit(sig);
        }
    }
    INHERITED_IGNORED.store(ignored, Ordering::Relaxed);
}

/// The mask `main` started with, to restore in the child.
pub(crate) fn original_mask() -> SigMask {
    ORIGINAL_MASK.load(Ordering::Relaxed)
}

/// The signals sharelink was started with ignored, to keep ignored in the
/// child (empty unless [`record_inherited_dispositions`] ran).
pub(crate) fn inherited_ignored() -> SigMask {
    INHERITED_IGNORED.load(Ordering::Relaxed)
}

/// Take one pending signal of `set`, waiting up to `timeout` (forever with
/// `None`). `None` on timeout or interruption.
pub(crate) fn wait(set: SigMask, timeout: Option<Duration>) -> Option<libc::siginfo_t> {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: valid mask, out-pointer and optional timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &set as *const SigMask,
            info.as_mut_ptr(),
            ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
            KERNEL_MASK_BYTES,
        )
    };
    // SAFETY: filled by a successful call.
    (r > 0).then(|| unsafe { info.assume_init() })
}

/// `Err(Interrupted(sig))` if a termination signal is pending. Cheap (one
/// `sigpending`), so it is called between files and between chunks of a
/// large file. The signal is left pending: nothing after this point acts on
/// it except the exit.
pub(crate) fn check_interrupt() -> Result<()> {
    interrupted(pending())
}

/// The signals pending for this process (one system call).
pub(crate) fn pending() -> SigMask {
    let mut pending: SigMask = 0;
    // SAFETY: rt_sigpending fills the 8-byte mask it is given.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigpending,
            &mut pending as *mut SigMask,
            KERNEL_MASK_BYTES,
        )
    };
    pending
}

/// The termination signals that stop linking: those sharelink was not
/// started with ignored. Blocked, an ignored signal still queues, and
/// `nohup sharelink run …` (or `sharelink run … &` in a script, where
/// SIGINT and SIGQUIT are ignored) must not stop at a hang-up or Ctrl-C.
fn stopping() -> SigMask {
    mask_of(&TERMINATING) & !inherited_ignored()
}

/// `Err(Interrupted(sig))` if `pending` holds a termination signal.
pub(crate) fn interrupted(pending: SigMask) -> Result<()> {
    let stop = pending & stopping();
    match TERMINATING.iter().find(|&&s| stop & bit(s) != 0) {
        Some(&sig) => Err(Error::Interrupted(sig)),
        None => Ok(()),
    }
}

/// Sleep for `dur`, waking early (with `Err`) if a termination signal comes.
pub(crate) fn sleep_interruptible(dur: Duration) -> Result<()> {
    match wait(stopping(), Some(dur)) {
        Some(info) => Err(Error::Interrupted(info.si_signo)),
        None => Ok(()),
    }
}

/// Stop sharelink as `sig` (a job-control signal) would, so that a shell
/// reports the same reason as for the command ("Stopped", "Stopped (tty
/// input)"); with SIGSTOP when `sig` is ignored. Returns once sharelink is
/// continued.
pub(crate) fn stop_self(sig: i32) {
    // SAFETY: reading a disposition, sending a signal to ourselves and
    // changing our own mask for the one signal.
    unsafe {
        let mut current = std::mem::zeroed::<libc::sigaction>();
        let default = libc::sigaction(sig, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL;
        if !default {
            libc::kill(libc::getpid(), libc::SIGSTOP);
            return;
        }
        // Pending while blocked; unblocking delivers it, and the stop
        // happens before the call returns.
        libc::kill(libc::getpid(), sig);
        let one = bit(sig);
        for how in [libc::SIG_UNBLOCK, libc::SIG_BLOCK] {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                how,
                &one as *const SigMask,
                std::ptr::null_mut::<SigMask>(),
                KERNEL_MASK_BYTES,
            );
        }
    }
}

/// Take a pending `sig` off the queue, if there is one (a signal raised on
/// sharelink's own account, such as SIGIO from a lease it held).
pub(crate) fn discard(sig: i32) {
    while wait(bit(sig), Some(Duration::ZERO)).is_some() {}
}

// ---------------------------------------------------------------------------
// Naming signals and rewriting them

/// "SIGTERM" for 15; the number for anything nix does not know.
pub(crate) fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// A signal as a user writes it: a number (1-64) or a name in any case, with
/// or without `SIG` (`15`, `TERM`, `sigterm`). Real-time signals have no
/// portable names (glibc and musl disagree on `SIGRTMIN`), so they are
/// numbers.
fn parse_signal(text: &str) -> Result<i32, String> {
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
/// up through KeyboardInterrupt; `TERM:INT-if-uncaught` does that only when
/// the command has left SIGTERM at its default action, so a program with
/// its own SIGTERM handler still gets SIGTERM).
///
/// Only forwarding consults it: a signal that stops linking, and the
/// SIGTERM/SIGKILL sharelink sends to leftovers after the command exits,
/// are sharelink's own and never rewritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rewrites {
    /// Source signal -> what the command gets.
    map: std::collections::BTreeMap<i32, Target>,
}

/// `0` as a target: drop the signal instead of forwarding it.
pub(crate) const DROP: i32 = 0;

/// What a rewritten signal becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The signal sent instead; [`DROP`] sends nothing.
    pub(crate) to: i32,
    /// Rewrite only while the command leaves the source signal at its
    /// default action (neither caught nor ignored); otherwise forward the
    /// source signal unchanged.
    pub(crate) if_uncaught: bool,
}

impl Target {
    pub(crate) const fn always(to: i32) -> Self {
        Target {
            to,
            if_uncaught: false,
        }
    }
}

/// The suffix that makes a rule conditional: `TERM:INT-if-uncaught`.
const IF_UNCAUGHT: &str = "-if-uncaught";

/// How a process handles a signal, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    Default,
    Caught,
    Ignored,
}

/// `sig`'s disposition in process `pid` (its `SigCgt` and `SigIgn` lines);
/// `None` when /proc cannot tell (the process is gone, or /proc is not this
/// pid namespace's).
pub(crate) fn disposition(pid: i32, sig: i32) -> Option<Disposition> {
    // A /proc of another pid namespace would name another process.
    let me = std::fs::read_link("/proc/self").ok()?;
    if me.to_str()?.parse::<u32>().ok()? != std::process::id() {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    disposition_in(&status, sig)
}

fn disposition_in(status: &str, sig: i32) -> Option<Disposition> {
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let (caught, ignored) = (mask("SigCgt:")?, mask("SigIgn:")?);
    Some(if caught & bit(sig) != 0 {
        Disposition::Caught
    } else if ignored & bit(sig) != 0 {
        Disposition::Ignored
    } else {
        Disposition::Default
    })
}

impl Rewrites {
    /// Parse `FROM:TO` (`TERM:INT`, `15:2`, `SIGHUP:0`,
    /// `TERM:INT-if-uncaught`).
    pub(crate) fn parse_rule(rule: &str) -> Result<(i32, Target), String> {
        let (from, to) = rule
            .split_once(':')
            .ok_or_else(|| format!("expected FROM:TO (like TERM:INT), got {rule:?}"))?;
        Ok((parse_source(from)?, parse_target(to)?))
    }

    /// Add or replace the rule for `from`.
    pub(crate) fn insert(&mut self, from: i32, to: Target) {
        self.map.insert(from, to);
    }

    /// What the command gets for `sig`: `None` when it is dropped.
    /// `disposition` is asked, only for a conditional rule, how the
    /// command handles `sig` right now; when it cannot tell, the signal
    /// goes unchanged (what the command would get without sharelink).
    pub(crate) fn apply(
        &self,
        sig: i32,
        disposition: impl FnOnce() -> Option<Disposition>,
    ) -> Option<i32> {
        let to = match self.map.get(&sig) {
            None => sig,
            Some(t) if !t.if_uncaught => t.to,
            Some(t) => match disposition() {
                Some(Disposition::Default) => t.to,
                _ => sig,
            },
        };
        (to != DROP).then_some(to)
    }

    /// Whether any rule depends on the command's disposition.
    #[cfg(test)]
    pub(crate) fn is_conditional(&self) -> bool {
        self.map.values().any(|t| t.if_uncaught)
    }
}

/// A signal sharelink can receive and would forward.
pub(crate) fn parse_source(text: &str) -> Result<i32, String> {
    let sig = parse_signal(text)?;
    match sig {
        libc::SIGKILL | libc::SIGSTOP => Err(format!(
            "{} cannot be caught, so sharelink never receives it to rewrite",
            signal_name(sig)
        )),
        libc::SIGCHLD => Err(
            "SIGCHLD is sharelink's own (it reaps with it) and is never \
                              forwarded"
                .into(),
        ),
        _ => Ok(sig),
    }
}

/// What a rewritten signal becomes: any signal, or `0` to drop it; a
/// signal followed by `-if-uncaught` only while the command leaves the
/// source signal at its default action.
pub(crate) fn parse_target(text: &str) -> Result<Target, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Target::always(DROP));
    }
    let lower = t.to_ascii_lowercase();
    if let Some(sig) = lower.strip_suffix(IF_UNCAUGHT) {
        if sig.trim() == "0" {
            return Err(format!(
                "{text:?}: a signal that is dropped cannot be conditional; use 0"
            ));
        }
        return Ok(Target {
            to: parse_signal(&t[..sig.len()])?,
            if_uncaught: true,
        });
    }
    parse_signal(t).map(Target::always)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(bit(1), 1);
        assert_eq!(bit(64), 1 << 63);
        assert_eq!(mask_of(&[libc::SIGHUP, libc::SIGINT]), 0b11);
    }

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
        let always = |to| Target::always(to);
        assert_eq!(
            Rewrites::parse_rule("TERM:INT"),
            Ok((libc::SIGTERM, always(libc::SIGINT)))
        );
        assert_eq!(
            Rewrites::parse_rule("15:2"),
            Ok((libc::SIGTERM, always(libc::SIGINT)))
        );
        assert_eq!(
            Rewrites::parse_rule("sighup:0"),
            Ok((libc::SIGHUP, always(DROP)))
        );
        // Any signal may be the target, SIGKILL and SIGSTOP included.
        assert_eq!(
            Rewrites::parse_rule("TSTP:STOP"),
            Ok((libc::SIGTSTP, always(libc::SIGSTOP)))
        );
        for rule in [
            "TERM:INT-if-uncaught",
            "15:2-IF-UNCAUGHT",
            "term:sigint-if-uncaught",
        ] {
            assert_eq!(
                Rewrites::parse_rule(rule),
                Ok((
                    libc::SIGTERM,
                    Target {
                        to: libc::SIGINT,
                        if_uncaught: true
                    }
                )),
                "{rule}"
            );
        }
        for bad in [
            "TERM",
            "TERM:",
            ":INT",
            "TERM:BOGUS",
            "KILL:TERM",
            "STOP:TERM",
            "CHLD:TERM",
            "0:TERM",
            "TERM:0-if-uncaught",
            "TERM:-if-uncaught",
            "TERM:INT-if-caught",
        ] {
            assert!(Rewrites::parse_rule(bad).is_err(), "{bad}");
        }
        let e = Rewrites::parse_rule("KILL:TERM").unwrap_err();
        assert!(e.contains("SIGKILL"), "{e}");
    }

    #[test]
    fn apply() {
        let never = || -> Option<Disposition> { panic!("an unconditional rule must not ask") };
        let mut r = Rewrites::default();
        assert_eq!(r.apply(libc::SIGTERM, never), Some(libc::SIGTERM));
        r.insert(libc::SIGTERM, Target::always(libc::SIGINT));
        r.insert(libc::SIGHUP, Target::always(DROP));
        assert_eq!(r.apply(libc::SIGTERM, never), Some(libc::SIGINT));
        assert_eq!(r.apply(libc::SIGHUP, never), None);
        assert_eq!(r.apply(libc::SIGUSR1, never), Some(libc::SIGUSR1));
        // Later rules for the same source win (the command line over the
        // config).
        r.insert(libc::SIGTERM, Target::always(libc::SIGQUIT));
        assert_eq!(r.apply(libc::SIGTERM, never), Some(libc::SIGQUIT));
        assert!(!r.is_conditional());
    }

    #[test]
    fn conditional_rules_follow_the_disposition() {
        let mut r = Rewrites::default();
        r.insert(libc::SIGTERM, parse_target("INT-if-uncaught").unwrap());
        assert!(r.is_conditional());
        let with = |d| move || d;
        let term = libc::SIGTERM;
        assert_eq!(
            r.apply(term, with(Some(Disposition::Default))),
            Some(libc::SIGINT)
        );
        assert_eq!(r.apply(term, with(Some(Disposition::Caught))), Some(term));
        assert_eq!(r.apply(term, with(Some(Disposition::Ignored))), Some(term));
        // Unknown: unchanged, as without sharelink.
        assert_eq!(r.apply(term, with(None)), Some(term));
    }

    #[test]
    fn dispositions_from_proc_status() {
        // Python 3.11 at rest: SIGINT caught, SIGPIPE and SIGXFSZ ignored.
        let status = "Name:\tpython3\nSigQ:\t0/63457\nSigPnd:\t0000000000000000\n\
                      ShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
                      SigIgn:\t0000000001001000\nSigCgt:\t0000000100000002\n";
        assert_eq!(
            disposition_in(status, libc::SIGINT),
            Some(Disposition::Caught)
        );
        assert_eq!(
            disposition_in(status, libc::SIGPIPE),
            Some(Disposition::Ignored)
        );
        assert_eq!(
            disposition_in(status, libc::SIGTERM),
            Some(Disposition::Default)
        );
        // With `signal.signal(SIGTERM, handler)`: bit 15 set.
        let handled = status.replace("0000000100000002", "0000000100004002");
        assert_eq!(
            disposition_in(&handled, libc::SIGTERM),
            Some(Disposition::Caught)
        );
        assert_eq!(disposition_in("Name:\tx\n", libc::SIGTERM), None);
        // Our own process: SIGTERM is blocked, not caught.
        let me = std::process::id() as i32;
        assert!(disposition(me, libc::SIGTERM).is_some());
    }
}
