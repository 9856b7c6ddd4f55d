//! Deleting from the app side what the share now holds, and only that.
//!
//! An entry is deleted only when the migration recorded a durable,
//! identical copy of it (on the share or under `displaced/`) together with
//! the entry's identity at that moment, and the entry still has that
//! identity when it is deleted. A regular file is deleted under a read
//! lease: the kernel refuses the lease while any other process has the file
//! open for writing, so a file a writer holds open is kept. A writer that
//! opens it while the lease is held waits for the lease to go, and would
//! then get the inode whose name is gone. So under the lease the file is
//! first renamed to its holding name (`.<name>.sharelink-holding`, recorded
//! beside the app directory), and only unlinked when no writer came; when
//! one did (the kernel tells us: the lease is broken), it is renamed back
//! before the lease goes, and the writer writes into a file that has its
//! name. A run killed at any point of this leaves the file under its name
//! or its holding name, and the next run puts a held file back before it
//! does anything else ([`restore`]).
//! Directories are only ever removed empty (`rmdir`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::inventory::{Inventory, Ix};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Time};
use crate::fs::names;

/// The suffix of the name a file has while it is being deleted:
/// `.<name>.sharelink-holding`, in its own directory.
pub const HOLDING_SUFFIX: &str = "sharelink-holding";

/// The holding name of `name`.
pub fn holding_name(name: &OsStr) -> OsString {
    names::hidden(name, HOLDING_SUFFIX, 0)
}

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
    /// A writer opened it while it was deleted: back under its name (or
    /// beside it), with what the writer writes.
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
/// `held`: the record of which file is under its holding name (beside the
/// app directory); removed when the prune ends with none held.
pub fn prune(
    inv: &Inventory,
    app: &Dir,
    app_path: &Path,
    held: &Path,
    doomed: &[Option<Identity>],
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<Pruned> {
    let mut out = Pruned::default();
    let mut held = Held {
        path: held,
        file: None,
    };
    walk(inv, 0, app, app_path, &mut held, doomed, check, &mut out)?;
    held.done()?;
    Ok(out)
}

/// The record beside the app directory of the one file that may be under
/// its holding name: its path relative to the app directory, then a NUL.
/// Written before each rename to a holding name (a run killed after the
/// rename always leaves the record naming it).
struct Held<'a> {
    path: &'a Path,
    file: Option<File>,
}

impl Held<'_> {
    fn hold(&mut self, rel: &Path) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            let f = File::create(self.path).map_err(|e| Error::io("write", self.path, e))?;
            self.file = Some(f);
        }
        let mut text = rel.as_os_str().as_bytes().to_vec();
        text.push(0);
        if let Some(f) = &self.file {
            f.write_all_at(&text, 0)
                .map_err(|e| Error::io("write", self.path, e))?;
        }
        Ok(())
    }

    fn done(self) -> Result<()> {
        if self.file.is_some() {
            match std::fs::remove_file(self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", self.path, e)),
            }
        }
        Ok(())
    }
}

/// The path a record names, if it is a plain relative path.
fn read_held(record: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(record).ok()?;
    let end = bytes.iter().position(|&b| b == 0)?;
    let rel = PathBuf::from(OsStr::from_bytes(&bytes[..end]));
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.file_name().is_some()).then_some(rel)
}

/// For `status`: whether a run was killed while it held a file under its
/// holding name (the record names it and the holding name exists).
pub fn held_aside(record: &Path, app_path: &Path) -> bool {
    read_held(record).is_some_and(|rel| {
        let p = app_path.join(rel);
        std::fs::symlink_metadata(names::sibling(&p, HOLDING_SUFFIX, 0)).is_ok()
    })
}

/// Put back the file a killed run left under its holding name (before
/// anything else looks at the app directory), then drop the record.
pub fn restore(app: &Dir, app_path: &Path, record: &Path) -> Result<()> {
    if let Some(rel) = read_held(record) {
        let name = rel.file_name().unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let path = app_path.join(&rel);
        match crate::fs::tree::open_beneath(app, parent) {
            Ok(dir) => {
                let hold = holding_name(name);
                let held = dir
                    .stat_at(&hold)
                    .map_err(|e| Error::io("inspect", &path, e))?;
                if held.is_some() {
                    let to = put_under_name(&dir, &hold, name)
                        .map_err(|e| Error::io("put back", &path, e))?;
                    crate::warn!(
                        "{} was under its holding name when an earlier run stopped deleting it; it is back{}, and is migrated",
                        path.display(),
                        as_other(name, &to)
                    );
                }
            }
            Err(e) if crate::fs::gone(&e) => {}
            Err(e) => return Err(Error::io("open directory", &path, e)),
        }
    }
    match std::fs::remove_file(record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", record, e)),
    }
}

/// ` as <to>` when the file could not take its own name back.
fn as_other(name: &OsStr, to: &OsStr) -> String {
    if name == to {
        String::new()
    } else {
        format!(
            " as {} (a new file took its name meanwhile)",
            Path::new(to).display()
        )
    }
}

/// Rename `from` to `name`, never replacing anything: when `name` is
/// taken (a new file took it), to `<name>.sharelink-rescued-<n>` beside it.
/// Returns the name it took.
fn put_under_name(dir: &Dir, from: &OsStr, name: &OsStr) -> std::io::Result<OsString> {
    let mut target = name.to_os_string();
    let mut n = 1;
    loop {
        match dir.rename_noreplace(from, dir, &target) {
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
    let suffix = format!(".sharelink-rescued-{n}");
    if name.len() + suffix.len() <= 255 {
        let mut t = name.to_os_string();
        t.push(suffix);
        t
    } else {
        names::hidden(name, &suffix[1..], 0)
    }
}

#[allow(clippy::too_many_arguments)]
fn walk(
    inv: &Inventory,
    ix: Ix,
    dir: &Dir,
    app_path: &Path,
    held: &mut Held<'_>,
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
            walk(inv, c, &sub, app_path, held, doomed, check, out)?;
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
        let mut hold = || held.hold(&inv.rel(c));
        let gone = delete(
            dir,
            &e.name,
            e.meta.kind,
            &id,
            &mut hold,
            &mut out.pending,
            &mut out.relinked,
        );
        match gone {
            Ok(Gone::Deleted) => {
                out.deleted += 1;
                failpoint::hit("prune.entry");
            }
            Ok(Gone::Back(to)) => {
                crate::warn!(
                    "a process opened {} for writing while sharelink deleted it; it is back in place{}, with what is written, and is migrated again",
                    inv.path(app_path, c).display(),
                    as_other(&e.name, &to)
                );
                out.kept.push((c, Kept::Rescued));
            }
            Ok(Gone::Orphaned(f)) => {
                let path = inv.path(app_path, c);
                crate::debug!(
                    "a process opened {} for writing in the instant it was deleted; waiting for it to close the file",
                    path.display()
                );
                let to = rescue(dir, &e.name, &f, &path, check)?;
                crate::warn!(
                    "a process opened {} for writing while sharelink deleted it; it is back in place{}, with what was written, and is migrated again",
                    path.display(),
                    as_other(&e.name, &to)
                );
                out.kept.push((c, Kept::Rescued));
            }
            Ok(Gone::Kept(why)) => out.kept.push((c, why)),
            Err(Failed::Io(err)) => return Err(Error::io("remove", &inv.path(app_path, c), err)),
            Err(Failed::Record(err)) => return Err(err),
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
    /// A writer opened it while it was under its holding name: renamed
    /// back (to the name returned) before the writer could write.
    Back(OsString),
    /// Deleted, but a writer opened it in the instant between the last
    /// look at the lease and the unlink: the inode lives on, held by that
    /// writer (and by this open file), without a name.
    Orphaned(File),
}

enum Failed {
    Io(std::io::Error),
    /// Writing the holding record failed (the error names it).
    Record(Error),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Failed {
        Failed::Io(e)
    }
}

/// Delete `name` if it still is `id`. `hold` records `name` as the file
/// under its holding name, before the rename. `pending` gets the signals
/// pending afterwards.
fn delete(
    dir: &Dir,
    name: &OsStr,
    kind: Kind,
    id: &Identity,
    hold: &mut dyn FnMut() -> Result<()>,
    pending: &mut crate::signals::SigMask,
    relinked: &mut std::collections::HashMap<u64, Time>,
) -> std::result::Result<Gone, Failed> {
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
                dir.unlink(name)?;
                Ok(Gone::Deleted)
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
        Err(e) => return Err(e.into()),
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
    failpoint::hit("prune.leased");
    let r = unlink_leased(dir, name, &f, leased, &unchanged, id, hold, pending);
    if let (Ok(Gone::Deleted), Ok(m)) = (&r, crate::fs::meta::fstat(&f)) {
        if m.nlink > 0 {
            relinked.insert(id.ino, m.id.ctime);
        }
    }
    if !leased {
        return r;
    }
    let _ = lease(&f, libc::F_UNLCK);
    // Every break of the lease was reported by now (a writer breaks it
    // before it waits): one after the last look under the lease means a
    // writer got the unlinked inode.
    let broken = took_broken(&f, pending);
    match r {
        Ok(Gone::Deleted) if broken => Ok(Gone::Orphaned(f)),
        r => r,
    }
}

/// The part of [`delete`] under the lease (if there is one).
#[allow(clippy::too_many_arguments)]
fn unlink_leased(
    dir: &Dir,
    name: &OsStr,
    f: &File,
    leased: bool,
    unchanged: &dyn Fn(&Identity) -> bool,
    id: &Identity,
    hold: &mut dyn FnMut() -> Result<()>,
    pending: &mut crate::signals::SigMask,
) -> std::result::Result<Gone, Failed> {
    let now = crate::fs::meta::fstat(f)?;
    // The name must still lead to the inode we hold.
    let named = dir.stat_at(name)?.map(|m| m.id.ino);
    if !(now.kind == Kind::File && unchanged(&now.id) && named == Some(id.ino)) {
        return Ok(Gone::Kept(Kept::Changed));
    }
    if !leased {
        dir.unlink(name)?;
        return Ok(Gone::Deleted);
    }
    // Under the lease the file keeps a name until we know that no writer
    // came for it.
    let hold_name = holding_name(name);
    hold().map_err(Failed::Record)?;
    match dir.rename_noreplace(name, dir, &hold_name) {
        Ok(()) => {}
        // Something else has that name: unlink directly (a writer in
        // that instant gets the nameless inode, and is waited for).
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            dir.unlink(name)?;
            return Ok(Gone::Deleted);
        }
        Err(e) => return Err(e.into()),
    }
    failpoint::hit("prune.held");
    if took_broken(f, pending) {
        // A writer waits for the lease: give the file its name back
        // before the writer gets it.
        return Ok(Gone::Back(put_under_name(dir, &hold_name, name)?));
    }
    dir.unlink(&hold_name)?;
    Ok(Gone::Deleted)
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

/// Someone got the inode whose name we just removed (in the instant
/// between the last look at the lease and the unlink): when they are done
/// writing, however long that takes, put its content back under its name
/// (or, if a new file took the name meanwhile, beside it). Waiting keeps
/// the lock alive; if the run must stop first (a signal, the lock lost),
/// what was written so far is put back before it does. Returns the name
/// it is back under.
fn rescue(
    dir: &Dir,
    name: &OsStr,
    f: &File,
    path: &Path,
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

/// Copy `f` under its holding name (recorded already: a run killed during
/// the copy has the next run put it back), then rename it to `name` or
/// beside it; where the holding name is taken, straight under `name` or
/// beside it.
fn put_back(dir: &Dir, name: &OsStr, f: &File) -> std::io::Result<OsString> {
    let meta = crate::fs::meta::fstat(f)?;
    let hold = holding_name(name);
    // `direct`: the name it was made under, when not the holding name.
    let (to, direct) = match dir.create(&hold, 0o600) {
        Ok(t) => (t, None),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let mut target = name.to_os_string();
            let mut n = 1;
            loop {
                match dir.create(&target, 0o600) {
                    Ok(t) => break (t, Some(target)),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 100 => {
                        n += 1;
                        target = rescued_name(name, n);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => return Err(e),
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
    match direct {
        Some(target) => Ok(target),
        None => put_under_name(dir, &hold, name),
    }
}
