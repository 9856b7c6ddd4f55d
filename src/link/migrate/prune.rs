//! Deleting from the app side what the share now holds, and only that.
//!
//! An entry is deleted only when the migration recorded a durable,
//! identical copy of it (on the share or under `displaced/`) together with
//! the entry's identity at that moment, and the entry still has that
//! identity when it is deleted. A regular file is deleted under a read
//! lease: the kernel refuses the lease while any other process has the file
//! open for writing, so a file a writer holds open is kept. A writer that
//! opens it while the lease is held waits for the lease, and the lease
//! shows it (`F_GETLEASE` reports the break, per file: no signal to match
//! to a descriptor). The last look for that comes right before the unlink:
//! a writer that came while the file was checked finds it still under its
//! name, and it is kept.
//!
//! The lease is not released at the unlink: a writer's open can find the
//! name before the unlink and reach the file's lease only later (its
//! thread preempted in between, which a busy machine does for
//! milliseconds); once the lease is gone, nothing would tell. So the lease
//! of a file whose last name went is held [`HOLD`] longer (up to [`HELD`]
//! files at once), and a writer that came meanwhile (between the last
//! look and the unlink, or after it) is seen then: once it closes the file,
//! its content is put back beside its name and renamed into place (the
//! directories that held it made again if they went), to be migrated by the
//! next pass. A writer's open that waits longer than that between finding
//! the name and reaching the lease still gets a file nobody will see.
//!
//! A lease belongs to the open file, not to the process: before each such
//! unlink the file (and its directory) is passed to the guardian (see
//! `guardian`, started at the first), which keeps the lease if sharelink
//! is killed, and then does what [`settle`] would have done (put back what
//! a writer wrote once it closes the file, waiting at most
//! `guardian::LIMIT`). sharelink tells it each file it has settled (before
//! the lease is released, or once the content is back) and when the prune
//! is done. Without a guardian (it could not be started), a SIGKILL while
//! leases are held loses what a writer waiting for one writes.
//! Directories are only ever removed empty (`rmdir`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;

use super::inventory::{Inventory, Ix};
use super::layout::{RESCUED_SUFFIX, RESCUING_SUFFIX};
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Time};

/// Why an entry stayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kept {
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
pub(crate) struct Pruned {
    pub(crate) deleted: u64,
    /// What stayed, with why (the root is never listed).
    pub(crate) kept: Vec<(Ix, Kept)>,
    /// Signals pending at the last look (read once per file deleted).
    pending: crate::signals::SigMask,
    since_beat: u32,
    /// Inodes with several names one of which this prune deleted: the
    /// ctime that deleting gave the others (else each deletion would make
    /// the remaining names look changed, one name going per pass).
    relinked: std::collections::HashMap<u64, Time>,
    /// Files whose last name went, their lease still held.
    held: std::collections::VecDeque<Held>,
    /// How many may be held at once.
    cap: usize,
    /// The guardian of the held leases (started at the first).
    guard: super::guardian::Guard,
}

/// How long the lease of a file whose last name went is kept after the
/// unlink: a writer whose open found the name before the unlink and reaches
/// the lease within that is seen.
pub(crate) const HOLD: std::time::Duration = std::time::Duration::from_millis(50);

/// At most this many leases held at once (each an open file).
const HELD: usize = 1024;

/// A deleted file whose lease is still held.
#[derive(Debug)]
struct Held {
    f: File,
    /// Its id with the guardian, if there is one.
    gid: Option<u64>,
    dir: std::sync::Arc<Dir>,
    ix: Ix,
    since: std::time::Instant,
}

/// Delete every entry of `doomed` (indexed like `inv`: the identity it must
/// still have) from `app`, then every directory left empty. The app
/// directory itself stays (the symlink swap replaces it). `emptied` runs
/// once every entry went, while the last leases' [`HOLD`] runs out: a
/// writer found then still brings its file back, and another pass.
pub(crate) fn prune(
    inv: &Inventory,
    app: &Dir,
    app_path: &std::path::Path,
    doomed: &[Option<Identity>],
    check: &mut dyn FnMut() -> Result<()>,
    emptied: &mut dyn FnMut() -> Result<()>,
) -> Result<Pruned> {
    let mut out = Pruned {
        cap: held_cap(),
        ..Pruned::default()
    };
    let root = std::sync::Arc::new(app.try_clone().ctx("open", app_path)?);
    let scope = Scope {
        inv,
        root: app,
        app_path,
        doomed,
    };
    let walked = walk(&scope, 0, &root, check, &mut out);
    let after = match &walked {
        Ok(()) if out.kept.is_empty() => emptied(),
        _ => Ok(()),
    };
    // Whatever happened, every lease still held is looked at (dropping
    // it unseen would let a waiting writer into a file nobody sees).
    let settled = settle(inv, app, app_path, check, &mut out, 0);
    out.guard.finish();
    walked.and(after).and(settled)?;
    Ok(out)
}

/// [`HELD`], or a quarter of the open-file limit if that is less.
fn held_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local struct.
    let cur = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur as usize
    } else {
        1024
    };
    HELD.min(cur / 4).max(1)
}

/// Look at held leases: all of them at once when a break was signalled
/// (a writer waits for one: it waits no longer than it must), then, oldest
/// first, each one held [`HOLD`] by now, and more (waiting for their time)
/// until at most `keep` are held. A broken one means a writer got the file
/// whose name went: its content is put back once that writer is done.
fn settle(
    inv: &Inventory,
    app: &Dir,
    app_path: &std::path::Path,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
    keep: usize,
) -> Result<()> {
    let mut first_err = Ok(());
    let mut note = |r: Result<()>| {
        if let (Err(e), true) = (r, first_err.is_ok()) {
            first_err = Err(e);
        }
    };
    if took_sigio(out) {
        let mut i = 0;
        while i < out.held.len() {
            if lease_broken(&out.held[i].f) {
                let h = out.held.remove(i).expect("in range");
                note(settle_one(h, true, inv, app, app_path, check, out));
            } else {
                i += 1;
            }
        }
    }
    while let Some(front) = out.held.front() {
        let due = front.since + HOLD;
        let now = std::time::Instant::now();
        if due > now {
            if out.held.len() <= keep {
                break;
            }
            std::thread::sleep(due - now);
        }
        let h = out.held.pop_front().expect("not empty");
        let broken = lease_broken(&h.f);
        note(settle_one(h, broken, inv, app, app_path, check, out));
    }
    took_sigio(out);
    first_err
}

/// Release a held lease; `broken`: a writer got the nameless file, whose
/// content is put back once it is done.
fn settle_one(
    h: Held,
    broken: bool,
    inv: &Inventory,
    app: &Dir,
    app_path: &std::path::Path,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    if !broken {
        // Before the lease goes: the guardian must not take it for broken.
        out.guard.release(h.gid);
        let _ = lease(&h.f, libc::F_UNLCK);
        return Ok(());
    }
    let _ = lease(&h.f, libc::F_UNLCK);
    let r = rescued(&h, inv, app, app_path, check, out);
    // Once it is back (or sharelink gave up on it).
    out.guard.release(h.gid);
    r
}

fn rescued(
    h: &Held,
    inv: &Inventory,
    app: &Dir,
    app_path: &std::path::Path,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    out.deleted -= 1;
    let e = inv.get(h.ix);
    let path = inv.path(app_path, h.ix);
    crate::debug!(
        "a process opened {} for writing as it was unlinked; waiting for it to close the file",
        path.display()
    );
    let remake = || -> Result<Dir> {
        let rel = inv.rel(h.ix);
        let parent = rel.parent().unwrap_or(std::path::Path::new(""));
        crate::fs::tree::make_beneath(app, parent, app_path)
            .map(|m| m.dir)
            .map_err(crate::link::advice::app_side)
    };
    let to = rescue(&h.dir, &e.name, &h.f, &path, check, &remake)?;
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
    out.kept.push((h.ix, Kept::Rescued));
    Ok(())
}

/// Whether a SIGIO (a lease broken) was pending, taking it; any other
/// pending signal is kept for the checks.
fn took_sigio(out: &mut Pruned) -> bool {
    let now = crate::signals::pending();
    out.pending |= now & !crate::signals::bit(libc::SIGIO);
    let io = now & crate::signals::bit(libc::SIGIO) != 0;
    if io {
        crate::signals::discard(libc::SIGIO);
    }
    io
}

/// What the walk reads: the inventory, the app directory (`root`, at
/// `app_path`), and the identity each entry must still have to go.
struct Scope<'a> {
    inv: &'a Inventory,
    root: &'a Dir,
    app_path: &'a std::path::Path,
    doomed: &'a [Option<Identity>],
}

/// Delete what may go below directory `ix` (open as `dir`).
fn walk(
    s: &Scope<'_>,
    ix: Ix,
    dir: &std::sync::Arc<Dir>,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    let Scope {
        inv,
        root,
        app_path,
        doomed,
    } = *s;
    for c in inv.children(ix) {
        let e = inv.get(c);
        if e.changed {
            out.kept.push((c, Kept::Changed));
            continue;
        }
        if e.meta.kind == Kind::Dir {
            prune_dir(s, c, dir, check, out)?;
            continue;
        }
        let Some(id) = doomed[c as usize] else {
            out.kept.push((c, Kept::NoCopy));
            continue;
        };
        let mut hold = Hold {
            guard: &mut out.guard,
            root,
            app_path,
            rel: inv.rel(c),
        };
        let gone = delete(
            dir,
            &e.name,
            e.meta.kind,
            &id,
            &mut out.pending,
            &mut out.relinked,
            &mut hold,
        );
        record(s, c, dir, gone, check, out)?;
        crate::signals::interrupted(out.pending)?;
        out.since_beat += 1;
        if out.since_beat >= 64 {
            out.since_beat = 0;
            check()?;
        }
    }
    Ok(())
}

/// Count what [`delete`] did with entry `c` of `dir`.
fn record(
    s: &Scope<'_>,
    c: Ix,
    dir: &std::sync::Arc<Dir>,
    gone: std::io::Result<Gone>,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    let (inv, root, app_path) = (s.inv, s.root, s.app_path);
    match gone {
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
        Ok(Gone::Held(f, gid)) => {
            out.deleted += 1;
            failpoint::hit(Failpoint::PruneEntry);
            out.held.push_back(Held {
                f,
                gid,
                dir: dir.clone(),
                ix: c,
                since: std::time::Instant::now(),
            });
            failpoint::hit(Failpoint::PruneUnlinked);
            // Those held long enough are looked at; the oldest too
            // when too many are held.
            let keep = out.cap - 1;
            settle(inv, root, app_path, check, out, keep)?;
        }
        Ok(Gone::Kept(why)) => out.kept.push((c, why)),
        Err(err) => return Err(Error::io("remove", &inv.path(app_path, c), err)),
    }
    Ok(())
}

/// Directory `c` (a child of `dir`): its entries first, then itself if
/// that left it empty.
fn prune_dir(
    s: &Scope<'_>,
    c: Ix,
    dir: &std::sync::Arc<Dir>,
    check: &mut dyn FnMut() -> Result<()>,
    out: &mut Pruned,
) -> Result<()> {
    let (inv, app_path) = (s.inv, s.app_path);
    let e = inv.get(c);
    let sub = match dir.open_dir(&e.name) {
        Ok(d) if d.stat().is_ok_and(|m| m.id.ino == e.meta.id.ino) => std::sync::Arc::new(d),
        Ok(_) => {
            out.kept.push((c, Kept::Changed));
            return Ok(());
        }
        Err(err) if crate::fs::gone(&err) => return Ok(()),
        Err(err) => return Err(Error::io("open directory", &inv.path(app_path, c), err)),
    };
    walk(s, c, &sub, check, out)?;
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
    Ok(())
}

const F_SETLEASE: libc::c_int = 1024;
const F_GETLEASE: libc::c_int = 1025;

pub(super) fn lease(f: &File, how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: plain fcntl on our fd.
    if unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, how) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What [`delete`] needs to give a file to the guardian.
struct Hold<'a> {
    guard: &'a mut super::guardian::Guard,
    root: &'a Dir,
    app_path: &'a std::path::Path,
    /// The entry's path from the app directory.
    rel: std::path::PathBuf,
}

/// What became of an entry to delete.
enum Gone {
    Deleted,
    Kept(Kept),
    /// Deleted, its last name gone, the lease still held (to be looked at
    /// after [`HOLD`]), with its id with the guardian.
    Held(File, Option<u64>),
}

/// Delete `name`, a non-file of kind `kind`, if it is `unchanged`: no
/// lease to take, its `lstat` decides.
fn delete_node(
    dir: &Dir,
    name: &OsStr,
    kind: Kind,
    unchanged: &dyn Fn(&Identity) -> bool,
) -> std::io::Result<Gone> {
    match dir.stat_at(name)? {
        Some(m) if m.kind == kind && unchanged(&m.id) => dir.unlink(name).map(|_| Gone::Deleted),
        Some(_) => Ok(Gone::Kept(Kept::Changed)),
        None => Ok(Gone::Deleted),
    }
}

/// Whether `now` is still `id`, or `id` but for the ctime our deleting
/// another of its names gave it.
fn still(id: &Identity, now: &Identity, relinked: &std::collections::HashMap<u64, Time>) -> bool {
    now == id
        || relinked.get(&id.ino) == Some(&now.ctime)
            && Identity {
                ctime: id.ctime,
                ..*now
            } == *id
}

/// File `name` opened for reading, with whether a read lease is held on
/// it; or, when it cannot be, what became of it.
fn open_leased(dir: &Dir, name: &OsStr) -> std::io::Result<Result<(File, bool), Gone>> {
    let f = match dir.open_read(name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Err(Gone::Deleted)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Ok(Err(Gone::Kept(Kept::Changed)))
        }
        Err(e) => return Err(e),
    };
    let leased = match lease(&f, libc::F_RDLCK) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(Err(Gone::Kept(Kept::Busy))),
        // No leases here (some filesystems, or not the file's owner): the
        // identity check alone decides.
        Err(_) => false,
    };
    failpoint::hit(Failpoint::PruneLeased);
    Ok(Ok((f, leased)))
}

/// Delete `name` if it still is `id`. `pending` gets the signals pending
/// afterwards. `hold` gives the guardian a file about to be unlinked under
/// its lease.
fn delete(
    dir: &Dir,
    name: &OsStr,
    kind: Kind,
    id: &Identity,
    pending: &mut crate::signals::SigMask,
    relinked: &mut std::collections::HashMap<u64, Time>,
    hold: &mut Hold<'_>,
) -> std::io::Result<Gone> {
    *pending = 0;
    let unchanged = |now: &Identity| still(id, now, relinked);
    if kind != Kind::File {
        return delete_node(dir, name, kind, &unchanged);
    }
    let (f, leased) = match open_leased(dir, name)? {
        Ok(opened) => opened,
        Err(gone) => return Ok(gone),
    };
    let now = crate::fs::meta::fstat(&f)?;
    // The name must still lead to the inode we hold.
    let named = dir.stat_at(name)?.map(|m| m.id.ino);
    let mut gid = None;
    let r = if !(now.kind == Kind::File && unchanged(&now.id) && named == Some(id.ino)) {
        Ok(Gone::Kept(Kept::Changed))
    } else if leased && lease_broken(&f) {
        // A writer waits for the lease: the file stays, and the writer
        // gets it under its name.
        Ok(Gone::Kept(Kept::Rescued))
    } else {
        // Before the unlink: from it on, the guardian keeps the lease if
        // sharelink dies.
        if leased {
            gid = hold
                .guard
                .hold(hold.root, hold.app_path, &f, &now.id, dir, &hold.rel);
        }
        dir.unlink(name).map(|_| Gone::Deleted)
    };
    // What the checks between files need (a broken lease's SIGIO is not
    // one of them: the lease says it).
    *pending = crate::signals::pending() & !crate::signals::bit(libc::SIGIO);
    // Names left after the unlink, counted from before it: on overlayfs an
    // open file of a lower layer still reports the lower file's count.
    let left = match r {
        Ok(Gone::Deleted) => now.nlink.saturating_sub(1),
        _ => 0,
    };
    if matches!(r, Ok(Gone::Deleted)) && left > 0 {
        if let Ok(m) = crate::fs::meta::fstat(&f) {
            relinked.insert(id.ino, m.id.ctime);
        }
    }
    if !leased {
        return r;
    }
    match r {
        // Its last name went: the lease stays a while, for a writer whose
        // open found the name before the unlink (see the module's doc).
        Ok(Gone::Deleted) if left == 0 => Ok(Gone::Held(f, gid)),
        r => {
            // Not held after all (names left, or the unlink failed): the
            // guardian lets it go first.
            hold.guard.release(gid);
            let _ = lease(&f, libc::F_UNLCK);
            r
        }
    }
}

/// Whether the lease on `f` was broken (someone opened the file for
/// writing while it was held): the kernel then reports the lease as going
/// (`F_UNLCK`), or gone once the break timed out.
pub(super) fn lease_broken(f: &File) -> bool {
    // SAFETY: plain fcntl on our fd.
    unsafe { libc::fcntl(f.as_raw_fd(), F_GETLEASE) != libc::F_RDLCK }
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
    remake: &dyn Fn() -> Result<Dir>,
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
    let to = match put_back(dir, name, f) {
        // Its directory went too (emptied, it was removed): made again.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => put_back(&remake()?, name, f),
        r => r,
    }
    .ctx("put back", path)?;
    stopped.map(|()| to)
}

/// Copy `f` under a hidden name beside `name`, then rename it to `name`
/// without replacing anything (a file someone made there meanwhile, and
/// may be writing, stays): else beside it, `<name>.sharelink-rescued-<n>`.
pub(super) fn put_back(dir: &Dir, name: &OsStr, f: &File) -> std::io::Result<OsString> {
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

#[cfg(test)]
#[path = "prune_tests.rs"]
mod tests;
