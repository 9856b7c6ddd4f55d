//! `sharelink run` after linking: start the command and be its init.
//!
//! The design is tini's: one thread, every signal blocked since the first
//! instruction of `main`, and one loop that takes signals synchronously
//! with `sigtimedwait`. There are no asynchronous handlers, so there is no
//! state shared with a handler and no signal is lost between "check" and
//! "sleep". Each turn of the loop
//!
//! 1. reaps every child that has exited (`waitpid(-1, WNOHANG)` until there
//!    is none: SIGCHLD is a standard signal, so a burst of exits can arrive
//!    as a single SIGCHLD and each wake-up must drain them all), and
//!    follows the command into a job-control stop when a shell waits for
//!    sharelink;
//! 2. advances the shutdown once the command is gone ([`step`], a pure
//!    function): SIGTERM to everything left, a grace period, SIGKILL, exit
//!    with the command's status;
//! 3. waits for the next signal and forwards it to the command.
//!
//! A child exit is noticed through SIGCHLD alone; the only timeout is the
//! shutdown deadline.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{code, signal_name};
use crate::signals;
use crate::user::Credentials;

/// What `sharelink run` starts and how it supervises it.
#[derive(Debug)]
pub struct RunOptions {
    pub command: Vec<OsString>,
    pub credentials: Option<Credentials>,
    pub grace_period: Duration,
    pub kill_process_group: bool,
    /// Applied to every forwarded signal (see [`signals::Rewrites`]).
    pub rewrite: signals::Rewrites,
}

/// After SIGKILL, how long to wait for the last processes to be reaped. A
/// process in uninterruptible sleep (a hung SMB share) can outlive SIGKILL
/// indefinitely; sharelink must not hang with it, so it gives up and exits
/// (as PID 1, the kernel then tears the namespace down).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// `PATH` when the environment has none: musl's `execvp` default.
const DEFAULT_PATH: &str = "/usr/local/bin:/bin:/usr/bin";

/// Start the command and act as its init; returns sharelink's exit code.
pub fn run(opts: RunOptions) -> i32 {
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

    let child = match spawn(&opts) {
        Ok(pid) => pid,
        Err(code) => return code,
    };
    // The command keeps the working directory; sharelink needs none from
    // here on (every path it still uses is absolute) and must not keep a
    // directory busy that someone wants to unmount, such as the share.
    if let Err(e) = std::env::set_current_dir("/") {
        crate::debug!("cannot leave the working directory for /: {e}");
    }
    Supervisor {
        child,
        forward_to: if opts.kill_process_group {
            -child
        } else {
            child
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

// ---------------------------------------------------------------------------
// Starting the command

/// Which step of the child's set-up failed; sent with the errno through the
/// report pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    Setgroups = 1,
    Setgid = 2,
    Setuid = 3,
    /// The ids read back after `setresuid` are not the ones asked for.
    Verify = 4,
    Exec = 5,
}

impl Stage {
    fn from_u32(n: u32) -> Stage {
        match n {
            1 => Stage::Setgroups,
            2 => Stage::Setgid,
            3 => Stage::Setuid,
            4 => Stage::Verify,
            _ => Stage::Exec,
        }
    }
}

/// Everything the child needs, built before `fork`: between `fork` and
/// `exec` only async-signal-safe calls are allowed (no allocation, no locks,
/// no logging), so the child only reads what is prepared here.
struct Prepared {
    /// Paths to try in order: the command itself if it contains a `/`, else
    /// one per `PATH` entry. The search happens in the child, after the
    /// privilege drop, so it sees exactly what the command's user may run
    /// (as `execvp` would).
    candidates: Vec<CString>,
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    ids: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    /// The signal mask and the ignored signals sharelink was started with.
    mask: signals::SigMask,
    ignored: signals::SigMask,
    /// Give the child the terminal (see [`we_own_the_terminal`]).
    foreground: bool,
}

impl Prepared {
    fn new(opts: &RunOptions) -> Result<Prepared, String> {
        let cstr = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| format!("{s:?} contains a NUL byte"))
        };
        let argv: Vec<CString> = opts
            .command
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<_, _>>()?;
        let program = opts.command.first().ok_or("no command given")?;
        let candidates = if program.as_bytes().contains(&b'/') {
            vec![argv[0].clone()]
        } else {
            let path = std::env::var_os("PATH");
            let path = path.as_deref().unwrap_or(OsStr::new(DEFAULT_PATH));
            std::env::split_paths(path)
                .map(|dir| {
                    // An empty entry means the current directory.
                    let full = if dir.as_os_str().is_empty() {
                        Path::new(program).to_path_buf()
                    } else {
                        dir.join(program)
                    };
                    cstr(full.as_os_str())
                })
                .collect::<Result<_, _>>()?
        };
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let ids = opts
            .credentials
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.clone()));
        Ok(Prepared {
            candidates,
            _argv: argv,
            argv_ptrs,
            ids,
            mask: signals::original_mask(),
            ignored: signals::inherited_ignored(),
            foreground: we_own_the_terminal(),
        })
    }
}

/// The child becomes the terminal's foreground group only when sharelink's
/// own group is the foreground now (PID 1 of `docker run -t`, or an
/// interactive shell's foreground job). Started in the background, taking
/// the terminal would steal it from the user's shell.
///
/// As PID 1 of a PID namespace whose creator did not give it a session of
/// its own (`unshare --pid --fork`), sharelink's group and the terminal's
/// foreground group were both made outside the namespace and both read as
/// 0: they cannot be compared, and sharelink takes the terminal as tini
/// does, since a namespace's PID 1 is normally started in the foreground.
fn we_own_the_terminal() -> bool {
    // SAFETY: plain syscalls on fd 0; failure (not our terminal) is -1.
    let (fg, ours) = unsafe { (libc::tcgetpgrp(libc::STDIN_FILENO), libc::getpgrp()) };
    fg >= 0 && fg == ours
}

extern "C" {
    /// The process environment, as `execve` wants it (kept by libc, updated
    /// by `std::env::set_var`).
    static environ: *const *const libc::c_char;
}

/// Fork and exec the command. `Err` is the exit code when it could not be
/// started (126/127), already logged.
fn spawn(opts: &RunOptions) -> Result<i32, i32> {
    let name = opts
        .command
        .first()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(c) = &opts.credentials {
        // Like gosu and su-exec: the image's HOME (usually /root) is not
        // the user's and is not writable by it. Set here, before fork, so
        // the child's `environ` already has it. sharelink is single-threaded
        // and reads no environment variable after this point.
        std::env::set_var("HOME", &c.home);
        crate::debug!("the command will run as {c}, HOME={}", c.home.display());
    }
    let prep = match Prepared::new(opts) {
        Ok(p) => p,
        Err(why) => {
            crate::error!("cannot run {name:?}: {why}");
            return Err(code::NOT_EXECUTABLE);
        }
    };
    // The child reports a failed set-up or exec here; on success the pipe
    // closes on exec (CLOEXEC) and the parent reads EOF.
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            crate::error!("cannot run {name:?}: pipe: {e}");
            return Err(code::NOT_EXECUTABLE);
        }
    };
    // SAFETY: sharelink is single-threaded here; the child only runs
    // `exec_child`, which is async-signal-safe and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        crate::error!(
            "cannot run {name:?}: fork: {}",
            std::io::Error::last_os_error()
        );
        return Err(code::NOT_EXECUTABLE);
    }
    if pid == 0 {
        // SAFETY: in the child of a single-threaded fork.
        unsafe { exec_child(&prep, report_w.as_raw_fd()) }
    }
    drop(report_w);
    // The child does this too; doing it in both closes the race in which a
    // signal is forwarded to the group before the child has created it.
    // Failure (the child already exec'd or died) is harmless.
    // SAFETY: plain syscall.
    unsafe { libc::setpgid(pid, pid) };

    match read_report(&report_r) {
        None => {
            crate::debug!("command started: pid {pid}, {:?}", opts.command);
            Ok(pid)
        }
        Some((stage, errno)) => {
            // The child `_exit`s right after reporting; reap it so nothing
            // is left behind.
            let mut status = 0;
            // SAFETY: waiting for our own child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Err(report_failure(opts, &prep, stage, errno))
        }
    }
}

/// Read the child's 8-byte report: `None` on EOF (exec succeeded).
fn read_report(fd: &OwnedFd) -> Option<(Stage, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into our own buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => break,
        }
    }
    if got < buf.len() {
        // EOF before a whole report: exec succeeded (a partial write of 8
        // bytes to a pipe cannot happen).
        return None;
    }
    let stage = u32::from_ne_bytes(buf[..4].try_into().unwrap());
    let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap());
    Some((Stage::from_u32(stage), errno))
}

/// Log why the command did not start and choose the exit code: 127 when it
/// does not exist, 126 for everything else that stopped it (not executable,
/// bad format, privileges could not be dropped).
fn report_failure(opts: &RunOptions, prep: &Prepared, stage: Stage, errno: i32) -> i32 {
    let name = opts.command[0].to_string_lossy();
    let err = nix::errno::Errno::from_raw(errno).desc();
    if stage != Stage::Exec {
        let user = opts
            .credentials
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let what = match stage {
            Stage::Setgroups => "setgroups",
            Stage::Setgid => "setgid",
            Stage::Setuid => "setuid",
            _ => "the ids read back differ",
        };
        crate::error!("cannot run {name:?} as {user}: {what}: {err}");
        return code::NOT_EXECUTABLE;
    }
    match errno {
        libc::ENOENT => {
            // A file that exists but "is not found" has a missing
            // interpreter (`#!/bin/bash` in an image without bash).
            let exists = prep.candidates.len() == 1
                && Path::new(OsStr::from_bytes(prep.candidates[0].as_bytes())).exists();
            if exists {
                crate::error!(
                    "cannot run {name:?}: {err} (the file exists: is its #! interpreter missing?)"
                );
            } else if prep.candidates.len() == 1 {
                crate::error!("cannot run {name:?}: not found ({err})");
            } else {
                crate::error!("cannot run {name:?}: command not found in PATH");
            }
            code::NOT_FOUND
        }
        _ => {
            crate::error!("cannot run {name:?}: not executable ({err})");
            code::NOT_EXECUTABLE
        }
    }
}

/// The child between `fork` and `exec`. Async-signal-safe calls only: no
/// allocation, no locks, no Rust I/O. Never returns.
///
/// # Safety
/// Only call in the child of `fork` of a single-threaded process.
unsafe fn exec_child(prep: &Prepared, report: RawFd) -> ! {
    // Its own process group, so that terminal signals (^C) and
    // `--kill-process-group` reach the pipeline and not sharelink.
    libc::setpgid(0, 0);
    if prep.foreground {
        // SIGTTOU is still blocked, so this works from a background group.
        // Best effort: without the terminal the command still runs.
        libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
    }
    if let Some((uid, gid, groups)) = &prep.ids {
        // Groups first, then gid, then uid: after setuid there is no
        // privilege left to change the others.
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            child_fail(report, Stage::Setgroups);
        }
        if libc::setresgid(*gid, *gid, *gid) != 0 {
            child_fail(report, Stage::Setgid);
        }
        if libc::setresuid(*uid, *uid, *uid) != 0 {
            child_fail(report, Stage::Setuid);
        }
        if libc::getuid() != *uid
            || libc::geteuid() != *uid
            || libc::getgid() != *gid
            || libc::getegid() != *gid
        {
            *libc::__errno_location() = libc::EPERM;
            child_fail(report, Stage::Verify);
        }
    }
    // The signal state sharelink was started with. Handlers do not survive
    // exec, but SIG_IGN does: every signal sharelink was started with
    // ignored stays ignored (`nohup` keeps working), and every other one is
    // default, which undoes the Rust runtime's own SIGPIPE ignore and the
    // default sharelink gave SIGCHLD. The raw syscall reaches the real-time
    // signals libc keeps for itself; the kernel's struct starts with the
    // handler, and the rest stays zero. Errors (SIGKILL, SIGSTOP) are moot.
    for sig in 1..=64 {
        let ignore = prep.ignored & signals::bit(sig) != 0;
        let action = [if ignore { libc::SIG_IGN as u64 } else { 0 }, 0, 0, 0];
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            action.as_ptr(),
            std::ptr::null_mut::<u8>(),
            8usize,
        );
    }
    // Last: signals sent to the child since fork are pending and are
    // delivered now, as they should be.
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &prep.mask as *const signals::SigMask,
        std::ptr::null_mut::<signals::SigMask>(),
        8usize,
    );

    // execvp's rules: keep searching past "not here" and "not allowed",
    // stop at any other error. Unlike execvp, "not allowed" only counts
    // when the file itself is there: a PATH directory the user may not
    // search (`/root/...` after dropping root) means "not found", as in a
    // shell.
    let mut errno = libc::ENOENT;
    for path in &prep.candidates {
        libc::execve(path.as_ptr(), prep.argv_ptrs.as_ptr(), environ);
        match *libc::__errno_location() {
            libc::EACCES => {
                if prep.candidates.len() == 1 || libc::access(path.as_ptr(), libc::F_OK) == 0 {
                    errno = libc::EACCES;
                }
            }
            libc::ENOENT | libc::ENOTDIR => {}
            other => {
                errno = other;
                break;
            }
        }
    }
    *libc::__errno_location() = errno;
    child_fail(report, Stage::Exec)
}

/// Send `(stage, errno)` to the parent and exit 126/127 (the parent uses the
/// report; the status only matters if the report is lost).
unsafe fn child_fail(report: RawFd, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, buf.as_ptr().cast(), buf.len());
    libc::_exit(if stage == Stage::Exec && errno == libc::ENOENT {
        code::NOT_FOUND
    } else {
        code::NOT_EXECUTABLE
    })
}

// ---------------------------------------------------------------------------
// Supervising

struct Supervisor {
    /// The command's pid (and process group id).
    child: i32,
    /// `child`, or `-child` with `--kill-process-group`.
    forward_to: i32,
    self_pid: i32,
    pid1: bool,
    grace: Duration,
    rewrite: signals::Rewrites,
    warned_no_proc: std::cell::Cell<bool>,
}

/// Where the shutdown stands. The command's status is fixed once it is
/// reaped; what follows only decides when to exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The command runs: forward signals, reap orphans.
    Running,
    /// The command exited with `code`; the processes left got SIGTERM and
    /// have until `deadline`.
    Draining { code: i32, deadline: Instant },
    /// The grace period is over and SIGKILL was sent; wait until `deadline`
    /// for the last ones to be reaped.
    Killing { code: i32, deadline: Instant },
}

impl Phase {
    fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Running => None,
            Phase::Draining { deadline, .. } | Phase::Killing { deadline, .. } => Some(deadline),
        }
    }
}

/// What one turn of the loop found by reaping.
#[derive(Clone, Copy, Debug, Default)]
struct Reaped {
    /// The command's exit code, if it was reaped in this turn.
    command: Option<i32>,
    /// The signal that stopped the command, if it stopped in this turn.
    command_stopped_by: Option<i32>,
    /// Whether any child (the command or an adopted orphan) is left.
    children_left: bool,
}

/// The next move of the shutdown, decided by [`step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Nothing to do but wait for the next signal or the deadline.
    Wait,
    /// The command exited with `code` and processes are left: SIGTERM (and
    /// SIGCONT) to them, and a grace period until `deadline`.
    Terminate { code: i32, deadline: Instant },
    /// The grace period is over: SIGKILL to whatever is left, and wait until
    /// `deadline` for it to be reaped.
    Kill { code: i32, deadline: Instant },
    /// Still waiting after SIGKILL: send it again, so a process forked
    /// between the scan and the kill does not escape.
    KillAgain,
    /// Exit with `code`; `abandoned` when processes survived SIGKILL.
    Exit { code: i32, abandoned: bool },
}

/// The shutdown as a pure function: from the phase, what reaping found and
/// the time, the next step. No processes, no clock of its own.
fn step(
    phase: Phase,
    command: Option<i32>,
    children_left: bool,
    now: Instant,
    grace: Duration,
) -> Step {
    match phase {
        Phase::Running => match command {
            None => Step::Wait,
            Some(code) if !children_left => Step::Exit {
                code,
                abandoned: false,
            },
            Some(code) => Step::Terminate {
                code,
                deadline: now + grace,
            },
        },
        Phase::Draining { code, .. } | Phase::Killing { code, .. } if !children_left => {
            Step::Exit {
                code,
                abandoned: false,
            }
        }
        Phase::Draining { code, deadline } if now >= deadline => Step::Kill {
            code,
            deadline: now + KILL_WAIT,
        },
        Phase::Draining { .. } => Step::Wait,
        Phase::Killing { code, deadline } if now >= deadline => Step::Exit {
            code,
            abandoned: true,
        },
        Phase::Killing { .. } => Step::KillAgain,
    }
}

impl Supervisor {
    /// tini's loop: reap, step the shutdown, wait for a signal and forward
    /// it.
    fn supervise(&self) -> i32 {
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
                if pid == self.child {
                    out.command_stopped_by = Some(libc::WSTOPSIG(status));
                }
                continue;
            }
            if pid != self.child {
                crate::trace!("reaped an orphan, pid {pid}");
                continue;
            }
            let code = if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                crate::info!(
                    "command killed by {}: exit code {}",
                    signal_name(sig),
                    128 + sig
                );
                128 + sig
            } else {
                let code = libc::WEXITSTATUS(status);
                crate::info!("command exited with {code}");
                code
            };
            out.command = Some(code);
        }
    }

    /// The command stopped. When it stopped for job control (Ctrl-Z, or
    /// reading or writing the terminal from the background) and sharelink
    /// is a shell's job, sharelink stops too: the shell waits for its job,
    /// not for the command, and would otherwise never get the terminal back.
    /// When the shell continues sharelink (`fg` or `bg`), sharelink hands
    /// the terminal back to the command if it was put in the foreground,
    /// and continues it. Any other stop is left as it is: SIGCONT to
    /// sharelink is forwarded as usual.
    fn follow_stop(&self, sig: i32) {
        if !matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) || !self.is_a_shell_job() {
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
                libc::tcsetpgrp(libc::STDIN_FILENO, self.child);
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
        unsafe { libc::kill(-self.child, libc::SIGCONT) };
        crate::debug!("continued: the command is continued too");
    }

    /// Whether a job-control shell started sharelink as a job, so that
    /// stopping sharelink hands the terminal back to it: sharelink leads its
    /// own process group and its parent is in another group of the same
    /// session (the group is not orphaned: someone can continue it). An init
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
        let Some(to) = self.rewrite.apply(sig) else {
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
            vec![-self.child]
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

    #[test]
    fn step_while_the_command_runs() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        assert_eq!(step(Phase::Running, None, true, t, g), Step::Wait);
        // No child at all yet is still "running" until the command's
        // status is known.
        assert_eq!(step(Phase::Running, None, false, t, g), Step::Wait);
        assert_eq!(
            step(Phase::Running, Some(3), false, t, g),
            Step::Exit {
                code: 3,
                abandoned: false
            }
        );
        assert_eq!(
            step(Phase::Running, Some(3), true, t, g),
            Step::Terminate {
                code: 3,
                deadline: t + g
            }
        );
    }

    #[test]
    fn step_through_the_shutdown() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let draining = Phase::Draining {
            code: 7,
            deadline: t + g,
        };
        assert_eq!(step(draining, None, true, t, g), Step::Wait);
        assert_eq!(
            step(draining, None, false, t, g),
            Step::Exit {
                code: 7,
                abandoned: false
            }
        );
        assert_eq!(
            step(draining, None, true, t + g, g),
            Step::Kill {
                code: 7,
                deadline: t + g + KILL_WAIT
            }
        );
        let killing = Phase::Killing {
            code: 7,
            deadline: t + g + KILL_WAIT,
        };
        assert_eq!(step(killing, None, true, t + g, g), Step::KillAgain);
        assert_eq!(
            step(killing, None, false, t + g, g),
            Step::Exit {
                code: 7,
                abandoned: false
            }
        );
        assert_eq!(
            step(killing, None, true, t + g + KILL_WAIT, g),
            Step::Exit {
                code: 7,
                abandoned: true
            }
        );
        // A zero grace period kills on the next turn.
        let zero = Duration::ZERO;
        match step(Phase::Running, Some(0), true, t, zero) {
            Step::Terminate { code, deadline } => assert_eq!(
                step(Phase::Draining { code, deadline }, None, true, t, zero),
                Step::Kill {
                    code: 0,
                    deadline: t + KILL_WAIT
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stage_round_trip() {
        for s in [
            Stage::Setgroups,
            Stage::Setgid,
            Stage::Setuid,
            Stage::Verify,
            Stage::Exec,
        ] {
            assert_eq!(Stage::from_u32(s as u32), s);
        }
    }
}
