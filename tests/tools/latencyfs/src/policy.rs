//! What the rig does to every operation besides passing it through: the
//! delay (a network round trip), refusals the way SMB refuses, injected
//! faults, and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every FUSE request that gets a reply. (FORGET gets none, so it is not
/// delayed: a network client drops an inode locally.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
    Lseek,
    CopyFileRange,
}

pub const ALL_OPS: [Op; 31] = [
    Op::Lookup,
    Op::Getattr,
    Op::Setattr,
    Op::Readlink,
    Op::Mknod,
    Op::Mkdir,
    Op::Unlink,
    Op::Rmdir,
    Op::Symlink,
    Op::Rename,
    Op::Link,
    Op::Open,
    Op::Read,
    Op::Write,
    Op::Flush,
    Op::Release,
    Op::Fsync,
    Op::Opendir,
    Op::Readdir,
    Op::Releasedir,
    Op::Fsyncdir,
    Op::Statfs,
    Op::Setxattr,
    Op::Getxattr,
    Op::Listxattr,
    Op::Removexattr,
    Op::Access,
    Op::Create,
    Op::Fallocate,
    Op::Lseek,
    Op::CopyFileRange,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Releasedir => "releasedir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Setxattr => "setxattr",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Removexattr => "removexattr",
            Op::Access => "access",
            Op::Create => "create",
            Op::Fallocate => "fallocate",
            Op::Lseek => "lseek",
            Op::CopyFileRange => "copy_file_range",
        }
    }

    fn index(self) -> usize {
        ALL_OPS.iter().position(|&o| o == self).unwrap()
    }

    pub fn parse(s: &str) -> Result<Op, String> {
        ALL_OPS
            .iter()
            .copied()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown operation {s:?}"))
    }
}

/// What `--deny` can refuse, and the errno each refusal gives by default:
/// what the Linux SMB client returns against Azure Files (see README.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    /// link(2): no hard links on SMB Azure Files.
    Link,
    /// every xattr call: Azure Files keeps no extended attributes.
    Xattr,
    /// mknod(2) of FIFOs, sockets and devices.
    Mknod,
    /// chmod(2).
    Chmod,
    /// chown(2).
    Chown,
    /// utimensat(2) and friends.
    Utimes,
    /// symlink(2) (a share mounted without `mfsymlinks`).
    Symlink,
    /// renameat2(2) with flags (RENAME_NOREPLACE): EINVAL, as from a
    /// server or client that has no such rename.
    Rename2,
}

pub const ALL_DENY: [Deny; 8] = [
    Deny::Link,
    Deny::Xattr,
    Deny::Mknod,
    Deny::Chmod,
    Deny::Chown,
    Deny::Utimes,
    Deny::Symlink,
    Deny::Rename2,
];

impl Deny {
    pub fn name(self) -> &'static str {
        match self {
            Deny::Link => "link",
            Deny::Xattr => "xattr",
            Deny::Mknod => "mknod",
            Deny::Chmod => "chmod",
            Deny::Chown => "chown",
            Deny::Utimes => "utimes",
            Deny::Symlink => "symlink",
            Deny::Rename2 => "rename2",
        }
    }

    pub fn default_errno(self) -> i32 {
        match self {
            Deny::Link | Deny::Xattr | Deny::Symlink => libc::EOPNOTSUPP,
            Deny::Mknod | Deny::Chmod | Deny::Chown | Deny::Utimes => libc::EPERM,
            Deny::Rename2 => libc::EINVAL,
        }
    }

    fn index(self) -> usize {
        ALL_DENY.iter().position(|&d| d == self).unwrap()
    }
}

const ERRNOS: [(&str, i32); 20] = [
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EIO", libc::EIO),
    ("EAGAIN", libc::EAGAIN),
    ("EACCES", libc::EACCES),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("EINVAL", libc::EINVAL),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("EDQUOT", libc::EDQUOT),
    ("ESTALE", libc::ESTALE),
];

/// `EPERM`, `ENOTSUP` (= EOPNOTSUPP on Linux) or a number.
pub fn parse_errno(s: &str) -> Result<i32, String> {
    let up = s.to_ascii_uppercase();
    let up = if up == "ENOTSUP" {
        "EOPNOTSUPP".into()
    } else {
        up
    };
    if let Some((_, e)) = ERRNOS.iter().find(|(n, _)| *n == up) {
        return Ok(*e);
    }
    s.parse::<i32>()
        .ok()
        .filter(|e| *e > 0)
        .ok_or_else(|| format!("unknown errno {s:?}"))
}

pub fn errno_name(e: i32) -> String {
    ERRNOS
        .iter()
        .find(|(_, n)| *n == e)
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

#[derive(Debug, Default)]
pub struct Policy {
    pub delay: Duration,
    deny: [Option<i32>; ALL_DENY.len()],
    /// (op, n, errno): the n-th call of op (1-based) fails with errno.
    fail: Vec<(Op, u64, i32)>,
    enospc_after: Option<u64>,
    written: AtomicU64,
    counts: [AtomicU64; ALL_OPS.len()],
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Time requests spent in flight, summed (µs): over a run's wall time,
    /// the mean number in flight.
    busy_us: AtomicU64,
}

impl Policy {
    pub fn new(delay: Duration) -> Policy {
        Policy {
            delay,
            ..Policy::default()
        }
    }

    /// `link,xattr=ENOSYS,...`
    pub fn add_deny_list(&mut self, list: &str) -> Result<(), String> {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (name, errno) = match item.split_once('=') {
                Some((n, e)) => (n, Some(parse_errno(e)?)),
                None => (item, None),
            };
            let d = ALL_DENY
                .iter()
                .copied()
                .find(|d| d.name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = ALL_DENY.iter().map(|d| d.name()).collect();
                    format!("--deny: unknown {name:?} (one of {})", names.join(","))
                })?;
            self.deny[d.index()] = Some(errno.unwrap_or(d.default_errno()));
        }
        Ok(())
    }

    /// `OP:N:ERRNO`
    pub fn add_fail(&mut self, spec: &str) -> Result<(), String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let [op, n, errno] = parts[..] else {
            return Err(format!("--fail-op wants OP:N:ERRNO, got {spec:?}"));
        };
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--fail-op: N must be a positive integer in {spec:?}"))?;
        self.fail.push((Op::parse(op)?, n, parse_errno(errno)?));
        Ok(())
    }

    pub fn set_enospc_after(&mut self, bytes: u64) {
        self.enospc_after = Some(bytes);
    }

    pub fn denied(&self, d: Deny) -> Result<(), i32> {
        match self.deny[d.index()] {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn deny_summary(&self) -> String {
        let v: Vec<String> = ALL_DENY
            .iter()
            .filter_map(|d| self.deny[d.index()].map(|e| format!("{}={}", d.name(), errno_name(e))))
            .collect();
        v.join(",")
    }

    /// Called on a worker thread when a request starts: counts it, sleeps
    /// the delay (holding no lock), and says whether an injected fault
    /// answers it instead.
    pub fn begin(&self, op: Op) -> Result<(), i32> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let n = self.counts[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        match self.fail.iter().find(|(o, k, _)| *o == op && *k == n) {
            Some((_, _, e)) => Err(*e),
            None => Ok(()),
        }
    }

    /// Called when a request that took `took` is answered.
    pub fn end(&self, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.busy_us
            .fetch_add(took.as_micros() as u64, Ordering::SeqCst);
    }

    /// Reserve `len` bytes of the `--enospc-after` budget.
    pub fn reserve_write(&self, len: u64) -> Result<(), i32> {
        let Some(limit) = self.enospc_after else {
            return Ok(());
        };
        let before = self.written.fetch_add(len, Ordering::SeqCst);
        if before + len > limit {
            self.written.fetch_sub(len, Ordering::SeqCst);
            return Err(libc::ENOSPC);
        }
        Ok(())
    }

    /// `op count` lines, the peak number of requests in flight at once,
    /// and the total; `reset` zeroes the counters after reading them.
    pub fn report(&self, reset: bool) -> String {
        let mut out = String::new();
        let mut total = 0;
        for op in ALL_OPS {
            let c = if reset {
                self.counts[op.index()].swap(0, Ordering::SeqCst)
            } else {
                self.counts[op.index()].load(Ordering::SeqCst)
            };
            total += c;
            if c > 0 {
                out.push_str(&format!("{} {c}\n", op.name()));
            }
        }
        let peak = if reset {
            self.peak_in_flight
                .swap(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst)
        } else {
            self.peak_in_flight.load(Ordering::SeqCst)
        };
        let busy = if reset {
            self.busy_us.swap(0, Ordering::SeqCst)
        } else {
            self.busy_us.load(Ordering::SeqCst)
        };
        out.push_str(&format!(
            "total {total}\npeak_in_flight {peak}\nbusy_ms {}\n",
            busy / 1000
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_and_errnos_parse() {
        let mut p = Policy::new(Duration::ZERO);
        p.add_deny_list("link,xattr=ENOSYS,chmod").unwrap();
        assert_eq!(p.denied(Deny::Link), Err(libc::EOPNOTSUPP));
        assert_eq!(p.denied(Deny::Xattr), Err(libc::ENOSYS));
        assert_eq!(p.denied(Deny::Chmod), Err(libc::EPERM));
        assert_eq!(p.denied(Deny::Chown), Ok(()));
        assert!(p.add_deny_list("hardlink").is_err());
        assert_eq!(parse_errno("enotsup"), Ok(libc::EOPNOTSUPP));
        assert_eq!(parse_errno("28"), Ok(28));
    }

    #[test]
    fn nth_call_fails_once() {
        let mut p = Policy::new(Duration::ZERO);
        p.add_fail("write:2:EIO").unwrap();
        assert_eq!(p.begin(Op::Write), Ok(()));
        assert_eq!(p.begin(Op::Write), Err(libc::EIO));
        assert_eq!(p.begin(Op::Write), Ok(()));
        assert!(p.add_fail("write:0:EIO").is_err());
    }

    #[test]
    fn enospc_budget() {
        let mut p = Policy::new(Duration::ZERO);
        p.set_enospc_after(10);
        assert_eq!(p.reserve_write(6), Ok(()));
        assert_eq!(p.reserve_write(6), Err(libc::ENOSPC));
        assert_eq!(p.reserve_write(4), Ok(()));
    }
}
