//! The passthrough. Every inode the kernel knows is held as an `O_PATH`
//! file descriptor on the backing inode (as libfuse's passthrough_ll does),
//! so renames anywhere never invalidate it, and every call is an `*at()`
//! call on that descriptor. Node ids are the backing inode numbers (the
//! backing root's number swapped with 1, the FUSE root id), so `st_ino`,
//! `d_ino` and hard links look as they do on the backing filesystem.
//!
//! fuser reads requests on one thread; each request is handed to a pool of
//! worker threads that sleep the delay and then do the call, so requests
//! from different callers are served concurrently, as a network share's are.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    consts, FileAttr, FileType, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow,
};

use crate::policy::{Deny, Op, Policy};

type Res<T> = Result<T, i32>;

/// A directory's entries: (node id, type, name).
type Entries = Arc<Vec<(u64, FileType, OsString)>>;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cvt(r: libc::c_int) -> Res<libc::c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> Res<usize> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

fn cstr(s: &OsStr) -> Res<CString> {
    CString::new(s.as_bytes()).map_err(|_| libc::EINVAL)
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).unwrap()
}

const EMPTY: &std::ffi::CStr = c"";

fn fstat(fd: RawFd) -> Res<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe {
        libc::fstatat(
            fd,
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-sec) as u64) + Duration::from_nanos(nsec as u64)
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: n,
                }
            }
        },
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Sets this thread's filesystem uid/gid for calls that create files, so
/// new entries get the caller's owner; restores root on drop.
struct AsCaller;

impl AsCaller {
    fn new(uid: u32, gid: u32) -> AsCaller {
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        AsCaller
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

struct Inode {
    fd: OwnedFd,
    is_symlink: bool,
}

pub struct Options {
    pub policy: Policy,
    pub ttl: Duration,
    pub threads: usize,
    pub writeback_cache: bool,
    /// Names are matched without regard to case, and kept as first
    /// written (as on an SMB share).
    pub case_insensitive: bool,
    /// An unlinked file that is still open keeps a name in its directory
    /// until its last handle closes (SMB's delete-pending; libfuse without
    /// `hard_remove` does the same): the directory cannot be removed yet.
    pub delete_pending: bool,
    /// Added to RELEASE only: the kernel sends it in the background once
    /// close(2) has returned, so the server can see a close late.
    pub release_lag: Duration,
    pub max_write: u32,
    pub max_background: u16,
    pub congestion_threshold: u16,
}

pub struct Core {
    pub policy: Policy,
    ttl: Duration,
    root_ino: u64,
    /// nodeid -> (inode, lookup count)
    inodes: Mutex<HashMap<u64, (Arc<Inode>, u64)>>,
    /// directory handle -> its entries, read at offset 0
    dirs: Mutex<HashMap<u64, Entries>>,
    writeback_cache: bool,
    case_insensitive: bool,
    /// With [`Options::delete_pending`]: who holds what open.
    handles: Option<Mutex<Handles>>,
    release_lag: Duration,
}

/// Open handles per backing inode, and the names unlinked files keep
/// until their last handle closes.
#[derive(Default)]
struct Handles {
    inode_of: HashMap<u64, u64>,
    open: HashMap<u64, u32>,
    pending: HashMap<u64, Vec<(Arc<Inode>, CString)>>,
    seq: u64,
}

type Job = Box<dyn FnOnce(&Core) + Send>;

/// The object fuser's session loop calls: it hands every request to the pool.
pub struct LatencyFs {
    core: Arc<Core>,
    jobs: Sender<Job>,
    init: (bool, u32, u16, u16),
}

impl LatencyFs {
    pub fn new(backing: &Path, opts: Options) -> std::io::Result<LatencyFs> {
        let root = std::fs::File::open(backing)?;
        let st = fstat(root.as_raw_fd()).map_err(std::io::Error::from_raw_os_error)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let mut inodes = HashMap::new();
        inodes.insert(
            fuser::FUSE_ROOT_ID,
            (
                Arc::new(Inode {
                    fd: root.into(),
                    is_symlink: false,
                }),
                1,
            ),
        );
        let core = Arc::new(Core {
            policy: opts.policy,
            ttl: opts.ttl,
            root_ino: st.st_ino,
            inodes: Mutex::new(inodes),
            dirs: Mutex::new(HashMap::new()),
            writeback_cache: opts.writeback_cache,
            case_insensitive: opts.case_insensitive,
            handles: opts.delete_pending.then(|| Mutex::new(Handles::default())),
            release_lag: opts.release_lag,
        });
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..opts.threads.max(1) {
            let (core, rx) = (core.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("worker{i}"))
                .spawn(move || worker(&core, &rx))?;
        }
        Ok(LatencyFs {
            core,
            jobs: tx,
            init: (
                opts.writeback_cache,
                opts.max_write,
                opts.max_background,
                opts.congestion_threshold,
            ),
        })
    }

    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// Queue `f` for a worker: it counts `op`, sleeps the delay, then runs
    /// `f` unless an injected fault answers first.
    fn go<R: ErrReply + Send + 'static>(
        &self,
        op: Op,
        reply: R,
        f: impl FnOnce(&Core, R) + Send + 'static,
    ) {
        let job: Job = Box::new(move |core: &Core| {
            let start = std::time::Instant::now();
            match core.policy.begin(op) {
                Ok(()) => f(core, reply),
                Err(e) => reply.err(e),
            }
            core.policy.end(start.elapsed());
        });
        if let Err(e) = self.jobs.send(job) {
            // The pool is gone only while shutting down; answer inline.
            (e.0)(&self.core);
        }
    }
}

fn worker(core: &Core, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap().recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        job(core);
    }
}

/// The error half of every fuser reply type, so `go` can answer any of them.
pub trait ErrReply {
    fn err(self, e: i32);
}

macro_rules! err_reply {
    ($($t:ty),*) => { $(impl ErrReply for $t { fn err(self, e: i32) { self.error(e) } })* };
}
err_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyEntry,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

impl Core {
    /// The backing inode number <-> FUSE node id (an involution).
    fn nodeid(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            fuser::FUSE_ROOT_ID
        } else if ino == fuser::FUSE_ROOT_ID {
            self.root_ino
        } else {
            ino
        }
    }

    fn inode(&self, nodeid: u64) -> Res<Arc<Inode>> {
        self.inodes
            .lock()
            .unwrap()
            .get(&nodeid)
            .map(|(i, _)| i.clone())
            .ok_or(libc::ESTALE)
    }

    fn attr(&self, st: &libc::stat) -> FileAttr {
        FileAttr {
            ino: self.nodeid(st.st_ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: kind(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    /// The name `name` stands for in `parent`: on a case-insensitive mount,
    /// the existing entry whose name differs only in case, if any.
    fn fold(&self, parent: &Inode, name: &OsStr) -> Res<OsString> {
        if !self.case_insensitive {
            return Ok(name.to_os_string());
        }
        let want = name.to_string_lossy().to_lowercase();
        let dir = std::path::PathBuf::from(OsStr::from_bytes(
            proc_path(parent.fd.as_raw_fd()).as_bytes(),
        ));
        let rd = std::fs::read_dir(dir).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        for e in rd.flatten() {
            let n = e.file_name();
            if n.to_string_lossy().to_lowercase() == want {
                return Ok(n);
            }
        }
        Ok(name.to_os_string())
    }

    /// Take a reference for the kernel to `name` in `parent` (one lookup
    /// count), reusing the inode if it is already known.
    fn remember(&self, parent: &Inode, name: &OsStr) -> Res<FileAttr> {
        let name = &self.fold(parent, name)?;
        let c = cstr(name)?;
        let fd = cvt(unsafe {
            libc::openat(
                parent.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd())?;
        let attr = self.attr(&st);
        let mut t = self.inodes.lock().unwrap();
        t.entry(attr.ino)
            .and_modify(|e| e.1 += 1)
            .or_insert_with(|| {
                (
                    Arc::new(Inode {
                        fd,
                        is_symlink: st.st_mode & libc::S_IFMT == libc::S_IFLNK,
                    }),
                    1,
                )
            });
        Ok(attr)
    }

    fn forget(&self, nodeid: u64, n: u64) {
        if nodeid == fuser::FUSE_ROOT_ID {
            return;
        }
        let mut t = self.inodes.lock().unwrap();
        if let Some(e) = t.get_mut(&nodeid) {
            e.1 = e.1.saturating_sub(n);
            if e.1 == 0 {
                t.remove(&nodeid);
            }
        }
    }

    fn getattr(&self, nodeid: u64) -> Res<FileAttr> {
        let i = self.inode(nodeid)?;
        Ok(self.attr(&fstat(i.fd.as_raw_fd())?))
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        nodeid: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Res<FileAttr> {
        let i = self.inode(nodeid)?;
        let fd = i.fd.as_raw_fd();
        if let Some(mode) = mode {
            self.policy.denied(Deny::Chmod)?;
            if i.is_symlink {
                return Err(libc::EOPNOTSUPP);
            }
            match fh {
                Some(fh) => cvt(unsafe { libc::fchmod(fh as RawFd, mode & 0o7777) })?,
                None => cvt(unsafe { libc::chmod(proc_path(fd).as_ptr(), mode & 0o7777) })?,
            };
        }
        if uid.is_some() || gid.is_some() {
            self.policy.denied(Deny::Chown)?;
            cvt(unsafe {
                libc::fchownat(
                    fd,
                    EMPTY.as_ptr(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(size) = size {
            match fh {
                Some(fh) => cvt(unsafe { libc::ftruncate(fh as RawFd, size as i64) })?,
                None => {
                    let w = cvt(unsafe {
                        libc::open(proc_path(fd).as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC)
                    })?;
                    let w = unsafe { OwnedFd::from_raw_fd(w) };
                    cvt(unsafe { libc::ftruncate(w.as_raw_fd(), size as i64) })?
                }
            };
        }
        if atime.is_some() || mtime.is_some() {
            self.policy.denied(Deny::Utimes)?;
            let ts = [timespec(atime), timespec(mtime)];
            match fh {
                Some(fh) => cvt(unsafe { libc::futimens(fh as RawFd, ts.as_ptr()) })?,
                None => cvt(unsafe {
                    libc::utimensat(
                        fd,
                        EMPTY.as_ptr(),
                        ts.as_ptr(),
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?,
            };
        }
        Ok(self.attr(&fstat(fd)?))
    }

    fn readlink(&self, nodeid: u64) -> Res<Vec<u8>> {
        let i = self.inode(nodeid)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        let n = cvt_size(unsafe {
            libc::readlinkat(
                i.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    fn make(&self, parent: u64, name: &OsStr, how: Make) -> Res<FileAttr> {
        let p = self.inode(parent)?;
        let pfd = p.fd.as_raw_fd();
        let name = &self.fold(&p, name)?;
        let c = cstr(name)?;
        match how {
            Make::Node { mode, rdev } => {
                if mode & libc::S_IFMT != libc::S_IFREG {
                    self.policy.denied(Deny::Mknod)?;
                }
                cvt(unsafe { libc::mknodat(pfd, c.as_ptr(), mode, rdev as libc::dev_t) })?;
            }
            Make::Dir { mode } => {
                cvt(unsafe { libc::mkdirat(pfd, c.as_ptr(), mode) })?;
            }
            Make::Symlink { target } => {
                self.policy.denied(Deny::Symlink)?;
                let t = cstr(target.as_os_str())?;
                cvt(unsafe { libc::symlinkat(t.as_ptr(), pfd, c.as_ptr()) })?;
            }
            Make::Link { nodeid } => {
                self.policy.denied(Deny::Link)?;
                let i = self.inode(nodeid)?;
                cvt(unsafe {
                    libc::linkat(
                        i.fd.as_raw_fd(),
                        EMPTY.as_ptr(),
                        pfd,
                        c.as_ptr(),
                        libc::AT_EMPTY_PATH,
                    )
                })?;
            }
        }
        self.remember(&p, name)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        let p = self.inode(parent)?;
        let c = cstr(&self.fold(&p, name)?)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        if let (Some(h), false) = (&self.handles, dir) {
            let mut h = h.lock().unwrap();
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            cvt(unsafe {
                libc::fstatat(
                    p.fd.as_raw_fd(),
                    c.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            if h.open.get(&st.st_ino).is_some_and(|&n| n > 0) {
                h.seq += 1;
                let hidden = cstr(OsStr::new(&format!(
                    ".delete-pending-{}-{}",
                    st.st_ino, h.seq
                )))?;
                cvt(unsafe {
                    libc::renameat(
                        p.fd.as_raw_fd(),
                        c.as_ptr(),
                        p.fd.as_raw_fd(),
                        hidden.as_ptr(),
                    )
                })?;
                h.pending.entry(st.st_ino).or_default().push((p, hidden));
                return Ok(());
            }
        }
        cvt(unsafe { libc::unlinkat(p.fd.as_raw_fd(), c.as_ptr(), flags) })?;
        Ok(())
    }

    /// Count the handle `fh` as open (with [`Options::delete_pending`]).
    fn opened(&self, fh: u64) {
        let Some(h) = &self.handles else { return };
        if let Ok(st) = fstat(fh as RawFd) {
            let mut h = h.lock().unwrap();
            h.inode_of.insert(fh, st.st_ino);
            *h.open.entry(st.st_ino).or_default() += 1;
        }
    }

    /// Close `fh`; the last handle of a file unlinked while open takes its
    /// pending names with it.
    fn release(&self, fh: u64) {
        let Some(h) = &self.handles else {
            unsafe { libc::close(fh as RawFd) };
            return;
        };
        let mut h = h.lock().unwrap();
        unsafe { libc::close(fh as RawFd) };
        let Some(ino) = h.inode_of.remove(&fh) else {
            return;
        };
        let n = h.open.entry(ino).or_default();
        *n = n.saturating_sub(1);
        if *n == 0 {
            h.open.remove(&ino);
            for (p, hidden) in h.pending.remove(&ino).unwrap_or_default() {
                unsafe { libc::unlinkat(p.fd.as_raw_fd(), hidden.as_ptr(), 0) };
            }
        }
    }

    fn rename(&self, parent: u64, name: &OsStr, np: u64, nn: &OsStr, flags: u32) -> Res<()> {
        if flags != 0 {
            self.policy.denied(Deny::Rename2)?;
        }
        let (p, q) = (self.inode(parent)?, self.inode(np)?);
        let (a, b) = (cstr(&self.fold(&p, name)?)?, cstr(&self.fold(&q, nn)?)?);
        cvt(unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                p.fd.as_raw_fd(),
                a.as_ptr(),
                q.fd.as_raw_fd(),
                b.as_ptr(),
                flags,
            ) as libc::c_int
        })?;
        Ok(())
    }

    /// Open flags for the backing file. With the writeback cache the kernel
    /// may read pages of a file opened write-only, and does appends itself.
    fn open_flags(&self, flags: i32) -> i32 {
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        if self.writeback_cache {
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f | libc::O_CLOEXEC
    }

    fn open(&self, nodeid: u64, flags: i32) -> Res<u64> {
        let i = self.inode(nodeid)?;
        let fd = cvt(unsafe {
            libc::open(proc_path(i.fd.as_raw_fd()).as_ptr(), self.open_flags(flags))
        })?;
        self.opened(fd as u64);
        Ok(fd as u64)
    }

    fn create(&self, parent: u64, name: &OsStr, mode: u32, flags: i32) -> Res<(FileAttr, u64)> {
        let p = self.inode(parent)?;
        let name = &self.fold(&p, name)?;
        let c = cstr(name)?;
        // The kernel looked the name up first; only a name that exists in
        // another case can still be there.
        let excl = if self.case_insensitive {
            flags & libc::O_EXCL
        } else {
            0
        };
        let fd = cvt(unsafe {
            libc::openat(
                p.fd.as_raw_fd(),
                c.as_ptr(),
                self.open_flags(flags) | libc::O_CREAT | excl,
                mode,
            )
        })?;
        match self.remember(&p, name) {
            Ok(a) => {
                self.opened(fd as u64);
                Ok((a, fd as u64))
            }
            Err(e) => {
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    fn read(&self, fh: u64, offset: i64, size: u32) -> Res<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let n = cvt_size(unsafe {
            libc::pread(fh as RawFd, buf.as_mut_ptr().cast(), buf.len(), offset)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    fn write(&self, fh: u64, offset: i64, data: &[u8]) -> Res<u32> {
        self.policy.reserve_write(data.len() as u64)?;
        let n = cvt_size(unsafe {
            libc::pwrite(fh as RawFd, data.as_ptr().cast(), data.len(), offset)
        })?;
        Ok(n as u32)
    }

    fn opendir(&self, nodeid: u64) -> Res<u64> {
        let i = self.inode(nodeid)?;
        let fd = cvt(unsafe {
            libc::open(
                proc_path(i.fd.as_raw_fd()).as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(fd as u64)
    }

    /// All entries of the directory open as `fh`, read afresh at offset 0.
    fn entries(&self, fh: u64, offset: i64) -> Res<Entries> {
        if offset != 0 {
            if let Some(e) = self.dirs.lock().unwrap().get(&fh) {
                return Ok(e.clone());
            }
        }
        let d = cvt(unsafe { libc::dup(fh as RawFd) })?;
        unsafe { libc::lseek(d, 0, libc::SEEK_SET) };
        let dir = unsafe { libc::fdopendir(d) };
        if dir.is_null() {
            let e = errno();
            unsafe { libc::close(d) };
            return Err(e);
        }
        let mut v = Vec::new();
        loop {
            let ent = unsafe { libc::readdir64(dir) };
            if ent.is_null() {
                break;
            }
            let ent = unsafe { &*ent };
            let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) };
            v.push((
                self.nodeid(ent.d_ino),
                dtype_kind(ent.d_type),
                OsStr::from_bytes(name.to_bytes()).to_owned(),
            ));
        }
        unsafe { libc::closedir(dir) };
        let v = Arc::new(v);
        self.dirs.lock().unwrap().insert(fh, v.clone());
        Ok(v)
    }

    fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
        unsafe { libc::close(fh as RawFd) };
    }

    fn statfs(&self, nodeid: u64) -> Res<libc::statvfs> {
        let i = self.inode(nodeid)?;
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstatvfs(i.fd.as_raw_fd(), &mut s) })?;
        Ok(s)
    }

    fn xattr_path(&self, nodeid: u64) -> Res<(Arc<Inode>, CString)> {
        self.policy.denied(Deny::Xattr)?;
        let i = self.inode(nodeid)?;
        let p = proc_path(i.fd.as_raw_fd());
        Ok((i, p))
    }
}

enum Make<'a> {
    Node { mode: u32, rdev: u32 },
    Dir { mode: u32 },
    Symlink { target: &'a Path },
    Link { nodeid: u64 },
}

fn reply_entry(core: &Core, r: Res<FileAttr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&core.ttl, &a, 0),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(core: &Core, r: Res<FileAttr>, reply: ReplyAttr) {
    match r {
        Ok(a) => reply.attr(&core.ttl, &a),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(r: Res<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length.
fn reply_xattr(r: Res<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Err(e) => reply.error(e),
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(libc::ERANGE),
        Ok(v) => reply.data(&v),
    }
}

/// Calls `f(buf_ptr, len)` once for the size and once for the data.
fn xattr_buf(f: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> Res<Vec<u8>> {
    loop {
        let n = cvt_size(f(std::ptr::null_mut(), 0))?;
        let mut buf = vec![0u8; n];
        match cvt_size(f(buf.as_mut_ptr().cast(), n)) {
            Ok(m) => {
                buf.truncate(m);
                return Ok(buf);
            }
            Err(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl fuser::Filesystem for LatencyFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), i32> {
        let (wb, max_write, max_bg, congestion) = self.init;
        // Parallel lookups and readdirs in one directory, as a network
        // filesystem's; without it the kernel serialises them per directory.
        let _ = config.add_capabilities(consts::FUSE_PARALLEL_DIROPS);
        if wb {
            config
                .add_capabilities(consts::FUSE_WRITEBACK_CACHE)
                .map_err(|_| libc::ENOSYS)?;
        }
        let _ = config.set_max_write(max_write);
        let _ = config.set_max_background(max_bg);
        let _ = config.set_congestion_threshold(congestion);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.go(Op::Lookup, reply, move |c, r| {
            let res = c.inode(parent).and_then(|p| c.remember(&p, &name));
            reply_entry(c, res, r)
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.core.forget(ino, nlookup);
    }

    fn batch_forget(&mut self, _req: &Request<'_>, nodes: &[fuser::fuse_forget_one]) {
        for n in nodes {
            self.core.forget(n.nodeid, n.nlookup);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.go(Op::Getattr, reply, move |c, r| {
            reply_attr(c, c.getattr(ino), r)
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        self.go(Op::Setattr, reply, move |c, r| {
            reply_attr(c, c.setattr(ino, mode, uid, gid, size, atime, mtime, fh), r)
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.go(Op::Readlink, reply, move |c, r| match c.readlink(ino) {
            Ok(v) => r.data(&v),
            Err(e) => r.error(e),
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, uid, gid) = (name.to_owned(), req.uid(), req.gid());
        self.go(Op::Mknod, reply, move |c, r| {
            let _as = AsCaller::new(uid, gid);
            reply_entry(c, c.make(parent, &name, Make::Node { mode, rdev }), r)
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, uid, gid) = (name.to_owned(), req.uid(), req.gid());
        self.go(Op::Mkdir, reply, move |c, r| {
            let _as = AsCaller::new(uid, gid);
            reply_entry(c, c.make(parent, &name, Make::Dir { mode }), r)
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.go(Op::Unlink, reply, move |c, r| {
            reply_empty(c.remove(parent, &name, false), r)
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.go(Op::Rmdir, reply, move |c, r| {
            reply_empty(c.remove(parent, &name, true), r)
        });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target, uid, gid) = (
            link_name.to_owned(),
            target.to_owned(),
            req.uid(),
            req.gid(),
        );
        self.go(Op::Symlink, reply, move |c, r| {
            let _as = AsCaller::new(uid, gid);
            reply_entry(
                c,
                c.make(parent, &name, Make::Symlink { target: &target }),
                r,
            )
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.go(Op::Rename, reply, move |c, r| {
            reply_empty(c.rename(parent, &name, newparent, &newname, flags), r)
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname.to_owned();
        self.go(Op::Link, reply, move |c, r| {
            reply_entry(c, c.make(newparent, &name, Make::Link { nodeid: ino }), r)
        });
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        self.go(Op::Open, reply, move |c, r| match c.open(ino, flags) {
            Ok(fh) => r.opened(fh, 0),
            Err(e) => r.error(e),
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        self.go(Op::Read, reply, move |c, r| {
            match c.read(fh, offset, size) {
                Ok(v) => r.data(&v),
                Err(e) => r.error(e),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.go(Op::Write, reply, move |c, r| {
            match c.write(fh, offset, &data) {
                Ok(n) => r.written(n),
                Err(e) => r.error(e),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _lo: u64, reply: ReplyEmpty) {
        self.go(Op::Flush, reply, move |_, r| {
            // As close(2) of a duplicate would on the backing filesystem.
            let res = cvt(unsafe { libc::dup(fh as RawFd) })
                .and_then(|d| cvt(unsafe { libc::close(d) }))
                .map(|_| ());
            reply_empty(res, r)
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.go(Op::Release, reply, move |c, r| {
            std::thread::sleep(c.release_lag);
            c.release(fh);
            r.ok()
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        self.go(Op::Fsync, reply, move |_, r| {
            let fd = fh as RawFd;
            let res = if datasync {
                cvt(unsafe { libc::fdatasync(fd) })
            } else {
                cvt(unsafe { libc::fsync(fd) })
            };
            reply_empty(res.map(|_| ()), r)
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.go(Op::Opendir, reply, move |c, r| match c.opendir(ino) {
            Ok(fh) => r.opened(fh, 0),
            Err(e) => r.error(e),
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectory,
    ) {
        self.go(Op::Readdir, reply, move |c, mut r| {
            match c.entries(fh, offset) {
                Ok(v) => {
                    for (i, (ino, kind, name)) in v.iter().enumerate().skip(offset as usize) {
                        if r.add(*ino, (i + 1) as i64, *kind, name) {
                            break;
                        }
                    }
                    r.ok()
                }
                Err(e) => r.error(e),
            }
        });
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _f: i32, reply: ReplyEmpty) {
        self.go(Op::Releasedir, reply, move |c, r| {
            c.releasedir(fh);
            r.ok()
        });
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.go(Op::Fsyncdir, reply, move |_, r| {
            let fd = fh as RawFd;
            let res = if datasync {
                cvt(unsafe { libc::fdatasync(fd) })
            } else {
                cvt(unsafe { libc::fsync(fd) })
            };
            reply_empty(res.map(|_| ()), r)
        });
    }

    fn statfs(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyStatfs) {
        self.go(Op::Statfs, reply, move |c, r| match c.statfs(ino) {
            Ok(s) => r.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => r.error(e),
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.go(Op::Setxattr, reply, move |c, r| {
            let res = c.xattr_path(ino).and_then(|(_i, p)| {
                let n = cstr(&name)?;
                cvt(unsafe {
                    libc::setxattr(
                        p.as_ptr(),
                        n.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    )
                })
                .map(|_| ())
            });
            reply_empty(res, r)
        });
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let name = name.to_owned();
        self.go(Op::Getxattr, reply, move |c, r| {
            let res = c.xattr_path(ino).and_then(|(_i, p)| {
                let n = cstr(&name)?;
                xattr_buf(|b, l| unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), b, l) })
            });
            reply_xattr(res, size, r)
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        self.go(Op::Listxattr, reply, move |c, r| {
            let res = c.xattr_path(ino).and_then(|(_i, p)| {
                xattr_buf(|b, l| unsafe { libc::listxattr(p.as_ptr(), b.cast(), l) })
            });
            reply_xattr(res, size, r)
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.go(Op::Removexattr, reply, move |c, r| {
            let res = c.xattr_path(ino).and_then(|(_i, p)| {
                let n = cstr(&name)?;
                cvt(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }).map(|_| ())
            });
            reply_empty(res, r)
        });
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        self.go(Op::Access, reply, move |_, r| r.ok());
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, uid, gid) = (name.to_owned(), req.uid(), req.gid());
        self.go(Op::Create, reply, move |c, r| {
            let _as = AsCaller::new(uid, gid);
            match c.create(parent, &name, mode, flags) {
                Ok((a, fh)) => r.created(&c.ttl, &a, 0, fh, 0),
                Err(e) => r.error(e),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.go(Op::Fallocate, reply, move |c, r| {
            let res = c.policy.reserve_write(length as u64).and_then(|_| {
                cvt(unsafe { libc::fallocate(fh as RawFd, mode, offset, length) }).map(|_| ())
            });
            reply_empty(res, r)
        });
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.go(Op::Lseek, reply, move |_, r| {
            let o = unsafe { libc::lseek(fh as RawFd, offset, whence) };
            if o < 0 {
                r.error(errno())
            } else {
                r.offset(o)
            }
        });
    }

    fn copy_file_range(
        &mut self,
        _req: &Request<'_>,
        _ino_in: u64,
        fh_in: u64,
        offset_in: i64,
        _ino_out: u64,
        fh_out: u64,
        offset_out: i64,
        len: u64,
        flags: u32,
        reply: ReplyWrite,
    ) {
        self.go(Op::CopyFileRange, reply, move |c, r| {
            let res = c.policy.reserve_write(len).and_then(|_| {
                let (mut oi, mut oo) = (offset_in, offset_out);
                cvt_size(unsafe {
                    libc::copy_file_range(
                        fh_in as RawFd,
                        &mut oi,
                        fh_out as RawFd,
                        &mut oo,
                        len as usize,
                        flags,
                    )
                })
            });
            match res {
                Ok(n) => r.written(n as u32),
                Err(e) => r.error(e),
            }
        });
    }
}
