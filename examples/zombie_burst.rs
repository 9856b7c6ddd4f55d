//! Benchmark and test helper: make N orphans die at once and time how long
//! the init above us takes to reap them all.
//!
//! `zombie_burst N`: forks N children; each forks a grandchild that blocks
//! on a shared pipe and then exits at once, so the grandchildren are
//! re-parented to the nearest init (PID 1 or a subreaper). Closing the pipe
//! releases all N together; we then poll /proc until none of them is left
//! (a zombie keeps its /proc entry until its init reaps it)
//! and print `reaped N in X.XXX ms` (or fail after 30 s).

use std::time::{Duration, Instant};

/// Processes of our process group other than us: the grandchildren, alive
/// or zombie (a zombie keeps its /proc entry until reaped).
fn left() -> usize {
    // SAFETY: trivial getters.
    let (me, pgrp) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
                let Some(i) = stat.rfind(')') else { continue };
                // After "pid (comm) ": state ppid pgrp ...
                let f: Vec<&str> = stat[i + 2..].split(' ').take(3).collect();
                let pid: i32 = name.to_string_lossy().parse().unwrap_or(0);
                if pid != me && f.get(2).and_then(|g| g.parse().ok()) == Some(pgrp) {
                    n += 1;
                }
            }
        }
    }
    n
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on a fresh pipe; children only call
    // async-signal-safe functions (read, _exit, fork).
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        for _ in 0..n {
            match libc::fork() {
                0 => {
                    if libc::fork() == 0 {
                        libc::close(fds[1]);
                        let mut b = 0u8;
                        libc::read(fds[0], &mut b as *mut u8 as *mut _, 1);
                        libc::_exit(0);
                    }
                    libc::_exit(0);
                }
                -1 => panic!("fork failed"),
                pid => {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
        libc::close(fds[0]);
        // All grandchildren are orphans now, blocked on the pipe.
        let start = Instant::now();
        libc::close(fds[1]);
        loop {
            if left() == 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                eprintln!("processes left after 30 s: {}", left());
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        println!(
            "reaped {n} in {:.3} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
}
