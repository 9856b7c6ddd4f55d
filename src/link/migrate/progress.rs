//! Progress of a long migration: counters the workers bump, and an INFO
//! line every few seconds once a migration has taken more than a moment.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Quiet for short migrations; then one line per this interval.
const FIRST_AFTER: Duration = Duration::from_secs(2);
const EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Progress {
    link: String,
    files_total: AtomicU64,
    bytes_total: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    started: Mutex<Instant>,
    last: Mutex<Option<Instant>>,
    /// After the copy: app entries to remove, and about how many are gone
    /// (0 total: not deleting).
    delete_total: AtomicU64,
    deleted: AtomicU64,
    delete_started: Mutex<Option<Instant>>,
}

/// A point-in-time view, for the log and for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) files: u64,
    pub(crate) files_total: u64,
    pub(crate) bytes: u64,
    pub(crate) bytes_total: u64,
    pub(crate) elapsed: Duration,
}

impl Snapshot {
    /// Bytes per second so far.
    fn rate(&self) -> u64 {
        let ms = self.elapsed.as_millis() as u64;
        if ms == 0 {
            0
        } else {
            (self.bytes as u128 * 1000 / ms as u128) as u64
        }
    }

    /// Time left at the rate so far: the longer of the estimates from
    /// bytes and from files. On a network share each file costs round
    /// trips whatever its size, so for many small files bytes alone
    /// promise far too soon an end; for one big file, files alone say
    /// nothing until it is done (an estimate needs some of its kind done).
    fn eta(&self) -> Option<Duration> {
        let ms = self.elapsed.as_millis();
        if ms == 0 {
            return None;
        }
        [
            (self.bytes, self.bytes_total),
            (self.files, self.files_total),
        ]
        .into_iter()
        .filter(|&(done, total)| done > 0 && done < total)
        .map(|(done, total)| ms * (total - done) as u128 / done as u128)
        .max()
        .map(|left| Duration::from_millis(left as u64))
    }

    /// `1234/5000 files, 1.2 GiB/4.0 GiB, 85.0 MiB/s, about 34s left`
    pub(crate) fn describe(&self) -> String {
        Published::of(self).describe()
    }
}

/// A snapshot as the migrating process publishes it in its lock, for
/// `status` in other processes: `key=value` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) files: u64,
    pub(crate) files_total: u64,
    pub(crate) bytes: u64,
    pub(crate) bytes_total: u64,
    pub(crate) rate: u64,
    pub(crate) eta_s: Option<u64>,
}

impl Published {
    pub(crate) fn of(snap: &Snapshot) -> Published {
        Published {
            files: snap.files,
            files_total: snap.files_total,
            bytes: snap.bytes,
            bytes_total: snap.bytes_total,
            rate: snap.rate(),
            eta_s: snap.eta().map(|d| d.as_secs()),
        }
    }

    pub(crate) fn to_text(self) -> String {
        format!(
            "files={}\nfiles_total={}\nbytes={}\nbytes_total={}\nrate={}\neta_s={}\n",
            self.files,
            self.files_total,
            self.bytes,
            self.bytes_total,
            self.rate,
            self.eta_s.unwrap_or(0)
        )
    }

    pub(crate) fn parse(text: &str) -> Option<Published> {
        let num = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))?
                .trim()
                .parse()
                .ok()
        };
        Some(Published {
            files: num("files")?,
            files_total: num("files_total")?,
            bytes: num("bytes")?,
            bytes_total: num("bytes_total")?,
            rate: num("rate").unwrap_or(0),
            eta_s: num("eta_s").filter(|&s| s > 0),
        })
    }

    /// `120/5000 files, 1.2 GiB/4.0 GiB, 85.0 MiB/s, about 34s left`
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "{}/{} files, {}/{}",
            self.files,
            self.files_total,
            human(self.bytes),
            human(self.bytes_total)
        );
        if self.rate > 0 {
            s.push_str(&format!(", {}/s", human(self.rate)));
        }
        if let Some(eta) = self.eta_s {
            s.push_str(&format!(", about {eta}s left"));
        }
        s
    }
}

/// `1.2 GiB` (integer arithmetic: no float formatting in the binary).
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    let mut scale: u64 = 1;
    while n / scale >= 1024 && u < UNITS.len() - 1 {
        scale *= 1024;
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    // Tenths, rounded.
    let tenths = (n as u128 * 10 + scale as u128 / 2) / scale as u128;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[u])
}

impl Progress {
    pub(crate) fn new(link: String) -> Progress {
        Progress {
            link,
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Mutex::new(Instant::now()),
            last: Mutex::new(None),
            delete_total: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            delete_started: Mutex::new(None),
        }
    }

    /// The copy is done and `total` app entries are about to be removed:
    /// progress lines from now on are about that.
    pub(crate) fn start_deleting(&self, total: u64) {
        self.delete_total.store(total, Relaxed);
        self.deleted.store(0, Relaxed);
        *self
            .delete_started
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// About `n` more entries removed.
    pub(crate) fn deleted(&self, n: u64) {
        self.deleted.fetch_add(n, Relaxed);
    }

    /// `removing the app's copies: 6400/20000 entries, about 12s left`,
    /// when deleting has gone on for a while.
    fn deleting_line(&self) -> Option<String> {
        let total = self.delete_total.load(Relaxed);
        let since = (*self
            .delete_started
            .lock()
            .unwrap_or_else(|p| p.into_inner()))?;
        if total == 0 || since.elapsed() < FIRST_AFTER {
            return None;
        }
        let done = self.deleted.load(Relaxed).min(total);
        let snap = Snapshot {
            files: done,
            files_total: total,
            bytes: 0,
            bytes_total: 0,
            elapsed: since.elapsed(),
        };
        let mut s = format!("copied; removing the app's copies: about {done}/{total} entries");
        if let Some(eta) = snap.eta() {
            s.push_str(&format!(", about {}s left", eta.as_secs()));
        }
        Some(s)
    }

    /// A new copy begins: its totals, counters back to zero.
    pub(crate) fn start(&self, files_total: u64, bytes_total: u64) {
        self.delete_total.store(0, Relaxed);
        self.files_total.store(files_total, Relaxed);
        self.bytes_total.store(bytes_total, Relaxed);
        self.files.store(0, Relaxed);
        self.bytes.store(0, Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub(crate) fn add(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// The byte counter, for copies that count as they go.
    pub(crate) fn copied(&self) -> &AtomicU64 {
        &self.bytes
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            files: self.files.load(Relaxed),
            files_total: self.files_total.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            bytes_total: self.bytes_total.load(Relaxed),
            elapsed: self
                .started
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        }
    }

    /// The snapshot to report now, if a line is due.
    pub(crate) fn due(&self) -> Option<Snapshot> {
        let snap = self.snapshot();
        if snap.elapsed < FIRST_AFTER || snap.files_total == 0 {
            return None;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        Some(snap)
    }

    /// Log a line if one is due; returns the snapshot logged.
    pub(crate) fn maybe_log(&self) -> Option<Snapshot> {
        if let Some(line) = self.deleting_line() {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !last.is_some_and(|t| t.elapsed() < EVERY) {
                *last = Some(Instant::now());
                tracing::info!(link = %self.link, "migrating: {line}");
            }
            return None;
        }
        let snap = self.due()?;
        tracing::info!(
            link = %self.link,
            files = snap.files,
            files_total = snap.files_total,
            bytes = snap.bytes,
            bytes_total = snap.bytes_total,
            rate = snap.rate(),
            eta_s = snap.eta().map(|d| d.as_secs()).unwrap_or(0),
            "migrating: {}",
            snap.describe()
        );
        Some(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_eta_and_words() {
        let s = Snapshot {
            files: 50,
            files_total: 100,
            bytes: 512 << 20,
            bytes_total: 1 << 30,
            elapsed: Duration::from_secs(10),
        };
        assert_eq!(s.rate(), (512 << 20) / 10);
        assert_eq!(s.eta().unwrap().as_secs(), 10);
        assert_eq!(
            s.describe(),
            "50/100 files, 512.0 MiB/1.0 GiB, 51.2 MiB/s, about 10s left"
        );
        assert_eq!(human(1023), "1023 B");
        let done = Snapshot {
            files: 100,
            bytes: 1 << 30,
            ..s
        };
        assert_eq!(done.eta(), None);
        // Many small files: the bytes are nearly all there (the big files
        // went first), the files not; the files' pace decides.
        let small = Snapshot {
            files: 1_000,
            files_total: 100_000,
            bytes: 900 << 20,
            bytes_total: 1000 << 20,
            elapsed: Duration::from_secs(10),
        };
        assert_eq!(small.eta().unwrap().as_secs(), 990);
        // One big file under way: no file done yet, the bytes decide.
        let big = Snapshot {
            files: 0,
            files_total: 1,
            bytes: 1 << 30,
            bytes_total: 4 << 30,
            elapsed: Duration::from_secs(10),
        };
        assert_eq!(big.eta().unwrap().as_secs(), 30);
    }

    #[test]
    fn deletion_has_its_own_line() {
        let p = Progress::new("data".into());
        p.start(10, 100);
        assert_eq!(p.deleting_line(), None);
        p.start_deleting(20_000);
        // Quiet at first, like the copy.
        assert_eq!(p.deleting_line(), None);
        *p.delete_started.lock().unwrap() = Some(Instant::now() - Duration::from_secs(10));
        p.deleted(5_000);
        assert_eq!(
            p.deleting_line().unwrap(),
            "copied; removing the app's copies: about 5000/20000 entries, about 30s left"
        );
        // A new copy (another pass) is about copying again.
        p.start(1, 1);
        assert_eq!(p.deleting_line(), None);
    }

    #[test]
    fn published_round_trip() {
        let s = Snapshot {
            files: 50,
            files_total: 100,
            bytes: 512 << 20,
            bytes_total: 1 << 30,
            elapsed: Duration::from_secs(10),
        };
        let p = Published::of(&s);
        assert_eq!(Published::parse(&p.to_text()), Some(p));
        assert_eq!(p.describe(), s.describe());
        assert_eq!(Published::parse("files=1\n"), None);
    }
}
