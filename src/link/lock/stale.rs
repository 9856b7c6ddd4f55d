//! Locks whose holder is gone: waiting a turn, breaking a stale lock under
//! `<id>.break`, clearing ownerless directories and private names of makers
//! that died, and the clean-up runs that need no lock do.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::owner::{identity, is_stale, look, start_time, who, Seen};
use super::{lease, lock_id, locks_rel, open_locks, MAX_READ, OWNER, PROGRESS, PROGRESS_TMP};
use crate::error::{Error, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::{Kind, Time};
use crate::fs::names::fnv1a;
use crate::signals;

/// The lock `id` is taken: clear it if its holder is gone, else say who
/// holds it (once per holder) and wait a moment.
pub(super) fn wait_turn(
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
pub(super) fn clear_ownerless(locks: &Dir, name: &OsStr) {
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

/// The names in `<share_root>/.sharelink/locks`, read once per run. Almost
/// always empty (locks live only while a migration runs), so a plain list.
pub(crate) type LockNames = Vec<String>;

/// List the lock directory (empty when there is none). A read-only listing;
/// [`clear_stale`] re-checks without following symlinks before removing.
pub(crate) fn lock_names(share_root: &Path) -> LockNames {
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
pub(crate) fn clear_stale(share_root: &Path, share_rel: &Path, present: &LockNames) {
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
pub(super) fn break_stale(
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
pub(super) fn fresh_name(id: &str, me: &str, pid: u32, start: &str) -> String {
    format!("{id}.new.{:016x}.{pid}.{start}", fnv1a(me.as_bytes()))
}

/// [`sweep_abandoned`] on a thread of its own: it is housekeeping (a
/// listing of the locks directory, three round trips on a network share),
/// and the lock's holder need not wait for it. On the calling thread if no
/// thread can be started.
pub(super) fn sweep_in_background(locks: &Dir, id: &str, me: &str, mine: &str, lease: Duration) {
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
pub(super) fn sweep_abandoned(locks: &Dir, id: &str, me: &str, mine: &str, lease: Duration) {
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
pub(super) fn fastish_rand() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    fnv1a(&(t ^ std::process::id() as u64).to_le_bytes())
}
