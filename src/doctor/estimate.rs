//! How long a link's first start will take on this share: its baked tree
//! counted (locally, on the app side), and the migration's cost in round
//! trips from the measured one.
//!
//! The migration (docs/design.md, "Migration") does a fixed number of
//! ordered steps (lock, staging, commit rename, marker, syncs, symlink),
//! makes each directory before its entries, creates the entries of one
//! directory one at a time (the kernel holds the directory's lock for each
//! create), and otherwise keeps `parallelism` requests in flight. So the
//! price has three parts: the ordered steps at the round trip, then the
//! longer of the widest directory at the round trip per entry and all
//! requests at the pace the probes measured with `parallelism` in flight
//! (which also catches a busy CPU); the copy works in several directories
//! at once, so those two overlap. The constants were fitted to `sharelink link` on the latency rig
//! (docs/performance.md).

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use crate::fs::dir::Dir;
use crate::fs::meta::Kind;

/// What a baked tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tree {
    /// Every non-directory entry (files, symlinks, …).
    pub(crate) files: u64,
    pub(crate) dirs: u64,
    /// Bytes the files occupy (holes excluded).
    pub(crate) bytes: u64,
    /// Symlinks among the files: a share without symlinks cannot take them.
    pub(crate) symlinks: u64,
    /// The most entries directly in one directory: entries are created in
    /// a directory one at a time (the kernel locks the directory for each).
    pub(crate) widest: u64,
    /// Directory levels below the top.
    pub(crate) depth: u64,
}

/// Count the tree below `path`, never following a symlink.
pub(crate) fn count(path: &Path) -> io::Result<Tree> {
    let mut t = Tree::default();
    let root = Dir::open_nofollow(path)?;
    let mut stack = vec![(root, 0)];
    while let Some((d, level)) = stack.pop() {
        t.depth = t.depth.max(level);
        let names = d.list()?;
        t.widest = t.widest.max(names.len() as u64);
        for (name, _) in names {
            let Some(m) = d.stat_at(&name)? else { continue };
            if m.kind == Kind::Dir {
                t.dirs += 1;
                match d.open_dir(OsStr::new(&name)) {
                    Ok(sub) => stack.push((sub, level + 1)),
                    Err(e) if crate::fs::gone(&e) => {}
                    Err(e) => return Err(e),
                }
            } else {
                t.files += 1;
                t.bytes += m.footprint();
                t.symlinks += u64::from(m.kind == Kind::Symlink);
            }
        }
    }
    Ok(t)
}

/// What the probes measured that prices a migration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pace {
    /// One request at a time.
    pub(crate) round_trip_ms: f64,
    /// Per request, with the migration's parallelism in flight.
    pub(crate) parallel_op_ms: f64,
}

/// Round trips in order whatever the size: lock, staging, journal, commit,
/// marker, symlink and their checks.
const FIXED_ROUND_TRIPS: f64 = 60.0;
/// Per level of the tree, in order: a directory is made before its entries.
const LEVEL_ROUND_TRIPS: f64 = 4.0;
/// Round trips per entry of one directory that wait for each other (the
/// lookup and the create under the directory's lock, and the requests
/// queued behind them).
const SERIAL_ROUND_TRIPS: f64 = 5.0;
/// Requests per file and per directory, spread over the workers: lookup,
/// create, write, attributes, times, flush, release, and the checks around
/// them.
const FILE_REQUESTS: f64 = 20.0;
const DIR_REQUESTS: f64 = 8.0;
/// Bytes per write request; a file's writes are in order.
const WRITE_BYTES: f64 = 1024.0 * 1024.0;
/// What the local side copies at most, bytes per second.
const LOCAL_BYTES_PER_S: f64 = 200e6;

/// Seconds for a first start that moves `t` at the measured pace: the
/// ordered steps, then the longer of the entries of the widest directory
/// one after another and every request at the pace measured with the
/// migration's parallelism in flight (the copy spreads over directories,
/// so the two overlap). Fitted to `sharelink link` on the latency rig at 0 to 20 ms
/// per request (docs/performance.md).
pub(crate) fn seconds(t: &Tree, pace: Pace) -> f64 {
    let rtt = pace.round_trip_ms.max(0.0) / 1e3;
    let par = pace.parallel_op_ms.max(0.0) / 1e3;
    let ordered = (FIXED_ROUND_TRIPS + LEVEL_ROUND_TRIPS * t.depth as f64) * rtt;
    let widest = SERIAL_ROUND_TRIPS * t.widest as f64 * rtt;
    // Each write is a request (two on FUSE); big files are where they add up.
    let requests = FILE_REQUESTS * t.files as f64
        + DIR_REQUESTS * t.dirs as f64
        + 2.0 * t.bytes as f64 / WRITE_BYTES;
    // The widest directory's chain runs in its own lane while the other
    // lanes keep the rest in flight: the longer of the two counts.
    ordered + widest.max(requests * par) + t.bytes as f64 / LOCAL_BYTES_PER_S
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_following_and_scales_with_latency() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/f"), vec![1u8; 10_000]).unwrap();
        std::fs::write(t.path().join("g"), b"x").unwrap();
        std::os::unix::fs::symlink("/", t.path().join("l")).unwrap();
        let c = count(t.path()).unwrap();
        assert_eq!((c.files, c.dirs, c.widest, c.depth), (3, 2, 3, 2));
        assert_eq!(c.symlinks, 1);
        assert!(c.bytes >= 10_001, "{c:?}");
        let pace = |rtt: f64, par: f64| Pace {
            round_trip_ms: rtt,
            parallel_op_ms: par,
        };
        let fast = seconds(&c, pace(1.0, 0.1));
        assert!(seconds(&c, pace(10.0, 1.0)) > 5.0 * fast);
        let many = Tree { files: 1000, ..c };
        assert!(seconds(&many, pace(2.0, 0.1)) < seconds(&many, pace(2.0, 2.0)) / 10.0);
    }
}
