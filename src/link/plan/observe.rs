//! Observing one link on disk, for [`super::decide`]: what the app path
//! is, whether app and share directories are joined (the same tree under
//! two names), the share target and the leftovers of a migration. Cheap
//! when linked: a few `lstat`s and one `readlink`, never a walk of the data.

use super::{AppNode, Observed, Paths};
use crate::config::{Config, Link};
use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::share::{self, ShareNode};
use crate::link::migrate::{Leftovers, Places};
use crate::link::mounts;
use std::path::{Path, PathBuf};

/// What a non-symlink app path is.
fn app_node(app: &Path) -> Result<AppNode> {
    Ok(match share::lstat(app).ctx("inspect", app)? {
        None => AppNode::Missing,
        Some(m) if m.file_type().is_symlink() => {
            AppNode::Symlink(std::fs::read_link(app).ctx("read symlink", app)?)
        }
        Some(m) if m.is_dir() => match mounts::mount_at_or_below(app)? {
            Some(at) => AppNode::HoldsMount(at),
            None => AppNode::Dir,
        },
        Some(m) => AppNode::Other(share::kind_name(m.file_type())),
    })
}

/// The share directory the app directory is one with, if any: the share
/// target or one of its parents is the app directory, or one lies inside
/// the other. Decided by device and inode, then by where both live inside
/// their filesystem, as a path cannot tell: a bind mount or a symlinked
/// `app_root` joins trees whose paths differ. Only asked when there is a
/// directory to migrate.
fn joined(
    app: &Path,
    root: Option<&Dir>,
    share_root: &Path,
    share: &Path,
) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    // Below the share root nothing is followed: a directory there is
    // opened one component at a time, and a symlink is no directory.
    let id = |p: &Path| match p.strip_prefix(share_root) {
        Ok(rel) if !rel.as_os_str().is_empty() => Ok(root
            .and_then(|r| crate::fs::tree::open_beneath(r, rel).ok())
            .and_then(|d| d.stat().ok())
            .map(|m| (m.dev, m.id.ino))),
        _ => match std::fs::metadata(p) {
            Ok(m) => Ok(Some((m.dev(), m.ino()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(Error::io("inspect", p, e)),
        },
    };
    // The app path itself is not followed: another sharelink may have
    // made it the symlink into the share since it was looked at.
    let app_id = match std::fs::symlink_metadata(app) {
        Ok(m) if m.is_dir() => (m.dev(), m.ino()),
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("inspect", app, e)),
    };
    // Each looked at once (on a network share, a round trip each).
    let share_id = id(share)?;
    for p in share.ancestors() {
        let pid = if p == share { share_id } else { id(p)? };
        if pid == Some(app_id) {
            return Ok(Some(p.to_path_buf()));
        }
    }
    if let Some(share_id) = share_id {
        for p in app.ancestors().skip(1) {
            if id(p)? == Some(share_id) {
                return Ok(Some(share.to_path_buf()));
            }
        }
    }
    // A bind mount hides ancestry from paths (`share_root` a bind of a
    // directory inside the data directory, or the other way round): compare
    // where both live inside their filesystem.
    let (Some(app_real), Some(share_real)) = (
        app.parent()
            .and_then(real_path)
            .zip(app.file_name())
            .map(|(p, n)| p.join(n)),
        real_path(share),
    ) else {
        return Ok(None);
    };
    match mounts::fs_paths([&app_real, &share_real])? {
        [Some(a), Some(s)]
            if a.dev == s.dev && (s.path.starts_with(&a.path) || a.path.starts_with(&s.path)) =>
        {
            Ok(Some(share.to_path_buf()))
        }
        _ => Ok(None),
    }
}

/// `p` with every symlink resolved, for the part of it that exists; the
/// rest is appended as it is.
fn real_path(p: &Path) -> Option<PathBuf> {
    let mut tail = Vec::new();
    let mut cur = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return Some(tail.iter().rev().fold(real, |acc: PathBuf, n| acc.join(n)));
        }
        tail.push(cur.file_name()?.to_os_string());
        cur = cur.parent()?;
    }
}

/// Look at one link on disk. Cheap when linked: a few `lstat`s and one
/// `readlink`, never a walk of the data.
pub fn observe(cfg: &Config, link: &Link, paths: &Paths) -> Result<Observed> {
    // `readlink` first: on the linked fast path it answers in one call what
    // `lstat` + `readlink` would in two (EINVAL: not a symlink).
    let app = match std::fs::read_link(&paths.app) {
        Ok(target) => Some(AppNode::Symlink(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(AppNode::Missing),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e) => return Err(crate::error::Error::io("inspect", &paths.app, e)),
    };
    let app = match app {
        Some(node) => node,
        None => app_node(&paths.app)?,
    };
    // The share root, opened once for everything below.
    let root = Dir::open(&cfg.share_root);
    let app = match app {
        AppNode::Dir => match joined(
            &paths.app,
            root.as_ref().ok(),
            &cfg.share_root,
            &paths.share,
        )? {
            Some(at) => AppNode::JoinedWithShare(at),
            None => AppNode::Dir,
        },
        other => other,
    };
    // Whether the share target is empty only matters for a migration.
    let want_empty = matches!(app, AppNode::Dir);
    let (share, target) = match root {
        Ok(root) => share::node_beneath(&root, &cfg.share_root, &link.share, want_empty)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => (ShareNode::Missing, None),
        Err(e) => return Err(Error::io("open", &cfg.share_root, e)),
    };
    let mut missing_dirs = Vec::new();
    let mut bad_dir = None;
    if let Some(target) = &target {
        for d in &link.dirs {
            match share::node_beneath(target, &paths.share, d, false)?.0 {
                ShareNode::Dir { .. } => {}
                ShareNode::Missing => missing_dirs.push(d.clone()),
                other => {
                    bad_dir = Some(other);
                    break;
                }
            }
        }
    } else {
        missing_dirs = link.dirs.clone();
    }
    // Leftovers sit beside the target and the app path: only look for
    // them when a migration is or was under way, and when the target's
    // parents are real directories (else the refusal is the answer).
    let leftovers = if matches!(app, AppNode::Dir | AppNode::Missing)
        && matches!(share, ShareNode::Missing | ShareNode::Dir { .. })
    {
        Places::new(cfg, link).leftovers(cfg, link)
    } else {
        Leftovers::default()
    };
    Ok(Observed {
        app,
        share,
        missing_dirs,
        bad_dir,
        leftovers,
    })
}

/// [`observe`] every link, several at a time: on a network share each look
/// is a few round trips, and a thousand links one after the other would
/// take seconds.
pub fn observe_all(cfg: &Config) -> Vec<Result<Observed>> {
    let threads = cfg.migration.threads(&cfg.share_root);
    crate::fs::pool::map(&cfg.links, threads, |l| {
        observe(cfg, l, &Paths::new(cfg, l))
    })
}
