//! What an `image-wins` migration would do, for `link --dry-run`: the app
//! directory against the share target, read-only and without the lock
//! (so a migration running elsewhere may change the answer).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::compare::same_content;
use super::inventory::{Inventory, Ix};
use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::meta::Kind;
use crate::fs::tree;

/// Entries named per kind of step, by path relative to the link.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Preview {
    /// The share's entry differs: it would be set aside and replaced.
    pub(crate) replace: Vec<PathBuf>,
    /// The share lacks it: copied in (top-most entries).
    pub(crate) copy_in: Vec<PathBuf>,
    /// The share has a directory where the app has a non-directory: the
    /// app entry would be set aside.
    pub(crate) set_aside: Vec<PathBuf>,
    /// Same content on both sides: dropped from the app side.
    pub(crate) identical: u64,
}

/// Compare the app directory `app_path` with the share target `share`
/// below `share_root`, as an `image-wins` migration would. The share side
/// is opened one component at a time, never through a symlink.
pub(crate) fn preview(app_path: &Path, share_root: &Path, share: &Path) -> Result<Preview> {
    let share_path = &share_root.join(share);
    let app = Dir::open_nofollow(app_path).ctx("open", app_path)?;
    let root = Dir::open(share_root).ctx("open", share_root)?;
    let share = match tree::open_beneath(&root, share) {
        Ok(d) => Some(d),
        Err(e) if crate::fs::gone(&e) => None,
        Err(e) => return Err(Error::io("open", share_path, e)),
    };
    let inv = Inventory::scan(&app, app_path, &mut crate::signals::check_interrupt)?;
    let mut out = Preview::default();
    let Some(share) = share else {
        out.copy_in = inv.children(0).map(|c| inv.rel(c)).collect();
        return Ok(out);
    };
    let stop = AtomicBool::new(false);
    let mut todo: Vec<Ix> = inv.children(0).rev().collect();
    while let Some(ix) = todo.pop() {
        let e = inv.get(ix);
        let rel = inv.rel(ix);
        let parent = rel.parent().unwrap_or(Path::new(""));
        let theirs = match tree::open_beneath(&share, parent) {
            Ok(d) => d
                .stat_at(&e.name)
                .with_ctx("inspect", || share_path.join(&rel))?
                .map(|m| (d, m)),
            Err(err) if crate::fs::gone(&err) || err.raw_os_error() == Some(libc::ENOTDIR) => None,
            Err(err) => return Err(Error::io("open", &share_path.join(parent), err)),
        };
        let Some((dir, theirs)) = theirs else {
            out.copy_in.push(rel);
            continue;
        };
        match (e.meta.kind == Kind::Dir, theirs.kind == Kind::Dir) {
            (true, true) => todo.extend(inv.children(ix).rev()),
            (false, true) => out.set_aside.push(rel),
            (true, false) => out.replace.push(rel),
            (false, false) => {
                let parent_app =
                    tree::open_beneath(&app, parent).with_ctx("open", || app_path.join(parent))?;
                if same_content(&parent_app, &dir, &e.name, &e.meta, &theirs, &stop)
                    .with_ctx("compare", || app_path.join(&rel))?
                {
                    out.identical += 1;
                } else {
                    out.replace.push(rel);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn names_what_would_be_replaced_copied_and_set_aside() {
        let t = tempfile::tempdir().unwrap();
        let (a, s) = (t.path().join("a"), t.path().join("s"));
        for (root, rel, text) in [
            (&a, "same", "x"),
            (&s, "same", "x"),
            (&a, "ref/rates", "v2"),
            (&s, "ref/rates", "v1"),
            (&a, "ref/new", "n"),
            (&a, "clash", "file"),
            (&s, "clash/in", "dir"),
            (&a, "tables/t", "t"),
            (&s, "tables", "file"),
            (&s, "output", "pipeline's"),
        ] {
            fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
            fs::write(root.join(rel), text).unwrap();
        }
        let mut p = preview(&a, t.path(), Path::new("s")).unwrap();
        p.replace.sort();
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(p.replace, paths(&["ref/rates", "tables"]));
        assert_eq!(p.copy_in, paths(&["ref/new"]));
        assert_eq!(p.set_aside, paths(&["clash"]));
        assert_eq!(p.identical, 1);
        // Nothing changed.
        assert_eq!(fs::read(s.join("ref/rates")).unwrap(), b"v1");
    }
}
