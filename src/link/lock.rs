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

use crate::failpoint::Failpoint;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::RESERVED_DIR;
use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::{Kind, Time};
use crate::fs::names::fnv1a;
use crate::fs::tree;
use crate::signals;

/// Lease length; `SHARELINK_LOCK_LEASE` (a duration) overrides it for tests
/// and for shares with large clock skew.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The most sharelink reads of an owner or progress file: both are a few
/// lines, and anything longer was not written by sharelink.
const MAX_READ: usize = 4096;

const OWNER: &str = "owner";
/// The progress file in a lock directory, and the name it is written under.
pub const PROGRESS: &str = "progress";
const PROGRESS_TMP: &str = ".progress";

/// How often a holder re-reads its owner file while it works.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

pub struct Lock {
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
}

/// Who we are, as written into the owner file.
fn identity() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("host={host}\nboot={boot}\npidns={pidns}\n")
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_string)
}

fn field<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    content
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `host=… pid=…` of an owner file, for messages: only those two fields,
/// printable and short, since anyone may have written the file.
fn who(owner: &str) -> String {
    let clean = |v: Option<&str>| -> String {
        v.unwrap_or("?")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect()
    };
    format!(
        "host={} pid={}",
        clean(field(owner, "host")),
        clean(field(owner, "pid"))
    )
}

/// The lock's name for a share path: readable, one path component.
pub fn lock_id(share_rel: &Path) -> String {
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

pub fn lease() -> Duration {
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
    let root = Dir::open(share_root).ctx("open", share_root)?;
    Ok(tree::make_beneath(&root, &locks_rel(), share_root)?.dir)
}

/// `.sharelink/locks` below the share root if it is there (never made).
fn open_locks(share_root: &Path) -> Option<Dir> {
    let root = Dir::open(share_root).ok()?;
    tree::open_beneath(&root, &locks_rel()).ok()
}

/// What a lock directory holds, read without trusting it.
enum Seen {
    /// Nothing (or no directory) under that name.
    Gone,
    /// A directory without a readable owner file: left by a release that
    /// crashed half-way (locks appear with their owner), or planted.
    NoOwner,
    Owner {
        content: String,
        mtime: Time,
    },
}

fn look(locks: &Dir, name: &OsStr) -> Seen {
    let dir = match locks.open_dir(name) {
        Ok(d) => d,
        Err(_) => return Seen::Gone,
    };
    match dir.read_small(OsStr::new(OWNER), MAX_READ) {
        Ok(Some((bytes, meta))) if !bytes.is_empty() => Seen::Owner {
            content: String::from_utf8_lossy(&bytes).into_owned(),
            mtime: meta.id.mtime,
        },
        _ => Seen::NoOwner,
    }
}

impl Lock {
    /// Take the lock for `share_rel`, waiting while a live holder has it.
    /// Returns early with `Interrupted` on a termination signal.
    pub fn acquire(share_root: &Path, share_rel: &Path) -> Result<Lock> {
        Self::acquire_with_lease(share_root, share_rel, lease())
    }

    fn acquire_with_lease(share_root: &Path, share_rel: &Path, lease: Duration) -> Result<Lock> {
        let locks = make_locks(share_root)?;
        let locks_path = share_root.join(locks_rel());
        let id = lock_id(share_rel);
        let me = identity();
        let pid = std::process::id();
        let start = start_time(pid).unwrap_or_default();
        let content = format!("{me}pid={pid}\nstart={start}\n");
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
                    });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {}
                Err(e) if crate::fs::gone(&e) => {
                    pending.remake(&locks, &locks_path)?;
                    continue;
                }
                Err(e) => {
                    pending.abandon(&locks);
                    return Err(Error::io("take lock", &locks_path.join(&id), e));
                }
            }
            if let Err(e) = wait_turn(&locks, &id, &me, lease, &mut waited_for, &locks_path) {
                pending.abandon(&locks);
                return Err(e);
            }
        }
    }

    /// Make sure the lock is still ours (a holder frozen past its lease may
    /// have lost it) about once a second, and refresh the lease when a
    /// quarter of it has passed.
    pub fn keepalive(&mut self) -> Result<()> {
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
    pub fn verify(&self) -> Result<()> {
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
    pub fn publish(&self, text: &str) {
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
            match self.locks.rmdir(OsStr::new(&self.id)) {
                Err(e) if !published && e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    unlink(&progress);
                    let _ = self.locks.rmdir(OsStr::new(&self.id));
                }
                _ => {}
            }
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
    let dir = locks.open_dir(n).ctx("open lock", &path)?;
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

/// The lock `id` is taken: clear it if its holder is gone, else say who
/// holds it (once per holder) and wait a moment.
fn wait_turn(
    locks: &Dir,
    id: &str,
    me: &str,
    lease: Duration,
    waited_for: &mut Option<String>,
    locks_path: &Path,
) -> Result<()> {
    let holder = match look(locks, OsStr::new(id)) {
        Seen::Gone => return Ok(()),
        Seen::NoOwner => {
            clear_ownerless(locks, OsStr::new(id));
            return Ok(());
        }
        Seen::Owner { content, mtime } => {
            if is_stale(&content, Some(mtime), me, lease) {
                return break_stale(locks, id, &content, me, lease, locks_path);
            }
            content
        }
    };
    if waited_for.as_deref() != Some(holder.as_str()) {
        tracing::info!(
            lock = %locks_path.join(id).display(),
            holder = %who(&holder),
            "another sharelink is working on this share directory; waiting"
        );
        *waited_for = Some(holder);
    }
    signals::sleep_interruptible(Duration::from_millis(50 + (fastish_rand() % 150)))
}

/// Remove a lock directory that has no owner file: only the names a lock
/// can hold are unlinked (a planted symlink is removed, never followed),
/// and `rmdir` refuses anything else.
fn clear_ownerless(locks: &Dir, name: &OsStr) {
    if let Ok(d) = locks.open_dir(name) {
        for name in [PROGRESS, PROGRESS_TMP, OWNER] {
            if d.stat_at(OsStr::new(name))
                .ok()
                .flatten()
                .is_some_and(|m| m.kind != Kind::Dir)
            {
                let _ = d.unlink(OsStr::new(name));
            }
        }
    }
    let _ = locks.rmdir(name);
}

/// Whether a holder is gone: by process on this host, by lease elsewhere.
/// `mtime` is the owner file's (its lease); `None` when it is unknown.
fn is_stale(holder: &str, mtime: Option<Time>, me: &str, lease: Duration) -> bool {
    let same_host = !holder.is_empty() && holder.starts_with(me);
    if same_host {
        let pid: Option<u32> = field(holder, "pid").and_then(|p| p.parse().ok());
        let start = field(holder, "start");
        return match pid {
            Some(pid) => start_time(pid).as_deref() != start,
            None => true,
        };
    }
    // Another host: the lease decides.
    match mtime {
        Some(t) => Time::now().as_nanos() - t.as_nanos() > lease.as_nanos() as i128,
        None => false,
    }
}

/// A live holder of a lock, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `host pid N`.
    pub who: String,
    /// What the holder last published.
    pub progress: Option<String>,
}

/// Who holds the lock of `share_rel` right now, if a live holder does (for
/// `status`; never writes).
pub fn holder(share_root: &Path, share_rel: &Path) -> Option<Holder> {
    let locks = open_locks(share_root)?;
    let id = lock_id(share_rel);
    let Seen::Owner { content, mtime } = look(&locks, OsStr::new(&id)) else {
        return None;
    };
    if is_stale(&content, Some(mtime), &identity(), lease()) {
        return None;
    }
    let progress = locks
        .open_dir(OsStr::new(&id))
        .ok()
        .and_then(|d| d.read_small(OsStr::new(PROGRESS), MAX_READ).ok().flatten())
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned());
    Some(Holder {
        who: who(&content).replace("host=", "").replace(" pid=", " pid "),
        progress,
    })
}

/// The names in `<share_root>/.sharelink/locks`, read once per run. Almost
/// always empty (locks live only while a migration runs), so a plain list.
pub type LockNames = Vec<String>;

/// List the lock directory (empty when there is none). A read-only listing;
/// [`clear_stale`] re-checks without following symlinks before removing.
pub fn lock_names(share_root: &Path) -> LockNames {
    open_locks(share_root)
        .and_then(|d| d.list().ok())
        .map(|l| {
            l.into_iter()
                .filter_map(|(n, _)| n.into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Remove the lock of `share_rel` if its holder is gone (or its lease ran
/// out), without waiting and without creating anything; a live lock is
/// left alone. Runs that need no lock (already linked, or only the symlink
/// left to make) call it, so that a run killed after its migration but
/// before releasing leaves no lock behind for other machines to wait out.
pub fn clear_stale(share_root: &Path, share_rel: &Path, present: &LockNames) {
    let id = lock_id(share_rel);
    // The common case, no lock, costs nothing: this runs for every linked
    // entry on every start, so the lock directory is listed once per run.
    if !present.contains(&id) {
        return;
    }
    let Some(locks) = open_locks(share_root) else {
        return;
    };
    let me = identity();
    match look(&locks, OsStr::new(&id)) {
        Seen::Gone => {}
        Seen::NoOwner => clear_ownerless(&locks, OsStr::new(&id)),
        Seen::Owner { content, mtime } => {
            if is_stale(&content, Some(mtime), &me, lease()) {
                let _ = break_stale(
                    &locks,
                    &id,
                    &content,
                    &me,
                    lease(),
                    &share_root.join(locks_rel()),
                );
            }
        }
    }
}

/// Remove a stale lock while holding `<id>.break`, after checking that the
/// lock still has the owner we judged stale.
fn break_stale(
    locks: &Dir,
    id: &str,
    holder: &str,
    me: &str,
    lease: Duration,
    locks_path: &Path,
) -> Result<()> {
    let breaker_name = format!("{id}.break");
    let breaker = OsStr::new(&breaker_name);
    match locks.mkdir(breaker, 0o755) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Someone else is breaking it; if they died doing so, their
            // breaker is stale after a lease.
            if let Ok(Some(m)) = locks.stat_at(breaker) {
                if m.kind == Kind::Dir
                    && Time::now().as_nanos() - m.id.mtime.as_nanos() > lease.as_nanos() as i128
                {
                    let _ = locks.rmdir(breaker);
                }
            }
            return signals::sleep_interruptible(Duration::from_millis(50));
        }
        Err(e) => {
            return Err(Error::io(
                "create lock breaker",
                &locks_path.join(breaker),
                e,
            ))
        }
    }
    let name = OsStr::new(id);
    if let Ok(dir) = locks.open_dir(name) {
        let now = dir.read_small(OsStr::new(OWNER), MAX_READ).ok().flatten();
        if let Some((bytes, meta)) = now {
            if bytes == holder.as_bytes() && is_stale(holder, Some(meta.id.mtime), me, lease) {
                crate::warn!(
                    "removing a stale lock {} (holder: {})",
                    locks_path.join(id).display(),
                    who(holder)
                );
                // Owner last: a lock directory without one is never live.
                for n in [PROGRESS, PROGRESS_TMP, OWNER] {
                    let _ = dir.unlink(OsStr::new(n));
                }
                let ident = dir.stat().ok().map(|m| (m.dev, m.id.ino));
                let at = locks
                    .stat_at(name)
                    .ok()
                    .flatten()
                    .map(|m| (m.dev, m.id.ino));
                if ident.is_some() && ident == at {
                    match locks.rmdir(name) {
                        Ok(()) => {}
                        // Gone, or already someone else's: a waiter that found
                        // it without an owner removed it and another took it.
                        Err(e)
                            if crate::fs::gone(&e)
                                || matches!(
                                    e.raw_os_error(),
                                    Some(libc::ENOTEMPTY | libc::EEXIST)
                                ) => {}
                        Err(e) => {
                            let _ = locks.rmdir(breaker);
                            return Err(Error::io("remove stale lock", &locks_path.join(id), e));
                        }
                    }
                }
            }
        }
    }
    let _ = locks.rmdir(breaker);
    Ok(())
}

/// `<id>.new.<host tag>.<pid>.<start time>`: the private name a lock is
/// made under. The host tag (a hash of host name, boot id and PID
/// namespace) keeps replicas on different machines apart even though each
/// is PID 1; pid and start time let this host tell a dead maker from a
/// live one even before the owner file is written.
fn fresh_name(id: &str, me: &str, pid: u32, start: &str) -> String {
    format!("{id}.new.{:016x}.{pid}.{start}", fnv1a(me.as_bytes()))
}

/// [`sweep_abandoned`] on a thread of its own: it is housekeeping (a
/// listing of the locks directory, three round trips on a network share),
/// and the lock's holder need not wait for it. On the calling thread if no
/// thread can be started.
fn sweep_in_background(locks: &Dir, id: &str, me: &str, mine: &str, lease: Duration) {
    let Ok(dir) = locks.try_clone() else {
        return;
    };
    let (id, me, mine) = (id.to_string(), me.to_string(), mine.to_string());
    let spawned = std::thread::Builder::new()
        .name("lock-sweep".into())
        .spawn(move || sweep_abandoned(&dir, &id, &me, &mine, lease));
    if spawned.is_err() {
        crate::debug!("no thread for sweeping abandoned lock directories; skipped this time");
    }
}

/// Remove `<id>.new.*` directories of processes that died between making
/// their lock and renaming it into place: this host's when their maker is
/// gone, other hosts' once their lease has expired.
fn sweep_abandoned(locks: &Dir, id: &str, me: &str, mine: &str, lease: Duration) {
    let prefix = format!("{id}.new.");
    let my_tag = format!("{:016x}", fnv1a(me.as_bytes()));
    let Ok(entries) = locks.list() else {
        return;
    };
    for (name, _) in entries {
        let Some(full) = name.to_str() else {
            continue;
        };
        let Some(rest) = full.strip_prefix(&prefix) else {
            continue;
        };
        if full == mine {
            continue;
        }
        let mut parts = rest.splitn(3, '.');
        let (tag, pid, start) = (parts.next(), parts.next(), parts.next());
        let stale = if tag == Some(my_tag.as_str()) {
            match pid.and_then(|p| p.parse::<u32>().ok()) {
                Some(pid) => start_time(pid).as_deref() != start,
                None => true,
            }
        } else {
            match look(locks, &name) {
                Seen::Gone => false,
                // Mid-make on another host, or planted: its directory's age
                // is all there is to judge by.
                Seen::NoOwner => locks
                    .stat_at(&name)
                    .ok()
                    .flatten()
                    .is_some_and(|m| is_stale("", Some(m.id.mtime), me, lease)),
                Seen::Owner { content, mtime } => is_stale(&content, Some(mtime), me, lease),
            }
        };
        if stale {
            clear_ownerless(locks, &name);
        }
    }
}

/// Jitter for waiters so replicas do not retry in lock-step.
fn fastish_rand() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    fnv1a(&(t ^ std::process::id() as u64).to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn mtime(p: &Path) -> Option<Time> {
        let d = Dir::open(p.parent().unwrap()).unwrap();
        d.stat_at(p.file_name().unwrap())
            .unwrap()
            .map(|m| m.id.mtime)
    }

    fn locks_dir(root: &Path) -> Dir {
        make_locks(root).unwrap()
    }

    /// A lock `x` held on a share, and a file outside the share that must
    /// stay "precious".
    fn held_beside_a_victim() -> (tempfile::TempDir, PathBuf, PathBuf, Lock) {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let share = t.path().join("share");
        fs::create_dir(&share).unwrap();
        let lock = Lock::acquire(&share, Path::new("x")).unwrap();
        (t, victim, share, lock)
    }

    #[test]
    fn ids_are_single_components() {
        assert_eq!(lock_id(Path::new("forecasting/data")), "forecasting%2Fdata");
        assert_eq!(lock_id(Path::new("a b")), "a%20b");
        let long = "x/".repeat(200);
        let id = lock_id(Path::new(&long));
        assert!(id.len() <= 200 && !id.contains('/'));
    }

    #[test]
    fn own_start_time_is_readable() {
        let a = start_time(std::process::id()).unwrap();
        assert!(a.parse::<u64>().is_ok(), "{a}");
    }

    #[test]
    fn who_keeps_only_host_and_pid() {
        assert_eq!(
            who("host=a\nboot=b\nsecret=root:$6$x\npid=7\n"),
            "host=a pid=7"
        );
        assert_eq!(who("root:$6$hash:19000:0:99999:7:::\n"), "host=? pid=?");
        assert_eq!(who("host=a b\u{7}c\n").len(), "host=abc pid=?".len());
    }

    #[test]
    fn lock_excludes_and_releases() {
        let t = tempfile::tempdir().unwrap();
        let a = Lock::acquire(t.path(), Path::new("x")).unwrap();
        let dir = t.path().join(".sharelink/locks/x");
        assert!(dir.join("owner").exists());
        // Same host, live owner: not stale.
        let holder = fs::read_to_string(dir.join("owner")).unwrap();
        let me = identity();
        let m = mtime(&dir.join("owner"));
        assert!(!is_stale(&holder, m, &me, DEFAULT_LEASE));
        // A dead pid on this host: stale.
        let dead = holder.replace(&format!("pid={}", std::process::id()), "pid=999999999");
        assert!(is_stale(&dead, m, &me, DEFAULT_LEASE));
        // Another host with a fresh lease: live.
        assert!(!is_stale("host=elsewhere\n", m, &me, DEFAULT_LEASE));
        drop(a);
        assert!(!dir.exists());
    }

    /// The lock is the directory sharelink made, not a name with a copy of
    /// its owner file: swapped for a look-alike, it is lost, and nothing is
    /// written through what the look-alike holds.
    #[test]
    fn a_look_alike_lock_directory_is_not_ours() {
        let (_t, victim, share, lock) = held_beside_a_victim();
        let dir = share.join(".sharelink/locks/x");
        let fake = share.join(".sharelink/locks/fake");
        fs::create_dir(&fake).unwrap();
        fs::copy(dir.join("owner"), fake.join("owner")).unwrap();
        std::os::unix::fs::symlink(&victim, fake.join(".progress")).unwrap();
        std::os::unix::fs::symlink(&victim, fake.join("progress")).unwrap();
        fs::rename(&dir, share.join("moved")).unwrap();
        fs::rename(&fake, &dir).unwrap();
        assert!(lock.verify().is_err(), "a copy of the owner file passed");
        lock.publish("files=600");
        drop(lock);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(dir.join("owner").exists(), "released someone else's lock");
    }

    /// A `.progress` or `progress` symlink planted in the live lock is
    /// replaced, never written through.
    #[test]
    fn progress_is_never_written_through_a_planted_symlink() {
        let (_t, victim, share, lock) = held_beside_a_victim();
        let dir = share.join(".sharelink/locks/x");
        std::os::unix::fs::symlink(&victim, dir.join(".progress")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("progress")).unwrap();
        lock.publish("files=600 files_total=600");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            fs::read_to_string(dir.join("progress")).unwrap(),
            "files=600 files_total=600"
        );
        assert!(!dir.join("progress").is_symlink());
        drop(lock);
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }

    /// An owner file that is a symlink (to a root-only file) is never read:
    /// the lock counts as ownerless and is cleared, the symlink itself
    /// removed, its target untouched and never logged.
    #[test]
    fn a_planted_owner_symlink_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "host=root:$6$secret-hash\npid=1\n").unwrap();
        let share = t.path().join("share");
        let dir = share.join(".sharelink/locks/x");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("owner")).unwrap();
        assert!(holder(&share, Path::new("x")).is_none());
        let l = Lock::acquire(&share, Path::new("x")).unwrap();
        l.verify().unwrap();
        assert!(
            fs::read_link(dir.join("owner")).is_err(),
            "owner is still the symlink"
        );
        drop(l);
        assert!(secret.exists());
    }

    #[test]
    fn private_names_differ_across_hosts_and_abandoned_ones_are_swept() {
        let me = identity();
        // Two containers, each sharelink PID 1 with the same start time.
        let a = fresh_name("x", "host=a\nboot=b\npidns=1\n", 1, "5");
        let b = fresh_name("x", "host=c\nboot=b\npidns=1\n", 1, "5");
        assert_ne!(a, b);
        let t = tempfile::tempdir().unwrap();
        let locks_path = t.path().join(".sharelink/locks");
        let locks = locks_dir(t.path());
        // This host, maker dead before it wrote the owner file: swept.
        let dead = locks_path.join(fresh_name("x", &me, 999_999_999, "1"));
        fs::create_dir(&dead).unwrap();
        // Another host, fresh: may be mid-acquire, kept.
        let other = locks_path.join(b);
        fs::create_dir(&other).unwrap();
        // This host, alive: kept.
        let pid = std::process::id();
        let live = locks_path.join(fresh_name("x", &me, pid, &start_time(pid).unwrap()));
        fs::create_dir(&live).unwrap();
        sweep_abandoned(&locks, "x", &me, "none", DEFAULT_LEASE);
        assert!(!dead.exists());
        assert!(other.exists() && live.exists());
        // The other host's, once its lease has run out: swept.
        std::thread::sleep(Duration::from_millis(20));
        sweep_abandoned(&locks, "x", &me, "none", Duration::from_nanos(1));
        assert!(!other.exists());
    }

    /// Waiting longer than the lease for a live holder on another host:
    /// the waiter's private directory must not be swept as abandoned by a
    /// third host meanwhile, and the lock it then takes must not look stale
    /// to that third host (which would break it: two holders).
    #[test]
    fn a_lock_taken_after_a_long_wait_keeps_its_lease() {
        let lease = Duration::from_millis(1000);
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let locks_path = root.join(".sharelink/locks");
        let dir = locks_path.join("x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("owner"),
            "host=elsewhere\nboot=b\npidns=p\npid=1\nstart=1\n",
        )
        .unwrap();
        // The live holder keeps its lease for two leases, then releases.
        let holder_dir = dir.clone();
        let holder = std::thread::spawn(move || {
            let until = Instant::now() + lease * 2;
            let d = Dir::open(&holder_dir).unwrap();
            while Instant::now() < until {
                d.touch_at(OsStr::new("owner")).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            fs::remove_file(holder_dir.join("owner")).unwrap();
            fs::remove_dir(&holder_dir).unwrap();
        });
        let waiter_root = root.clone();
        let waiter = std::thread::spawn(move || {
            Lock::acquire_with_lease(&waiter_root, Path::new("x"), lease)
        });
        let third = "host=third\nboot=b\npidns=p\n";
        std::thread::sleep(lease * 3 / 2);
        sweep_abandoned(&locks_dir(&root), "x", third, "none", lease);
        let private: Vec<_> = fs::read_dir(&locks_path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("x.new."))
            .collect();
        assert_eq!(private.len(), 1, "the waiter's private directory was swept");
        holder.join().unwrap();
        let lock = waiter.join().unwrap().expect("the waiter takes the lock");
        let owner = fs::read_to_string(dir.join("owner")).unwrap();
        assert!(
            !is_stale(&owner, mtime(&dir.join("owner")), third, lease),
            "a lock just taken looks stale to another host"
        );
        drop(lock);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_lock_is_broken() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(".sharelink/locks/x");
        fs::create_dir_all(&dir).unwrap();
        let me = identity();
        fs::write(dir.join("owner"), format!("{me}pid=999999999\nstart=1\n")).unwrap();
        let l = Lock::acquire(t.path(), Path::new("x")).unwrap();
        l.verify().unwrap();
    }
}
