//! Questions asked as the command's user, before the command starts: can
//! it find the command in its PATH, can it write the data directories.
//! Root's answers would be wrong (it passes every permission check), so a
//! forked child drops to the user's ids, calls `access` for each path and
//! reports the errnos through a pipe.

use std::ffi::{CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::user::Credentials;

/// `access(path, mode)` for each check, as `ids` (or as sharelink itself
/// with `None`): 0 when allowed, else the errno. `Err` when the probe
/// itself could not run (fork, pipe, dropping privileges).
pub(crate) fn access_as(
    ids: Option<&Credentials>,
    checks: &[(&Path, i32)],
) -> Result<Vec<i32>, String> {
    let paths: Vec<CString> = checks
        .iter()
        .map(|(p, _)| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{p:?} contains a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let modes: Vec<i32> = checks.iter().map(|c| c.1).collect();
    let creds = ids.map(|c| (c.uid, c.gid, c.groups.clone()));
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: sharelink is single-threaded outside a migration; the child
    // makes only async-signal-safe calls on what was prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child of fork; syscalls only, then _exit.
        unsafe {
            let fd = w.as_raw_fd();
            if let Some((uid, gid, groups)) = &creds {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(*gid, *gid, *gid) != 0
                    || libc::setresuid(*uid, *uid, *uid) != 0
                {
                    libc::_exit(1);
                }
            }
            for (p, m) in paths.iter().zip(&modes) {
                let errno = if libc::access(p.as_ptr(), *m) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                let b = errno.to_ne_bytes();
                libc::write(fd, b.as_ptr().cast(), b.len());
            }
            libc::_exit(0);
        }
    }
    drop(w);
    let mut out = Vec::new();
    let mut file = std::fs::File::from(r);
    let read = std::io::Read::read_to_end(&mut file, &mut out);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
    read.map_err(|e| format!("read: {e}"))?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 || out.len() != 4 * checks.len() {
        return Err("could not take the user's ids".into());
    }
    Ok(out
        .chunks(4)
        .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
        .collect())
}

/// Where `execvp` would look for `program`: itself if it has a `/`, else
/// each `PATH` entry (`path`, or the default when unset).
pub(crate) fn candidates(program: &OsStr, path: Option<&OsStr>, default: &str) -> Vec<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(program)];
    }
    std::env::split_paths(path.unwrap_or(OsStr::new(default)))
        .map(|dir| {
            // An empty entry means the current directory.
            if dir.as_os_str().is_empty() {
                PathBuf::from(program)
            } else {
                dir.join(program)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_execvp() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            candidates(OsStr::new("./run.sh"), Some(OsStr::new("/bin")), "/x"),
            [p("./run.sh")]
        );
        assert_eq!(
            candidates(OsStr::new("python3"), Some(OsStr::new("/a::/b")), "/x"),
            [p("/a/python3"), p("python3"), p("/b/python3")]
        );
        assert_eq!(
            candidates(OsStr::new("sh"), None, "/x:/y"),
            [p("/x/sh"), p("/y/sh")]
        );
    }

    #[test]
    fn access_as_ourselves() {
        let got = access_as(
            None,
            &[
                (Path::new("/"), libc::R_OK),
                (Path::new("/no/such/file"), libc::F_OK),
            ],
        )
        .unwrap();
        assert_eq!(got, [0, libc::ENOENT]);
    }
}
