//! Filesystem primitives: share paths walked without following symlinks,
//! atomic no-replace renames, `syncfs`, and a tree copier that keeps what
//! SPEC promises (bytes, directories, symlinks as symlinks, empty
//! directories, modes and mtimes where the target allows).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::{Error, IoContext, Result};

/// A short name for a file type, for messages.
pub fn kind_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// `lstat`, with "not there" as `None`.
pub fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a path below the share root is, found without following symlinks.
/// `empty` means "holds no files" ([`holds_no_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareNode {
    Missing,
    Dir {
        empty: bool,
    },
    /// The path (or a component above it) is a file or other non-directory.
    NotDir {
        at: PathBuf,
        kind: &'static str,
    },
    /// A component between the share root and the path is a symlink.
    Symlink {
        at: PathBuf,
    },
}

/// Walk `root/rel` component by component with `lstat`. A hostile or
/// confused share must not make us follow a symlink out of it. Emptiness
/// is only read when `want_empty` (it costs a directory read, a network
/// round trip on SMB); otherwise a directory reports `empty: false`.
pub fn share_node(root: &Path, rel: &Path, want_empty: bool) -> Result<ShareNode> {
    let mut cur = root.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(c) = parts.next() {
        cur.push(c);
        let Some(m) = lstat(&cur).ctx("inspect", &cur)? else {
            return Ok(ShareNode::Missing);
        };
        let ft = m.file_type();
        if ft.is_symlink() {
            return Ok(ShareNode::Symlink { at: cur });
        }
        if !ft.is_dir() {
            return Ok(ShareNode::NotDir {
                at: cur,
                kind: kind_name(ft),
            });
        }
        if parts.peek().is_none() {
            break;
        }
    }
    let empty = want_empty && holds_no_files(&cur).ctx("read", &cur)?;
    Ok(ShareNode::Dir { empty })
}

/// Whether a directory holds nothing but (empty) directories: a share
/// target with only the `dirs` sharelink made earlier is as good as empty,
/// and baked data shipped later should move in, not be set aside. Stops at
/// the first non-directory.
pub fn holds_no_files(dir: &Path) -> io::Result<bool> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if !e.file_type()?.is_dir() || !holds_no_files(&e.path())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove a tree of empty directories with `rmdir` only, children first:
/// anything else in it (a file that appeared meanwhile) fails with
/// ENOTEMPTY and stays.
pub fn remove_empty_dirs(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_empty_dirs(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

/// `mkdir -p root/rel` without following symlinks: each component is made
/// (EEXIST is fine: replicas race here) and then checked to be a real
/// directory. Returns whether the last component was created by us.
pub fn ensure_dir_beneath(root: &Path, rel: &Path) -> Result<bool> {
    let mut cur = root.to_path_buf();
    let mut created = false;
    for c in rel.components() {
        cur.push(c);
        created = false;
        match fs::create_dir(&cur) {
            Ok(()) => {
                created = true;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create directory", &cur, e)),
        }
        let m = fs::symlink_metadata(&cur).ctx("inspect", &cur)?;
        if m.file_type().is_symlink() {
            return Err(unsafe_symlink(&cur));
        }
        if !m.is_dir() {
            return Err(Error::Unsafe(format!(
                "{} is a {} where a directory belongs; move it away and re-run",
                cur.display(),
                kind_name(m.file_type())
            )));
        }
    }
    Ok(created)
}

pub fn unsafe_symlink(at: &Path) -> Error {
    Error::Unsafe(format!(
        "{} is a symlink inside the share; sharelink never follows those (it could write outside the share). Replace it with a directory",
        at.display()
    ))
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `renameat2(RENAME_NOREPLACE)`: fails with EEXIST instead of replacing.
/// Where the filesystem does not support the flag (some network
/// filesystems), a directory falls back to plain `rename`, which refuses a
/// non-empty target, so nothing can be lost; a file falls back to
/// `link`+`unlink`, which refuses any existing target.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid NUL-terminated paths; AT_FDCWD-relative.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
            if fs::symlink_metadata(from)?.is_dir() {
                if lstat(to)?.is_some_and(|m| !m.is_dir()) {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                match fs::rename(from, to) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                        Err(io::Error::from_raw_os_error(libc::EEXIST))
                    }
                    r => r,
                }
            } else {
                fs::hard_link(from, to)?;
                fs::remove_file(from)
            }
        }
        _ => Err(e),
    }
}

/// Flush the whole filesystem holding `path` (one call instead of an fsync
/// per file; SPEC: "one syncfs is enough").
pub fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("open for sync", path)?;
    // SAFETY: valid fd.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(Error::io("sync", path, io::Error::last_os_error()));
    }
    Ok(())
}

/// Callback run between files and between chunks of a large file: checks
/// for termination signals, refreshes the lock lease, hits failpoints.
pub trait Tick {
    fn tick(&mut self) -> Result<()>;
}

impl<F: FnMut() -> Result<()>> Tick for F {
    fn tick(&mut self) -> Result<()> {
        self()
    }
}

/// What a copy did, for the per-link log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Special files (fifos, sockets, devices) skipped: they hold no data.
    pub skipped: u64,
    /// The target refused chmod/chown/utimes (SMB without unix extensions).
    pub attrs_refused: u64,
}

impl CopyStats {
    pub fn add(&mut self, o: &CopyStats) {
        self.files += o.files;
        self.dirs += o.dirs;
        self.symlinks += o.symlinks;
        self.bytes += o.bytes;
        self.skipped += o.skipped;
        self.attrs_refused += o.attrs_refused;
    }
}

const CHUNK: u64 = 64 << 20;

/// Threads for copying and deleting: the per-file work (open, copy,
/// attributes, close) is syscall- and metadata-bound, so a second core
/// nearly halves it. Capped: a share is one network link.
fn workers() -> usize {
    // The CPUs we may run on (not std's available_parallelism, whose cgroup
    // parsing is 5 KB of a 1 MiB budget; a CPU quota only slows the copy).
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .clamp(1, 4)
}

/// What [`par_each`] runs per item: the item, this thread's stats, and
/// this thread's check to call between chunks of long work.
type Work<'a, T> =
    dyn Fn(&T, &mut CopyStats, &mut dyn FnMut() -> Result<()>) -> Result<()> + Sync + 'a;

/// Run `work` over `items` on up to [`workers`] threads. The calling thread
/// works too and runs `tick` (failpoints, the lock's lease) after each of
/// its items and, once out of items, every 20 ms until the others finish,
/// so a long file on another thread cannot outlive the lease. The other
/// threads check for termination signals. The first error stops everyone;
/// per-thread stats are summed.
fn par_each<T: Sync>(
    items: &[T],
    tick: &mut dyn Tick,
    stats: &mut CopyStats,
    work: &Work<'_, T>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Threads are not worth spawning for a handful of files.
    let threads = if items.len() < 32 { 1 } else { workers() };
    let worker = |check: &mut dyn FnMut() -> Result<()>, st: &mut CopyStats| -> Result<()> {
        while !stop.load(Relaxed) {
            let i = next.fetch_add(1, Relaxed);
            let Some(item) = items.get(i) else { break };
            if let Err(e) = work(item, st, check).and_then(|_| check()) {
                stop.store(true, Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut st = CopyStats::default();
                    worker(&mut crate::signals::check_interrupt, &mut st).map(|_| st)
                })
            })
            .collect();
        let mut result = worker(&mut || tick.tick(), stats);
        while others.iter().any(|h| !h.is_finished()) {
            if result.is_ok() {
                result = tick.tick();
                if result.is_err() {
                    stop.store(true, Relaxed);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for h in others {
            match h.join() {
                Ok(Ok(st)) => stats.add(&st),
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e)
                    }
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        result
    })
}

/// Copy `src` (file, symlink or directory tree; never followed) to `dst`,
/// which must not exist. One walk creates the directories and symlinks and
/// lists the files; the files are then copied in parallel; directories get
/// their mode and mtime last, so the mtime sticks.
pub fn copy_tree(src: &Path, dst: &Path, tick: &mut dyn Tick, stats: &mut CopyStats) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    plan_copy(src, dst, &mut files, &mut dirs, tick, stats)?;
    par_each(&files, tick, stats, &|(s, d, m): &FileJob, st, check| {
        copy_file(s, d, m, st, check)?;
        st.files += 1;
        st.bytes += m.len();
        Ok(())
    })?;
    for (d, m) in dirs.iter().rev() {
        set_attrs(d, m, stats);
        stats.dirs += 1;
    }
    Ok(())
}

type FileJob = (PathBuf, PathBuf, fs::Metadata);

fn plan_copy(
    src: &Path,
    dst: &Path,
    files: &mut Vec<FileJob>,
    dirs: &mut Vec<(PathBuf, fs::Metadata)>,
    tick: &mut dyn Tick,
    stats: &mut CopyStats,
) -> Result<()> {
    let m = fs::symlink_metadata(src).ctx("inspect", src)?;
    let ft = m.file_type();
    if ft.is_dir() {
        fs::create_dir(dst).ctx("create directory", dst)?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .ctx("read directory", src)?
            .collect::<io::Result<_>>()
            .ctx("read directory", src)?;
        // Stable order makes copies (and failpoint sweeps) reproducible.
        entries.sort_by_key(|e| e.file_name());
        dirs.push((dst.to_path_buf(), m));
        tick.tick()?;
        for e in entries {
            plan_copy(
                &e.path(),
                &dst.join(e.file_name()),
                files,
                dirs,
                tick,
                stats,
            )?;
        }
    } else if ft.is_file() {
        files.push((src.to_path_buf(), dst.to_path_buf(), m));
    } else if ft.is_symlink() {
        let target = fs::read_link(src).ctx("read symlink", src)?;
        std::os::unix::fs::symlink(&target, dst).ctx("create symlink", dst)?;
        stats.symlinks += 1;
        set_attrs(dst, &m, stats);
        tick.tick()?;
    } else {
        tracing::warn!(path = %src.display(), kind = kind_name(ft), "not copied: special files hold no data");
        stats.skipped += 1;
    }
    Ok(())
}

fn copy_file(
    src: &Path,
    dst: &Path,
    m: &fs::Metadata,
    stats: &mut CopyStats,
    between_chunks: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let mut from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)
        .ctx("open", src)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .ctx("create", dst)?;
    // std::io::copy uses copy_file_range/sendfile between files; chunks
    // keep a large file interruptible.
    loop {
        let n = io::copy(&mut (&mut from).take(CHUNK), &mut to).ctx("copy to", dst)?;
        if n < CHUNK {
            break;
        }
        between_chunks()?;
    }
    drop(from);
    set_file_attrs(&to, dst, m, stats);
    Ok(())
}

fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::EACCES | libc::ENOTSUP | libc::EINVAL | libc::ENOSYS)
    )
}

/// Owner, mode, mtime of an open file. A share that refuses (SMB: EPERM) is
/// counted, not an error.
fn set_file_attrs(f: &File, path: &Path, m: &fs::Metadata, stats: &mut CopyStats) {
    let mut refusals = 0;
    if let Err(e) = std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid())) {
        refusals += refused(&e) as u64;
    }
    if let Err(e) = f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777)) {
        refusals += refused(&e) as u64;
    }
    let times = fs::FileTimes::new()
        .set_modified(m.modified().unwrap_or(std::time::UNIX_EPOCH))
        .set_accessed(m.accessed().unwrap_or(std::time::UNIX_EPOCH));
    if let Err(e) = f.set_times(times) {
        refusals += refused(&e) as u64;
    }
    if refusals > 0 {
        tracing::debug!(path = %path.display(), "share refused owner/mode/mtime");
        stats.attrs_refused += 1;
    }
}

/// Owner, mode (not for symlinks) and mtime of a path, never following it.
fn set_attrs(path: &Path, m: &fs::Metadata, stats: &mut CopyStats) {
    let mut refusals = 0;
    if let Err(e) = std::os::unix::fs::lchown(path, Some(m.uid()), Some(m.gid())) {
        refusals += refused(&e) as u64;
    }
    if !m.file_type().is_symlink() {
        if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777)) {
            refusals += refused(&e) as u64;
        }
    }
    let atime = TimeSpec::new(m.atime(), m.atime_nsec());
    let mtime = TimeSpec::new(m.mtime(), m.mtime_nsec());
    if let Err(e) = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    ) {
        refusals += refused(&io::Error::from(e)) as u64;
    }
    if refusals > 0 {
        tracing::debug!(path = %path.display(), "share refused owner/mode/mtime");
        stats.attrs_refused += 1;
    }
}

/// Delete a tree (never following symlinks): one walk lists it, the
/// non-directories are unlinked in parallel, then the directories go
/// deepest first. `tick` runs between entries so a signal stops it at a
/// safe point; deleting is always safe to interrupt because callers only
/// delete what is durable elsewhere.
pub fn remove_tree(path: &Path, tick: &mut dyn Tick) -> Result<()> {
    let Some(m) = lstat(path).ctx("inspect", path)? else {
        return Ok(());
    };
    if !m.is_dir() {
        return remove_entry(path, false).and_then(|_| tick.tick());
    }
    let mut leaves = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    let mut i = 0;
    while let Some(d) = dirs.get(i).cloned() {
        i += 1;
        for e in fs::read_dir(&d).ctx("read directory", &d)? {
            let e = e.ctx("read directory", &d)?;
            if e.file_type().ctx("inspect", &e.path())?.is_dir() {
                dirs.push(e.path());
            } else {
                leaves.push(e.path());
            }
        }
    }
    par_each(
        &leaves,
        tick,
        &mut CopyStats::default(),
        &|p: &PathBuf, _, _| remove_entry(p, false),
    )?;
    // Breadth-first order reversed: children before their parents.
    for d in dirs.iter().rev() {
        remove_entry(d, true)?;
        tick.tick()?;
    }
    Ok(())
}

fn remove_entry(path: &Path, dir: bool) -> Result<()> {
    let r = if dir {
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// `dir/.name.suffix`: a hidden sibling of `path` for temporary state.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    sibling_with_room(path, suffix, 0)
}

/// [`sibling`], leaving `room` bytes under NAME_MAX for the caller to
/// append (such as `.<pid>`).
pub fn sibling_with_room(path: &Path, suffix: &str, room: usize) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let max = 255 - room;
    let mut s = format!(".{name}.{suffix}");
    // Stay under NAME_MAX (255) even for long names.
    if s.len() > max {
        let keep = max - suffix.len() - 2 - 17;
        let mut cut = keep;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        s = format!(".{}~{:016x}.{suffix}", &name[..cut], fnv1a(name.as_bytes()));
    }
    path.with_file_name(s)
}

/// FNV-1a: a stable, dependency-free hash for shortening names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `20261126T224501Z` for now (UTC), without a date crate.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_733_101)),
            "20261126T224501Z"
        );
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
    }

    #[test]
    fn siblings_stay_short() {
        assert_eq!(
            sibling(Path::new("/s/a/data"), "x"),
            Path::new("/s/a/.data.x")
        );
        let long = "é".repeat(127);
        let s = sibling(&Path::new("/s").join(&long), "sharelink-staging");
        assert!(s.file_name().unwrap().len() <= 255, "{}", s.display());
        assert_ne!(
            s,
            sibling(&Path::new("/s").join("é".repeat(126)), "sharelink-staging")
        );
        let s = sibling_with_room(&Path::new("/s").join("n".repeat(255)), "x", 11);
        assert!(s.file_name().unwrap().len() <= 244, "{}", s.display());
    }

    #[test]
    fn copy_keeps_tree() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("a/empty")).unwrap();
        fs::write(src.join("a/f"), b"hello").unwrap();
        fs::set_permissions(src.join("a/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("../nowhere", src.join("a/l")).unwrap();
        let mut stats = CopyStats::default();
        let mut ticks = 0;
        let mut tick = || {
            ticks += 1;
            Ok(())
        };
        copy_tree(&src, &t.path().join("dst"), &mut tick, &mut stats).unwrap();
        let d = t.path().join("dst");
        assert_eq!(fs::read(d.join("a/f")).unwrap(), b"hello");
        assert_eq!(fs::metadata(d.join("a/f")).unwrap().mode() & 0o777, 0o640);
        assert!(d.join("a/empty").is_dir());
        assert_eq!(
            fs::read_link(d.join("a/l")).unwrap(),
            Path::new("../nowhere")
        );
        assert_eq!(
            fs::metadata(src.join("a/f")).unwrap().mtime(),
            fs::metadata(d.join("a/f")).unwrap().mtime()
        );
        assert_eq!(
            (stats.files, stats.symlinks, stats.dirs, stats.bytes),
            (1, 1, 3, 5)
        );
        assert!(ticks >= 5);
    }

    #[test]
    fn noreplace_refuses() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        assert_eq!(
            rename_noreplace(&a, &b).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(fs::read(&b).unwrap(), b"b");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"a");
    }

    #[test]
    fn share_node_never_follows() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/", root.join("evil")).unwrap();
        fs::write(root.join("file"), "").unwrap();
        assert_eq!(
            share_node(root, Path::new("a/b"), true).unwrap(),
            ShareNode::Dir { empty: true }
        );
        assert_eq!(
            share_node(root, Path::new("a/b"), false).unwrap(),
            ShareNode::Dir { empty: false }
        );
        // Only empty directories below: as good as empty.
        assert_eq!(
            share_node(root, Path::new("a"), true).unwrap(),
            ShareNode::Dir { empty: true }
        );
        fs::write(root.join("a/b/f"), "").unwrap();
        assert_eq!(
            share_node(root, Path::new("a"), true).unwrap(),
            ShareNode::Dir { empty: false }
        );
        fs::remove_file(root.join("a/b/f")).unwrap();
        assert_eq!(
            share_node(root, Path::new("a/c/d"), true).unwrap(),
            ShareNode::Missing
        );
        assert!(matches!(
            share_node(root, Path::new("evil/tmp"), true).unwrap(),
            ShareNode::Symlink { .. }
        ));
        assert!(matches!(
            share_node(root, Path::new("file/x"), true).unwrap(),
            ShareNode::NotDir { .. }
        ));
        assert_eq!(
            ensure_dir_beneath(root, Path::new("evil/tmp"))
                .unwrap_err()
                .exit_code(),
            65
        );
        assert_eq!(
            ensure_dir_beneath(root, Path::new("file/x"))
                .unwrap_err()
                .exit_code(),
            65
        );
        assert!(ensure_dir_beneath(root, Path::new("a/b/c/d")).unwrap());
        assert!(!ensure_dir_beneath(root, Path::new("a/b/c/d")).unwrap());
    }
}
