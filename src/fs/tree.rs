//! Whole-tree operations on sharelink's own directories (staging areas,
//! empty share targets), relative to open directories and never following
//! symlinks.

use std::ffi::OsStr;
use std::io;

use super::dir::Dir;
use super::meta::Kind;

/// Remove `parent/name` and everything below it. Only for trees sharelink
/// made itself (staging copies): it deletes whatever it finds.
pub(crate) fn remove(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let Some(m) = parent.stat_at(name)? else {
        return Ok(());
    };
    if m.kind != Kind::Dir {
        return ignore_gone(parent.unlink(name));
    }
    let dir = match parent.open_dir(name) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    empty(&dir)?;
    ignore_gone(rmdir_settled(parent, name, || empty(&dir)))
}

fn empty(dir: &Dir) -> io::Result<()> {
    for (child, kind) in dir.list()? {
        let kind = match kind {
            Some(k) => Some(k),
            None => dir.stat_at(&child)?.map(|m| m.kind),
        };
        match kind {
            Some(Kind::Dir) => remove(dir, &child)?,
            Some(_) => ignore_gone(dir.unlink(&child))?,
            None => {}
        }
    }
    Ok(())
}

/// The waits, in milliseconds, of [`rmdir_settled`]: about half a second.
const SETTLE_MS: [u64; 8] = [2, 4, 8, 16, 32, 64, 128, 256];

/// `rmdir` of `parent/name`, which the caller has emptied. On a network
/// share a file unlinked just after its last close can keep its name for
/// a moment: SMB keeps it until the server has seen every handle closed
/// (delete pending), and FUSE sends that close after close(2) returned
/// (libfuse meanwhile hides the file as `.fuse_hidden*`). So "not empty"
/// is retried for a while, `clear` emptying the directory again before
/// each retry, until the error stands.
pub(crate) fn rmdir_settled(
    parent: &Dir,
    name: &OsStr,
    mut clear: impl FnMut() -> io::Result<()>,
) -> io::Result<()> {
    let mut waits = SETTLE_MS.iter();
    loop {
        match parent.rmdir(name) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                let Some(&ms) = waits.next() else {
                    return Err(e);
                };
                std::thread::sleep(std::time::Duration::from_millis(ms));
                clear()?;
            }
            r => return r,
        }
    }
}

fn ignore_gone(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Whether a directory holds nothing but directories (a share target with
/// only the `dirs` sharelink made is as good as empty). Stops at the first
/// non-directory.
pub(crate) fn holds_no_files(dir: &Dir) -> io::Result<bool> {
    for (name, kind) in dir.list()? {
        let kind = match kind {
            Some(k) => k,
            None => match dir.stat_at(&name)? {
                Some(m) => m.kind,
                None => continue,
            },
        };
        if kind != Kind::Dir {
            return Ok(false);
        }
        let sub = match dir.open_dir(&name) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        if !holds_no_files(&sub)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove `parent/name`, a tree of empty directories, with `rmdir` only:
/// anything else in it (a file that appeared meanwhile) makes it fail with
/// ENOTEMPTY, and stays.
pub(crate) fn remove_empty_dirs(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let dir = parent.open_dir(name)?;
    for (child, kind) in dir.list()? {
        if matches!(kind, Some(Kind::Dir) | None) {
            match remove_empty_dirs(&dir, &child) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
                }
                r => r?,
            }
        } else {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
    }
    parent.rmdir(name)
}

/// Open `root/rel` without following a symlink anywhere in `rel` and
/// without leaving `root`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)` where the kernel has it, else one `O_NOFOLLOW`
/// component at a time. Either way each step is relative to the directory
/// the previous one opened, so renaming a component meanwhile cannot move
/// the walk outside `root`. A symlink on the way is ELOOP or ENOTDIR.
pub(crate) fn open_beneath(root: &Dir, rel: &std::path::Path) -> io::Result<Dir> {
    if rel.as_os_str().is_empty() {
        return root.try_clone();
    }
    match root.open_dir_beneath(rel) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)
            ) => {}
        // EXDEV: a mount point on the way, which `RESOLVE_BENEATH` may
        // refuse on some kernels; the walk below crosses it, still without
        // following symlinks.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        r => return r,
    }
    let mut cur = root.try_clone()?;
    for c in rel.components() {
        cur = cur.open_dir(c.as_os_str())?;
    }
    Ok(cur)
}

/// A directory [`make_beneath`] opened, and whether it made the last
/// component itself (only then does it hand it to the run user).
pub(crate) struct Made {
    pub(crate) dir: Dir,
    pub(crate) created: bool,
}

/// Why [`make_beneath`] stopped. The caller words the advice.
#[derive(Debug)]
pub(crate) enum MakeError {
    /// A component is a symlink (never followed).
    Symlink(std::path::PathBuf),
    /// A component is another non-directory, of this kind.
    NotDir(std::path::PathBuf, Kind),
    Io(crate::error::Error),
}

/// `mkdir -p root/rel` without following symlinks, returning the last
/// directory open. Each component is made with `mkdirat` in the directory
/// the previous step opened (EEXIST is fine: replicas race here) and then
/// opened `O_NOFOLLOW`: it must be a real directory. `root_path` names
/// `root` in messages.
pub(crate) fn make_beneath(
    root: &Dir,
    rel: &std::path::Path,
    root_path: &std::path::Path,
) -> Result<Made, MakeError> {
    use crate::error::{Error, IoContext};
    let io = MakeError::Io;
    let mut cur = root.try_clone().ctx("open", root_path).map_err(io)?;
    let mut path = root_path.to_path_buf();
    let mut created = false;
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        let name = c.as_os_str();
        path.push(name);
        created = match cur.mkdir(name, 0o755) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => return Err(io(Error::io("create directory", &path, e))),
        };
        // Directories on the way are only walked through: `O_PATH`, no
        // round trip for their opens on a network share. The last one is
        // the caller's, opened in full.
        let opened = if components.peek().is_some() {
            cur.open_dir_path(name)
        } else {
            cur.open_dir(name)
        };
        cur = match opened {
            Ok(d) => d,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let kind = cur.stat_at(name).ok().flatten().map(|m| m.kind);
                return Err(match kind {
                    Some(Kind::Symlink) => MakeError::Symlink(path),
                    Some(k) => MakeError::NotDir(path, k),
                    None => io(Error::io("open directory", &path, e)),
                });
            }
            Err(e) => return Err(io(Error::io("open directory", &path, e))),
        };
    }
    Ok(Made { dir: cur, created })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn rmdir_settled_waits_for_a_name_that_goes_and_gives_up_on_one_that_stays() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open(t.path()).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/.fuse_hidden0001"), "").unwrap();
        let mut calls = 0;
        rmdir_settled(&root, OsStr::new("d"), || {
            calls += 1;
            if calls == 3 {
                fs::remove_file(t.path().join("d/.fuse_hidden0001")).unwrap();
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 3);
        assert!(!t.path().join("d").exists());

        fs::create_dir(t.path().join("e")).unwrap();
        fs::write(t.path().join("e/stays"), "").unwrap();
        let mut calls = 0;
        let e = rmdir_settled(&root, OsStr::new("e"), || {
            calls += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
        assert_eq!(calls, SETTLE_MS.len());
        assert!(t.path().join("e/stays").exists());
    }

    #[test]
    fn removes_trees_and_only_empty_dirs() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open(t.path()).unwrap();
        fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        fs::create_dir_all(t.path().join("e/f")).unwrap();
        fs::write(t.path().join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink("/", t.path().join("a/link")).unwrap();
        assert!(!holds_no_files(&root.open_dir(OsStr::new("a")).unwrap()).unwrap());
        assert!(holds_no_files(&root.open_dir(OsStr::new("e")).unwrap()).unwrap());
        assert_eq!(
            remove_empty_dirs(&root, OsStr::new("a"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOTEMPTY)
        );
        assert!(t.path().join("a/b/file").exists());
        remove_empty_dirs(&root, OsStr::new("e")).unwrap();
        assert!(!t.path().join("e").exists());
        remove(&root, OsStr::new("a")).unwrap();
        assert!(!t.path().join("a").exists());
        // The symlink's target survived.
        assert!(std::path::Path::new("/etc").exists());
    }
}
