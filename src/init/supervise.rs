//! The loop: reap, step the shutdown, wait for a signal and forward it.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::shutdown::{step, Phase, Step, KILL_WAIT};
use crate::exit_code::ExitCode;
use crate::signals::{self, signal_name};

pub(super) struct Supervisor {
    /// The command's pid (and process group id).
    pub(super) child: Pid,
    /// `child`, or `-child` with `--kill-process-group`.
    pub(super) forward_to: i32,
    pub(super) self_pid: i32,
    pub(super) pid1: bool,
    pub(super) grace: Duration,
    pub(super) rewrite: signals::Rewrites,
    pub(super) warned_no_proc: std::cell::Cell<bool>,
}

/// What one turn of the loop found by reaping.
#[derive(Clone, Copy, Debug, Default)]
struct Reaped {
    /// The command's exit code, if it was reaped in this turn.
    command: Option<ExitCode>,
    /// The signal that stopped the command, if it stopped in this turn.
    command_stopped_by: Option<i32>,
    /// Whether any child (the command or an adopted orphan) is left.
    children_left: bool,
}

impl Supervisor {
    /// tini's loop: reap, step the shutdown, wait for a signal and forward
    /// it.
    pub(super) fn supervise(&self) -> ExitCode {
        let mut phase = Phase::Running;
        loop {
            let reaped = self.reap();
            if let (Phase::Running, Some(sig)) = (phase, reaped.command_stopped_by) {
                self.follow_stop(sig);
            }
            match step(
                phase,
                reaped.command,
                reaped.children_left,
                Instant::now(),
                self.grace,
            ) {
                Step::Wait => {}
                Step::Terminate { code, deadline } => {
                    crate::info!(
                        "sending SIGTERM to the processes left, grace period {:?}",
                        self.grace
                    );
                    // SIGCONT too, as systemd does: a stopped process
                    // would not act on SIGTERM until continued.
                    self.signal_leftovers(&[Signal::SIGTERM, Signal::SIGCONT]);
                    phase = Phase::Draining { code, deadline };
                }
                Step::Kill { code, deadline } => {
                    crate::warn!(
                        "processes still running after the {:?} grace period; sending SIGKILL",
                        self.grace
                    );
                    self.signal_leftovers(&[Signal::SIGKILL]);
                    phase = Phase::Killing { code, deadline };
                }
                Step::KillAgain => self.signal_leftovers(&[Signal::SIGKILL]),
                Step::Exit { code, abandoned } => {
                    if abandoned {
                        crate::warn!(
                            "processes survive SIGKILL after {KILL_WAIT:?} (uninterruptible \
                             sleep, e.g. a hung share?); exiting without them"
                        );
                    } else if phase != Phase::Running {
                        crate::debug!("no process left");
                    }
                    return code;
                }
            }

            let timeout = phase
                .deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Some(info) = signals::wait(signals::ALL, timeout) {
                self.on_signal(&info, phase);
            }
        }
    }

    /// Reap every child that has exited (SIGCHLD is a standard signal: a
    /// burst of exits can arrive as one, so each wake-up drains them all),
    /// and notice the command stopping.
    fn reap(&self) -> Reaped {
        let mut out = Reaped::default();
        loop {
            let mut status = 0;
            // SAFETY: plain syscall with our own status variable.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::WUNTRACED) };
            if pid == 0 {
                out.children_left = true;
                return out;
            }
            if pid < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // ECHILD: nothing left. Nothing else can happen with
                    // these arguments.
                    _ => return out,
                }
            }
            if libc::WIFSTOPPED(status) {
                // Reported once per stop; an adopted orphan's stop is not
                // sharelink's business.
                if pid == self.child.as_raw() {
                    out.command_stopped_by = Some(libc::WSTOPSIG(status));
                }
                continue;
            }
            if pid != self.child.as_raw() {
                crate::trace!("reaped an orphan, pid {pid}");
                continue;
            }
            let code = if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                let code = ExitCode::Signal(sig);
                crate::info!("command killed by {}: exit code {code}", signal_name(sig));
                code
            } else {
                let status = libc::WEXITSTATUS(status);
                crate::info!("command exited with {status}");
                ExitCode::Command(status as u8)
            };
            out.command = Some(code);
        }
    }

    /// The command stopped. When it stopped for job control (Ctrl-Z,
    /// reading or writing the terminal from the background, or SIGSTOP, as
    /// bash's `suspend` stops itself) and sharelink
    /// is a shell's job, sharelink stops too: the shell waits for its job,
    /// not for the command, and would otherwise never get the terminal back.
    /// When the shell continues sharelink (`fg` or `bg`), sharelink hands
    /// the terminal back to the command if it was put in the foreground,
    /// and continues it. Any other stop is left as it is: SIGCONT to
    /// sharelink is forwarded as usual.
    fn follow_stop(&self, sig: i32) {
        let job_stop = matches!(
            sig,
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU | libc::SIGSTOP
        );
        if !job_stop || !self.is_a_shell_job() {
            crate::debug!("command stopped by {}", signal_name(sig));
            return;
        }
        crate::debug!(
            "command stopped by {}: stopping sharelink too, for the shell",
            signal_name(sig)
        );
        signals::stop_self(sig);
        // SAFETY: plain syscalls. SIGTTOU is blocked, and sharelink is in
        // the foreground anyway when this succeeds.
        unsafe {
            if libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp() {
                libc::tcsetpgrp(libc::STDIN_FILENO, self.child.as_raw());
            }
        }
        // What came while sharelink was stopped goes to the command before
        // it runs again, as it would have without sharelink: `kill %1` on a
        // stopped job sends SIGTERM and SIGCONT, and the SIGTERM must reach
        // the command before it can stop again on its next read. SIGCHLD
        // stays pending for the loop, which reaps when it sees it.
        let forward = signals::ALL & !signals::bit(libc::SIGCHLD);
        while let Some(info) = signals::wait(forward, Some(Duration::ZERO)) {
            self.on_signal(&info, Phase::Running);
        }
        // The whole group: the terminal stopped all of it.
        // SAFETY: plain syscall.
        unsafe { libc::kill(-self.child.as_raw(), libc::SIGCONT) };
        crate::debug!("continued: the command is continued too");
    }

    /// Whether a job-control shell started sharelink as a job, so that
    /// stopping sharelink hands the terminal back to it: sharelink leads its
    /// own process group, its parent is in another group of the same
    /// session (the group is not orphaned: someone can continue it), and
    /// the session has a terminal. An init
    /// that gives its child a group of its own (tini) looks the same; there
    /// the stop is harmless, as a SIGCONT to that init continues both. Never
    /// as PID 1, which cannot stop.
    fn is_a_shell_job(&self) -> bool {
        if self.pid1 {
            return false;
        }
        // SAFETY: plain syscalls; `parent > 0` keeps getpgid/getsid from
        // reading sharelink's own ids.
        unsafe {
            let parent = libc::getppid();
            parent > 0
                && libc::getpgrp() == self.self_pid
                && libc::getpgid(parent) != self.self_pid
                && libc::getsid(parent) == libc::getsid(0)
                // Job control needs the session's terminal: a supervisor
                // without one that gave sharelink its own group is no shell
                // and would never continue it.
                && (0..=2).any(|fd| libc::tcgetsid(fd) == libc::getsid(0))
        }
    }

    /// A signal for sharelink: SIGCHLD only wakes the loop (reaping is at
    /// its top); every other one goes to the command while it runs.
    fn on_signal(&self, info: &libc::siginfo_t, phase: Phase) {
        let sig = info.si_signo;
        if sig == libc::SIGCHLD {
            return;
        }
        // SAFETY: si_pid is valid for SI_USER.
        if info.si_code == libc::SI_USER && unsafe { info.si_pid() } == self.self_pid {
            // Raised by sharelink itself: SIGPIPE from writing a log line to
            // a closed stderr (blocked signals are queued even when their
            // disposition is SIG_IGN). Not the command's business.
            crate::trace!("ignoring {} raised by sharelink itself", signal_name(sig));
            return;
        }
        if phase != Phase::Running {
            // The command is gone and the leftovers are already being
            // stopped on a bounded schedule.
            crate::debug!("{} ignored: the command has exited", signal_name(sig));
            return;
        }
        // A conditional rule looks at the command itself (not its group):
        // whether it catches `sig` now, at the moment it is forwarded.
        let Some(to) = self
            .rewrite
            .apply(sig, || signals::disposition(self.child.as_raw(), sig))
        else {
            crate::debug!("{} not forwarded (rewritten to 0)", signal_name(sig));
            return;
        };
        // SIGTSTP, SIGTTIN and SIGTTOU are forwarded like the rest; if the
        // command stops, `follow_stop` decides whether sharelink stops too.
        crate::debug!(
            "forwarding {} to the command{}{} (kill {})",
            signal_name(sig),
            if self.forward_to < 0 {
                "'s process group"
            } else {
                ""
            },
            if to == sig {
                String::new()
            } else {
                format!(" as {}", signal_name(to))
            },
            self.forward_to
        );
        // SAFETY: plain syscall.
        if unsafe { libc::kill(self.forward_to, to) } != 0 {
            // ESRCH: the command is exiting; its SIGCHLD is on the way.
            crate::debug!(
                "could not forward {}: {}",
                signal_name(to),
                std::io::Error::last_os_error()
            );
        }
    }

    /// Send `sigs` to every process left after the command exited: as PID 1
    /// `kill(-1)` reaches the whole namespace in one call (race-free against
    /// forks); as a subreaper, every descendant found in /proc.
    fn signal_leftovers(&self, sigs: &[Signal]) {
        let targets = if self.pid1 {
            // -1 from PID 1 spares sharelink itself.
            vec![-1]
        } else if let Some(pids) = descendants(self.self_pid) {
            crate::debug!("{} processes left", pids.len());
            pids
        } else {
            // Fall back on what is known without /proc: the command's
            // process group (its orphans usually stay in it).
            if !self.warned_no_proc.replace(true) {
                crate::warn!(
                    "/proc does not show this pid namespace; only the command's process \
                     group can be stopped"
                );
            }
            vec![-self.child.as_raw()]
        };
        for pid in targets {
            for &sig in sigs {
                // SAFETY: plain syscall. ESRCH (gone meanwhile) is fine.
                unsafe { libc::kill(pid, sig as i32) };
            }
        }
    }
}

/// Every descendant of `root`, from one pass over /proc/*/stat. `None` when
/// /proc belongs to another pid namespace (pids there would be wrong).
fn descendants(root: i32) -> Option<Vec<i32>> {
    let me = std::fs::read_link("/proc/self").ok()?;
    if me.as_os_str().as_bytes() != root.to_string().as_bytes() {
        return None;
    }
    let mut by_parent: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // The process may be gone already: skip it.
        let Ok(stat) = std::fs::read(entry.path().join("stat")) else {
            continue;
        };
        if let Some(ppid) = parse_ppid(&stat) {
            by_parent.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(kids) = by_parent.remove(&p) {
            out.extend_from_slice(&kids);
            todo.extend(kids);
        }
    }
    Some(out)
}

/// The ppid field of /proc/PID/stat: `pid (comm) state ppid ...`, where comm
/// may contain spaces and parentheses, so parsing starts after the last `)`.
fn parse_ppid(stat: &[u8]) -> Option<i32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_from_stat() {
        assert_eq!(parse_ppid(b"42 (sh) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_ppid(b"42 (a) b) (c) Z 1 0 0"), Some(1));
        assert_eq!(parse_ppid(b"42 (x y) R"), None);
        assert_eq!(parse_ppid(b"garbage"), None);
    }

    #[test]
    fn descendants_of_this_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let found = descendants(me).expect("/proc is this namespace's");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as i32)), "{found:?}");
        assert!(!found.contains(&me));
    }
}
