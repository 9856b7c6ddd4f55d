//! Moving staged roots into the share target: copies in (each root
//! appears whole or not at all, never over anything) and replacements of
//! our own outdated copies, which overwrite exactly the copy they checked.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Mutex;

use super::copy::{self, Staging};
use super::inventory::{Inventory, Ix};
use super::layout::{ASIDE, TREE};
use super::stage::Stage;
use super::{heartbeat, Ctx, Fresh, Ledger, Migration, Outcome};
use crate::error::{Error, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::{pool, tree};

/// Replace `name` in `to` with the staged `name` in `from`, only if what is
/// replaced is exactly `expect` (our own older copy): that entry is opened
/// and checked, moved aside into the staging directory, and checked again
/// as what was moved (the inode that was checked, its size and mtime
/// unchanged); only then does the new copy take the name, never over
/// anything. `false`: it was not ours, and what was moved aside is back.
/// A run killed in between leaves our old copy aside in the staging
/// directory (the app file, not yet deleted, is moved in by the next run).
fn replace_checked(
    from: &Dir,
    to: &Dir,
    name: &OsStr,
    staging: &Staging,
    aside: &OsStr,
    expect: &Identity,
) -> std::io::Result<bool> {
    // A regular file is held open, so that a write into it after the
    // check shows; anything else (image-wins replaces symlinks and
    // special files too) is checked by `lstat`.
    let checked = match to.stat_at(name)? {
        Some(m) if m.id == *expect => m,
        _ => return Ok(false),
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
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(f) = &f {
        let held = crate::fs::meta::fstat(f)?;
        if held.kind != Kind::File || held.id != *expect {
            return Ok(false);
        }
    }
    failpoint::hit(Failpoint::ReplaceChecked);
    // Our own leftover of a killed run may be there: it goes.
    to.rename(name, staging.dir(), aside)?;
    let moved = staging.dir().stat_at(aside)?;
    let unwritten = match &f {
        Some(f) => {
            let now = crate::fs::meta::fstat(f)?;
            now.id.size == checked.id.size && now.id.mtime == checked.id.mtime
        }
        None => true,
    };
    let same =
        moved.is_some_and(|m| m.id.ino == checked.id.ino && m.dev == checked.dev) && unwritten;
    if !same {
        // Not what was checked (another writer's entry took the name, or
        // wrote into it): it goes back.
        staging.dir().rename_noreplace(aside, to, name)?;
        return Ok(false);
    }
    match from.rename_noreplace(name, to, name) {
        Ok(()) => {}
        // Something took the name meanwhile: it stays; our old copy
        // (replaced either way) goes, and the app entry is compared again.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
            staging.dir().unlink(aside)?;
            return Ok(false);
        }
        Err(e) => {
            let _ = staging.dir().rename_noreplace(aside, to, name);
            return Err(e);
        }
    }
    match staging.dir().unlink(aside) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(true),
    }
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
        target
            .sync_fs()
            .map_err(|e| Error::io("sync", &self.share_path, e))?;
        staging.close()?;
        out.copied += &stats;
        Ok(())
    }

    /// [`Self::move_in`] for each of `moves` (a root and what it replaces),
    /// on the pool in lanes by directory: a run of entries per job, its
    /// parent opened once on each side. Every rename first waits until the
    /// lock was confirmed within `FRESH_FOR` ([`Fresh::wait`]); a lost
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
        let done: Vec<Mutex<Option<Option<Identity>>>> =
            moves.iter().map(|_| Mutex::new(None)).collect();
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
        let Ctx {
            threads,
            lock,
            progress,
            fresh,
            ..
        } = ctx;
        let fresh: &Fresh = fresh;
        let mut beat = || heartbeat(lock, fresh, progress);
        let r = pool::run_lanes(
            *threads,
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
                    *done[k].lock().unwrap_or_else(|p| p.into_inner()) = id;
                }
                Ok(())
            },
            &mut beat,
        );
        let moved = done
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect();
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
            .map_err(|e| Error::io("open", &staging.path.join(TREE).join(parent_rel), e))?;
        let to = tree::open_beneath(target, parent_rel)
            .map_err(|e| Error::io("open", &self.share_path.join(parent_rel), e))?;
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
            Some(id) => match replace_checked(from, to, name, staging, &aside_name(r), id) {
                Ok(true) => Ok(()),
                Ok(false) => return Ok(None),
                Err(e) => Err(e),
            },
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
