//! Named crash points for the fault-injection tests.
//!
//! With the `failpoints` feature, `SHARELINK_FAILPOINT=<name>` makes the
//! process die by SIGKILL the first time it reaches [`hit`]`("<name>")`
//! (`<name>:<n>` on the n-th time), leaving the disk exactly as a crash at
//! that instant would. Without the feature [`hit`] compiles to nothing.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("SHARELINK_FAILPOINT").ok()?;
        Some(match v.split_once(':') {
            Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    if let Some((target, nth)) = spec {
        if target == name && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            eprintln!("sharelink: failpoint {name} hit, killing self");
            // SAFETY: plain syscalls; _exit if SIGKILL is ignored (PID 1).
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
                libc::_exit(137);
            }
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Whether this binary honours `SHARELINK_FAILPOINT`.
pub const ENABLED: bool = cfg!(feature = "failpoints");
