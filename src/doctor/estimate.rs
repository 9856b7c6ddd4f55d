//! How long a link's first start will take on this share: its baked tree
//! counted (locally, on the app side), and the migration's cost in round
//! trips from the measured one.
//!
//! The migration (docs/design.md, "Migration") does a fixed number of
//! ordered steps (lock, staging, commit rename, marker, syncs, symlink),
//! creates directories in tree order, and copies files on `parallelism`
//! workers, each file costing a handful of requests (lookup, create,
//! writes, attributes, times, release). The constants below were fitted
//! to `sharelink link` on the latency rig (docs/performance.md).

use std::ffi::OsStr;
use std::io;
use std::path::Path;

use crate::fs::dir::Dir;
use crate::fs::meta::Kind;

/// What a baked tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tree {
    /// Every non-directory entry (files, symlinks, …).
    pub files: u64,
    pub dirs: u64,
    /// Bytes the files occupy (holes excluded).
    pub bytes: u64,
}

/// Count the tree below `path`, never following a symlink.
pub fn count(path: &Path) -> io::Result<Tree> {
    let mut t = Tree::default();
    let root = Dir::open_nofollow(path)?;
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for (name, _) in d.list()? {
            let Some(m) = d.stat_at(&name)? else { continue };
            if m.kind == Kind::Dir {
                t.dirs += 1;
                match d.open_dir(OsStr::new(&name)) {
                    Ok(sub) => stack.push(sub),
                    Err(e) if crate::fs::gone(&e) => {}
                    Err(e) => return Err(e),
                }
            } else {
                t.files += 1;
                t.bytes += m.footprint();
            }
        }
    }
    Ok(t)
}

/// Round trips in order whatever the size: lock, staging, journal, commit,
/// marker, symlink and their checks.
const FIXED_ROUND_TRIPS: f64 = 60.0;
/// Per directory, in tree order: lookup, mkdir, attributes, times.
const DIR_ROUND_TRIPS: f64 = 4.0;
/// Per file, spread over the workers: lookup, create, write, attributes,
/// times, release, and the checks around them.
const FILE_ROUND_TRIPS: f64 = 20.0;
/// Local work per file that no latency hides (inventory, journal, delete).
const FILE_LOCAL_MS: f64 = 0.3;
/// Bytes per write request; a file's writes are in order.
const WRITE_BYTES: f64 = 1024.0 * 1024.0;
/// What the local side copies at most, bytes per second.
const LOCAL_BYTES_PER_S: f64 = 200e6;

/// Seconds for a first start that moves `t` with `parallelism` workers
/// at `round_trip_ms` per request.
pub fn seconds(t: &Tree, round_trip_ms: f64, parallelism: usize) -> f64 {
    let rtt = round_trip_ms.max(0.0) / 1e3;
    let workers = (parallelism.max(1) as f64).min(t.files.max(1) as f64);
    let files = t.files as f64;
    let ordered = (FIXED_ROUND_TRIPS + DIR_ROUND_TRIPS * t.dirs as f64) * rtt;
    let spread = FILE_ROUND_TRIPS * files / workers * rtt;
    // Each write is a round trip (two on FUSE); big files are where they add up.
    let writes = 2.0 * (t.bytes as f64 / WRITE_BYTES) / workers * rtt;
    let local = files * FILE_LOCAL_MS / 1e3 + t.bytes as f64 / LOCAL_BYTES_PER_S;
    ordered + spread + writes + local
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
        assert_eq!((c.files, c.dirs), (3, 2));
        assert!(c.bytes >= 10_001, "{c:?}");
        let fast = seconds(&c, 1.0, 32);
        assert!(seconds(&c, 10.0, 32) > 5.0 * fast);
        let many = Tree { files: 1000, ..c };
        assert!(seconds(&many, 2.0, 32) < seconds(&many, 2.0, 1) / 10.0);
    }
}
