//! What the share keeps, each probed for real in doctor's own probe
//! directory: create the thing, read it back, compare. Every call is an
//! `*at()` call relative to the probe directory, never following a symlink.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::fs::dir::Dir;
use crate::fs::meta::{Kind, Time};

/// The probe file every other probe builds on.
const FILE: &str = "probe-file";
/// Every name the probes may create in the probe directory, for cleanup.
pub(crate) const NAMES: [&str; 5] = [FILE, SYMLINK, HARD_LINK, FIFO, CASE];
const SYMLINK: &str = "probe-symlink";
const HARD_LINK: &str = "probe-hardlink";
const FIFO: &str = "probe-fifo";
const CASE: &str = "case-probe";
const CASE_OTHER: &str = "CASE-PROBE";
const XATTR: &str = "user.sharelink-doctor";
/// Metadata round trips timed; the median is reported.
const ROUND_TRIPS: usize = 7;

/// What the share keeps (the `supports` object of `--json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Supports {
    pub(crate) symlinks: bool,
    pub(crate) hard_links: bool,
    pub(crate) xattrs: bool,
    pub(crate) modes: bool,
    pub(crate) owners: bool,
    pub(crate) special_files: bool,
    pub(crate) byte_range_locks: bool,
}

impl Supports {
    /// In `--json` order, with the names it uses.
    pub(crate) fn named(&self) -> [(&'static str, bool); 7] {
        [
            ("symlinks", self.symlinks),
            ("hard_links", self.hard_links),
            ("xattrs", self.xattrs),
            ("modes", self.modes),
            ("owners", self.owners),
            ("special_files", self.special_files),
            ("byte_range_locks", self.byte_range_locks),
        ]
    }
}

/// Everything measured in the probe directory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measured {
    pub(crate) supports: Supports,
    /// Owners are only probed as root (only root may give a file away).
    pub(crate) owners_probed: bool,
    pub(crate) case_insensitive: bool,
    pub(crate) round_trip_ms: f64,
    /// The time per operation with `in_flight` of them at once: what
    /// latency hiding and the CPU leave of the round trip when many
    /// requests are in flight, as in a migration.
    pub(crate) parallel_op_ms: f64,
    pub(crate) in_flight: usize,
    /// The fresh probe file's mtime minus the local clock, ms.
    pub(crate) clock_skew_ms: Option<f64>,
}

/// Run every probe in `dir` (doctor's own, empty probe directory). Only a
/// failure to create the probe file is an error: that is "cannot write".
#[inline(never)]
pub(crate) fn probe(dir: &Dir, in_flight: usize) -> io::Result<Measured> {
    let round_trip_ms = round_trip(dir)?;
    let parallel_op_ms = parallel_op(dir, in_flight);
    let before = Time::now();
    let file = dir.create(OsStr::new(FILE), 0o600)?;
    nix::unistd::write(&file, b"sharelink doctor probe\n").map_err(io::Error::from)?;
    let after = Time::now();
    let clock_skew_ms = dir.stat_at(OsStr::new(FILE))?.map(|m| {
        let mid = (before.as_nanos() + after.as_nanos()) / 2;
        (m.id.mtime.as_nanos() - mid) as f64 / 1e6
    });
    drop(file);
    let owners_probed = nix::unistd::geteuid().is_root();
    let supports = Supports {
        symlinks: symlinks(dir),
        hard_links: hard_links(dir),
        xattrs: xattrs(dir),
        modes: modes(dir),
        owners: owners_probed && owners(dir),
        special_files: special_files(dir),
        byte_range_locks: byte_range_locks(dir),
    };
    Ok(Measured {
        supports,
        owners_probed,
        case_insensitive: case_insensitive(dir),
        round_trip_ms,
        parallel_op_ms,
        in_flight,
        clock_skew_ms,
    })
}

/// The median time of a `stat` of a name never used before: nothing can
/// have it cached, so each is one round trip to the server.
pub(crate) fn round_trip(dir: &Dir) -> io::Result<f64> {
    let mut ms = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let name = format!("rt-{i}-absent");
        let t = Instant::now();
        dir.stat_at(OsStr::new(&name))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Per thread, in [`parallel_op`].
const PARALLEL_OPS: usize = 4;
/// Bursts measured; the fastest counts.
const PARALLEL_BURSTS: usize = 3;

/// The wall time of `threads` × [`PARALLEL_OPS`] `stat`s of fresh names,
/// `threads` at once, per operation. (A failing `stat` fails
/// [`round_trip`] already; scoped threads join on leaving the scope.)
fn parallel_op(dir: &Dir, threads: usize) -> f64 {
    let threads = threads.max(1);
    // The least of a few bursts: a busy CPU or a stall in one burst is not
    // the share's pace.
    (0..PARALLEL_BURSTS)
        .map(|b| {
            let t = Instant::now();
            std::thread::scope(|s| {
                for w in 0..threads {
                    s.spawn(move || {
                        for i in 0..PARALLEL_OPS {
                            let _ = dir.stat_at(OsStr::new(&format!("par-{b}-{w}-{i}-absent")));
                        }
                    });
                }
            });
            t.elapsed().as_secs_f64() * 1e3 / (threads * PARALLEL_OPS) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn symlinks(dir: &Dir) -> bool {
    dir.symlink(OsStr::new(FILE), OsStr::new(SYMLINK)).is_ok()
        && dir.read_link(OsStr::new(SYMLINK)).ok().as_deref() == Some(OsStr::new(FILE))
        && matches!(dir.stat_at(OsStr::new(SYMLINK)), Ok(Some(m)) if m.kind == Kind::Symlink)
}

fn hard_links(dir: &Dir) -> bool {
    if dir
        .hard_link(OsStr::new(FILE), dir, OsStr::new(HARD_LINK))
        .is_err()
    {
        return false;
    }
    match (
        dir.stat_at(OsStr::new(FILE)),
        dir.stat_at(OsStr::new(HARD_LINK)),
    ) {
        (Ok(Some(a)), Ok(Some(b))) => a.id.ino == b.id.ino && b.nlink >= 2,
        _ => false,
    }
}

/// Open the probe file again (read-write, never following).
fn reopen(dir: &Dir) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        FILE,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

fn xattrs(dir: &Dir) -> bool {
    let Ok(fd) = reopen(dir) else { return false };
    let name = CString::new(XATTR).expect("no NUL");
    let value = b"1";
    // SAFETY: valid fd, NUL-terminated name, buffers of the given sizes.
    let set = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    let mut back = [0u8; 8];
    // SAFETY: as above.
    let got = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            back.as_mut_ptr().cast(),
            back.len(),
        )
    };
    set == 0 && got == 1 && back[0] == b'1'
}

fn modes(dir: &Dir) -> bool {
    let Ok(fd) = reopen(dir) else { return false };
    // Created 0600: a share that shows fixed modes cannot show 0640.
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o640)).is_ok()
        && matches!(dir.stat_at(OsStr::new(FILE)), Ok(Some(m)) if m.perm == 0o640)
}

fn owners(dir: &Dir) -> bool {
    let Ok(fd) = reopen(dir) else { return false };
    let Ok(Some(m)) = dir.stat_at(OsStr::new(FILE)) else {
        return false;
    };
    // Any uid other than the current one (65534 is `nobody`).
    let to = if m.uid == 65534 { 65533 } else { 65534 };
    nix::unistd::fchown(&fd, Some(to.into()), None).is_ok()
        && matches!(dir.stat_at(OsStr::new(FILE)), Ok(Some(m)) if m.uid == to)
}

fn special_files(dir: &Dir) -> bool {
    dir.mknod(OsStr::new(FIFO), Kind::Fifo, 0o600, 0).is_ok()
        && matches!(dir.stat_at(OsStr::new(FIFO)), Ok(Some(m)) if m.kind == Kind::Fifo)
}

/// A byte-range lock that holds and is advisory: a second open file
/// description cannot take the same range, yet can still read it (SMB
/// enforces locks as mandatory: the read fails there, and SQLite with it).
fn byte_range_locks(dir: &Dir) -> bool {
    let (Ok(a), Ok(b)) = (reopen(dir), reopen(dir)) else {
        return false;
    };
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 4,
        l_pid: 0,
    };
    let set = |fd: &OwnedFd, cmd: libc::c_int| {
        let mut l = lock;
        // SAFETY: valid fd and a valid flock struct.
        if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut l) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error())
        }
    };
    match set(&a, libc::F_OFD_SETLK) {
        Ok(()) => {}
        // No OFD locks (old kernel): a process lock taken is all we learn.
        Err(Some(libc::EINVAL)) => return set(&a, libc::F_SETLK).is_ok(),
        Err(_) => return false,
    }
    let conflict = matches!(
        set(&b, libc::F_OFD_SETLK),
        Err(Some(libc::EAGAIN | libc::EACCES))
    );
    let mut byte = [0u8; 1];
    // SAFETY: valid fd and a buffer of the given size.
    let readable = unsafe { libc::pread(b.as_raw_fd(), byte.as_mut_ptr().cast(), 1, 0) } == 1;
    conflict && readable
}

/// Create `case-probe`, look for `CASE-PROBE`.
fn case_insensitive(dir: &Dir) -> bool {
    dir.create(OsStr::new(CASE), 0o600).is_ok()
        && matches!(dir.stat_at(OsStr::new(CASE_OTHER)), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_directory_keeps_everything_but_case() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let m = probe(&d, 4).unwrap();
        let s = m.supports;
        assert!(
            s.symlinks && s.hard_links && s.modes && s.special_files,
            "{m:?}"
        );
        assert!(s.byte_range_locks, "{m:?}");
        assert!(!m.case_insensitive);
        assert_eq!(s.owners, m.owners_probed);
        assert!(m.round_trip_ms < 100.0);
        assert!(m.clock_skew_ms.unwrap().abs() < 1000.0, "{m:?}");
    }
}
