//! `image-wins`: the share's differing entries are kept under
//! `displaced/`, then replaced by the image's version, in an order that
//! keeps every version whole somewhere the next run finishes from.

use std::path::{Path, PathBuf};

use super::copy;
use super::copy::Staging;
use super::inventory::{Inventory, Ix};
use super::rules::{swap, Swap};
use super::stage::Stage;
use super::{Ctx, Ledger, Migration, Outcome, SETTLE_NS};
use crate::error::{IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};

impl Migration<'_> {
    /// `image-wins`: put the app's version of each root in place of the
    /// share's differing entry. Order, so that every version exists whole
    /// somewhere the next run finishes from at every instant:
    ///
    /// 1. the app's versions are staged beside the target (resumable; the
    ///    long part, done first so that little happens between 2 and 3);
    /// 2. the share's versions are copied to `displaced/<stamp>/`, synced;
    /// 3. each share entry that is still the version kept is replaced by
    ///    a rename of the staged one.
    ///
    /// A crash before 3 leaves the share's version in place (and a copy of
    /// it kept: the next run keeps another, it never drops one); after 3
    /// the share holds the app's version, which the next run finds
    /// identical. Only a faithful copy of the app entry goes in: a torn one
    /// would differ from the app next run and be set aside as if it were
    /// the share's own data. Returns the roots whose share entry is a
    /// directory: those are set aside instead ([`Swap::KeepShare`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn supersede(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        roots: &[Ix],
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        ledger: &mut Ledger,
    ) -> Result<Vec<Ix>> {
        let (share_inv, mut todo, keep_share) = self.swaps(inv, target, roots)?;
        if todo.is_empty() {
            return Ok(keep_share);
        }
        // 1. The app's versions, staged.
        let app_roots: Vec<Ix> = todo.iter().map(|t| t.0).collect();
        let sel = copy::select(inv, &app_roots);
        let at = self.beside_target(false);
        let Stage {
            staging,
            staged,
            stats,
        } = self.stage(at, inv, app, &app_roots, &sel, ctx, |_| Ok(()))?;
        let whole = |r: Ix| {
            inv.subtree(r).into_iter().all(|i| {
                let e = inv.get(i);
                !e.changed
                    && (e.meta.kind == Kind::Dir || staged[i as usize].is_some_and(|s| s.faithful))
            })
        };
        todo.retain(|&(r, _, _)| whole(r));
        // 2. The share's versions, kept.
        let share_roots: Vec<Ix> = todo.iter().map(|t| t.1).collect();
        let kept = self.keep_share_versions(&share_inv, target, &share_roots, ctx, out)?;
        ctx.lock.verify()?;
        // 3. The swaps.
        let staged = Ledger::from_staged(inv, &staged);
        let mut n = 0;
        for (r, s, how) in todo {
            let Some(was) = kept[s as usize] else {
                continue;
            };
            if let Some(id) = self.swap_in(inv, r, &staging, target, &was, how)? {
                ledger.take_subtree(inv, r, &staged);
                ledger.copies[r as usize] = id;
                n += 1;
                failpoint::hit(Failpoint::SupersedeReplaced);
            }
        }
        target.sync_fs().ctx("sync", &self.share_path)?;
        staging.close()?;
        out.copied += &stats;
        out.superseded += n;
        if n > 0 {
            tracing::warn!(
                link = %self.link.app.display(),
                entries = n,
                kept = %out.displaced_to.as_deref().unwrap_or(Path::new("")).display(),
                "migrate = \"image-wins\": share entries that differed from the image's were replaced by the image's version; the share's versions are kept"
            );
        }
        Ok(keep_share)
    }

    /// The share's side of `roots`, looked up at their paths only: the
    /// replacements to make (app root, share entry, how), settled on the
    /// share, and the roots whose share entry is a directory.
    #[allow(clippy::type_complexity)]
    fn swaps(
        &self,
        inv: &Inventory,
        target: &Dir,
        roots: &[Ix],
    ) -> Result<(Inventory, Vec<(Ix, Ix, Swap)>, Vec<Ix>)> {
        let rels: Vec<PathBuf> = roots.iter().map(|&r| inv.rel(r)).collect();
        let (share_inv, found) = Inventory::of_paths(target, &self.share_path, &rels)?;
        let mut keep_share = Vec::new();
        let mut todo = Vec::new();
        for (&r, s) in roots.iter().zip(found) {
            // Gone from the share meanwhile: compared again next pass.
            let Some(s) = s else { continue };
            match swap(inv.get(r).meta.kind, share_inv.get(s).meta.kind) {
                Swap::KeepShare => keep_share.push(r),
                how => todo.push((r, s, how)),
            }
        }
        // A share entry being written now is looked at again next pass,
        // rather than kept in a copy that could not vouch for it.
        todo.retain(|&(_, s, _)| {
            let e = share_inv.get(s);
            e.meta.settled(e.seen, SETTLE_NS)
        });
        Ok((share_inv, todo, keep_share))
    }

    /// Replace the share's entry at root `r` with the staged one, if the
    /// share's entry is still `was` (the version kept). Returns the new
    /// entry's identity on the share (regular files), or `None` when
    /// nothing moved.
    fn swap_in(
        &self,
        inv: &Inventory,
        r: Ix,
        staging: &Staging,
        target: &Dir,
        was: &Identity,
        how: Swap,
    ) -> Result<Option<Option<Identity>>> {
        match how {
            // Both go through the checked replace: the share's entry is
            // moved aside and checked as the version kept, never unlinked
            // by name (a co-tenant may have put another there meanwhile).
            Swap::RenameOver | Swap::RemoveThenRename => {
                self.move_root(inv, r, staging, target, Some(was))
            }
            Swap::KeepShare => Ok(None),
        }
    }
}
