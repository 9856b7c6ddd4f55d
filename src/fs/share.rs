//! Paths below the share root. Anyone who can write into the share may
//! plant symlinks or swap directories while sharelink works, so paths
//! there are never handed to the kernel whole: they are walked one
//! component at a time relative to open directories, without following
//! symlinks; a symlink anywhere between `share_root` and a target is
//! reported, never followed.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::Kind;
use crate::fs::tree;

/// A short name for a file type, for messages.
pub(crate) fn kind_name(ft: fs::FileType) -> &'static str {
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
pub(crate) fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a path below the share root is, found without following symlinks.
/// `empty` means "holds no files" ([`tree::holds_no_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShareNode {
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

/// What `name` in the open directory `parent` is (`at` names it in
/// messages): looked at with `fstatat` without following, then opened with
/// `O_NOFOLLOW | O_DIRECTORY`, so that an entry swapped for a symlink
/// meanwhile is reported, never followed. Returns the directory when there
/// is one. The one classifier of a share path: [`node_beneath`] takes each
/// component with it, and a migration looks at its share target with it
/// again under the lock each pass. Emptiness is only read when
/// `want_empty` (a directory read, a network round trip on SMB); otherwise
/// a directory reports `empty: false`.
pub(crate) fn node_at(
    parent: &Dir,
    name: &OsStr,
    at: &Path,
    want_empty: bool,
) -> Result<(ShareNode, Option<Dir>)> {
    let kind = match parent.stat_at(name).ctx("inspect", at)? {
        None => return Ok((ShareNode::Missing, None)),
        Some(m) => m.kind,
    };
    let at = at.to_path_buf();
    match kind {
        Kind::Dir => {}
        Kind::Symlink => return Ok((ShareNode::Symlink { at }, None)),
        k => return Ok((ShareNode::NotDir { at, kind: k.name() }, None)),
    }
    let dir = match parent.open_dir(name) {
        Ok(d) => d,
        Err(e) => {
            return Ok((
                match e.raw_os_error() {
                    Some(libc::ENOENT) => ShareNode::Missing,
                    Some(libc::ELOOP) => ShareNode::Symlink { at },
                    Some(libc::ENOTDIR) => ShareNode::NotDir {
                        at,
                        kind: "non-directory",
                    },
                    _ => return Err(Error::io("open directory", &at, e)),
                },
                None,
            ))
        }
    };
    let empty = want_empty && tree::holds_no_files(&dir).ctx("read", &at)?;
    Ok((ShareNode::Dir { empty }, Some(dir)))
}

/// Walk `root/rel` one component at a time, each taken with [`node_at`]
/// relative to the directory opened before it. `root_path` names `root` in
/// messages; `want_empty` as for [`node_at`], for the last component.
pub(crate) fn node_beneath(
    root: &Dir,
    root_path: &Path,
    rel: &Path,
    want_empty: bool,
) -> Result<(ShareNode, Option<Dir>)> {
    let mut cur = root.try_clone().ctx("open", root_path)?;
    let mut at = root_path.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        at.push(c);
        let last = components.peek().is_none();
        match node_at(&cur, c.as_os_str(), &at, want_empty && last)? {
            (ShareNode::Dir { .. }, Some(d)) if !last => cur = d,
            found => return Ok(found),
        }
    }
    // `rel` is empty: the root itself.
    let empty = want_empty && tree::holds_no_files(&cur).ctx("read", &at)?;
    Ok((ShareNode::Dir { empty }, Some(cur)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`node_beneath`] from the share root's path (the config's, trusted).
    fn share_node(root: &Path, rel: &Path, want_empty: bool) -> Result<ShareNode> {
        let dir = match Dir::open(root) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ShareNode::Missing),
            Err(e) => return Err(Error::io("open", root, e)),
        };
        Ok(node_beneath(&dir, root, rel, want_empty)?.0)
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
        let d = Dir::open(root).unwrap();
        let made = |rel: &str| tree::make_beneath(&d, Path::new(rel), root);
        assert!(matches!(
            made("evil/tmp").err().unwrap(),
            tree::MakeError::Symlink(at) if at == root.join("evil")
        ));
        assert!(matches!(
            made("file/x").err().unwrap(),
            tree::MakeError::NotDir(at, Kind::File) if at == root.join("file")
        ));
        assert!(made("a/b/c/d").unwrap().created);
        assert!(!made("a/b/c/d").unwrap().created);
    }
}
