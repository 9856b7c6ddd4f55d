//! Deleting from the app side what the share now holds, and only that.
//!
//! An entry is deleted only when the migration recorded a durable,
//! identical copy of it (on the share or under `displaced/`) together with
//! the entry's identity at that moment, and the entry still has that
//! identity when it is deleted. A regular file is deleted under a read
//! lease: the kernel refuses the lease while any other process has the file
//! open for writing, so a file a writer holds open is kept, and a writer
//! that tries to open it meanwhile waits until the name is gone.
//! Directories are only ever removed empty (`rmdir`).

use std::ffi::OsStr;
use std::os::fd::AsRawFd;

use super::inventory::{Inventory, Ix};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Meta};

/// Why an entry stayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// No verified copy of it (yet).
    NoCopy,
    /// It changed after it was copied or compared.
    Changed,
    /// Another process has it open for writing.
    Busy,
    /// A directory that still holds something.
    NotEmpty,
}

#[derive(Debug, Default)]
pub struct Pruned {
    pub deleted: u64,
    /// What stayed, with why (the root is never listed).
    pub kept: Vec<(Ix, Kept)>,
}

/// Delete every entry of `doomed` (indexed like `inv`: the identity it must
/// still have) from `app`, then every directory left empty. The app
/// directory itself stays (the symlink swap replaces it).
pub fn prune(
    inv: &Inventory,
    app: &Dir,
    app_path: &std::path::Path,
    doomed: &[Option<Identity>],
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Pruned> {
    let mut out = Pruned::default();
    walk(inv, 0, app, app_path, doomed, check, &mut out)?;
    Ok(out)
}

fn walk(
    inv: &Inventory,
    ix: Ix,
    dir: &Dir,
    app_path: &std::path::Path,
    doomed: &[Option<Identity>],
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    for c in inv.children(ix) {
        let e = inv.get(c);
        if e.changed {
            out.kept.push((c, Kept::Changed));
            continue;
        }
        if e.meta.kind == Kind::Dir {
            let sub = match dir.open_dir(&e.name) {
                Ok(d) if d.stat().is_ok_and(|m| m.id.ino == e.meta.id.ino) => d,
                Ok(_) => {
                    out.kept.push((c, Kept::Changed));
                    continue;
                }
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(err) => return Err(Error::io("open directory", &inv.path(app_path, c), err)),
            };
            walk(inv, c, &sub, app_path, doomed, check, out)?;
            drop(sub);
            match dir.rmdir(&e.name) {
                Ok(()) => {
                    out.deleted += 1;
                    failpoint::hit("prune.entry");
                }
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    out.kept.push((c, Kept::NotEmpty))
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) => return Err(Error::io("remove", &inv.path(app_path, c), err)),
            }
            continue;
        }
        let Some(id) = doomed[c as usize] else {
            out.kept.push((c, Kept::NoCopy));
            continue;
        };
        match delete(dir, &e.name, e.meta.kind, &id) {
            Ok(None) => {
                out.deleted += 1;
                failpoint::hit("prune.entry");
            }
            Ok(Some(why)) => out.kept.push((c, why)),
            Err(err) => return Err(Error::io("remove", &inv.path(app_path, c), err)),
        }
        check()?;
    }
    Ok(())
}

const F_SETLEASE: libc::c_int = 1024;

/// Delete `name` if it still is `id`. `Ok(Some(why))` when it stays.
fn delete(dir: &Dir, name: &OsStr, kind: Kind, id: &Identity) -> std::io::Result<Option<Kept>> {
    if kind != Kind::File {
        return match dir.stat_at(name)? {
            Some(m) if m.kind == kind && m.id == *id => dir.unlink(name).map(|_| None),
            Some(_) => Ok(Some(Kept::Changed)),
            None => Ok(None),
        };
    }
    let f = match dir.open_read(name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Ok(Some(Kept::Changed))
        }
        Err(e) => return Err(e),
    };
    // SAFETY: plain fcntl on our fd.
    let leased = match unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, libc::F_RDLCK) } {
        0 => true,
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return Ok(Some(Kept::Busy)),
            // No leases here (some filesystems, or not the file's owner):
            // the identity check alone decides.
            _ => false,
        },
    };
    let now = nix::sys::stat::fstat(&f).map(|st| Meta::from_stat(&st))?;
    // The name must still lead to the inode we hold.
    let named = dir.stat_at(name)?.map(|m| m.id.ino);
    let r = if now.kind == Kind::File && now.id == *id && named == Some(id.ino) {
        dir.unlink(name).map(|_| None)
    } else {
        Ok(Some(Kept::Changed))
    };
    if leased {
        // SAFETY: as above.
        unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, libc::F_UNLCK) };
    }
    r
}
