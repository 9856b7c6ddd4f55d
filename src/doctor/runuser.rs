//! Whether the run user can create, write and remove in each share target,
//! checked as that user: a forked child drops to the user's groups, gid
//! and uid (as `run` does before starting the pipeline) and tries, then
//! reports each outcome through a pipe.
//!
//! The child asks the kernel `faccessat(W_OK|X_OK)` on the real share
//! target (the check that decides a create there), then creates, writes and
//! removes a file for real in a *mirror* directory inside doctor's probe
//! directory, given the target's owner and mode: so the share's own answer
//! (read-only, quota, a server that refuses the mount's user) is measured
//! without writing into the link's data.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::fs::dir::Dir;
use crate::init::user::Credentials;

/// The child's pid while it runs, so the caller can kill it when the
/// share stops answering.
pub(crate) static CHILD: AtomicI32 = AtomicI32::new(0);

/// The name created (then removed) in each mirror directory.
pub(crate) const PROBE: &str = "probe";

/// One share target to check.
pub(crate) struct Target {
    /// The target itself, opened without following symlinks.
    pub(crate) dir: Dir,
    /// Its mirror in the probe directory.
    pub(crate) mirror: Dir,
}

/// Which step the user failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Becoming the user (setgroups/setresgid/setresuid).
    Switch,
    /// The kernel's permission check on the share target.
    Access,
    Create,
    Write,
    Remove,
}

impl Step {
    fn from_code(c: i32) -> Step {
        match c {
            0 => Step::Switch,
            1 => Step::Access,
            2 => Step::Create,
            3 => Step::Write,
            _ => Step::Remove,
        }
    }

    /// What the user cannot do, and where it was found out.
    pub(crate) fn describe(self, dir: &std::path::Path) -> String {
        let (verb, mirror) = match self {
            Step::Switch => ("be switched to, to check", false),
            Step::Access => ("create entries in", false),
            Step::Create => ("create files in", true),
            Step::Write => ("write files in", true),
            Step::Remove => ("remove files in", true),
        };
        let why = if mirror {
            " (the share refused it in doctor's directory with the same owner and mode)"
        } else {
            ""
        };
        format!("{verb} {}{why}", dir.display())
    }
}

/// The user's outcome for one target: `None` when every step worked.
pub(crate) type Denied = Option<(Step, io::Error)>;

/// Check every target as `user`. `Err` only when the child could not be
/// started or said nothing.
#[inline(never)]
pub(crate) fn check(user: &Credentials, targets: &[Target]) -> io::Result<Vec<Denied>> {
    let (rd, wr) = nix::unistd::pipe().map_err(io::Error::from)?;
    // Everything the child needs, made before fork: after it, in a
    // threaded process, only async-signal-safe calls are allowed.
    let fds: Vec<(i32, i32)> = targets
        .iter()
        .map(|t| (t.dir.as_raw_fd(), t.mirror.as_raw_fd()))
        .collect();
    let groups: Vec<libc::gid_t> = user.groups.clone();
    // SAFETY: the child only makes raw syscalls on memory prepared above
    // and leaves with _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { child(wr.as_raw_fd(), user.uid, user.gid, &groups, &fds) },
        pid => {
            CHILD.store(pid, Ordering::SeqCst);
            drop(wr);
            let mut bytes = Vec::new();
            let read = std::fs::File::from(rd).read_to_end(&mut bytes);
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            CHILD.store(0, Ordering::SeqCst);
            read?;
            decode(&bytes, targets.len())
        }
    }
}

/// Records of three i32: target index (-1: the switch), step, errno (0: ok).
fn decode(bytes: &[u8], n: usize) -> io::Result<Vec<Denied>> {
    let words: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut out: Vec<Option<Denied>> = (0..n).map(|_| None).collect();
    for r in words.chunks_exact(3) {
        if r[0] < 0 {
            // Could not become the user: every target fails alike.
            return Ok((0..n)
                .map(|_| Some((Step::Switch, io::Error::from_raw_os_error(r[2]))))
                .collect());
        }
        let failed =
            (r[2] != 0).then(|| (Step::from_code(r[1]), io::Error::from_raw_os_error(r[2])));
        if let Some(slot) = out.get_mut(r[0] as usize) {
            *slot = Some(failed);
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| io::Error::other("the checking child ended early")))
        .collect()
}

/// The child: become the user, try each target, report, `_exit`.
///
/// # Safety
/// Only to be called in a freshly forked child.
unsafe fn child(out: i32, uid: u32, gid: u32, groups: &[libc::gid_t], fds: &[(i32, i32)]) -> ! {
    let report = |idx: i32, step: i32, errno: i32| {
        let rec = [idx, step, errno];
        libc::write(out, rec.as_ptr().cast(), std::mem::size_of_val(&rec));
    };
    let errno = || *libc::__errno_location();
    if libc::setgroups(groups.len(), groups.as_ptr()) != 0
        || libc::setresgid(gid, gid, gid) != 0
        || libc::setresuid(uid, uid, uid) != 0
    {
        report(-1, 0, errno());
        libc::_exit(1);
    }
    let dot = c".";
    let probe = c"probe";
    for (i, &(target, mirror)) in fds.iter().enumerate() {
        let i = i as i32;
        if libc::faccessat(
            target,
            dot.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        ) != 0
        {
            report(i, 1, errno());
            continue;
        }
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = libc::openat(mirror, probe.as_ptr(), flags, 0o600);
        if fd < 0 {
            report(i, 2, errno());
            continue;
        }
        let wrote = libc::write(fd, b"x".as_ptr().cast(), 1) == 1;
        let write_errno = errno();
        libc::close(fd);
        if libc::unlinkat(mirror, probe.as_ptr(), 0) != 0 {
            report(i, 4, errno());
        } else if !wrote {
            report(i, 3, write_errno);
        } else {
            report(i, 1, 0);
        }
    }
    libc::_exit(0)
}

/// Make the mirror of `target` in the probe directory: a directory named
/// `name`, given the target's owner and mode where the share keeps them.
pub(crate) fn mirror(probe_dir: &Dir, name: &str, target: &Dir) -> io::Result<Dir> {
    probe_dir.mkdir(OsStr::new(name), 0o700)?;
    let m = probe_dir.open_dir(OsStr::new(name))?;
    let t = target.stat()?;
    // A share that cannot keep them shows what it shows for every entry,
    // the target included: what the user meets there either way.
    let _ = nix::unistd::fchown(m.as_fd(), Some(t.uid.into()), Some(t.gid.into()));
    let _ = nix::sys::stat::fchmod(
        m.as_fd(),
        nix::sys::stat::Mode::from_bits_truncate(t.perm & 0o7777),
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(words: &[[i32; 3]]) -> Vec<u8> {
        words
            .iter()
            .flatten()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    #[test]
    fn decodes_each_target_and_a_failed_switch() {
        let d = decode(&rec(&[[0, 1, 0], [1, 1, libc::EACCES]]), 2).unwrap();
        assert!(d[0].is_none());
        let (step, e) = d[1].as_ref().unwrap();
        assert_eq!(
            (*step, e.raw_os_error()),
            (Step::Access, Some(libc::EACCES))
        );
        let d = decode(&rec(&[[-1, 0, libc::EPERM]]), 2).unwrap();
        assert!(d.iter().all(|o| matches!(o, Some((Step::Switch, _)))));
        // A child that died before reporting every target.
        assert!(decode(&rec(&[[0, 1, 0]]), 2).is_err());
    }
}
