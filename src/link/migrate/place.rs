//! Moving staged roots into the share target: copies in (each root
//! appears whole or not at all, never over anything) and replacements of
//! our own outdated copies, which overwrite exactly the copy they checked
//! (and, first thing in a run, putting back what a replace killed between
//! its renames left aside).

use super::copy::{self, Staging};
use super::inventory::{Inventory, Ix};
use super::layout::{ASIDE, TMP_SUFFIX, TREE, WHERE_SUFFIX};
use super::stage::Stage;
use super::{Ctx, Ledger, Migration, Outcome};
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind, Meta};
use crate::fs::{pool, tree};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Replace `name` in `to` with the staged `name` in `from`, only if what is
/// replaced is exactly `expect` (our own older copy): that entry is opened
/// and checked, moved aside into the staging directory, and checked again
/// as what was moved (the inode that was checked, its size and mtime
/// unchanged); only then does the new copy take the name, never over
/// anything. `false`: it was not ours, and what was moved aside is back.
/// The entry's path `rel` (in the target) is recorded beside the aside
/// name first ([`where_name`]): a run killed in between leaves what it
/// moved aside (our old copy, or another writer's file that took the name
/// after the check) in the staging directory, and the next run puts it
/// back or keeps it ([`Migration::recover_asides`]) before anything else.
fn replace_checked(
    from: &Dir,
    to: &Dir,
    (name, rel): (&OsStr, &Path),
    staging: &Staging,
    aside: &OsStr,
    expect: &Identity,
) -> std::io::Result<bool> {
    let Some((checked, f)) = still_expected(to, name, expect)? else {
        return Ok(false);
    };
    failpoint::hit(Failpoint::ReplaceChecked);
    let recorded = where_name(aside);
    let mut tmp = recorded.clone();
    tmp.push(TMP_SUFFIX);
    staging
        .dir()
        .write_replace(&tmp, &recorded, rel.as_os_str().as_encoded_bytes())?;
    // A leftover of a killed run was recovered before this run began:
    // never over anything.
    if let Err(e) = to.rename_noreplace(name, staging.dir(), aside) {
        let _ = staging.dir().unlink(&recorded);
        return Err(e);
    }
    failpoint::hit(Failpoint::ReplaceAside);
    if !moved_as_checked(staging, aside, &checked, f.as_ref())? {
        // Not what was checked (another writer's entry took the name, or
        // wrote into it): it goes back (if that fails, the next run puts
        // it back or keeps it).
        staging.dir().rename_noreplace(aside, to, name)?;
        let _ = staging.dir().unlink(&recorded);
        return Ok(false);
    }
    match from.rename_noreplace(name, to, name) {
        Ok(()) => {}
        // Something took the name meanwhile: it stays; our old copy
        // (replaced either way) goes, and the app entry is compared again.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            staging.dir().unlink(aside)?;
            let _ = staging.dir().unlink(&recorded);
            return Ok(false);
        }
        Err(e) => {
            if staging.dir().rename_noreplace(aside, to, name).is_ok() {
                let _ = staging.dir().unlink(&recorded);
            }
            return Err(e);
        }
    }
    match staging.dir().unlink(aside) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => {
            let _ = staging.dir().unlink(&recorded);
            Ok(true)
        }
    }
}

/// The entry `name` in `to`, if it is still `expect`: its `lstat`, and a
/// regular file held open (checked again on the open file).
fn still_expected(
    to: &Dir,
    name: &OsStr,
    expect: &Identity,
) -> std::io::Result<Option<(Meta, Option<std::fs::File>)>> {
    // A regular file is held open, so that a write into it after the
    // check shows; anything else (image-wins replaces symlinks and
    // special files too) is checked by `lstat`.
    let checked = match to.stat_at(name)? {
        Some(m) if m.id == *expect => m,
        _ => return Ok(None),
    };
    let f = if checked.kind == Kind::File {
        match to.open_read(name) {
            Ok(f) => Some(f),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENXIO)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(f) = &f {
        let held = crate::fs::meta::fstat(f)?;
        if held.kind != Kind::File || held.id != *expect {
            return Ok(None);
        }
    }
    Ok(Some((checked, f)))
}

/// Whether what [`replace_checked`] moved aside to `aside` is what it
/// checked (`checked`; `f`, the regular file held open): the same inode,
/// and not written meanwhile.
fn moved_as_checked(
    staging: &Staging,
    aside: &OsStr,
    checked: &Meta,
    f: Option<&std::fs::File>,
) -> std::io::Result<bool> {
    let moved = staging.dir().stat_at(aside)?;
    let unwritten = match f {
        Some(f) => {
            let now = crate::fs::meta::fstat(f)?;
            now.id.size == checked.id.size && now.id.mtime == checked.id.mtime
        }
        None => true,
    };
    Ok(moved.is_some_and(|m| m.id.ino == checked.id.ino && m.dev == checked.dev) && unwritten)
}

/// Beside an aside name, the file recording the path (in the target) of
/// what it holds.
fn where_name(aside: &OsStr) -> OsString {
    let mut n = aside.to_os_string();
    n.push(WHERE_SUFFIX);
    n
}

/// Whether `name` in a staging directory is one [`aside_name`] makes.
fn is_aside(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(ASIDE))
        .and_then(|n| n.strip_prefix('.'))
        .is_some_and(|ix| !ix.is_empty() && ix.bytes().all(|b| b.is_ascii_digit()))
}

/// Where [`replace_checked`] moves the old copy of root `r` aside, in the
/// staging directory: one name per root, as replaces run in parallel.
fn aside_name(r: Ix) -> OsString {
    OsString::from(format!("{ASIDE}.{r}"))
}

impl Migration<'_> {
    /// Copy entries the share lacks into it (and replace our own outdated
    /// copies), through the staging directory: each appears whole.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_in(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        copy_in: &[Ix],
        replace: &[(Ix, Identity)],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        ledger: &mut Ledger,
    ) -> Result<()> {
        let roots: Vec<Ix> = copy_in
            .iter()
            .copied()
            .chain(replace.iter().map(|&(r, _)| r))
            .collect();
        let sel = copy::select(inv, &roots);
        let at = self.beside_target(false);
        let Stage {
            staging,
            staged,
            stats,
        } = self.stage(at, inv, app, &roots, &sel, ctx, |_| Ok(()))?;
        ctx.lock.verify()?;
        let staged = Ledger::from_staged(inv, &staged);
        let moves: Vec<(Ix, Option<Identity>)> = copy_in
            .iter()
            .map(|&r| (r, None))
            .chain(replace.iter().map(|&(r, was)| (r, Some(was))))
            .collect();
        // What moved is recorded even when a later move failed.
        let (moved, failed) = self.move_all(inv, &moves, &staging, target, ctx);
        for (&(r, was), id) in moves.iter().zip(moved) {
            let Some(id) = id else { continue };
            if was.is_none() {
                ledger.take_subtree(inv, r, &staged);
            } else {
                ledger.deletable[r as usize] = staged.deletable[r as usize];
                out.replaced += 1;
            }
            ledger.copies[r as usize] = id;
        }
        failed?;
        target.sync_fs().ctx("sync", &self.share_path)?;
        staging.close()?;
        out.copied += &stats;
        Ok(())
    }

    /// [`Self::move_in`] for each of `moves` (a root and what it replaces),
    /// on the pool in lanes by directory: a run of entries per job, its
    /// parent opened once on each side. Every rename first waits until the
    /// lock was confirmed within `FRESH_FOR` ([`Fresh::wait`](super::Fresh::wait)); a lost
    /// lock stops every lane before its next rename, so a run frozen past
    /// its lease does not go on renaming into a target another holder now
    /// works on. Returns what moved (recorded even when a later move
    /// failed) and how it ended.
    fn move_all(
        &self,
        inv: &Inventory,
        moves: &[(Ix, Option<Identity>)],
        staging: &Staging,
        target: &Dir,
        ctx: &mut Ctx<'_>,
    ) -> (Vec<Option<Option<Identity>>>, Result<()>) {
        let done = pool::Slots::new(moves.len());
        let mut by_dir: std::collections::BTreeMap<Ix, Vec<usize>> = Default::default();
        for (k, &(r, _)) in moves.iter().enumerate() {
            by_dir.entry(inv.get(r).parent).or_default().push(k);
        }
        // A few runs per directory, so that one run's stat of what it
        // moved overlaps the next run's rename.
        let jobs: Vec<(pool::Lane, Vec<usize>)> = by_dir
            .into_iter()
            .flat_map(|(dir, ks)| {
                let per = ks.len().div_ceil(4).max(16);
                ks.chunks(per)
                    .map(|c| (dir, c.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let threads = ctx.threads;
        let (mut coordinator, workers) = ctx.split();
        let fresh = workers.fresh;
        let mut beat = || coordinator.beat();
        let r = pool::run_lanes(
            threads,
            jobs,
            &|ks: Vec<usize>, _: &pool::Queue<Vec<usize>>| {
                let Some(&first) = ks.first() else {
                    return Ok(());
                };
                fresh.wait()?;
                let (from, to) = self.parents(inv, moves[first].0, staging, target)?;
                for k in ks {
                    fresh.wait()?;
                    let (r, was) = &moves[k];
                    let id = self.move_in(inv, *r, (&from, &to), staging, was.as_ref())?;
                    done.put(k, id);
                }
                Ok(())
            },
            &mut beat,
        );
        let moved = done.into_vec();
        (moved, r)
    }

    /// [`Self::move_in`] for one root, opening its parent on each side.
    pub(super) fn move_root(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
        expect: Option<&Identity>,
    ) -> Result<Option<Option<Identity>>> {
        let (from, to) = self.parents(inv, r, staging, target)?;
        self.move_in(inv, r, (&from, &to), staging, expect)
    }

    /// The parent directory of root `r` in the staging tree and in the
    /// target.
    fn parents(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
    ) -> Result<(Dir, Dir)> {
        let rel = inv.rel(r);
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let from = tree::open_beneath(&staging.tree, parent_rel)
            .with_ctx("open", || staging.path.join(TREE).join(parent_rel))?;
        let to = tree::open_beneath(target, parent_rel)
            .with_ctx("open", || self.share_path.join(parent_rel))?;
        Ok((from, to))
    }

    /// Move root `r` from the staging tree into the target (`from` and
    /// `to`: its parent directory on each side). `expect`:
    /// replace what is there, if it still is that (our own older copy).
    /// Returns the moved entry's identity on the share (a rename may move
    /// its ctime), or `None` when it did not move.
    fn move_in(
        &self,
        inv: &Inventory,
        r: Ix,
        (from, to): (&Dir, &Dir),
        staging: &Staging,
        expect: Option<&Identity>,
    ) -> Result<Option<Option<Identity>>> {
        let name = &inv.get(r).name;
        let moved = match expect {
            Some(id) => {
                self.replacing
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                match replace_checked(from, to, (name, &inv.rel(r)), staging, &aside_name(r), id) {
                    Ok(true) => Ok(()),
                    Ok(false) => return Ok(None),
                    Err(e) => Err(e),
                }
            }
            None => from.rename_noreplace(name, to, name),
        };
        match moved {
            Ok(()) => {
                failpoint::hit(Failpoint::MergeMoved);
                let now = to.stat_at(name).ok().flatten();
                Ok(Some(now.filter(|m| m.kind == Kind::File).map(|m| m.id)))
            }
            // It appeared on the share meanwhile: compared next pass.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOENT)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io(
                "move into the share",
                &self.share_path.join(inv.rel(r)),
                e,
            )),
        }
    }
}

impl Migration<'_> {
    /// Put back what a replace killed between its two renames left aside
    /// in the staging directory (`replaced.<n>`, its path recorded in
    /// `replaced.<n>.where`): at its path in the target if nothing is
    /// there, else (or when its path is unknown) under
    /// `displaced/<share path>/<stamp>/`, as any conflict. It may be
    /// another writer's file, never something to delete.
    pub(super) fn recover_asides(&self) -> Result<()> {
        let staging = match self.share_parent.open_dir(&self.staging_name) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(()),
            Err(e) => return Err(Error::io("open", &self.staging_path, e)),
        };
        let listed = staging.list().ctx("read directory", &self.staging_path)?;
        for (aside, _) in listed.iter().filter(|(n, _)| is_aside(n)) {
            let recorded = where_name(aside);
            let rel = staging
                .read_small(&recorded, 64 * 1024)
                .ok()
                .flatten()
                .map(|(b, _)| PathBuf::from(std::ffi::OsString::from_vec(b)))
                .filter(|p| {
                    !p.as_os_str().is_empty()
                        && p.components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                });
            let at = self.staging_path.join(aside);
            let back = match &rel {
                Some(rel) => self.put_aside_back(&staging, aside, rel)?,
                None => false,
            };
            if back {
                crate::warn!(
                    "{} was moved aside by a run stopped while replacing it; it is back in place",
                    self.share_path
                        .join(rel.as_deref().unwrap_or(Path::new("")))
                        .display()
                );
            } else {
                let kept = self.keep_aside(&staging, aside, rel.as_deref())?;
                crate::warn!(
                    "{} was moved aside by a run stopped while replacing it, and its place is taken: kept as {}",
                    rel.as_deref().map_or(at.clone(), |r| self.share_path.join(r)).display(),
                    kept.display()
                );
            }
            match staging.unlink(&recorded) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(Error::io("remove", &self.staging_path.join(&recorded), e))
                }
                _ => {}
            }
        }
        // Records left without what they name (a run killed after writing
        // one and before moving anything aside, or while writing it).
        for (name, _) in listed.iter().filter(|(n, _)| !is_aside(n)) {
            let stale = name
                .as_encoded_bytes()
                .strip_prefix(ASIDE.as_bytes())
                .is_some_and(|r| r.starts_with(b"."));
            if stale {
                match staging.unlink(name) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                        return Err(Error::io("remove", &self.staging_path.join(name), e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Rename `aside` back to `rel` in the target, never over anything.
    fn put_aside_back(&self, staging: &Dir, aside: &OsStr, rel: &Path) -> Result<bool> {
        let target = match self.share_parent.open_dir(&self.share_name) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(false),
            Err(e) => return Err(Error::io("open", &self.share_path, e)),
        };
        let (parent, name) = super::split_rel(rel);
        let to = match tree::open_beneath(&target, parent) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(false),
            Err(e) => return Err(Error::io("open", &self.share_path.join(parent), e)),
        };
        match staging.rename_noreplace(aside, &to, name) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EEXIST | libc::ENOTEMPTY | libc::ENOENT | libc::ENOTDIR)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::io("put back", &self.share_path.join(rel), e)),
        }
    }
}
