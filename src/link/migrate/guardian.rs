//! The guardian: a process that keeps alive, after sharelink dies, the
//! leases of the files whose last name the prune removed (see `prune`).
//!
//! A lease belongs to the open file description, not to the process: the
//! guardian holds duplicates of the held descriptors, passed over a unix
//! socket (`SCM_RIGHTS`) before each unlink, so the leases outlive a
//! SIGKILL of sharelink. While sharelink lives the guardian only waits:
//! sharelink tells it which file it has settled (`drop`, sent before the
//! lease is released) and, at the end of the prune, that it is done. On
//! end of file without that (sharelink died), the guardian finishes the job
//! for what it still holds, as `prune::settle_one` would: it waits
//! [`prune::HOLD`], releases each lease nobody broke, and for each broken
//! one (a writer got the nameless file) lets the writer in, waits until it
//! closes the file (bounded by [`LIMIT`]) and puts the content back under
//! its name (never over anything; the directories that went made again).
//! Then it exits.
//!
//! It is started by exec of `/proc/self/exe` with the hidden subcommand
//! [`SUBCOMMAND`] (sharelink may have threads: no fork without exec), its
//! end of the socket as descriptor 3. If it cannot be started, the prune
//! goes on without it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::prune;
use crate::error::ExitCode;
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Time};

/// The hidden subcommand that runs the guardian.
pub(crate) const SUBCOMMAND: &str = "__guardian";

/// The guardian's end of the socket.
const FD: RawFd = 3;

/// How long, at most, the guardian waits for writers to close the files it
/// puts back; then it puts back what they wrote so far, and exits.
pub(crate) const LIMIT: Duration = Duration::from_secs(600);

/// Messages: a tag byte, an id (u64, little-endian), then a payload.
const ROOT: u8 = b'R';
const HOLD: u8 = b'H';
const DROP: u8 = b'D';
const END: u8 = b'E';

/// The largest message (a relative path of up to PATH_MAX bytes).
const MAX_MSG: usize = 9 + 24 + 4096;

/// sharelink's side: the guardian of one prune, started at its first held
/// lease.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    g: Option<Guardian>,
    tried: bool,
    next: u64,
}

#[derive(Debug)]
struct Guardian {
    sock: OwnedFd,
    child: std::process::Child,
}

impl Guard {
    /// Give the guardian `f` (whose lease is held, about to lose its last
    /// name `rel` in `dir`; `was`: its identity then); its id, for
    /// [`Guard::release`]. `None`: no guardian.
    pub(crate) fn hold(
        &mut self,
        root: &Dir,
        app_path: &Path,
        f: &File,
        was: &Identity,
        dir: &Dir,
        rel: &Path,
    ) -> Option<u64> {
        if !self.tried {
            self.tried = true;
            match start(root, app_path) {
                Ok(g) => self.g = Some(g),
                Err(e) => crate::debug!(
                    "no guardian for the leases held while deleting from {}: {e}",
                    app_path.display()
                ),
            }
        }
        self.next += 1;
        let id = self.next;
        let fds = [f.as_raw_fd(), dir.as_raw_fd()];
        let mut payload = Vec::with_capacity(24 + rel.as_os_str().len());
        payload.extend_from_slice(&was.size.to_le_bytes());
        payload.extend_from_slice(&was.mtime.sec.to_le_bytes());
        payload.extend_from_slice(&was.mtime.nsec.to_le_bytes());
        payload.extend_from_slice(rel.as_os_str().as_bytes());
        self.send(HOLD, id, &payload, &fds).then_some(id)
    }

    /// The guardian no longer needs `id` (sharelink settled it: sent before
    /// the lease is released, or after the content is put back).
    pub(crate) fn release(&mut self, id: Option<u64>) {
        if let Some(id) = id {
            self.send(DROP, id, &[], &[]);
        }
    }

    /// The prune is done: the guardian exits, and is waited for.
    pub(crate) fn finish(&mut self) {
        self.send(END, 0, &[], &[]);
        if let Some(mut g) = self.g.take() {
            drop(g.sock);
            let _ = g.child.wait();
        }
    }

    fn send(&mut self, tag: u8, id: u64, payload: &[u8], fds: &[RawFd]) -> bool {
        let Some(g) = &self.g else { return false };
        match send(&g.sock, tag, id, payload, fds) {
            Ok(()) => true,
            Err(e) => {
                crate::debug!("the guardian is gone ({e}); going on without it");
                if let Some(mut g) = self.g.take() {
                    drop(g.sock);
                    let _ = g.child.wait();
                }
                false
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish();
    }
}

fn start(root: &Dir, app_path: &Path) -> std::io::Result<Guardian> {
    // In a unit test `/proc/self/exe` is the test harness, not sharelink.
    if cfg!(test) {
        return Err(std::io::Error::other("not started in unit tests"));
    }
    #[cfg(feature = "failpoints")]
    if std::env::var_os("SHARELINK_GUARDIAN").is_some_and(|v| v == "off") {
        return Err(std::io::Error::other("turned off (SHARELINK_GUARDIAN=off)"));
    }
    let mut sv = [0; 2];
    // SAFETY: socketpair into a local array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both just made, ours alone.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let raw = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(SUBCOMMAND)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .env_remove("SHARELINK_FAILPOINT")
        .env_remove("SHARELINK_FAILPOINT_LOG");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == FD {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd.spawn()?;
    drop(theirs);
    let g = Guardian { sock: ours, child };
    send(
        &g.sock,
        ROOT,
        0,
        app_path.as_os_str().as_bytes(),
        &[root.as_raw_fd()],
    )?;
    Ok(g)
}

fn send(sock: &OwnedFd, tag: u8, id: u64, payload: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&id.to_le_bytes());
    let mut iov = [
        libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        },
    ];
    // Room for two descriptors, aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: an msghdr over local buffers; CMSG_* within `cbuf`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = 2;
        if !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        loop {
            if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

/// One message received: tag, id, payload, descriptors. `None` at end of
/// file (or a broken socket).
fn recv(sock: RawFd) -> Option<(u8, u64, Vec<u8>, Vec<OwnedFd>)> {
    loop {
        let mut buf = vec![0u8; MAX_MSG];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: an msghdr over local buffers; CMSG_* within `cbuf`.
        let (n, fds, flags) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return None;
            }
            let mut fds = Vec::new();
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let p: *const RawFd = libc::CMSG_DATA(c).cast();
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            (n as usize, fds, msg.msg_flags)
        };
        if n == 0 {
            return None;
        }
        if n < 9 || flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            crate::warn!("guardian: a malformed message, ignored");
            continue;
        }
        let id = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
        buf.truncate(n);
        return Some((buf[0], id, buf.split_off(9), fds));
    }
}

/// A file the guardian holds: its lease, the directory that held its
/// name, and its path from the app directory.
struct GuardedFile {
    f: File,
    dir: Dir,
    rel: PathBuf,
    /// Its size and mtime at the unlink.
    size: u64,
    mtime: Time,
}

/// The guardian process (`sharelink __guardian`): serve the socket on
/// descriptor 3 until sharelink is done with it, or finish its job if
/// sharelink died.
pub(crate) fn serve() -> ExitCode {
    // SAFETY: checking that descriptor 3 is a socket before owning it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(FD, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        crate::error!("{SUBCOMMAND} is started by sharelink itself, not by hand");
        return ExitCode::Usage;
    }
    // SAFETY: ours from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(FD) };
    let mut root: Option<(Dir, PathBuf)> = None;
    let mut held: HashMap<u64, GuardedFile> = HashMap::new();
    let done = loop {
        let Some((tag, id, payload, mut fds)) = recv(sock.as_raw_fd()) else {
            break false;
        };
        match (tag, fds.len()) {
            (ROOT, 1) => {
                let path = PathBuf::from(OsStr::from_bytes(&payload));
                root = Some((Dir::from_fd(fds.remove(0)), path));
            }
            (HOLD, 2) if payload.len() > 24 => {
                let dir = Dir::from_fd(fds.remove(1));
                let f = File::from(fds.remove(0));
                let word = |i: usize| payload[i * 8..i * 8 + 8].try_into().expect("8 bytes");
                let size = u64::from_le_bytes(word(0));
                let mtime = Time {
                    sec: i64::from_le_bytes(word(1)),
                    nsec: i64::from_le_bytes(word(2)),
                };
                let rel = PathBuf::from(OsStr::from_bytes(&payload[24..]));
                held.insert(
                    id,
                    GuardedFile {
                        f,
                        dir,
                        rel,
                        size,
                        mtime,
                    },
                );
            }
            (DROP, 0) => {
                held.remove(&id);
            }
            (END, 0) => break true,
            _ => crate::warn!("guardian: an unexpected message, ignored"),
        }
    };
    drop(sock);
    // Done: sharelink settled every file (whatever is left, it released
    // or put back: the guardian lets go, as sharelink did before it).
    if done || held.is_empty() {
        return ExitCode::Ok;
    }
    let Some((root, app_path)) = root else {
        return ExitCode::Ok;
    };
    crate::warn!(
        "sharelink exited while it held the lease of {} file(s) it deleted from {}; the guardian finishes the job",
        held.len(),
        app_path.display()
    );
    finish(held.into_values().collect(), &root, &app_path);
    ExitCode::Ok
}

/// What `prune::settle` would have done with the files still held.
fn finish(held: Vec<GuardedFile>, root: &Dir, app_path: &Path) {
    // A writer whose open found the name before the unlink reaches the
    // lease within HOLD of it: it is at least that since the unlink.
    std::thread::sleep(prune::HOLD);
    let mut waiting = Vec::new();
    for e in held {
        // Broken: a writer got the nameless file (or sharelink was
        // putting it back when it died). Released, the writer's open
        // goes on; its content is put back once the writer is done.
        // Changed: a writer wrote to it (sharelink, putting it back, held
        // the lease again for a moment when it died).
        let broken = prune::lease_broken(&e.f);
        let changed = crate::fs::meta::fstat(&e.f)
            .map_or(true, |m| m.id.size != e.size || m.id.mtime != e.mtime);
        let _ = prune::lease(&e.f, libc::F_UNLCK);
        if broken || changed {
            crate::debug!(
                "guardian: a process opened {} for writing as it was unlinked; waiting for it to close the file",
                app_path.join(&e.rel).display()
            );
            waiting.push(e);
        }
    }
    let started = Instant::now();
    let mut said = started;
    while !waiting.is_empty() {
        let over = started.elapsed() >= LIMIT;
        waiting.retain(|e| {
            // The read lease is refused while a writer still has it open.
            if prune::lease(&e.f, libc::F_RDLCK).is_err() && !over {
                return true;
            }
            let _ = prune::lease(&e.f, libc::F_UNLCK);
            put(e, root, app_path, over);
            false
        });
        if waiting.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        if said.elapsed() >= Duration::from_secs(30) {
            said = Instant::now();
            crate::warn!(
                "guardian: still waiting for {} process(es) writing to files sharelink deleted from {} to close them ({}s, at most {}s); their content is put back then",
                waiting.len(),
                app_path.display(),
                started.elapsed().as_secs(),
                LIMIT.as_secs()
            );
        }
    }
}

/// Put `e`'s content back under its name (or beside it), unless the name
/// still leads to it.
fn put(e: &GuardedFile, root: &Dir, app_path: &Path, early: bool) {
    let path = app_path.join(&e.rel);
    let Some(name) = e.rel.file_name() else {
        return;
    };
    let ours = crate::fs::meta::fstat(&e.f).ok();
    let named = e.dir.stat_at(name).ok().flatten();
    if let (Some(o), Some(n)) = (&ours, &named) {
        if o.dev == n.dev && o.id.ino == n.id.ino {
            // Killed before the unlink: the file kept its name.
            return;
        }
    }
    let r = match prune::put_back(&e.dir, name, &e.f) {
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
            let parent = e.rel.parent().unwrap_or(Path::new(""));
            match crate::fs::tree::make_beneath(root, parent, app_path) {
                Ok(m) => prune::put_back(&m.dir, name, &e.f),
                Err(err) => Err(std::io::Error::other(
                    crate::link::advice::app_side(err).to_string(),
                )),
            }
        }
        r => r,
    };
    match r {
        Ok(to) => {
            let beside = if to == name {
                String::new()
            } else {
                format!(" as {}", Path::new(&to).display())
            };
            let when = if early {
                format!(" (the writer still has it open after {}s: what it wrote so far)", LIMIT.as_secs())
            } else {
                String::new()
            };
            crate::warn!(
                "guardian: a process opened {} for writing while sharelink deleted it, and sharelink died; it is back in place{beside}, with what was written{when}, and is migrated by the next run",
                path.display()
            );
        }
        Err(err) => crate::error!(
            "guardian: cannot put back {}, which a process wrote to while sharelink deleted it: {err}",
            path.display()
        ),
    }
}
