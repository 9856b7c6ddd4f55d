//! Metadata a faithful copy carries over (owner, mode, timestamps, extended
//! attributes, POSIX ACLs, file capabilities), and the record of what the
//! target refused.
//!
//! A share that cannot hold something (Azure Files over SMB: no chown or
//! chmod, no xattrs, no hard links, no special files) is not an error: the
//! data is copied, the loss is counted per [`Loss`] kind and reported once
//! per link. After the first outright refusal of a kind, the rest of the
//! migration does not ask again: on a network share each refusal costs a
//! round trip.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use nix::sys::time::TimeSpec;

use super::dir::Dir;
use super::meta::{Kind, Meta};

/// Something a copy could not keep because the target refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Loss {
    Owner,
    Mode,
    Times,
    Xattrs,
    Acls,
    Capabilities,
    HardLinks,
    SpecialFiles,
}

impl Loss {
    pub(crate) const ALL: [Loss; 8] = [
        Loss::Owner,
        Loss::Mode,
        Loss::Times,
        Loss::Xattrs,
        Loss::Acls,
        Loss::Capabilities,
        Loss::HardLinks,
        Loss::SpecialFiles,
    ];

    /// The key used in log fields (`lost_owner=3`).
    pub(crate) fn key(self) -> &'static str {
        match self {
            Loss::Owner => "owners",
            Loss::Mode => "modes",
            Loss::Times => "timestamps",
            Loss::Xattrs => "xattrs",
            Loss::Acls => "acls",
            Loss::Capabilities => "capabilities",
            Loss::HardLinks => "hard_links",
            Loss::SpecialFiles => "special_files",
        }
    }

    /// What happened instead, for the once-per-link warning.
    pub(crate) fn fallback(self) -> &'static str {
        match self {
            Loss::Owner => {
                "owners not kept (the share decides them, e.g. SMB uid=/gid= mount options)"
            }
            Loss::Mode => {
                "permission bits not kept (the share decides them, e.g. SMB file_mode=/dir_mode=)"
            }
            Loss::Times => "timestamps not kept",
            Loss::Xattrs => "extended attributes not kept",
            Loss::Acls => "POSIX ACLs not kept",
            Loss::Capabilities => "file capabilities (security.capability) not kept",
            Loss::HardLinks => "hard links copied as separate files (more space, no longer linked)",
            Loss::SpecialFiles => {
                "FIFOs, sockets or device nodes not recreated (they hold no data)"
            }
        }
    }
}

/// Per-kind counts of entries that lost something, shared by the workers
/// of one migration.
#[derive(Debug, Default)]
pub(crate) struct Fidelity {
    counts: [AtomicU64; 8],
    refused: [AtomicBool; 8],
}

impl Fidelity {
    pub(crate) fn lost(&self, l: Loss) {
        self.counts[l as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn count(&self, l: Loss) -> u64 {
        self.counts[l as usize].load(Relaxed)
    }

    /// Kinds with losses, with their counts.
    pub(crate) fn losses(&self) -> Vec<(Loss, u64)> {
        Loss::ALL
            .iter()
            .map(|&l| (l, self.count(l)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Whether the target has refused `l` outright already.
    pub(crate) fn refuses(&self, l: Loss) -> bool {
        self.refused[l as usize].load(Relaxed)
    }

    /// Whether the target has refused `l` outright already; if it has, one
    /// more entry loses it (counted).
    pub(crate) fn skips(&self, l: Loss) -> bool {
        let refused = self.refuses(l);
        if refused {
            self.lost(l);
        }
        refused
    }

    /// Run `op` unless the target refuses `l` already. A refusal is counted
    /// and remembered (when it is the filesystem's, not one value's);
    /// other errors are returned.
    pub(crate) fn attempt(&self, l: Loss, op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.refuses(l) {
            self.lost(l);
            return Ok(());
        }
        match op() {
            Ok(()) => Ok(()),
            Err(e) if is_refusal(&e) => {
                if is_global_refusal(l, &e) {
                    self.refused[l as usize].store(true, Relaxed);
                }
                self.lost(l);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Errors that mean "this filesystem (or this user) cannot keep that".
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EPERM
                | libc::EACCES
                | libc::EOPNOTSUPP
                | libc::ENOSYS
                | libc::EINVAL
                | libc::E2BIG
                | libc::ERANGE
        )
    )
}

/// A refusal that will repeat for every entry (the filesystem lacks the
/// feature), as opposed to one name or value being refused.
fn is_global_refusal(l: Loss, e: &io::Error) -> bool {
    match l {
        Loss::Owner | Loss::Mode | Loss::Times => {
            matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)
            )
        }
        _ => matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)),
    }
}

/// Extended attributes worth copying, as `cp -a` copies them: user and
/// trusted attributes, file capabilities and POSIX ACLs. Security labels
/// (SELinux and the like) belong to the target's policy.
fn copyable(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

fn class(name: &CStr) -> Loss {
    match name.to_bytes() {
        b"security.capability" => Loss::Capabilities,
        b"system.posix_acl_access" | b"system.posix_acl_default" => Loss::Acls,
        _ => Loss::Xattrs,
    }
}

/// The copyable extended attributes of one entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Xattrs(Vec<(CString, Vec<u8>)>);

/// Where to read or write extended attributes: an open file, or a path
/// that must not be followed (symlinks, special files).
pub(crate) enum Target<'a> {
    Fd(&'a dyn AsRawFd),
    Path(&'a CStr),
}

fn os_result(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl Target<'_> {
    fn list(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buffer and length match; fd or path valid for the call.
        os_result(unsafe {
            match self {
                Target::Fd(f) => {
                    libc::flistxattr(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                }
                Target::Path(p) => libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()),
            }
        })
    }

    fn get(&self, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: as above.
        os_result(unsafe {
            match self {
                Target::Fd(f) => libc::fgetxattr(
                    f.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
                Target::Path(p) => libc::lgetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                ),
            }
        })
    }

    fn set(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        // SAFETY: as above.
        let r = unsafe {
            match self {
                Target::Fd(f) => libc::fsetxattr(
                    f.as_raw_fd(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ),
                Target::Path(p) => libc::lsetxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ),
            }
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Call `f` with a buffer big enough for what it reports (the size may
/// grow between the sizing call and the real one: retry on ERANGE).
fn sized(mut f: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    loop {
        let n = f(&mut [])?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match f(&mut buf) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Xattrs {
    /// Read the copyable attributes. A source filesystem without xattr
    /// support simply has none.
    pub(crate) fn read(from: &Target<'_>) -> io::Result<Xattrs> {
        let names = match sized(|b| from.list(b)) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                return Ok(Xattrs::default())
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !copyable(name) {
                continue;
            }
            let name = CString::new(name).expect("split at NUL");
            match sized(|b| from.get(&name, b)) {
                Ok(v) => out.push((name, v)),
                // Removed meanwhile, or not readable by us: nothing to copy.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EPERM)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Xattrs(out))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Write them, capabilities last: changing the owner or writing to a
    /// file clears `security.capability`, so it must come after both.
    fn write(&self, to: &Target<'_>, fid: &Fidelity) -> io::Result<()> {
        let (caps, rest): (Vec<_>, Vec<_>) = self
            .0
            .iter()
            .partition(|(n, _)| n.as_bytes() == b"security.capability");
        for (name, value) in rest.into_iter().chain(caps) {
            fid.attempt(class(name), || to.set(name, value))?;
        }
        Ok(())
    }
}

fn ts(t: super::meta::Time) -> TimeSpec {
    TimeSpec::new(t.sec, t.nsec)
}

/// What a file or directory we just made already has: owner and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Made {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) perm: u32,
}

impl Made {
    /// An entry made by this process with `perm` asked for: its owner and
    /// what the umask leaves of the mode.
    pub(crate) fn by_us(perm: u32) -> Made {
        Made {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            perm: perm & !umask(),
        }
    }
}

/// The process's umask, read once (reading it means setting it, so it is
/// done before any worker runs, and put back at once).
pub(crate) fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        // SAFETY: umask cannot fail; the old value is restored at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old
        }
    })
}

/// Owner, mode, xattrs and times of an open file or directory we made
/// (`made`: what it has already), in the order that keeps each: owner first
/// (chown clears set-id bits and capabilities), then mode, then xattrs
/// (ACLs after the mode they extend), then times last (every other change
/// moves them). Calls that would change nothing are not made: on a local
/// disk they are most of the cost of a small file.
pub(crate) fn apply_fd(
    f: &dyn AsRawFd,
    meta: &Meta,
    made: Made,
    x: &Xattrs,
    fid: &Fidelity,
) -> io::Result<()> {
    let fd = f.as_raw_fd();
    let chown = (meta.uid, meta.gid) != (made.uid, made.gid);
    if chown {
        fid.attempt(Loss::Owner, || {
            // SAFETY: plain syscall on an open fd.
            check(unsafe { libc::fchown(fd, meta.uid, meta.gid) })
        })?;
    }
    if meta.perm != made.perm || chown && meta.perm & 0o6000 != 0 {
        fid.attempt(Loss::Mode, || {
            // SAFETY: as above.
            check(unsafe { libc::fchmod(fd, meta.perm) })
        })?;
    }
    x.write(&Target::Fd(f), fid)?;
    fid.attempt(Loss::Times, || {
        let times = [ts(meta.atime), ts(meta.id.mtime)];
        // SAFETY: two valid timespecs.
        check(unsafe { libc::futimens(fd, times.as_ptr().cast()) })
    })
}

/// After [`apply_fd`] skipped owner or mode because the entry seemed to
/// have them already: if the filesystem gave it others anyway (an SMB share
/// decides owners and modes itself), ask, so a loss is counted like any
/// other.
pub(crate) fn recheck_fd(
    f: &dyn AsRawFd,
    meta: &Meta,
    now: &Meta,
    fid: &Fidelity,
) -> io::Result<()> {
    let fd = f.as_raw_fd();
    if (now.uid, now.gid) != (meta.uid, meta.gid) {
        fid.attempt(Loss::Owner, || {
            // SAFETY: plain syscall on an open fd.
            check(unsafe { libc::fchown(fd, meta.uid, meta.gid) })
        })?;
    }
    if now.perm != meta.perm {
        fid.attempt(Loss::Mode, || {
            // SAFETY: as above.
            check(unsafe { libc::fchmod(fd, meta.perm) })
        })?;
    }
    Ok(())
}

/// The same for a symlink or special file `name` in `dir` (never followed;
/// symlinks have no mode of their own).
pub(crate) fn apply_at(
    dir: &Dir,
    name: &std::ffi::OsStr,
    meta: &Meta,
    x: &Xattrs,
    fid: &Fidelity,
) -> io::Result<()> {
    use nix::fcntl::AtFlags;
    let made = Made::by_us(0);
    if (meta.uid, meta.gid) != (made.uid, made.gid) {
        fid.attempt(Loss::Owner, || {
            nix::unistd::fchownat(
                dir,
                name,
                Some(meta.uid.into()),
                Some(meta.gid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)
        })?;
    }
    if meta.kind != Kind::Symlink {
        fid.attempt(Loss::Mode, || {
            nix::sys::stat::fchmodat(
                dir,
                name,
                nix::sys::stat::Mode::from_bits_truncate(meta.perm),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(io::Error::from)
        })?;
    }
    if !x.is_empty() {
        let p = dir.proc_path(name)?;
        x.write(&Target::Path(&p), fid)?;
    }
    fid.attempt(Loss::Times, || {
        nix::sys::stat::utimensat(
            dir,
            name,
            &ts(meta.atime),
            &ts(meta.id.mtime),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
    })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Read the xattrs of a file we hold open.
pub(crate) fn read_file(f: &File) -> io::Result<Xattrs> {
    Xattrs::read(&Target::Fd(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn copies_user_xattrs_and_counts_refusals_once_refused() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::write(&a, "x").unwrap();
        let c = CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
        let name = CString::new("user.test").unwrap();
        // SAFETY: valid strings.
        let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        if r != 0 {
            eprintln!("no user xattrs on this filesystem; skipping the copy half");
            return;
        }
        let src = File::open(&a).unwrap();
        let x = read_file(&src).unwrap();
        assert_eq!(x.0.len(), 1);
        let d = Dir::open(t.path()).unwrap();
        let dst = d.create(OsStr::new("b"), 0o600).unwrap();
        let meta = Meta::from_stat(&nix::sys::stat::fstat(&src).unwrap());
        let fid = Fidelity::default();
        apply_fd(&dst, &meta, Made::by_us(0o600), &x, &fid).unwrap();
        assert_eq!(read_file(&dst).unwrap(), x);
        assert!(fid.losses().is_empty());
        // A refused kind is counted, then not asked again.
        let calls = std::cell::Cell::new(0);
        let refuse = || {
            calls.set(calls.get() + 1);
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        fid.attempt(Loss::Xattrs, refuse).unwrap();
        fid.attempt(Loss::Xattrs, refuse).unwrap();
        assert_eq!((calls.get(), fid.count(Loss::Xattrs)), (1, 2));
        // Other errors are errors.
        assert!(fid
            .attempt(Loss::Owner, || Err(io::Error::from_raw_os_error(libc::EIO)))
            .is_err());
    }
}
