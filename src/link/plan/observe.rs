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
/// directory to migrate. `known`: what the look at the share target found
/// already (its device and inode, or `Some(None)`: nothing there), so that
/// it is not looked at twice (a round trip each on a network share).
fn joined(
    app: &Path,
    root: Option<&Dir>,
    share_root: &Path,
    share: &Path,
    known: Option<Option<(u64, u64)>>,
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
    let share_id = match known {
        Some(k) => k,
        None => id(share)?,
    };
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
    joined_by_mount(app, share, known == Some(None))
}

/// Whether the app directory and the share target are one by where both
/// live inside their filesystem: a bind mount hides ancestry from paths
/// (`share_root` a bind of a directory inside the data directory, or the
/// other way round). A share target found `missing` (without following) is
/// looked for where it would be: its parent, and its name on top (no mount
/// point can be a name that is not there).
fn joined_by_mount(app: &Path, share: &Path, missing: bool) -> Result<Option<PathBuf>> {
    let (share_at, tail) = match (missing, share.parent(), share.file_name()) {
        (true, Some(p), Some(n)) => (p, Some(n)),
        _ => (share, None),
    };
    let (Some(app_real), Some(share_real)) = (
        app.parent()
            .and_then(real_path)
            .zip(app.file_name())
            .map(|(p, n)| p.join(n)),
        real_path(share_at),
    ) else {
        return Ok(None);
    };
    match mounts::fs_paths([&app_real, &share_real])? {
        [Some(a), Some(mut s)] => {
            if let Some(n) = tail {
                s.path.push(n);
            }
            if a.dev == s.dev && (s.path.starts_with(&a.path) || a.path.starts_with(&s.path)) {
                Ok(Some(share.to_path_buf()))
            } else {
                Ok(None)
            }
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

/// What is at the app path. `readlink` first: on the linked fast path it
/// answers in one call what `lstat` + `readlink` would in two (EINVAL: not
/// a symlink).
fn app_node_linked_first(app: &Path) -> Result<AppNode> {
    match std::fs::read_link(app) {
        Ok(target) => Ok(AppNode::Symlink(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AppNode::Missing),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => app_node(app),
        Err(e) => Err(Error::io("inspect", app, e)),
    }
}

/// The link's extra directories inside the share target (`share` its
/// path): those missing, and the first that is something else than a
/// directory.
fn extra_dirs(
    target: &Dir,
    share: &Path,
    dirs: &[PathBuf],
) -> Result<(Vec<PathBuf>, Option<ShareNode>)> {
    let mut missing = Vec::new();
    for d in dirs {
        match share::node_beneath(target, share, d, false)?.0 {
            ShareNode::Dir { .. } => {}
            ShareNode::Missing => missing.push(d.clone()),
            other => return Ok((missing, Some(other))),
        }
    }
    Ok((missing, None))
}

/// Look at one link on disk. Cheap when linked: a few `lstat`s and one
/// `readlink`, never a walk of the data.
pub(crate) fn observe(cfg: &Config, link: &Link, paths: &Paths) -> Result<Observed> {
    let app = app_node_linked_first(&paths.app)?;
    // The share root, opened once for everything below (`O_PATH`: no
    // round trip).
    let root = match Dir::open_path(&cfg.share_root) {
        Ok(d) => Some(d),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(Error::io("open", &cfg.share_root, e)),
    };
    // The share target first: what it is answers `joined` too. Whether it
    // is empty only matters for a migration.
    let want_empty = matches!(app, AppNode::Dir);
    let (mut share, target) = match &root {
        Some(root) => share::node_beneath(root, &cfg.share_root, &link.share, want_empty)?,
        None => (ShareNode::Missing, None),
    };
    let app = match app {
        AppNode::Dir => {
            // Only here (never on the linked fast path): the target's
            // identity, for `joined`.
            let known = match (&root, &share, &target) {
                (Some(_), ShareNode::Missing, _) => Some(None),
                (Some(_), ShareNode::Dir { .. }, Some(d)) => {
                    d.stat().ok().map(|m| Some((m.dev, m.id.ino)))
                }
                _ => None,
            };
            match joined(
                &paths.app,
                root.as_ref(),
                &cfg.share_root,
                &paths.share,
                known,
            )? {
                Some(at) => {
                    // Not a migration after all: its emptiness is not asked.
                    if let ShareNode::Dir { empty } = &mut share {
                        *empty = false;
                    }
                    AppNode::JoinedWithShare(at)
                }
                None => AppNode::Dir,
            }
        }
        other => other,
    };
    let (missing_dirs, bad_dir) = match &target {
        Some(target) => extra_dirs(target, &paths.share, &link.dirs)?,
        None => (link.dirs.clone(), None),
    };
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
pub(crate) fn observe_all(cfg: &Config) -> Vec<Result<Observed>> {
    let threads = cfg.migration.threads(&cfg.share_root);
    crate::fs::pool::map(&cfg.links, threads, |l| {
        observe(cfg, l, &Paths::new(cfg, l))
    })
}
