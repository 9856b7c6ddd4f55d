//! Refusals before anything is copied: what would make the end of the
//! migration fail (the app directory cannot be emptied), names a share
//! that ignores case would merge, and a share without room for the copy.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::inventory::{Inventory, Ix, Totals};
use super::{progress, Migration};
use crate::config::RESERVED_DIR;
use crate::error::{Error, IoContext, Result};
use crate::fs::dir::Dir;
use crate::fs::tree;

impl Migration<'_> {
    /// Names that differ only in case would become one file on a share
    /// that ignores case (SMB): refuse before copying, naming them. The
    /// share is asked only when the app directory holds such names.
    pub(super) fn refuse_case_twins(&self, inv: &Inventory) -> Result<()> {
        let twins = inv.case_twins();
        if twins.is_empty() || !self.share_ignores_case()? {
            return Ok(());
        }
        let shown: Vec<String> = twins
            .iter()
            .take(5)
            .map(|&(a, b)| {
                format!(
                    "{} and {}",
                    inv.path(&self.app_path, a).display(),
                    inv.path(&self.app_path, b).display()
                )
            })
            .collect();
        Err(Error::Unsafe(format!(
            "{}{} differ only in case, and the share at {} does not tell such names apart: both would end up as one file. Nothing was copied; rename one of each pair (in the image or the container) and re-run",
            shown.join("; "),
            if twins.len() > 5 {
                format!("; and {} more pairs", twins.len() - 5)
            } else {
                String::new()
            },
            self.cfg.share_root.display()
        )))
    }

    /// Whether the share takes a name for the same name in another case,
    /// where copies go: beside the share target (its staging) and under
    /// `.sharelink/` (set-aside copies), which may be different mounts.
    fn share_ignores_case(&self) -> Result<bool> {
        let own = Path::new(RESERVED_DIR);
        let reserved = tree::open_beneath(&self.share_root, own)
            .with_ctx("open", || self.cfg.share_root.join(own))?;
        let parent_path = self.share_path.parent().unwrap_or(Path::new("/"));
        Ok(ignores_case(&self.share_parent, parent_path)?
            || ignores_case(&reserved, &self.cfg.share_root.join(own))?)
    }
}

/// Make a hidden probe file in `dir` and look it up lower-cased.
fn ignores_case(dir: &Dir, dir_path: &Path) -> Result<bool> {
    // Unique among replicas, which are all PID 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(".Sharelink-Case-Probe.{}.{nanos}", std::process::id());
    let probe = OsStr::new(&name);
    let path = dir_path.join(probe);
    dir.create(probe, 0o600).ctx("create", &path)?;
    let found = dir.stat_at(OsStr::new(&name.to_lowercase()));
    let _ = dir.unlink(probe);
    Ok(found.ctx("inspect", &path)?.is_some())
}

/// Before anything is copied: would the end of the migration fail? The app
/// directory must be emptied and replaced with a symlink, so its parent and
/// every directory in it must be writable by us, and its files readable.
/// Failing after a full copy would fail again on every start.
pub(super) fn preflight(inv: &Inventory, app_parent: &Dir, app_path: &Path) -> Result<()> {
    let parent_path = app_path.parent().unwrap_or(Path::new("/"));
    let mut blockers: Vec<(PathBuf, &std::io::Error)> = Vec::new();
    let parent_err = app_parent
        .access(OsStr::new("."), libc::W_OK | libc::X_OK)
        .err();
    if let Some(e) = &parent_err {
        if e.raw_os_error() == Some(libc::EROFS) {
            return Err(Error::ReadOnlyApp(format!(
                "{} is on a read-only filesystem: sharelink must replace {} with a symlink (run the container with a writable root, or make the data directory a symlink at build time)",
                parent_path.display(),
                app_path.display()
            )));
        }
        blockers.push((parent_path.to_path_buf(), e));
    }
    for (ix, e) in &inv.blockers {
        blockers.push((inv.path(app_path, *ix), e));
    }
    // A sticky directory lets only an entry's owner (or the directory's)
    // remove it; `access` does not say so.
    let euid = nix::unistd::geteuid().as_raw();
    let sticky = std::io::Error::from_raw_os_error(libc::EPERM);
    if euid != 0 {
        for (i, e) in inv.entries.iter().enumerate().skip(1) {
            let parent = &inv.get(e.parent).meta;
            if parent.perm & libc::S_ISVTX != 0 && parent.uid != euid && e.meta.uid != euid {
                blockers.push((inv.path(app_path, i as Ix), &sticky));
            }
        }
    }
    if blockers.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = blockers
        .iter()
        .take(5)
        .map(|(p, e)| format!("{}: {e}", p.display()))
        .collect();
    Err(Error::CannotEmpty(format!(
        "sharelink (uid {euid}) could not empty {} and replace it with a symlink, so it copied nothing: {}{}. Make the data directory writable (and its files readable) by uid {euid}, e.g. with chown in the Dockerfile, or start sharelink as root and drop privileges with `run --user`",
        app_path.display(),
        shown.join("; "),
        if blockers.len() > 5 {
            format!("; and {} more", blockers.len() - 5)
        } else {
            String::new()
        }
    )))
}

/// Refuse to start a copy the share has no room for (it would fail part-way
/// and fill the share for everyone): bytes and inodes, by the share's
/// `statvfs` (`None`: it could not tell). Shares that report no size or no
/// inode count pass that check.
pub(super) fn check_space(
    share: Option<nix::sys::statvfs::Statvfs>,
    share_path: &Path,
    app_path: &Path,
    need: &Totals,
) -> Result<()> {
    let Some(v) = share else {
        return Ok(());
    };
    let free = v.blocks_available().saturating_mul(v.fragment_size());
    let short = if v.blocks() > 0 && need.footprint > free {
        Some(format!(
            "{} free; moving {} into it needs about {}",
            progress::human(free),
            app_path.display(),
            progress::human(need.footprint)
        ))
    } else if v.files() > 0 && need.entries > v.files_available() {
        Some(format!(
            "room for {} more files; moving {} into it needs {}",
            v.files_available(),
            app_path.display(),
            need.entries
        ))
    } else {
        None
    };
    match short {
        None => Ok(()),
        Some(why) => Err(Error::NoSpace(format!(
            "the share at {} has {why}. Nothing was copied. Grow the share (or free space), then restart",
            share_path.display()
        ))),
    }
}
