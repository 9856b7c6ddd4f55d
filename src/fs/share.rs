//! Paths below the share root, walked one component at a time with
//! `lstat`: a symlink anywhere between `share_root` and a target is
//! reported, never followed, so a hostile or confused share cannot make
//! sharelink read or write outside it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
            crate::exit_code::ExitCode::Unsafe
        );
        assert_eq!(
            ensure_dir_beneath(root, Path::new("file/x"))
                .unwrap_err()
                .exit_code(),
            crate::exit_code::ExitCode::Unsafe
        );
        assert!(ensure_dir_beneath(root, Path::new("a/b/c/d")).unwrap());
        assert!(!ensure_dir_beneath(root, Path::new("a/b/c/d")).unwrap());
    }
}
