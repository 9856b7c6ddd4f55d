//! Crash-safe migration of a baked app directory into the share.
//!
//! The app directory usually sits in an overlayfs image layer (renaming it
//! gives EXDEV) and the share is another filesystem, so a move is a copy,
//! a sync, a commit rename, then a delete. The invariant (SPEC): at every
//! instant each file of the app directory exists whole in the app
//! directory, in the share target, or in a staging/displaced area the next
//! run finishes from; a share target is never visible half-copied.
//!
//! Every intermediate state is recognisable on disk ([`Phase`]) and the
//! next `link`/`run` finishes it. All of this runs under the link's
//! [`Lock`], after the plan was re-made under that lock.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Config, Link, RESERVED_DIR};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::fsutil::{self, CopyStats};
use crate::lock::Lock;
use crate::plan::{Migration, Paths};
use crate::signals;

/// The on-disk states of one link's migration, in order.
///
/// | phase | on disk | the next run |
/// |---|---|---|
/// | `Baked` | app path is a real directory, no staging | plans a migration |
/// | `Staging` | `.<target>.sharelink-staging` beside the share target (app intact) | discards the staging, starts over |
/// | `Displacing` | `.sharelink/displaced/<app>/<stamp>.partial` (app intact) | discards the partial copy, starts over |
/// | `Committed` | share target holds every app file; app directory still there, maybe partly deleted | finds nothing app-only, deletes the rest |
/// | `Pruned` | app path missing | makes the symlink |
/// | `Linked` | app path is the symlink | nothing |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Baked,
    Staging,
    Displacing,
    Committed,
    Pruned,
    Linked,
}

/// Every failpoint name, in the order a migration reaches them; the
/// fault-injection tests sweep these.
pub const FAILPOINTS: &[&str] = &[
    "lock.acquired",
    "staging.created",
    "staging.file",
    "staging.synced",
    "commit.renamed",
    "commit.synced",
    "merge.file",
    "merge.moved",
    "displace.file",
    "displace.synced",
    "displace.renamed",
    "prune.entry",
    "prune.done",
    "swap.temp",
];

/// What a migration did, for the per-link log line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Copied into the share target.
    pub moved: CopyStats,
    /// Set aside under `.sharelink/displaced/`.
    pub displaced: CopyStats,
    pub displaced_to: Option<PathBuf>,
    /// App entries whose paths the share already had (share wins).
    pub already_on_share: u64,
}

pub enum Done {
    Ok(Outcome),
    /// The share target gained data between planning and commit (a writer
    /// not using sharelink): nothing was changed, the caller re-plans.
    Replan,
}

/// Run one migration under `lock`. The app directory is deleted at the end;
/// the caller makes the symlink.
///
/// When it fails with an I/O error (a full share, most often), the partial
/// copies are removed before returning: they are redundant (the app
/// directory is intact until the share holds everything) and would
/// otherwise keep a full share full for everyone until the next run. Not
/// on a termination signal (stop promptly; the next run discards them), and
/// not when the lock is no longer ours (they may be another run's now).
pub fn migrate(
    cfg: &Config,
    link: &Link,
    paths: &Paths,
    how: Migration,
    lock: &mut Lock,
) -> Result<Done> {
    // The app directory is replaced at the end; on a read-only root
    // filesystem that would fail after a full copy, on every start. Say so
    // first, having copied nothing.
    let app_parent = paths.app.parent().unwrap_or(Path::new("/"));
    if nix::sys::statvfs::statvfs(app_parent)
        .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    {
        return Err(Error::Io {
            context: format!(
                "{} is on a read-only filesystem: sharelink must replace {} with a symlink (run the container with a writable root, or make the data directory a symlink at build time)",
                app_parent.display(),
                paths.app.display()
            ),
            source: io::Error::from_raw_os_error(libc::EROFS),
        });
    }
    let result = migrate_locked(cfg, link, paths, how, lock);
    if let Err(e) = &result {
        if !e.is_interrupted() && lock.verify().is_ok() {
            discard_partial_copies(cfg, link, paths);
        }
    }
    result
}

fn discard_partial_copies(cfg: &Config, link: &Link, paths: &Paths) {
    let mut partials = vec![paths.staging.clone()];
    let displaced = Path::new(RESERVED_DIR).join("displaced").join(&link.app);
    // Only below real directories of the share, never through a symlink.
    if matches!(
        fsutil::share_node(&cfg.share_root, &displaced, false),
        Ok(fsutil::ShareNode::Dir { .. })
    ) {
        let base = cfg.share_root.join(&displaced);
        for e in fs::read_dir(&base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                partials.push(e.path());
            }
        }
    }
    for p in partials {
        if let Err(e) = fsutil::remove_tree(&p, &mut || Ok(())) {
            tracing::debug!(path = %p.display(), "could not remove a partial copy: {e}");
        }
    }
}

fn migrate_locked(
    cfg: &Config,
    link: &Link,
    paths: &Paths,
    how: Migration,
    lock: &mut Lock,
) -> Result<Done> {
    let mut out = Outcome::default();
    tracing::debug!(app = %paths.app.display(), ?how, phase = ?Phase::Baked, "migration starts");
    match how {
        Migration::IntoEmpty => {
            if let Some(parent) = link.share.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsutil::ensure_dir_beneath(&cfg.share_root, parent)?;
            }
            // Phase::Staging
            fsutil::copy_tree(
                &paths.app,
                &paths.staging,
                &mut || tick(lock, "staging.file"),
                &mut out.moved,
            )?;
            fsutil::syncfs(&paths.staging)?;
            tick(lock, "staging.synced")?;
            // Phase::Committed begins with the rename.
            match commit(paths) {
                Ok(()) => {}
                Err(CommitError::Exists) => {
                    fsutil::remove_tree(&paths.staging, &mut || Ok(()))?;
                    return Ok(Done::Replan);
                }
                Err(CommitError::Io(e)) => return Err(e),
            }
            failpoint::hit("commit.renamed");
            fsutil::syncfs(&paths.share)?;
            failpoint::hit("commit.synced");
            tracing::debug!(share = %paths.share.display(), phase = ?Phase::Committed, "committed: the share target holds everything");
        }
        Migration::KeepShare | Migration::Merge => {
            let mut diff = Diff::default();
            diff_trees(&paths.app, &paths.share, Path::new(""), &mut diff)?;
            out.already_on_share = diff.present;
            let mut displace = diff.conflicts;
            if how == Migration::Merge {
                merge_into_share(paths, &diff.missing, lock, &mut out.moved)?;
            } else {
                displace.extend(diff.missing);
            }
            if !displace.is_empty() {
                let to = displace_entries(cfg, link, paths, &displace, lock, &mut out.displaced)?;
                out.displaced_to = Some(to);
            }
        }
    }
    // Phase::Committed: everything of the app directory is durable in the
    // share (or the displaced area). Only now is deleting it safe.
    lock.verify()?;
    fsutil::remove_tree(&paths.app, &mut || tick(lock, "prune.entry"))?;
    failpoint::hit("prune.done");
    tracing::debug!(app = %paths.app.display(), phase = ?Phase::Pruned, "app directory removed");
    Ok(Done::Ok(out))
}

/// Between files and chunks: a failpoint, a safe point for signals, and
/// the lock's lease refresh.
fn tick(lock: &mut Lock, point: &'static str) -> Result<()> {
    failpoint::hit(point);
    signals::check_interrupt()?;
    lock.keepalive()
}

enum CommitError {
    Exists,
    Io(Error),
}

/// Rename staging to the target without replacing anything: a target
/// holding only empty directories (made by `dirs` or a replica) is removed
/// first; one with files means the share gained data since the plan.
fn commit(paths: &Paths) -> std::result::Result<(), CommitError> {
    match fsutil::remove_empty_dirs(&paths.share) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
            return Err(CommitError::Exists)
        }
        Err(e) => {
            return Err(CommitError::Io(Error::io(
                "remove empty share target",
                &paths.share,
                e,
            )))
        }
    }
    match fsutil::rename_noreplace(&paths.staging, &paths.share) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            Err(CommitError::Exists)
        }
        Err(e) => Err(CommitError::Io(Error::io(
            "commit staging to",
            &paths.share,
            e,
        ))),
    }
}

/// App entries compared with a non-empty share target, by path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Not on the share at all (a file, or a whole directory subtree).
    pub missing: Vec<PathBuf>,
    /// On the share with another type (directory vs non-directory): kept
    /// aside rather than dropped.
    pub conflicts: Vec<PathBuf>,
    /// Non-directories whose paths the share has too: the share wins.
    pub present: u64,
}

/// Walk the app tree against the share tree, never following symlinks on
/// either side.
pub fn diff_trees(app: &Path, share: &Path, rel: &Path, out: &mut Diff) -> Result<()> {
    let dir = app.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .ctx("read directory", &dir)?
        .collect::<io::Result<_>>()
        .ctx("read directory", &dir)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let app_is_dir = e.file_type().ctx("inspect", &e.path())?.is_dir();
        let s = share.join(&r);
        match fsutil::lstat(&s).ctx("inspect", &s)? {
            None => out.missing.push(r),
            Some(m) if m.is_dir() && app_is_dir => diff_trees(app, share, &r, out)?,
            Some(m) if m.is_dir() != app_is_dir => out.conflicts.push(r),
            Some(_) => out.present += 1,
        }
    }
    Ok(())
}

/// Copy `entries` (relative to the app directory) into staging, sync, then
/// move each into the share target with a no-replace rename: each file or
/// subtree appears whole or not at all. The staging directory is always
/// redundant (the app directory is intact until the end), so an
/// interrupted merge is discarded and redone.
fn merge_into_share(
    paths: &Paths,
    entries: &[PathBuf],
    lock: &mut Lock,
    stats: &mut CopyStats,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    fs::create_dir(&paths.staging).ctx("create staging", &paths.staging)?;
    failpoint::hit("staging.created");
    copy_entries(
        &paths.app,
        &paths.staging,
        entries,
        lock,
        "merge.file",
        stats,
    )?;
    fsutil::syncfs(&paths.staging)?;
    tick(lock, "staging.synced")?;
    for r in entries {
        let to = paths.share.join(r);
        match fsutil::rename_noreplace(&paths.staging.join(r), &to) {
            Ok(()) => {}
            // Appeared on the share meanwhile: the share wins, as for
            // entries that were there from the start.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                tracing::debug!(path = %to.display(), "appeared on the share during merge; keeping the share's");
            }
            Err(e) => return Err(Error::io("move into share", &to, e)),
        }
        tick(lock, "merge.moved")?;
    }
    fsutil::syncfs(&paths.share)?;
    fsutil::remove_tree(&paths.staging, &mut || Ok(()))?;
    Ok(())
}

/// Copy `entries` to `.sharelink/displaced/<app path>/<UTC stamp>/`, via a
/// `.partial` directory renamed into place once synced.
fn displace_entries(
    cfg: &Config,
    link: &Link,
    paths: &Paths,
    entries: &[PathBuf],
    lock: &mut Lock,
    stats: &mut CopyStats,
) -> Result<PathBuf> {
    let base_rel = Path::new(RESERVED_DIR).join("displaced").join(&link.app);
    fsutil::ensure_dir_beneath(&cfg.share_root, &base_rel)?;
    let base = cfg.share_root.join(&base_rel);
    // Partial copies of earlier interrupted runs are redundant: the app
    // directory they came from is still intact.
    for e in fs::read_dir(&base).ctx("read directory", &base)?.flatten() {
        if e.file_name().to_string_lossy().ends_with(".partial") {
            fsutil::remove_tree(&e.path(), &mut || Ok(()))?;
        }
    }
    // A rerun after a crash during pruning finds the app-only files that
    // were not deleted yet; they are already in the newest displaced copy.
    if let Some(latest) = newest_copy(&base)? {
        if already_kept(&paths.app, &latest, entries)? {
            tracing::debug!(copy = %latest.display(), "app-only files already set aside");
            return Ok(latest);
        }
    }
    let stamp = fsutil::utc_stamp(std::time::SystemTime::now());
    let mut name = stamp.clone();
    let mut n = 1;
    while fsutil::lstat(&base.join(&name))
        .ctx("inspect", &base)?
        .is_some()
    {
        n += 1;
        name = format!("{stamp}-{n}");
    }
    let done = base.join(&name);
    let partial = base.join(format!("{name}.partial"));
    fs::create_dir(&partial).ctx("create", &partial)?;
    copy_entries(&paths.app, &partial, entries, lock, "displace.file", stats)?;
    fsutil::syncfs(&partial)?;
    tick(lock, "displace.synced")?;
    fsutil::rename_noreplace(&partial, &done).ctx("rename displaced copy to", &done)?;
    failpoint::hit("displace.renamed");
    fsutil::syncfs(&base)?;
    Ok(done)
}

/// Copy each of `entries` (relative to `app`) to the same relative path
/// under `into`, making parent directories as needed.
fn copy_entries(
    app: &Path,
    into: &Path,
    entries: &[PathBuf],
    lock: &mut Lock,
    point: &'static str,
    stats: &mut CopyStats,
) -> Result<()> {
    for r in entries {
        let dst = into.join(r);
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p).ctx("create", p)?;
        }
        fsutil::copy_tree(&app.join(r), &dst, &mut || tick(lock, point), stats)?;
    }
    Ok(())
}

/// The newest complete `<stamp>[-n]` directory under `base`.
fn newest_copy(base: &Path) -> Result<Option<PathBuf>> {
    let mut best: Option<((String, u32), PathBuf)> = None;
    for e in fs::read_dir(base).ctx("read directory", base)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial") {
            continue;
        }
        let key = match name.split_once('-') {
            Some((stamp, n)) => (stamp.to_string(), n.parse().unwrap_or(0)),
            None => (name.clone(), 1),
        };
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Whether every non-directory under `app/<entry>` is in `copy` already,
/// with the same size and mtime (files) or target (symlinks): the quick
/// check rsync uses. Copies keep mtimes, so a file set aside before
/// matches.
fn already_kept(app: &Path, copy: &Path, entries: &[PathBuf]) -> Result<bool> {
    let mut stack: Vec<PathBuf> = entries.to_vec();
    while let Some(rel) = stack.pop() {
        let a = app.join(&rel);
        let m = fs::symlink_metadata(&a).ctx("inspect", &a)?;
        if m.is_dir() {
            for e in fs::read_dir(&a).ctx("read directory", &a)? {
                stack.push(rel.join(e.ctx("read directory", &a)?.file_name()));
            }
            continue;
        }
        let Some(c) = fsutil::lstat(&copy.join(&rel)).ctx("inspect", copy)? else {
            return Ok(false);
        };
        let same = if m.file_type().is_symlink() {
            c.file_type().is_symlink()
                && fs::read_link(&a).ok() == fs::read_link(copy.join(&rel)).ok()
        } else {
            use std::os::unix::fs::MetadataExt;
            c.is_file()
                && c.len() == m.len()
                && c.mtime() == m.mtime()
                && c.mtime_nsec() == m.mtime_nsec()
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_by_path_and_type() {
        let t = tempfile::tempdir().unwrap();
        let (a, s) = (t.path().join("a"), t.path().join("s"));
        for d in [&a, &s] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("both"), "x").unwrap();
        }
        fs::write(a.join("sub/only_app"), "").unwrap();
        fs::create_dir_all(a.join("newdir/deep")).unwrap();
        fs::write(a.join("clash"), "file on app").unwrap();
        fs::create_dir(s.join("clash")).unwrap();
        fs::write(s.join("sub/only_share"), "").unwrap();
        let mut d = Diff::default();
        diff_trees(&a, &s, Path::new(""), &mut d).unwrap();
        assert_eq!(
            d.missing,
            [PathBuf::from("newdir"), PathBuf::from("sub/only_app")]
        );
        assert_eq!(d.conflicts, [PathBuf::from("clash")]);
        assert_eq!(d.present, 1);
    }
}
