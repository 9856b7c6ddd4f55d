//! What `stat` says about an entry, reduced to what migration decides on.

use std::fmt;

/// The kind of a directory entry. Symlinks are never followed, so a
/// symlink is its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            _ => Kind::File,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "regular file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
        }
    }

    /// The `S_IF*` bits for `mknod`.
    pub(crate) fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDevice => libc::S_IFCHR,
            Kind::BlockDevice => libc::S_IFBLK,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A timestamp as the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Time {
    pub(crate) sec: i64,
    pub(crate) nsec: i64,
}

impl Time {
    pub(crate) fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos() as i64,
        }
    }

    pub(crate) fn as_nanos(self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }
}

/// What tells one version of an entry from another: a write changes size
/// or mtime, any change (even one that restores the mtime) moves ctime,
/// and a replacement changes the inode. Content equality is never inferred
/// from this; it only answers "is this still the entry we looked at?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: Time,
    pub(crate) ctime: Time,
}

/// One `lstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    pub(crate) id: Identity,
    pub(crate) dev: u64,
    /// Permission bits (`0o7777`).
    pub(crate) perm: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u64,
    pub(crate) rdev: u64,
    /// 512-byte blocks allocated: fewer than the size needs means holes.
    pub(crate) blocks: u64,
    pub(crate) atime: Time,
}

impl Meta {
    pub(crate) fn from_stat(st: &libc::stat) -> Meta {
        Meta {
            kind: Kind::from_mode(st.st_mode),
            id: Identity {
                ino: st.st_ino,
                size: st.st_size as u64,
                mtime: Time {
                    sec: st.st_mtime,
                    nsec: st.st_mtime_nsec,
                },
                ctime: Time {
                    sec: st.st_ctime,
                    nsec: st.st_ctime_nsec,
                },
            },
            dev: st.st_dev,
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            // u32 on some architectures (aarch64), u64 on others.
            #[allow(clippy::useless_conversion)]
            nlink: u64::from(st.st_nlink),
            rdev: st.st_rdev,
            blocks: st.st_blocks as u64,
            atime: Time {
                sec: st.st_atime,
                nsec: st.st_atime_nsec,
            },
        }
    }

    /// Whether the file has holes worth keeping (what `cp --sparse=auto`
    /// looks at).
    pub(crate) fn looks_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.id.size
    }

    /// Bytes this entry occupies when copied faithfully (holes stay holes).
    pub(crate) fn footprint(&self) -> u64 {
        match self.kind {
            Kind::File => self.id.size.min(self.blocks.saturating_mul(512)),
            _ => 0,
        }
    }

    /// Whether the last change to the entry is at least `margin` older than
    /// `seen` (the time just before this `stat`). Timestamps come from a
    /// coarse clock; a change made later than `margin` after the last one
    /// is then certain to move ctime, so "same identity" really means
    /// "unchanged".
    pub(crate) fn settled(&self, seen: Time, margin_ns: i128) -> bool {
        self.id.ctime.as_nanos() <= seen.as_nanos() - margin_ns
    }
}

/// `fstat` of an open file, as [`Meta`].
pub(crate) fn fstat(f: &std::fs::File) -> std::io::Result<Meta> {
    nix::sys::stat::fstat(f)
        .map(|st| Meta::from_stat(&st))
        .map_err(std::io::Error::from)
}
