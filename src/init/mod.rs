//! The init half: `sharelink run` after linking starts the command and is
//! its init.
//!
//! The design is tini's: one thread, every signal blocked since the first
//! instruction of `main`, and one loop that takes signals synchronously
//! with `sigtimedwait`. There are no asynchronous handlers, so there is no
//! state shared with a handler and no signal is lost between "check" and
//! "sleep". Each turn of the loop (in `supervise`)
//!
//! 1. reaps every child that has exited (`waitpid(-1, WNOHANG)` until there
//!    is none: SIGCHLD is a standard signal, so a burst of exits can arrive
//!    as a single SIGCHLD and each wake-up must drain them all), and
//!    follows the command into a job-control stop when a shell waits for
//!    sharelink;
//! 2. advances the shutdown once the command is gone ([`shutdown::step`], a
//!    pure function): SIGTERM to everything left, a grace period, SIGKILL,
//!    exit with the command's status;
//! 3. waits for the next signal and forwards it to the command.
//!
//! `spawn` starts the command (dropping privileges to the [`user`] first).

pub(crate) mod probe;
pub(crate) mod shutdown;
mod spawn;

pub(crate) use spawn::command_candidates;
mod supervise;
pub(crate) mod user;

use std::ffi::OsString;
use std::time::Duration;

use crate::exit_code::ExitCode;
use crate::signals;
use user::Credentials;

/// What `sharelink run` starts and how it supervises it.
#[derive(Debug)]
pub(crate) struct RunOptions {
    pub(crate) command: Vec<OsString>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) grace_period: Duration,
    pub(crate) kill_process_group: bool,
    /// Applied to every forwarded signal (see [`signals::Rewrites`]).
    pub(crate) rewrite: signals::Rewrites,
}

/// Start the command and act as its init; returns sharelink's exit code.
pub(crate) fn run(opts: RunOptions) -> ExitCode {
    let self_pid = nix::unistd::getpid().as_raw();
    let pid1 = self_pid == 1;
    if !pid1 {
        become_subreaper();
    }
    // An inherited SIG_IGN for SIGCHLD makes the kernel reap children by
    // itself (and `waitpid` then fails with ECHILD): the command's status
    // would be lost. Blocked is not enough; the disposition must be default.
    // (The command still gets the inherited one.)
    // SAFETY: resetting a disposition to SIG_DFL; no handler is involved.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };

    let child = match spawn::spawn(&opts) {
        Ok(pid) => pid,
        Err(code) => return code,
    };
    // The command keeps the working directory; sharelink needs none from
    // here on (every path it still uses is absolute) and must not keep a
    // directory busy that someone wants to unmount, such as the share.
    if let Err(e) = std::env::set_current_dir("/") {
        crate::debug!("cannot leave the working directory for /: {e}");
    }
    supervise::Supervisor {
        child,
        forward_to: if opts.kill_process_group {
            -child.as_raw()
        } else {
            child.as_raw()
        },
        self_pid,
        pid1,
        grace: opts.grace_period,
        rewrite: opts.rewrite,
        warned_no_proc: Default::default(),
    }
    .supervise()
}

/// Not PID 1 (`docker run --init`, a shell, a test): without this, orphans
/// of the command would be re-parented past sharelink to the real init and
/// neither reaped nor stopped by it.
fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        crate::debug!("not PID 1: became a child subreaper, orphans come to sharelink");
    } else {
        crate::warn!(
            "not PID 1 and cannot become a child subreaper ({}): orphaned processes will not \
             be reaped or stopped by sharelink",
            std::io::Error::last_os_error()
        );
    }
}
