//! What `stat` says about an entry, reduced to what migration decides on.

use std::fmt;

/// The kind of a directory entry. Symlinks are never followed, so a
/// symlink is its own kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
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

    /// From a `d_type`, when the filesystem gives one.
    pub fn from_dtype(t: u8) -> Option<Kind> {
        Some(match t {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_CHR => Kind::CharDevice,
            libc::DT_BLK => Kind::BlockDevice,
            _ => return None,
        })
    }

    /// FIFOs, sockets and device nodes: entries that hold no data.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }

    pub fn name(self) -> &'static str {
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
    pub fn mode_bits(self) -> u32 {
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
pub struct Time {
    pub sec: i64,
    pub nsec: i64,
}

impl Time {
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos() as i64,
        }
    }

    pub fn as_nanos(self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }
}

/// What tells one version of an entry from another: a write changes size
/// or mtime, any change (even one that restores the mtime) moves ctime,
/// and a replacement changes the inode. Content equality is never inferred
/// from this; it only answers "is this still the entry we looked at?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub ino: u64,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
}

/// One `lstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub id: Identity,
    pub dev: u64,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    /// 512-byte blocks allocated: fewer than the size needs means holes.
    pub blocks: u64,
    pub atime: Time,
}

impl Meta {
    pub fn from_stat(st: &libc::stat) -> Meta {
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
    pub fn looks_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.id.size
    }

    /// Bytes this entry occupies when copied faithfully (holes stay holes).
    pub fn footprint(&self) -> u64 {
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
    pub fn settled(&self, seen: Time, margin_ns: i128) -> bool {
        self.id.ctime.as_nanos() <= seen.as_nanos() - margin_ns
    }
}

/// `fstat` of an open file, as [`Meta`].
pub fn fstat(f: &std::fs::File) -> std::io::Result<Meta> {
    nix::sys::stat::fstat(f)
        .map(|st| Meta::from_stat(&st))
        .map_err(std::io::Error::from)
}
