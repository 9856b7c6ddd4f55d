//! Benchmark and test helper: make N orphans die at once and time how long
//! the init above us takes to reap them all.
//!
//! `zombie_burst N`: forks N children; each forks a grandchild that blocks
//! on a shared pipe, reports its pid, and exits when the pipe closes. The
//! children exit at once, so the grandchildren are re-parented to the
//! nearest init (PID 1 or a subreaper). Closing the pipe releases all N
//! together; we then wait until every one of them is gone — reaped, not
//! just exited: `kill(pid, 0)` still succeeds on a zombie — and print
//! `reaped N in X.XXX ms` (or fail after 30 s). Checking with `kill(pid,
//! 0)` rather than scanning /proc keeps the measuring process from eating
//! the CPU the init needs.

use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let (mut hold, mut pids) = ([0; 2], [0; 2]);
    // SAFETY: plain syscalls on fresh pipes; children only call
    // async-signal-safe functions (read, write, fork, _exit).
    unsafe {
        assert_eq!(libc::pipe(hold.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(pids.as_mut_ptr()), 0);
        for _ in 0..n {
            match libc::fork() {
                0 => {
                    let g = libc::fork();
                    if g == 0 {
                        libc::close(hold[1]);
                        libc::close(pids[1]);
                        let mut b = 0u8;
                        libc::read(hold[0], &mut b as *mut u8 as *mut _, 1);
                        libc::_exit(0);
                    }
                    libc::write(pids[1], &g as *const i32 as *const _, 4);
                    libc::_exit(0);
                }
                -1 => panic!("fork failed"),
                pid => {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
        libc::close(hold[0]);
        libc::close(pids[1]);
        let mut left = Vec::with_capacity(n);
        let mut g = 0i32;
        while left.len() < n && libc::read(pids[0], &mut g as *mut i32 as *mut _, 4) == 4 {
            left.push(g);
        }
        assert_eq!(left.len(), n, "not every grandchild reported its pid");
        // All grandchildren are orphans now, blocked on the pipe.
        let start = Instant::now();
        libc::close(hold[1]);
        while !left.is_empty() {
            left.retain(|&p| libc::kill(p, 0) == 0);
            if start.elapsed() > Duration::from_secs(30) {
                eprintln!("not reaped after 30 s: {}", left.len());
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        println!(
            "reaped {n} in {:.3} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
}
