//! Deleting from the app side what the share now holds, and only that.
//!
//! An entry is deleted only when the migration recorded a durable,
//! identical copy of it (on the share or under `displaced/`) together with
//! the entry's identity at that moment, and the entry still has that
//! identity when it is deleted. A regular file is deleted under a read
//! lease: the kernel refuses the lease while any other process has the file
//! open for writing, so a file a writer holds open is kept. A writer that
//! opens it while the lease is held waits for the lease, and the kernel
//! tells us at once (the lease is broken). The last look for that comes
//! right before the unlink: a writer that came while the file was checked
//! finds it still under its name, and it is kept. Only a writer whose open
//! reaches the lease between that look and the unlink (the instant between
//! two system calls) gets the inode whose name is gone; a look after the
//! lease is released sees it, and once that writer closes the file its
//! content is put back beside its name and renamed into place, to be
//! migrated by the next pass.
//! Directories are only ever removed empty (`rmdir`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;

use super::inventory::{Inventory, Ix};
use super::layout::{RESCUED_SUFFIX, RESCUING_SUFFIX};
use crate::error::{Error, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Time};

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
    /// A writer opened it while it was being deleted: kept under its
    /// name (or put back, with what the writer wrote).
    Rescued,
}

#[derive(Debug, Default)]
pub struct Pruned {
    pub deleted: u64,
    /// What stayed, with why (the root is never listed).
    pub kept: Vec<(Ix, Kept)>,
    /// Signals pending at the last look (read once per file deleted).
    pending: crate::signals::SigMask,
    since_beat: u32,
    /// Inodes with several names one of which this prune deleted: the
    /// ctime that deleting gave the others (else each deletion would make
    /// the remaining names look changed, one name going per pass).
    relinked: std::collections::HashMap<u64, Time>,
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
                Err(err) if crate::fs::gone(&err) => continue,
                Err(err) => return Err(Error::io("open directory", &inv.path(app_path, c), err)),
            };
            walk(inv, c, &sub, app_path, doomed, check, out)?;
            drop(sub);
            match dir.rmdir(&e.name) {
                Ok(()) => {
                    out.deleted += 1;
                    failpoint::hit(Failpoint::PruneEntry);
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
        match delete(
            dir,
            &e.name,
            e.meta.kind,
            &id,
            &mut out.pending,
            &mut out.relinked,
        ) {
            Ok(Gone::Deleted) => {
                out.deleted += 1;
                failpoint::hit(Failpoint::PruneEntry);
            }
            Ok(Gone::Kept(Kept::Rescued)) => {
                crate::warn!(
                    "a process opened {} for writing while sharelink was deleting it; the file stays in place, and is migrated once that process has closed it",
                    inv.path(app_path, c).display()
                );
                out.kept.push((c, Kept::Rescued));
            }
            Ok(Gone::Orphaned(f)) => {
                let path = inv.path(app_path, c);
                crate::debug!(
                    "a process opened {} for writing in the instant it was unlinked; waiting for it to close the file",
                    path.display()
                );
                let to = rescue(dir, &e.name, &f, &path, check)?;
                let beside = if to == e.name {
                    String::new()
                } else {
                    format!(
                        " as {} (a new file took its name meanwhile)",
                        std::path::Path::new(&to).display()
                    )
                };
                crate::warn!(
                    "a process opened {} for writing while sharelink deleted it; it is back in place{beside}, with what was written, and is migrated again",
                    path.display()
                );
                out.kept.push((c, Kept::Rescued));
            }
            Ok(Gone::Kept(why)) => out.kept.push((c, why)),
            Err(err) => return Err(Error::io("remove", &inv.path(app_path, c), err)),
        }
        crate::signals::interrupted(out.pending)?;
        out.since_beat += 1;
        if out.since_beat >= 64 {
            out.since_beat = 0;
            check()?;
        }
    }
    Ok(())
}

const F_SETLEASE: libc::c_int = 1024;
const F_SETSIG: libc::c_int = 10;

fn lease(f: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain fcntl on our fd.
    if unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What became of an entry to delete.
enum Gone {
    Deleted,
    Kept(Kept),
    /// Deleted, but a writer's open reached the lease between the last look
    /// and the unlink: the inode lives on, held by that writer (and by this
    /// open file), without a name.
    Orphaned(File),
}

/// Delete `name` if it still is `id`. `pending` gets the signals pending
/// afterwards.
fn delete(
    dir: &Dir,
    name: &OsStr,
    kind: Kind,
    id: &Identity,
    pending: &mut crate::signals::SigMask,
    relinked: &mut std::collections::HashMap<u64, Time>,
) -> std::io::Result<Gone> {
    *pending = 0;
    // Still `id`, or `id` but for the ctime our deleting another of its
    // names gave it.
    let unchanged = |now: &Identity| {
        now == id
            || relinked.get(&id.ino) == Some(&now.ctime)
                && Identity {
                    ctime: id.ctime,
                    ..*now
                } == *id
    };
    if kind != Kind::File {
        return match dir.stat_at(name)? {
            Some(m) if m.kind == kind && unchanged(&m.id) => {
                dir.unlink(name).map(|_| Gone::Deleted)
            }
            Some(_) => Ok(Gone::Kept(Kept::Changed)),
            None => Ok(Gone::Deleted),
        };
    }
    let f = match dir.open_read(name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Gone::Deleted),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Ok(Gone::Kept(Kept::Changed))
        }
        Err(e) => return Err(e),
    };
    // A broken lease is reported as SIGIO carrying this fd (the signal is
    // blocked: it waits to be taken below).
    // SAFETY: plain fcntl on our fd.
    unsafe { libc::fcntl(f.as_raw_fd(), F_SETSIG, libc::SIGIO) };
    let leased = match lease(&f, libc::F_RDLCK) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(Gone::Kept(Kept::Busy)),
        // No leases here (some filesystems, or not the file's owner): the
        // identity check alone decides.
        Err(_) => false,
    };
    failpoint::hit(Failpoint::PruneLeased);
    let now = crate::fs::meta::fstat(&f)?;
    // The name must still lead to the inode we hold.
    let named = dir.stat_at(name)?.map(|m| m.id.ino);
    let r = if !(now.kind == Kind::File && unchanged(&now.id) && named == Some(id.ino)) {
        Ok(Gone::Kept(Kept::Changed))
    } else if leased && took_broken(&f, pending) {
        // A writer waits for the lease: the file stays, and the writer
        // gets it under its name.
        Ok(Gone::Kept(Kept::Rescued))
    } else {
        dir.unlink(name).map(|_| Gone::Deleted)
    };
    if matches!(r, Ok(Gone::Deleted)) && now.nlink > 1 {
        if let Ok(m) = crate::fs::meta::fstat(&f) {
            relinked.insert(id.ino, m.id.ctime);
        }
    }
    if !leased {
        return r;
    }
    let _ = lease(&f, libc::F_UNLCK);
    // Every break of the lease was reported by now (a writer's open
    // reports it before it waits): one after the look above means that
    // writer got the unlinked inode.
    let broken = took_broken(&f, pending);
    match r {
        Ok(Gone::Deleted) if broken => Ok(Gone::Orphaned(f)),
        r => r,
    }
}

/// Whether a broken lease on `f` was reported (taking the report);
/// `pending` gains the other pending signals.
fn took_broken(f: &File, pending: &mut crate::signals::SigMask) -> bool {
    let now = crate::signals::pending();
    *pending |= now & !crate::signals::bit(libc::SIGIO);
    now & crate::signals::bit(libc::SIGIO) != 0 && lease_broken(f)
}

/// Whether the kernel reported that someone opened `f` for writing while
/// we held its lease.
fn lease_broken(f: &File) -> bool {
    let mut broken = false;
    while let Some(info) = crate::signals::wait(
        crate::signals::bit(libc::SIGIO),
        Some(std::time::Duration::ZERO),
    ) {
        // SAFETY: for SIGIO the siginfo union holds `si_band` (a long)
        // then `si_fd` (an int), after the three ints of the header and
        // their padding.
        let fd = unsafe {
            let base = (&info as *const libc::siginfo_t).cast::<u8>();
            *base
                .add(16 + std::mem::size_of::<libc::c_long>())
                .cast::<libc::c_int>()
        };
        broken |= fd == f.as_raw_fd();
    }
    broken
}

/// Someone got the inode whose name we just removed: when they are done
/// writing, however long that takes, put its content back under its name
/// (or, if a new file took the name meanwhile, beside it). Waiting keeps
/// the lock alive; if the run must stop first (a signal, the lock lost),
/// what was written so far is put back before it does. Returns the name it
/// is back under.
fn rescue(
    dir: &Dir,
    name: &OsStr,
    f: &File,
    path: &std::path::Path,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<OsString> {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let mut said = started;
    let mut stopped = Ok(());
    // The read lease is refused while a writer still has it open.
    while lease(f, libc::F_RDLCK).is_err() {
        std::thread::sleep(Duration::from_millis(10));
        if said.elapsed() >= Duration::from_secs(30) {
            said = Instant::now();
            crate::warn!(
                "still waiting for the process that opened {} while it was deleted to close it ({}s); its content is put back then",
                path.display(),
                started.elapsed().as_secs()
            );
        }
        if let Err(e) = check() {
            stopped = Err(e);
            break;
        }
    }
    let _ = lease(f, libc::F_UNLCK);
    let to = put_back(dir, name, f).map_err(|e| Error::io("put back", path, e))?;
    stopped.map(|()| to)
}

/// Copy `f` under a hidden name beside `name`, then rename it to `name`
/// without replacing anything (a file someone made there meanwhile, and
/// may be writing, stays): else beside it, `<name>.sharelink-rescued-<n>`.
fn put_back(dir: &Dir, name: &OsStr, f: &File) -> std::io::Result<OsString> {
    let meta = crate::fs::meta::fstat(f)?;
    // Never over anything (a leftover of a killed rescue is data too).
    let mut k = 1;
    let (temp, to) = loop {
        let temp = match k {
            1 => crate::fs::names::hidden(name, RESCUING_SUFFIX, 0),
            k => crate::fs::names::hidden(name, &format!("{RESCUING_SUFFIX}-{k}"), 0),
        };
        match dir.create(&temp, 0o600) {
            Ok(to) => break (temp, to),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && k < 100 => k += 1,
            Err(e) => return Err(e),
        }
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let devs = crate::fs::content::Devices {
        src: meta.dev,
        dst: meta.dev,
    };
    let copied = std::sync::atomic::AtomicU64::new(0);
    let watch = crate::fs::content::Watch {
        stop: &stop,
        copied: &copied,
    };
    crate::fs::content::copy(f, &to, meta.id.size, meta.looks_sparse(), devs, watch)?;
    let x = crate::fs::attrs::read_file(f)?;
    let made = crate::fs::attrs::Made::by_us(0o600);
    crate::fs::attrs::apply_fd(&to, &meta, made, &x, &crate::fs::attrs::Fidelity::default())?;
    let mut target = name.to_os_string();
    let mut n = 1;
    loop {
        match dir.rename_noreplace(&temp, dir, &target) {
            Ok(()) => return Ok(target),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 100 => {
                n += 1;
                target = rescued_name(name, n);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `<name>.sharelink-rescued-<n>`, or a hidden shortened name when that
/// would not fit in NAME_MAX.
fn rescued_name(name: &OsStr, n: u32) -> OsString {
    let suffix = format!("{RESCUED_SUFFIX}-{n}");
    if name.len() + suffix.len() < 255 {
        let mut t = name.to_os_string();
        t.push(".");
        t.push(&suffix);
        t
    } else {
        crate::fs::names::hidden(name, &suffix, 0)
    }
}
