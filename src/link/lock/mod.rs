//! Per-link lock on the share: the directory
//! `<share_root>/.sharelink/locks/<id>`, made under a private name with its
//! owner file and renamed into place without replacing.
//!
//! A no-replace rename is atomic on local filesystems, NFS and SMB alike;
//! `flock` is not an option because Azure Files is mounted with `nobrl`, which makes
//! byte-range locks local to each client. The lock directory holds an
//! `owner` file naming host, boot id, PID namespace, pid and process start
//! time. A lock is stale when
//! - its owner is on this host (same boot and PID namespace) and that
//!   process is gone (pid absent, or a different start time: a restarted
//!   container's PID 1 is pid 1 again), or
//! - its lease expired: the owner file's mtime, refreshed while the holder
//!   works ([`Lock::keepalive`]), is older than the lease.
//!
//! Breaking a stale lock is itself serialised by a `<id>.break` directory,
//! so two waiters cannot both decide "stale" and one of them remove the
//! fresh lock the other just took.
//!
//! Whoever can write into the share can write here too, so nothing in the
//! lock directory is trusted: it is reached through directory handles
//! opened without following symlinks, files in it are read without
//! following, bounded, and only if regular; the holder works through the
//! handle of the directory it made, and the lock is its by that
//! directory's identity (device, inode) as well as by the owner file's
//! content, so a copy of the owner file in another directory is not it.

mod owner;
mod stale;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::RESERVED_DIR;
use crate::error::{Error, IoContext, Result};
use crate::failpoint::Failpoint;
use crate::fs::dir::Dir;
use crate::fs::names::fnv1a;
use crate::fs::tree;
use owner::{identity, start_time};
use stale::{fresh_name, sweep_in_background, wait_turn};

pub use owner::owner_file_of;
pub(crate) use owner::{holder, Holder};
pub(crate) use stale::{clear_stale, lock_names, LockNames};

/// Lease length; `SHARELINK_LOCK_LEASE` (a duration) overrides it for tests
/// and for shares with large clock skew.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The most sharelink reads of an owner or progress file: both are a few
/// lines, and anything longer was not written by sharelink.
const MAX_READ: usize = 4096;

const OWNER: &str = "owner";

/// The progress file in a lock directory, and the name it is written under.
pub(crate) const PROGRESS: &str = "progress";

const PROGRESS_TMP: &str = ".progress";

/// How often a holder re-reads its owner file while it works.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Lock {
    /// `.sharelink/locks`, opened beneath the share root.
    locks: Dir,
    id: String,
    /// The lock directory this process made, open: every write goes through
    /// it, wherever its name points meanwhile.
    dir: Dir,
    /// (device, inode) of `dir`: the lock is ours only while `locks/<id>`
    /// is this very directory.
    ident: (u64, u64),
    path: PathBuf,
    content: String,
    lease: Duration,
    refreshed: Instant,
    verified: Instant,
    /// Whether [`Lock::publish`] ever wrote progress files into the lock.
    published: std::sync::atomic::AtomicBool,
    /// Taken by the first rename: no holder in the way, no wait.
    at_once: bool,
}

/// The lock's name for a share path: readable, one path component.
pub(crate) fn lock_id(share_rel: &Path) -> String {
    let raw = share_rel.as_os_str().as_encoded_bytes();
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    if s.len() > 200 {
        s.truncate(180);
        s.push_str(&format!("~{:016x}", fnv1a(raw)));
    }
    s
}

pub(crate) fn lease() -> Duration {
    std::env::var("SHARELINK_LOCK_LEASE")
        .ok()
        .and_then(|v| crate::config::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_LEASE)
}

fn locks_rel() -> PathBuf {
    Path::new(RESERVED_DIR).join(crate::link::migrate::layout::LOCKS)
}

/// `.sharelink/locks` below the share root, made if missing.
fn make_locks(share_root: &Path) -> Result<Dir> {
    let root = Dir::open_path(share_root).ctx("open", share_root)?;
    Ok(tree::make_beneath(&root, &locks_rel(), share_root)?.dir)
}

/// `.sharelink/locks` below the share root if it is there (never made).
fn open_locks(share_root: &Path) -> Option<Dir> {
    let root = Dir::open_path(share_root).ok()?;
    tree::open_beneath(&root, &locks_rel()).ok()
}

impl Lock {
    /// Take the lock for `share_rel`, waiting while a live holder has it.
    /// Returns early with `Interrupted` on a termination signal.
    pub(crate) fn acquire(share_root: &Path, share_rel: &Path) -> Result<Lock> {
        Self::acquire_with_lease(share_root, share_rel, lease())
    }

    fn acquire_with_lease(share_root: &Path, share_rel: &Path, lease: Duration) -> Result<Lock> {
        let locks = make_locks(share_root)?;
        let locks_path = share_root.join(locks_rel());
        let id = lock_id(share_rel);
        let me = identity();
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or_default();
        let content = owner::record(&me, pid, &start);
        // The lock appears whole: made under a private name with its owner
        // file, then renamed into place. A lock directory without an owner
        // is therefore never live (only a crashed release leaves one).
        // The private name must be unique across machines, not just across
        // this host's processes: every container's sharelink is PID 1.
        let mut pending = Pending::make(
            &locks,
            fresh_name(&id, &me, pid, &start),
            content,
            &locks_path,
        )?;
        let mut waited_for: Option<String> = None;
        let mut at_once = true;
        loop {
            pending.keep_alive(&locks, lease, &locks_path)?;
            match locks.rename_noreplace(OsStr::new(&pending.name), &locks, OsStr::new(&id)) {
                Ok(()) => {
                    // Ours only if what now stands at `<id>` is the
                    // directory we made (its name could have been swapped).
                    let ident = pending.ident;
                    if locks
                        .stat_at(OsStr::new(&id))
                        .ok()
                        .flatten()
                        .map(|m| (m.dev, m.id.ino))
                        != Some(ident)
                    {
                        pending.remake(&locks, &locks_path)?;
                        at_once = false;
                        continue;
                    }
                    crate::failpoint::hit(Failpoint::LockAcquired);
                    sweep_in_background(&locks, &id, &me, &pending.name, lease);
                    return Ok(Lock {
                        path: locks_path.join(&id),
                        locks,
                        id,
                        dir: pending.dir,
                        ident,
                        content: pending.content,
                        lease,
                        refreshed: pending.touched,
                        verified: Instant::now(),
                        published: Default::default(),
                        at_once,
                    });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {}
                Err(e) if crate::fs::gone(&e) => {
                    pending.remake(&locks, &locks_path)?;
                    at_once = false;
                    continue;
                }
                Err(e) => {
                    pending.abandon(&locks);
                    return Err(Error::io("take lock", &locks_path.join(&id), e));
                }
            }
            at_once = false;
            if let Err(e) = wait_turn(&locks, &id, &me, lease, &mut waited_for, &locks_path) {
                pending.abandon(&locks);
                return Err(e);
            }
        }
    }

    /// Whether the lock was taken by the first try, with no holder in the
    /// way (nothing was waited for, nothing broken or made again).
    pub(crate) fn taken_at_once(&self) -> bool {
        self.at_once
    }

    /// Make sure the lock is still ours (a holder frozen past its lease may
    /// have lost it) about once a second, and refresh the lease when a
    /// quarter of it has passed.
    pub(crate) fn keepalive(&mut self) -> Result<()> {
        if self.verified.elapsed() >= VERIFY_EVERY {
            self.verify()?;
            self.verified = Instant::now();
        }
        if self.refreshed.elapsed() < self.lease / 4 {
            return Ok(());
        }
        self.verify()?;
        self.dir
            .touch_at(OsStr::new(OWNER))
            .ctx("refresh lock", &self.path.join(OWNER))?;
        self.refreshed = Instant::now();
        Ok(())
    }

    /// `Err` unless `locks/<id>` is still the directory we made and its
    /// owner file still ours.
    pub(crate) fn verify(&self) -> Result<()> {
        let here = self
            .locks
            .stat_at(OsStr::new(&self.id))
            .ok()
            .flatten()
            .map(|m| (m.dev, m.id.ino));
        let owner = self.dir.read_small(OsStr::new(OWNER), MAX_READ);
        match (here, owner) {
            (Some(ident), Ok(Some((c, _))))
                if ident == self.ident && c == self.content.as_bytes() =>
            {
                Ok(())
            }
            _ => Err(Error::LockLost(format!(
                "lock {} was taken over (this run stalled past its lease); stopping",
                self.path.display()
            ))),
        }
    }

    /// Leave a progress report in the lock for `status` in other
    /// processes (what it says is the migration's business).
    pub(crate) fn publish(&self, text: &str) {
        self.published
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self
            .dir
            .write_replace(
                OsStr::new(PROGRESS_TMP),
                OsStr::new(PROGRESS),
                text.as_bytes(),
            )
            .is_err()
        {
            crate::debug!("could not record progress in lock {}", self.path.display());
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.verify().is_ok() {
            // The progress files are there if this holder wrote them (the
            // lock appeared with its owner file alone); anything else found
            // in it (planted) is cleared when the rmdir says it is not
            // empty. Two failing unlinks fewer in the usual case.
            let published = self.published.load(std::sync::atomic::Ordering::Relaxed);
            let progress = [PROGRESS, PROGRESS_TMP];
            let unlink = |names: &[&str]| {
                for name in names {
                    let _ = self.dir.unlink(OsStr::new(name));
                }
            };
            if published {
                unlink(&progress);
            }
            unlink(&[OWNER]);
            let _ = crate::fs::tree::rmdir_settled(&self.locks, OsStr::new(&self.id), || {
                unlink(&progress);
                Ok(())
            });
        }
    }
}

/// The lock under its private name, waiting to be renamed into place.
/// Its owner file's mtime is its lease too: other hosts sweep private
/// directories whose lease ran out.
struct Pending {
    name: String,
    dir: Dir,
    ident: (u64, u64),
    content: String,
    /// When the owner file was last touched.
    touched: Instant,
}

impl Pending {
    fn make(locks: &Dir, name: String, content: String, locks_path: &Path) -> Result<Pending> {
        let (dir, ident) = make_private(locks, &name, &content, locks_path)?;
        Ok(Pending {
            name,
            dir,
            ident,
            content,
            touched: Instant::now(),
        })
    }

    fn remake(&mut self, locks: &Dir, locks_path: &Path) -> Result<()> {
        (self.dir, self.ident) = make_private(locks, &self.name, &self.content, locks_path)?;
        self.touched = Instant::now();
        Ok(())
    }

    /// Renew the lease while waiting, so that a lock taken after a long
    /// wait does not look stale already.
    fn keep_alive(&mut self, locks: &Dir, lease: Duration, locks_path: &Path) -> Result<()> {
        if self.touched.elapsed() >= lease / 4 {
            let still = locks
                .stat_at(OsStr::new(&self.name))
                .ok()
                .flatten()
                .is_some_and(|m| (m.dev, m.id.ino) == self.ident);
            if !still || self.dir.touch_at(OsStr::new(OWNER)).is_err() {
                // Swept while this process was frozen past the lease.
                return self.remake(locks, locks_path);
            }
            self.touched = Instant::now();
        }
        Ok(())
    }

    fn abandon(&self, locks: &Dir) {
        let _ = self.dir.unlink(OsStr::new(OWNER));
        let _ = locks.rmdir(OsStr::new(&self.name));
    }
}

/// Make the private directory `locks/name` anew with our owner file, and
/// keep it open.
fn make_private(
    locks: &Dir,
    name: &str,
    content: &str,
    locks_path: &Path,
) -> Result<(Dir, (u64, u64))> {
    let n = OsStr::new(name);
    let path = locks_path.join(name);
    // Made first; a leftover under this very name (a container restarted
    // with the same pid and start time) is cleared only when it is there:
    // two round trips fewer on a network share in the usual case.
    match locks.mkdir(n, 0o755) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            if let Ok(old) = locks.open_dir(n) {
                let _ = old.unlink(OsStr::new(OWNER));
            }
            let _ = locks.rmdir(n);
            locks.mkdir(n, 0o755).ctx("create lock", &path)?;
        }
        Err(e) => return Err(Error::io("create lock", &path, e)),
    }
    // Only `*at` calls go through it: no round trip for the open.
    let dir = locks.open_dir_path(n).ctx("open lock", &path)?;
    let meta = dir.stat().ctx("inspect lock", &path)?;
    let written = dir.create(OsStr::new(OWNER), 0o644).and_then(|mut f| {
        use std::io::Write;
        f.write_all(content.as_bytes())
    });
    if let Err(e) = written {
        let _ = locks.rmdir(n);
        return Err(Error::io("write lock owner", &path.join(OWNER), e));
    }
    Ok((dir, (meta.dev, meta.id.ino)))
}

#[cfg(test)]
mod tests;
