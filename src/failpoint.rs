//! Named crash points for the fault-injection tests.
//!
//! With the `failpoints` feature, `SHARELINK_FAILPOINT=<name>` makes the
//! process die by SIGKILL the first time it reaches [`hit`]`("<name>")`
//! (`<name>:<n>` on the n-th time), leaving the disk exactly as a crash at
//! that instant would. `<name>:<n>:stop` stops it (SIGSTOP) instead, so a
//! test can change the world mid-run (fill the share) and let it go on.
//! Several, separated by commas, each count on their own
//! (`replace.checked:1:stop,replace.aside:1`: stopped at the first, killed
//! at the second once continued).
//! `SHARELINK_FAILPOINT_LOG=<file>` appends the name of every failpoint
//! reached to that file, so a test can count them in a run that is not
//! stopped.
//! Without the feature [`hit`] compiles to nothing.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    type Spec = (String, u64, bool, AtomicU64);
    static PARSED: OnceLock<Vec<Spec>> = OnceLock::new();
    let specs = PARSED.get_or_init(|| {
        let v = std::env::var("SHARELINK_FAILPOINT").unwrap_or_default();
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut parts = s.splitn(3, ':');
                let n = parts.next().unwrap_or_default().to_string();
                let k = parts.next().and_then(|k| k.parse().ok()).unwrap_or(1);
                (n, k, parts.next() == Some("stop"), AtomicU64::new(0))
            })
            .collect()
    });
    static LOG: OnceLock<Option<std::fs::File>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let p = std::env::var_os("SHARELINK_FAILPOINT_LOG")?;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .ok()
    });
    if let Some(mut f) = log.as_ref() {
        use std::io::Write;
        let _ = f.write_all(format!("{name}\n").as_bytes());
    }
    for (target, nth, stop, count) in specs {
        if target == name && count.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            if *stop {
                eprintln!("sharelink: failpoint {name} hit, stopping self");
                // To this very thread (tgkill, not kill): it takes the
                // signal on its way out of the call and stops the whole
                // process at once. A process-directed SIGSTOP goes to a
                // thread the kernel picks (often the main one, asleep),
                // and until that thread is scheduled (milliseconds on a
                // loaded machine) the other threads run on: workers could
                // do all their remaining work "after" the stop.
                // SAFETY: plain syscalls.
                unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        libc::getpid(),
                        libc::syscall(libc::SYS_gettid),
                        libc::SIGSTOP,
                    )
                };
                return;
            }
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
