//! The share target as linking sees it: what stands where the share
//! directory belongs, told by one classifier ([`share::node_at`]) for
//! plan's observation and for each migration pass (which looks again under
//! the lock: another replica may have filled the target meanwhile), which
//! way a migration goes from there, and the one refusal when something
//! other than a directory stands there.

use std::ffi::OsStr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::dir::Dir;
use crate::fs::share::{self, ShareNode};
use crate::link::advice;

/// The share target as a migration pass finds it.
pub(crate) enum ShareTarget {
    /// Missing, or holding nothing but directories: the whole tree is
    /// copied in.
    Empty { exists: bool },
    /// Holding files: entries are compared.
    Full(Dir),
}

impl ShareTarget {
    /// Look at the share target `name` in its open parent directory (`path`
    /// names it in messages), without following symlinks. Anything but a
    /// directory there is the refusal ([`refusal`], exit 65).
    pub(crate) fn observe(parent: &Dir, name: &OsStr, path: &Path) -> Result<ShareTarget> {
        let (node, dir) = share::node_at(parent, name, path, true)?;
        if let Some(why) = refusal(&node) {
            return Err(Error::Unsafe(why));
        }
        Ok(match dir {
            Some(d) if !into_empty(&node) => ShareTarget::Full(d),
            d => ShareTarget::Empty {
                exists: d.is_some(),
            },
        })
    }
}

/// Whether a migration copies the whole tree in ("into empty"): the target
/// is missing or holds nothing but directories. Otherwise it compares.
pub(crate) fn into_empty(node: &ShareNode) -> bool {
    matches!(node, ShareNode::Missing | ShareNode::Dir { empty: true })
}

/// Why sharelink leaves the share target alone, when something other than
/// a directory stands where it (or a directory above it) belongs.
pub(crate) fn refusal(node: &ShareNode) -> Option<String> {
    match node {
        ShareNode::Symlink { at } => Some(advice::unsafe_symlink(at).to_string()),
        ShareNode::NotDir { at, kind } => Some(format!(
            "{} is a {kind} where the share directory belongs; sharelink leaves it alone. Move it away and re-run",
            at.display()
        )),
        ShareNode::Missing | ShareNode::Dir { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(root: &Path, name: &str) -> Result<ShareTarget> {
        let parent = Dir::open(root).unwrap();
        ShareTarget::observe(&parent, OsStr::new(name), &root.join(name))
    }

    #[test]
    fn the_target_decides_the_path_and_refuses_a_non_directory() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert!(matches!(
            observe(root, "t").unwrap(),
            ShareTarget::Empty { exists: false }
        ));
        std::fs::create_dir_all(root.join("t/a/b")).unwrap();
        assert!(matches!(
            observe(root, "t").unwrap(),
            ShareTarget::Empty { exists: true }
        ));
        std::fs::write(root.join("t/a/f"), "x").unwrap();
        assert!(matches!(observe(root, "t").unwrap(), ShareTarget::Full(_)));

        std::fs::write(root.join("file"), "").unwrap();
        let err = observe(root, "file").err().unwrap();
        assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Unsafe);
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a regular file where the share directory belongs; sharelink leaves it alone. Move it away and re-run",
                root.join("file").display()
            )
        );
        std::os::unix::fs::symlink(root.join("t"), root.join("link")).unwrap();
        let err = observe(root, "link").err().unwrap();
        assert_eq!(err.exit_code(), crate::exit_code::ExitCode::Unsafe);
        assert!(
            err.to_string().contains("symlink inside the share"),
            "{err}"
        );
    }

    #[test]
    fn into_empty_only_when_missing_or_without_files() {
        assert!(into_empty(&ShareNode::Missing));
        assert!(into_empty(&ShareNode::Dir { empty: true }));
        assert!(!into_empty(&ShareNode::Dir { empty: false }));
        assert!(refusal(&ShareNode::Dir { empty: false }).is_none());
        assert!(refusal(&ShareNode::Missing).is_none());
    }
}
