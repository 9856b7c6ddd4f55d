//! Who holds a lock: the owner file this process writes (host, boot, PID
//! namespace, pid, start time), a lock directory read without trusting it,
//! whether its holder is gone, and the live holder `status` shows.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use super::{lease, lock_id, open_locks, MAX_READ, OWNER, PROGRESS};
use crate::fs::dir::Dir;
use crate::fs::meta::Time;

/// Who we are, as written into the owner file.
pub(super) fn identity() -> String {
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

/// The owner file's content: `me` ([`identity`]), then the holder's pid and
/// its start time ([`start_time`]). The one place that writes its format.
pub(super) fn record(me: &str, pid: u32, start: &str) -> String {
    format!("{me}pid={pid}\nstart={start}\n")
}

/// The owner file a lock held by process `pid` of this host has.
pub fn owner_file_of(pid: u32) -> String {
    record(&identity(), pid, &start_time(pid).unwrap_or_default())
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub(super) fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19).map(str::to_string)
}

pub(super) fn field<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    content
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `host=… pid=…` of an owner file, for messages: only those two fields,
/// printable and short, since anyone may have written the file.
pub(super) fn who(owner: &str) -> String {
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

/// What a lock directory holds, read without trusting it.
pub(super) enum Seen {
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

pub(super) fn look(locks: &Dir, name: &OsStr) -> Seen {
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

/// Whether a holder is gone: by process on this host, by lease elsewhere.
/// `mtime` is the owner file's (its lease); `None` when it is unknown.
pub(super) fn is_stale(holder: &str, mtime: Option<Time>, me: &str, lease: Duration) -> bool {
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
pub(crate) struct Holder {
    /// `host pid N`.
    pub(crate) who: String,
    /// What the holder last published.
    pub(crate) progress: Option<String>,
}

/// Who holds the lock of `share_rel` right now, if a live holder does (for
/// `status`; never writes).
pub(crate) fn holder(share_root: &Path, share_rel: &Path) -> Option<Holder> {
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
