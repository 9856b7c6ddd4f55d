//! Staging a selection, the one way every copy path starts (the whole
//! tree, copies in, image-wins replacements, set-aside copies): open the
//! staging directory (resuming one an interrupted run left), refuse when
//! the share has no room for what is left to copy, start the progress
//! count, copy. What was staged is committed by the caller, which checks
//! the lock is still ours first.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::copy::{Sel, Staged, Staging, Stats};
use super::inventory::{Inventory, Ix, Totals};
use super::preflight::check_space;
use super::{Ctx, Migration};
use crate::error::Result;
use crate::fs::dir::Dir;

/// Where a selection is staged.
pub(super) struct At<'a> {
    /// The directory the staging directory is made in.
    pub(super) parent: &'a Arc<Dir>,
    /// The staging directory's name in `parent`, and its path.
    pub(super) name: &'a OsStr,
    pub(super) path: PathBuf,
    /// The share path the room is checked for, for messages.
    pub(super) room_path: &'a Path,
    /// Say so in the log when an interrupted copy is resumed.
    pub(super) announce: bool,
}

/// What [`Migration::stage`] staged.
pub(super) struct Stage {
    pub(super) staging: Staging,
    /// Each entry's copy, indexed like the inventory.
    pub(super) staged: Vec<Option<Staged>>,
    pub(super) stats: Stats,
}

impl Migration<'_> {
    /// Stage `sel` (of `inv`, read from `from`; `roots` are the subtrees it
    /// copies, which the room and the progress count) at `at`. `prepare`
    /// runs on the opened staging directory before anything is copied.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage(
        &self,
        at: At<'_>,
        inv: &Inventory,
        from: &Dir,
        roots: &[Ix],
        sel: &[Sel],
        ctx: &mut Ctx<'_>,
        prepare: impl FnOnce(&Staging) -> Result<()>,
    ) -> Result<Stage> {
        let staging = Staging::open(at.parent.clone(), at.name, at.path)?;
        prepare(&staging)?;
        let totals = Totals::of(inv, roots);
        if at.announce && staging.resumed {
            tracing::info!(
                link = %self.link.app.display(),
                staged = staging.prior_files(),
                "resuming an interrupted copy into the share"
            );
        }
        let mut staging = self.room_for(staging, &totals, at.parent, at.room_path)?;
        ctx.progress.start(totals.files, totals.bytes);
        let (staged, stats) = staging.copy(inv, from, sel, ctx)?;
        Ok(Stage {
            staging,
            staged,
            stats,
        })
    }

    /// Staging beside the share target.
    pub(super) fn beside_target(&self, announce: bool) -> At<'_> {
        At {
            parent: &self.share_parent,
            name: &self.staging_name,
            path: self.staging_path.clone(),
            room_path: &self.share_path,
            announce,
        }
    }

    /// Refuse to start a copy the share has no room for, counting what an
    /// interrupted run staged already; a fresh staging is removed again.
    fn room_for(
        &self,
        staging: Staging,
        totals: &Totals,
        dir: &Dir,
        path: &Path,
    ) -> Result<Staging> {
        let need = Totals {
            footprint: totals.footprint.saturating_sub(staging.prior_bytes()),
            entries: totals.entries.saturating_sub(staging.prior_files() as u64),
            ..*totals
        };
        match check_space(dir, path, &self.app_path, &need) {
            Ok(()) => Ok(staging),
            Err(e) => {
                if !staging.resumed {
                    staging.remove()?;
                }
                Err(e)
            }
        }
    }
}
