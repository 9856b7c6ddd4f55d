//! Test helper for the signal-forwarding tests: a command that counts the
//! signals it receives, and makes orphans for its init to reap.
//!
//! `sigcount DIR`: blocks every signal (with raw system calls, so that the
//! real-time signals libc keeps for itself are counted too), writes
//! `DIR/ready`, then takes
//! signals synchronously (`sigtimedwait`) and counts them per number,
//! rewriting `DIR/counts` ("SIGNO COUNT" lines) every 50 ms. For its first
//! 40 turns it also starts a shell that leaves two short-lived orphans
//! behind (re-parented to the init above, which must reap them), then
//! writes `DIR/orphans-done`. On SIGTERM it writes the final counts and
//! exits 7 (so the test can tell the command's status from sharelink's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

fn write_counts(path: &std::path::Path, counts: &[u64; 65]) {
    let mut s = String::new();
    for (sig, n) in counts.iter().enumerate() {
        if *n > 0 {
            s.push_str(&format!("{sig} {n}\n"));
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn main() {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: sigcount DIR"));
    // Every signal 1-64, in the kernel's 8-byte mask.
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask with a valid 8-byte mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
    std::fs::write(dir.join("ready"), std::process::id().to_string()).unwrap();
    let counts_path = dir.join("counts");
    let mut counts = [0u64; 65];
    let mut last_write = Instant::now();
    let mut batches = 0;
    let mut last_batch = Instant::now();
    loop {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        // SAFETY: valid mask and timespec; a null siginfo is allowed.
        let sig = unsafe {
            libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &all as *const u64,
                std::ptr::null_mut::<libc::siginfo_t>(),
                &ts as *const libc::timespec,
                8usize,
            )
        } as i32;
        if sig > 0 {
            counts[sig as usize] += 1;
            if sig == libc::SIGTERM {
                write_counts(&counts_path, &counts);
                std::process::exit(7);
            }
        }
        if batches < 40 && last_batch.elapsed() > Duration::from_millis(50) {
            // The shell exits at once; its two sleeps become orphans.
            std::process::Command::new("sh")
                .args(["-c", "sleep 0.05 & sleep 0.1 & exit 0"])
                .status()
                .unwrap();
            batches += 1;
            last_batch = Instant::now();
            if batches == 40 {
                std::fs::write(dir.join("orphans-done"), "").unwrap();
            }
        }
        if last_write.elapsed() > Duration::from_millis(50) {
            write_counts(&counts_path, &counts);
            last_write = Instant::now();
        }
    }
}
