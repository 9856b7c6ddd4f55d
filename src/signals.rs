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
pub type SigMask = u64;

/// Every signal. The kernel never blocks SIGKILL and SIGSTOP and silently
/// drops them from any mask.
pub const ALL: SigMask = !0;

/// The signals that stop linking at a safe point.
pub const TERMINATING: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// `sig` as a one-signal mask.
pub const fn bit(sig: i32) -> SigMask {
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
pub fn original_mask() -> SigMask {
    ORIGINAL_MASK.load(Ordering::Relaxed)
}

/// The signals sharelink was started with ignored, to keep ignored in the
/// child (empty unless [`record_inherited_dispositions`] ran).
pub fn inherited_ignored() -> SigMask {
    INHERITED_IGNORED.load(Ordering::Relaxed)
}

/// Take one pending signal of `set`, waiting up to `timeout` (forever with
/// `None`). `None` on timeout or interruption.
pub fn wait(set: SigMask, timeout: Option<Duration>) -> Option<libc::siginfo_t> {
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
pub fn check_interrupt() -> Result<()> {
    interrupted(pending())
}

/// The signals pending for this process (one system call).
pub fn pending() -> SigMask {
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
pub fn interrupted(pending: SigMask) -> Result<()> {
    let stop = pending & stopping();
    match TERMINATING.iter().find(|&&s| stop & bit(s) != 0) {
        Some(&sig) => Err(Error::Interrupted(sig)),
        None => Ok(()),
    }
}

/// Sleep for `dur`, waking early (with `Err`) if a termination signal comes.
pub fn sleep_interruptible(dur: Duration) -> Result<()> {
    match wait(stopping(), Some(dur)) {
        Some(info) => Err(Error::Interrupted(info.si_signo)),
        None => Ok(()),
    }
}

/// Stop sharelink as `sig` (a job-control signal) would, so that a shell
/// reports the same reason as for the command ("Stopped", "Stopped (tty
/// input)"); with SIGSTOP when `sig` is ignored. Returns once sharelink is
/// continued.
pub fn stop_self(sig: i32) {
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
pub fn discard(sig: i32) {
    while wait(bit(sig), Some(Duration::ZERO)).is_some() {}
}

// ---------------------------------------------------------------------------
// Naming signals and rewriting them

/// "SIGTERM" for 15; the number for anything nix does not know.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

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
