//! Starting the command: fork, then in the child only async-signal-safe
//! calls (drop privileges, restore the signal state sharelink was started
//! with, search PATH and exec). A failure is reported to the parent through
//! a close-on-exec pipe, so that sharelink exits 126/127 with the reason.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::Pid;

use super::RunOptions;
use crate::exit_code::ExitCode;
use crate::signals;

/// `PATH` when the environment has none: musl's `execvp` default.
const DEFAULT_PATH: &str = "/usr/local/bin:/bin:/usr/bin";

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
        let candidates = command_candidates(program)
            .iter()
            .map(|p| cstr(p.as_os_str()))
            .collect::<Result<_, _>>()?;
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

/// Where the command is looked for, as `execvp` would (this process's
/// `PATH`, which the command inherits).
pub(crate) fn command_candidates(program: &OsStr) -> Vec<std::path::PathBuf> {
    super::probe::candidates(program, std::env::var_os("PATH").as_deref(), DEFAULT_PATH)
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
pub(super) fn spawn(opts: &RunOptions) -> Result<Pid, ExitCode> {
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
    if opts.command.first().is_some_and(|p| p.is_empty()) {
        // A shell says "not found"; searching PATH would exec a directory.
        crate::error!("cannot run \"\": the command name is empty");
        return Err(ExitCode::NotFound);
    }
    let prep = match Prepared::new(opts) {
        Ok(p) => p,
        Err(why) => {
            crate::error!("cannot run {name:?}: {why}");
            return Err(ExitCode::NotExecutable);
        }
    };
    // The child reports a failed set-up or exec here; on success the pipe
    // closes on exec (CLOEXEC) and the parent reads EOF.
    let (report_r, report_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            crate::error!("cannot run {name:?}: pipe: {e}");
            return Err(ExitCode::NotExecutable);
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
        return Err(ExitCode::NotExecutable);
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
            Ok(Pid::from_raw(pid))
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
fn report_failure(opts: &RunOptions, prep: &Prepared, stage: Stage, errno: i32) -> ExitCode {
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
        return ExitCode::NotExecutable;
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
            ExitCode::NotFound
        }
        _ => {
            crate::error!("cannot run {name:?}: not executable ({err})");
            ExitCode::NotExecutable
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
    restore_signals(prep);
    *libc::__errno_location() = exec_search(prep);
    child_fail(report, Stage::Exec)
}

/// The signal state sharelink was started with. Handlers do not survive
/// exec, but SIG_IGN does: every signal sharelink was started with ignored
/// stays ignored (`nohup` keeps working), and every other one is default,
/// which undoes the Rust runtime's own SIGPIPE ignore and the default
/// sharelink gave SIGCHLD. The raw syscall reaches the real-time signals
/// libc keeps for itself; the kernel's struct starts with the handler, and
/// the rest stays zero. Errors (SIGKILL, SIGSTOP) are moot.
///
/// # Safety
/// Only in the child of `fork`, right before exec.
unsafe fn restore_signals(prep: &Prepared) {
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
}

/// Try each candidate path; returns the errno to report when none could be
/// executed. execvp's rules: keep searching past "not here" and "not
/// allowed", stop at any other error. Unlike execvp, "not allowed" only
/// counts when the file itself is there: a PATH directory the user may not
/// search (`/root/...` after dropping root) means "not found", as in a
/// shell.
///
/// # Safety
/// Only in the child of `fork`: on success it does not return.
unsafe fn exec_search(prep: &Prepared) -> i32 {
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
    errno
}

/// Send `(stage, errno)` to the parent and exit 126/127 (the parent uses the
/// report; the status only matters if the report is lost).
unsafe fn child_fail(report: RawFd, stage: Stage) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, buf.as_ptr().cast(), buf.len());
    libc::_exit(
        if stage == Stage::Exec && errno == libc::ENOENT {
            ExitCode::NotFound
        } else {
            ExitCode::NotExecutable
        }
        .code(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
