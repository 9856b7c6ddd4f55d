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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config::RESERVED_DIR;
use crate::error::{Error, IoContext, Result};
use crate::fs::names::fnv1a;
use crate::signals;

/// Lease length; `SHARELINK_LOCK_LEASE` (a duration) overrides it for tests
/// and for shares with large clock skew.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

pub struct Lock {
    dir: PathBuf,
    owner: PathBuf,
    content: String,
    lease: Duration,
    refreshed: Instant,
    verified: Instant,
}

/// Who we are, as written into the owner file.
fn identity() -> (String, String) {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let pidns = fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (format!("host={host}\nboot={boot}\npidns={pidns}\n"), host)
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_string)
}

fn field<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    content
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
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

impl Lock {
    /// Take the lock for `share_rel`, waiting while a live holder has it.
    /// Returns early with `Interrupted` on a termination signal.
    pub fn acquire(share_root: &Path, share_rel: &Path) -> Result<Lock> {
        Self::acquire_with_lease(share_root, share_rel, lease())
    }

    fn acquire_with_lease(share_root: &Path, share_rel: &Path, lease: Duration) -> Result<Lock> {
        let locks_rel = Path::new(RESERVED_DIR).join("locks");
        crate::fs::share::ensure_dir_beneath(share_root, &locks_rel)?;
        let locks = share_root.join(&locks_rel);
        let id = lock_id(share_rel);
        let dir = locks.join(&id);
        let (me, _) = identity();
        let pid = std::process::id();
        let content = format!(
            "{me}pid={pid}\nstart={}\n",
            start_time(pid).unwrap_or_default()
        );
        // The lock appears whole: made under a private name with its owner
        // file, then renamed into place. A lock directory without an owner
        // is therefore never live (only a crashed release leaves one).
        // The private name must be unique across machines, not just across
        // this host's processes: every container's sharelink is PID 1.
        let mut pending = Pending::make(
            locks.join(fresh_name(
                &id,
                &me,
                pid,
                &start_time(pid).unwrap_or_default(),
            )),
            content,
        )?;
        let mut waited_for: Option<String> = None;
        loop {
            pending.keep_alive(lease)?;
            match crate::fs::rename_noreplace(&pending.dir, &dir) {
                Ok(()) => {
                    crate::failpoint::hit("lock.acquired");
                    sweep_abandoned(&locks, &id, &me, &pending.dir, lease);
                    return Ok(Lock {
                        owner: dir.join("owner"),
                        dir,
                        content: pending.content,
                        lease,
                        refreshed: pending.touched,
                        verified: Instant::now(),
                    });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !pending.dir.exists() => {
                    pending.remake()?;
                    continue;
                }
                Err(e) => {
                    pending.abandon();
                    return Err(Error::io("take lock", &dir, e));
                }
            }
            if let Err(e) = wait_turn(&locks, &id, &dir, &me, lease, &mut waited_for) {
                pending.abandon();
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
        touch(&self.owner).ctx("refresh lock", &self.owner)?;
        self.refreshed = Instant::now();
        Ok(())
    }

    /// `Err` unless the owner file is still ours.
    pub fn verify(&self) -> Result<()> {
        match fs::read_to_string(&self.owner) {
            Ok(c) if c == self.content => Ok(()),
            _ => Err(Error::LockLost(format!(
                "lock {} was taken over (this run stalled past its lease); stopping",
                self.dir.display()
            ))),
        }
    }

    /// Leave a progress report in the lock for `status` in other
    /// processes (what it says is the migration's business).
    pub fn publish(&self, text: &str) {
        let tmp = self.dir.join(".progress");
        if fs::write(&tmp, text)
            .and_then(|_| fs::rename(&tmp, self.dir.join(PROGRESS)))
            .is_err()
        {
            crate::debug!("could not record progress in lock {}", self.dir.display());
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.verify().is_ok() {
            let _ = fs::remove_file(self.dir.join(PROGRESS));
            let _ = fs::remove_file(self.dir.join(".progress"));
            let _ = fs::remove_file(&self.owner);
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// The progress file in a lock directory.
pub const PROGRESS: &str = "progress";

/// How often a holder re-reads its owner file while it works.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// A private lock directory with its owner file, made anew.
/// The lock under its private name, waiting to be renamed into place.
/// Its owner file's mtime is its lease too: other hosts sweep private
/// directories whose lease ran out.
struct Pending {
    dir: PathBuf,
    owner: PathBuf,
    content: String,
    /// When the owner file was last touched.
    touched: Instant,
}

impl Pending {
    fn make(dir: PathBuf, content: String) -> Result<Pending> {
        let owner = dir.join("owner");
        make_private(&dir, &owner, &content)?;
        Ok(Pending {
            dir,
            owner,
            content,
            touched: Instant::now(),
        })
    }

    fn remake(&mut self) -> Result<()> {
        make_private(&self.dir, &self.owner, &self.content)?;
        self.touched = Instant::now();
        Ok(())
    }

    /// Renew the lease while waiting, so that a lock taken after a long
    /// wait does not look stale already.
    fn keep_alive(&mut self, lease: Duration) -> Result<()> {
        if self.touched.elapsed() >= lease / 4 {
            if touch(&self.owner).is_err() {
                // Swept while this process was frozen past the lease.
                make_private(&self.dir, &self.owner, &self.content)?;
            }
            self.touched = Instant::now();
        }
        Ok(())
    }

    fn abandon(&self) {
        let _ = fs::remove_file(&self.owner);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The lock `dir` is taken: clear it if its holder is gone, else say who
/// holds it (once per holder) and wait a moment.
fn wait_turn(
    locks: &Path,
    id: &str,
    dir: &Path,
    me: &str,
    lease: Duration,
    waited_for: &mut Option<String>,
) -> Result<()> {
    let holder = fs::read_to_string(dir.join("owner")).unwrap_or_default();
    if holder.is_empty() {
        // Left by a release that crashed half-way; rmdir refuses anything
        // that is not empty.
        let _ = fs::remove_dir(dir);
        return Ok(());
    }
    if is_stale(dir, &holder, me, lease) {
        return break_stale(locks, id, &holder, me, lease);
    }
    if waited_for.as_deref() != Some(holder.as_str()) {
        tracing::info!(
            lock = %dir.display(),
            holder = %holder.replace('\n', " ").trim(),
            "another sharelink is working on this share directory; waiting"
        );
        *waited_for = Some(holder);
    }
    signals::sleep_interruptible(Duration::from_millis(50 + (fastish_rand() % 150)))
}

fn make_private(fresh: &Path, owner: &Path, content: &str) -> Result<()> {
    let _ = fs::remove_file(owner);
    let _ = fs::remove_dir(fresh);
    fs::create_dir(fresh).ctx("create lock", fresh)?;
    if let Err(e) = fs::write(owner, content) {
        let _ = fs::remove_dir(fresh);
        return Err(Error::io("write lock owner", owner, e));
    }
    Ok(())
}

/// Set a file's mtime to now: renews the lease it stands for.
fn touch(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(SystemTime::now())
}

fn is_stale(dir: &Path, holder: &str, me: &str, lease: Duration) -> bool {
    let same_host = !holder.is_empty() && holder.starts_with(me);
    if same_host {
        let pid: Option<u32> = field(holder, "pid").and_then(|p| p.parse().ok());
        let start = field(holder, "start");
        return match pid {
            Some(pid) => start_time(pid).as_deref() != start,
            None => true,
        };
    }
    // Another host (or an owner file not written yet): the lease decides.
    // The owner file's mtime, else the lock directory's.
    let mtime = fs::metadata(dir.join("owner"))
        .or_else(|_| fs::metadata(dir))
        .and_then(|m| m.modified());
    match mtime {
        Ok(t) => SystemTime::now()
            .duration_since(t)
            .is_ok_and(|age| age > lease),
        // The lock vanished meanwhile: not stale, just retry.
        Err(_) => false,
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
    let dir = share_root
        .join(RESERVED_DIR)
        .join("locks")
        .join(lock_id(share_rel));
    let owner = fs::read_to_string(dir.join("owner")).ok()?;
    let (me, _) = identity();
    if owner.is_empty() || is_stale(&dir, &owner, &me, lease()) {
        return None;
    }
    Some(Holder {
        who: format!(
            "{} pid {}",
            field(&owner, "host").unwrap_or("?"),
            field(&owner, "pid").unwrap_or("?")
        ),
        progress: fs::read_to_string(dir.join(PROGRESS)).ok(),
    })
}

/// The names in `<share_root>/.sharelink/locks`, read once per run. Almost
/// always empty (locks live only while a migration runs), so a plain list.
pub type LockNames = Vec<String>;

/// List the lock directory (empty when there is none). A read-only listing;
/// [`clear_stale`] re-checks without following symlinks before removing.
pub fn lock_names(share_root: &Path) -> LockNames {
    let locks = share_root.join(RESERVED_DIR).join("locks");
    fs::read_dir(locks)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
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
    let locks_rel = Path::new(RESERVED_DIR).join("locks");
    let locks = share_root.join(&locks_rel);
    let id = lock_id(share_rel);
    // The common case, no lock, costs nothing: this runs for every linked
    // entry on every start, so the lock directory is listed once per run.
    if !present.contains(&id) {
        return;
    }
    let dir = locks.join(&id);
    if !crate::fs::share::lstat(&dir).is_ok_and(|m| m.is_some_and(|m| m.is_dir())) {
        return;
    }
    // Removing must never go through a symlink: that could delete
    // something outside the share.
    if !matches!(
        crate::fs::share::share_node(share_root, &locks_rel.join(&id), false),
        Ok(crate::fs::share::ShareNode::Dir { .. })
    ) {
        return;
    }
    let (me, _) = identity();
    let holder = fs::read_to_string(dir.join("owner")).unwrap_or_default();
    if holder.is_empty() {
        // Left by a release that crashed half-way (locks appear with their
        // owner file); rmdir refuses anything that is not empty.
        let _ = fs::remove_dir(&dir);
    } else if is_stale(&dir, &holder, &me, lease()) {
        let _ = break_stale(&locks, &id, &holder, &me, lease());
    }
}

/// Remove a stale lock while holding `<id>.break`, after checking that the
/// lock still has the owner we judged stale.
fn break_stale(locks: &Path, id: &str, holder: &str, me: &str, lease: Duration) -> Result<()> {
    let breaker = locks.join(format!("{id}.break"));
    match fs::create_dir(&breaker) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Someone else is breaking it; if they died doing so, their
            // breaker is stale after a lease.
            if let Ok(t) = fs::metadata(&breaker).and_then(|m| m.modified()) {
                if SystemTime::now().duration_since(t).is_ok_and(|a| a > lease) {
                    let _ = fs::remove_dir(&breaker);
                }
            }
            return signals::sleep_interruptible(Duration::from_millis(50));
        }
        Err(e) => return Err(Error::io("create lock breaker", &breaker, e)),
    }
    let dir = locks.join(id);
    let now_holder = fs::read_to_string(dir.join("owner")).unwrap_or_default();
    if now_holder == holder && is_stale(&dir, &now_holder, me, lease) {
        crate::warn!(
            "removing a stale lock {} (holder: {})",
            dir.display(),
            holder.replace('\n', " ").trim()
        );
        // Owner last: a lock directory without one is never live.
        let _ = fs::remove_file(dir.join(PROGRESS));
        let _ = fs::remove_file(dir.join(".progress"));
        let _ = fs::remove_file(dir.join("owner"));
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            // Gone, or already someone else's: a waiter that found it
            // without an owner removed it and another took the lock.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
            Err(e) => {
                let _ = fs::remove_dir(&breaker);
                return Err(Error::io("remove stale lock", &dir, e));
            }
        }
    }
    let _ = fs::remove_dir(&breaker);
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

/// Remove `<id>.new.*` directories of processes that died between making
/// their lock and renaming it into place: this host's when their maker is
/// gone, other hosts' once their lease has expired.
fn sweep_abandoned(locks: &Path, id: &str, me: &str, mine: &Path, lease: Duration) {
    let prefix = format!("{id}.new.");
    let my_tag = format!("{:016x}", fnv1a(me.as_bytes()));
    let Ok(entries) = fs::read_dir(locks) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if e.path() == mine {
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
            let owner = fs::read_to_string(e.path().join("owner")).unwrap_or_default();
            is_stale(&e.path(), &owner, me, lease)
        };
        if stale {
            let _ = fs::remove_file(e.path().join("owner"));
            let _ = fs::remove_dir(e.path());
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
    fn lock_excludes_and_releases() {
        let t = tempfile::tempdir().unwrap();
        let a = Lock::acquire(t.path(), Path::new("x")).unwrap();
        let dir = t.path().join(".sharelink/locks/x");
        assert!(dir.join("owner").exists());
        // Same host, live owner: not stale.
        let holder = fs::read_to_string(dir.join("owner")).unwrap();
        let (me, _) = identity();
        assert!(!is_stale(&dir, &holder, &me, DEFAULT_LEASE));
        // A dead pid on this host: stale.
        let dead = holder.replace(&format!("pid={}", std::process::id()), "pid=999999999");
        assert!(is_stale(&dir, &dead, &me, DEFAULT_LEASE));
        // Another host with a fresh lease: live.
        assert!(!is_stale(&dir, "host=elsewhere\n", &me, DEFAULT_LEASE));
        drop(a);
        assert!(!dir.exists());
    }

    #[test]
    fn private_names_differ_across_hosts_and_abandoned_ones_are_swept() {
        let (me, _) = identity();
        // Two containers, each sharelink PID 1 with the same start time.
        let a = fresh_name("x", "host=a\nboot=b\npidns=1\n", 1, "5");
        let b = fresh_name("x", "host=c\nboot=b\npidns=1\n", 1, "5");
        assert_ne!(a, b);
        let t = tempfile::tempdir().unwrap();
        let locks = t.path();
        // This host, maker dead before it wrote the owner file: swept.
        let dead = locks.join(fresh_name("x", &me, 999_999_999, "1"));
        fs::create_dir(&dead).unwrap();
        // Another host, fresh: may be mid-acquire, kept.
        let other = locks.join(b);
        fs::create_dir(&other).unwrap();
        // This host, alive: kept.
        let pid = std::process::id();
        let live = locks.join(fresh_name("x", &me, pid, &start_time(pid).unwrap()));
        fs::create_dir(&live).unwrap();
        sweep_abandoned(locks, "x", &me, &locks.join("none"), DEFAULT_LEASE);
        assert!(!dead.exists());
        assert!(other.exists() && live.exists());
        // The other host's, once its lease has run out: swept.
        std::thread::sleep(Duration::from_millis(20));
        sweep_abandoned(locks, "x", &me, &locks.join("none"), Duration::ZERO);
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
        let locks = root.join(".sharelink/locks");
        let dir = locks.join("x");
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
            while Instant::now() < until {
                touch(&holder_dir.join("owner")).unwrap();
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
        sweep_abandoned(&locks, "x", third, &locks.join("none"), lease);
        let private: Vec<_> = fs::read_dir(&locks)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("x.new."))
            .collect();
        assert_eq!(private.len(), 1, "the waiter's private directory was swept");
        holder.join().unwrap();
        let lock = waiter.join().unwrap().expect("the waiter takes the lock");
        let owner = fs::read_to_string(dir.join("owner")).unwrap();
        assert!(
            !is_stale(&dir, &owner, third, lease),
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
        let (me, _) = identity();
        fs::write(dir.join("owner"), format!("{me}pid=999999999\nstart=1\n")).unwrap();
        let l = Lock::acquire(t.path(), Path::new("x")).unwrap();
        l.verify().unwrap();
    }
}
