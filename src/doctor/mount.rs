//! The mount a path is on, as `/proc/self/mountinfo` describes it: type,
//! source and options. Pure parsing of the table's text; the caller reads
//! it (reading it never touches the share, so it cannot hang on one).

use std::path::{Path, PathBuf};

use crate::link::mounts::unescape;

/// One mountinfo line, the fields doctor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// mountinfo's `major:minor`: tells two mounts of one filesystem apart
    /// from two filesystems.
    pub(crate) dev: String,
    pub(crate) mount_point: PathBuf,
    /// `cifs`, `nfs4`, `fuse.latencyfs`, `overlay`, …
    pub(crate) fs_type: String,
    pub(crate) source: String,
    /// The per-mount options, then the filesystem's own (`uid=`,
    /// `mfsymlinks`, `nobrl` for cifs), without repeats.
    pub(crate) options: Vec<String>,
}

/// What kind of filesystem, for the advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsFamily {
    /// SMB: `cifs`, `smb3`.
    Smb,
    Nfs,
    Fuse,
    /// Disks, tmpfs, overlay: nothing other hosts see.
    Local,
    /// Anything else (9p, ceph, …): reported as measured.
    Other,
}

impl MountEntry {
    pub(crate) fn family(&self) -> FsFamily {
        let t = self.fs_type.as_str();
        match t {
            "cifs" | "smb3" | "smb2" => FsFamily::Smb,
            "nfs" | "nfs4" => FsFamily::Nfs,
            _ if t == "fuse" || t.starts_with("fuse.") || t == "fuseblk" => FsFamily::Fuse,
            "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "tmpfs" | "overlay" | "zfs" | "f2fs"
            | "vfat" | "ramfs" => FsFamily::Local,
            _ => FsFamily::Other,
        }
    }

    /// The value of `key=value`, or `Some("")` for a bare `key`.
    pub(crate) fn option(&self, key: &str) -> Option<&str> {
        self.options.iter().find_map(|o| match o.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if o == key => Some(""),
            _ => None,
        })
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.option(key).is_some()
    }
}

/// Parse one mountinfo line:
/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER_OPTS`.
pub(crate) fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let dash = fields.iter().position(|f| *f == b"-")?;
    if dash < 6 || fields.len() < dash + 4 {
        return None;
    }
    let text = |b: &[u8]| unescape(b).to_string_lossy().into_owned();
    let mut options: Vec<String> = Vec::new();
    for o in [fields[5], fields[dash + 3]]
        .iter()
        .flat_map(|f| f.split(|&b| b == b','))
        .filter(|o| !o.is_empty())
    {
        let o = text(o);
        if !options.contains(&o) {
            options.push(o);
        }
    }
    Some(MountEntry {
        dev: text(fields[2]),
        mount_point: PathBuf::from(unescape(fields[4])),
        fs_type: text(fields[dash + 1]),
        source: text(fields[dash + 2]),
        options,
    })
}

/// The mount `real` (canonical) is on: the deepest mount point above it;
/// of several at one point the last mounted, which hides the others.
/// Compared as bytes (a mount point is canonical too), for size.
pub(crate) fn mount_of(mountinfo: &[u8], real: &Path) -> Option<MountEntry> {
    use std::os::unix::ffi::OsStrExt;
    let r = real.as_os_str().as_bytes();
    let mut best: Option<MountEntry> = None;
    for e in mountinfo.split(|&b| b == b'\n').filter_map(parse_line) {
        let m = e.mount_point.as_os_str().as_bytes();
        let above = m == b"/" || (r.starts_with(m) && matches!(r.get(m.len()), None | Some(b'/')));
        let deeper = best
            .as_ref()
            .is_none_or(|b| m.len() >= b.mount_point.as_os_str().len());
        if above && deeper {
            best = Some(e);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifs_line_with_optional_fields_and_escapes() {
        let l = b"612 590 0:61 / /mnt/file\\040share rw,relatime shared:312 - cifs //acct.file.core.windows.net/data rw,vers=3.1.1,cache=strict,uid=10001,gid=10001,file_mode=0770,dir_mode=0770,mfsymlinks,nobrl,actimeo=30";
        let e = parse_line(l).unwrap();
        assert_eq!(e.mount_point, PathBuf::from("/mnt/file share"));
        assert_eq!(e.fs_type, "cifs");
        assert_eq!(e.source, "//acct.file.core.windows.net/data");
        assert_eq!(e.family(), FsFamily::Smb);
        assert_eq!(e.option("uid"), Some("10001"));
        assert_eq!(e.option("mfsymlinks"), Some(""));
        assert!(e.has("nobrl") && !e.has("nob"));
        // `rw` appears in both lists once.
        assert_eq!(e.options.iter().filter(|o| *o == "rw").count(), 1);
        assert_eq!(e.dev, "0:61");
    }

    #[test]
    fn deepest_and_last_mount_wins() {
        let mi = b"22 1 8:1 / / rw - ext4 /dev/vda rw\n\
41 22 0:50 / /mnt rw - tmpfs tmpfs rw\n\
42 41 0:51 / /mnt/share rw - tmpfs a rw\n\
43 41 0:52 / /mnt/share rw - nfs4 srv:/x rw,hard\n";
        let e = mount_of(mi, Path::new("/mnt/share/data")).unwrap();
        assert_eq!((e.fs_type.as_str(), e.dev.as_str()), ("nfs4", "0:52"));
        assert_eq!(mount_of(mi, Path::new("/srv")).unwrap().fs_type, "ext4");
        assert!(parse_line(b"garbage").is_none());
    }
}
