//! An open directory and the `*at` operations relative to it.
//!
//! Everything that walks a data tree goes through [`Dir`]: names are single
//! components resolved against an open directory, so no path sharelink
//! builds can outgrow PATH_MAX (a staging or displaced copy is deeper than
//! the share target it mirrors), and nothing ever follows a symlink that
//! appears while we work.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::meta::{Kind, Meta};

fn errno(e: nix::Error) -> io::Error {
    io::Error::from(e)
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// An open directory (`O_RDONLY | O_DIRECTORY`).
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

/// What [`Dir::list`] returns per entry: its name and, when the filesystem
/// reports it, its kind.
type Listing = Vec<(OsString, Option<Kind>)>;

impl Dir {
    const FLAGS: OFlag = OFlag::O_RDONLY
        .union(OFlag::O_DIRECTORY)
        .union(OFlag::O_CLOEXEC)
        .union(OFlag::O_NOCTTY);
    const PATH_FLAGS: OFlag = OFlag::O_PATH
        .union(OFlag::O_DIRECTORY)
        .union(OFlag::O_CLOEXEC);

    /// A directory from its open descriptor (one passed by another
    /// process).
    pub(crate) fn from_fd(fd: OwnedFd) -> Dir {
        Dir { fd }
    }

    /// Open a directory by path, following symlinks in it (for the roots
    /// the config names; the trees below them are walked with
    /// [`Dir::open_dir`]).
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(path, Self::FLAGS, Mode::empty()).map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Open a directory by path as a handle for `*at` calls only
    /// (`O_PATH`): on a network share opening a directory is a round trip
    /// (FUSE OPENDIR, an SMB2 CREATE), an `O_PATH` open is none. Listing
    /// ([`Dir::list`] opens anew), `*at` calls, [`Dir::stat`],
    /// [`Dir::chown`] and [`Dir::sync_fs`] work through it; a raw `fchmod`,
    /// `futimens` or `fsync` of it would not, so it is for directories that
    /// are only walked through (the share root, the lock's directories).
    pub(crate) fn open_path(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(path, Self::PATH_FLAGS, Mode::empty()).map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Open a directory by path without following a symlink at its last
    /// component.
    pub(crate) fn open_nofollow(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(path, Self::FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Open the subdirectory `name`; a symlink there is ENOTDIR/ELOOP.
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            Self::FLAGS | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// [`Dir::open_dir`] as an `O_PATH` handle ([`Dir::open_path`]): no
    /// round trip for the open itself; a symlink there is ENOTDIR.
    pub(crate) fn open_dir_path(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            Self::PATH_FLAGS | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Open the directory `rel` (several components) below this one with
    /// `openat2`, refusing symlinks, magic links and escapes anywhere on the
    /// way (ELOOP, EXDEV). ENOSYS on kernels before 5.6 (or EPERM under a
    /// seccomp filter that does not know it): callers walk instead.
    pub(crate) fn open_dir_beneath(&self, rel: &Path) -> io::Result<Dir> {
        use nix::fcntl::{OpenHow, ResolveFlag};
        let how = OpenHow::new()
            .flags(Self::FLAGS | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = nix::fcntl::openat2(&self.fd, rel, how).map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Read a small regular file `name` that others may have planted: never
    /// through a symlink, never blocking on a FIFO, never more than `max`
    /// bytes (a longer file is EFBIG). `None` when there is nothing there.
    pub(crate) fn read_small(
        &self,
        name: &OsStr,
        max: usize,
    ) -> io::Result<Option<(Vec<u8>, Meta)>> {
        use std::io::Read;
        let f = match self.open_read(name) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = super::meta::fstat(&f)?;
        if meta.kind != Kind::File {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut buf = Vec::new();
        (&f).take(max as u64 + 1).read_to_end(&mut buf)?;
        drop(f);
        if buf.len() > max {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        Ok(Some((buf, meta)))
    }

    /// Write `name` anew with `bytes`, replacing a file of that name and
    /// never following or writing through whatever else was put there:
    /// the new file is made `O_EXCL` under `tmp` (cleared first with
    /// `unlinkat`, which removes a planted symlink itself), then renamed
    /// over `name`.
    pub(crate) fn write_replace(&self, tmp: &OsStr, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        match self.unlink(tmp) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let mut f = self.create(tmp, 0o644)?;
        f.write_all(bytes)?;
        drop(f);
        self.rename(tmp, self, name)
    }

    /// Set the times of `name` (never a symlink's target) to now.
    pub(crate) fn touch_at(&self, name: &OsStr) -> io::Result<()> {
        use nix::sys::stat::{utimensat, UtimensatFlags};
        use nix::sys::time::TimeSpec;
        utimensat(
            &self.fd,
            name,
            &TimeSpec::UTIME_NOW,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(errno)
    }

    /// `fchown` of this directory itself: it is the directory this handle
    /// opened, whatever was renamed over its name since.
    /// (`fchownat` with `AT_EMPTY_PATH`, which an `O_PATH` handle takes.)
    pub(crate) fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: valid fd and a NUL-terminated empty name.
        let r = unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                uid,
                gid,
                libc::AT_EMPTY_PATH,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    pub(crate) fn stat(&self) -> io::Result<Meta> {
        nix::sys::stat::fstat(&self.fd)
            .map(|st| Meta::from_stat(&st))
            .map_err(errno)
    }

    /// `lstat` of `name`; `None` when there is nothing there.
    pub(crate) fn stat_at(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// The entries, sorted by name (stable order makes runs reproducible).
    pub(crate) fn list(&self) -> io::Result<Listing> {
        // A fresh open file description: its own read position.
        let fd = nix::fcntl::openat(&self.fd, ".", Self::FLAGS, Mode::empty()).map_err(errno)?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(errno)?;
        let mut out = Vec::new();
        for e in d.iter() {
            let e = e.map_err(errno)?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = e.file_type().map(|t| {
                use nix::dir::Type;
                match t {
                    Type::Directory => Kind::Dir,
                    Type::File => Kind::File,
                    Type::Symlink => Kind::Symlink,
                    Type::Fifo => Kind::Fifo,
                    Type::Socket => Kind::Socket,
                    Type::CharacterDevice => Kind::CharDevice,
                    Type::BlockDevice => Kind::BlockDevice,
                }
            });
            out.push((OsStr::from_bytes(name).to_os_string(), kind));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub(crate) fn mkdir(&self, name: &OsStr, perm: u32) -> io::Result<()> {
        nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(perm)).map_err(errno)
    }

    /// Create a new regular file for writing; never opens an existing one.
    pub(crate) fn create(&self, name: &OsStr, perm: u32) -> io::Result<File> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(perm),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Open `name` for reading without following a symlink and without
    /// blocking on a FIFO that replaced a file meanwhile.
    pub(crate) fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY
                | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Open `name` for appending, creating it if needed (journals).
    pub(crate) fn open_append(&self, name: &OsStr) -> io::Result<File> {
        let fd = nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_APPEND
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    pub(crate) fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        nix::unistd::symlinkat(target, &self.fd, name).map_err(errno)
    }

    pub(crate) fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        nix::fcntl::readlinkat(&self.fd, name).map_err(errno)
    }

    /// A hard link `to/to_name` to `self/name` (never following).
    pub(crate) fn hard_link(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        nix::unistd::linkat(&self.fd, name, &to.fd, to_name, AtFlags::empty()).map_err(errno)
    }

    pub(crate) fn mknod(&self, name: &OsStr, kind: Kind, perm: u32, rdev: u64) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        let r = unsafe {
            libc::mknodat(
                self.fd.as_raw_fd(),
                n.as_ptr(),
                kind.mode_bits() | (perm & 0o7777),
                rdev as libc::dev_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(crate) fn unlink(&self, name: &OsStr) -> io::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
            .map_err(errno)
    }

    /// `rmdir`: only ever removes an empty directory.
    pub(crate) fn rmdir(&self, name: &OsStr) -> io::Result<()> {
        nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::RemoveDir).map_err(errno)
    }

    /// Rename `self/name` to `to/to_name`, replacing what is there.
    pub(crate) fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        nix::fcntl::renameat(&self.fd, name, &to.fd, to_name).map_err(errno)
    }

    /// Rename without ever replacing: EEXIST when `to/to_name` exists.
    ///
    /// Where the filesystem lacks `RENAME_NOREPLACE` (EINVAL: CIFS, older
    /// FUSE), a directory falls back to `rename` after checking the target
    /// is absent or an empty directory (`rename` itself refuses a non-empty
    /// one, so nothing can be lost), and anything else to `link` + `unlink`
    /// (which refuses any existing target) or, on a share without hard
    /// links either, to check-then-`rename`.
    pub(crate) fn rename_noreplace(
        &self,
        name: &OsStr,
        to: &Dir,
        to_name: &OsStr,
    ) -> io::Result<()> {
        let (from, to_c) = (cstr(name)?, cstr(to_name)?);
        // SAFETY: valid fds and NUL-terminated names. (The raw syscall:
        // musl's libc has no renameat2 wrapper.)
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                self.fd.as_raw_fd(),
                from.as_ptr(),
                to.fd.as_raw_fd(),
                to_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        ) {
            return Err(e);
        }
        let from = self
            .stat_at(name)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let exists = io::Error::from_raw_os_error(libc::EEXIST);
        if from.kind == Kind::Dir {
            match to.stat_at(to_name)? {
                Some(m) if m.kind != Kind::Dir => return Err(exists),
                _ => {}
            }
            return match self.rename(name, to, to_name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Err(exists),
                r => r,
            };
        }
        match self.hard_link(name, to, to_name) {
            Ok(()) => self.unlink(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(e),
            Err(_) => {
                if to.stat_at(to_name)?.is_some() {
                    return Err(exists);
                }
                self.rename(name, to, to_name)
            }
        }
    }

    /// Flush the whole filesystem this directory is on: one call instead
    /// of an `fsync` per file.
    pub(crate) fn sync_fs(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        if unsafe { libc::syncfs(self.fd.as_raw_fd()) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBADF) {
            return Err(e);
        }
        // An `O_PATH` handle: syncfs needs an open file of the filesystem.
        let fd = nix::fcntl::openat(&self.fd, ".", Self::FLAGS, Mode::empty()).map_err(errno)?;
        // SAFETY: valid fd.
        if unsafe { libc::syncfs(fd.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `access(2)` with the effective ids, relative to this directory.
    pub(crate) fn access(&self, name: &OsStr, mode: libc::c_int) -> io::Result<()> {
        let n = cstr(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        let r = unsafe {
            libc::faccessat(
                self.fd.as_raw_fd(),
                n.as_ptr(),
                mode,
                libc::AT_EACCESS | libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `/proc/self/fd/<fd>/<name>`: a short path to `name` for the calls
    /// that have no `*at` form (`lsetxattr` on a symlink, `linkat` of an
    /// open file by a user without CAP_DAC_READ_SEARCH).
    pub(crate) fn proc_path(&self, name: &OsStr) -> io::Result<CString> {
        let mut p = format!("/proc/self/fd/{}/", self.fd.as_raw_fd()).into_bytes();
        p.extend_from_slice(name.as_bytes());
        CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Dir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noreplace_refuses_and_list_is_sorted() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        std::fs::write(t.path().join("b"), "b").unwrap();
        std::fs::write(t.path().join("a"), "a").unwrap();
        let names: Vec<_> = d.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        let e = d
            .rename_noreplace(OsStr::new("a"), &d, OsStr::new("b"))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"b");
        d.rename_noreplace(OsStr::new("a"), &d, OsStr::new("c"))
            .unwrap();
        assert_eq!(std::fs::read(t.path().join("c")).unwrap(), b"a");
    }

    #[test]
    fn a_path_handle_walks_lists_stats_chowns_and_syncs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", t.path().join("l")).unwrap();
        let root = Dir::open_path(t.path()).unwrap();
        let d = root.open_dir_path(OsStr::new("d")).unwrap();
        // A symlink is no directory, whatever the open.
        assert!(root.open_dir_path(OsStr::new("l")).is_err());
        d.mkdir(OsStr::new("x"), 0o755).unwrap();
        d.create(OsStr::new("f"), 0o644).unwrap();
        let names: Vec<_> = d.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["f", "x"]);
        assert_eq!(d.stat().unwrap().kind, Kind::Dir);
        let me = d.stat().unwrap();
        d.chown(me.uid, me.gid).unwrap();
        d.sync_fs().unwrap();
        assert!(nix::sys::statvfs::fstatvfs(&d).is_ok());
        d.rename_noreplace(OsStr::new("x"), &root, OsStr::new("y"))
            .unwrap();
        root.rmdir(OsStr::new("y")).unwrap();
    }

    #[test]
    fn never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", t.path().join("l")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert!(d.open_dir(OsStr::new("l")).is_err());
        assert_eq!(
            d.stat_at(OsStr::new("l")).unwrap().unwrap().kind,
            Kind::Symlink
        );
        assert!(d.open_read(OsStr::new("l")).is_err());
    }
}
