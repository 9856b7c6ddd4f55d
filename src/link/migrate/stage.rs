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
        // The share's room asked for while the staging directory is made:
        // on a network share a statfs waits for no directory's lock, so
        // its round trip overlaps the mkdirs.
        let (staging, room) = std::thread::scope(|s| {
            let room = s.spawn(|| nix::sys::statvfs::fstatvfs(at.parent.as_ref()).ok());
            let staging = Staging::open(at.parent.clone(), at.name, at.path);
            (staging, room.join().ok().flatten())
        });
        let staging = staging?;
        prepare(&staging)?;
        let totals = Totals::of(inv, roots);
        if at.announce && staging.resumed {
            tracing::info!(
                link = %self.link.app.display(),
                staged = staging.prior_files(),
                "resuming an interrupted copy into the share"
            );
        }
        let mut staging = self.room_for(staging, &totals, room, at.room_path)?;
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
        room: Option<nix::sys::statvfs::Statvfs>,
        path: &Path,
    ) -> Result<Staging> {
        let need = still_to_copy(totals, staging.prior_bytes(), staging.prior_files() as u64);
        match check_space(room, path, &self.app_path, &need) {
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

/// What is left to copy of `totals` when an interrupted run staged
/// `prior_bytes` in `prior_files` already.
fn still_to_copy(totals: &Totals, prior_bytes: u64, prior_files: u64) -> Totals {
    Totals {
        footprint: totals.footprint.saturating_sub(prior_bytes),
        entries: totals.entries.saturating_sub(prior_files),
        ..*totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Config, Overrides};
    use crate::error::Error;
    use crate::link::lock::Lock;
    use std::fs;

    #[test]
    fn what_a_resumed_copy_still_needs() {
        let t = Totals {
            entries: 10,
            files: 8,
            bytes: 800,
            footprint: 4096,
        };
        let n = still_to_copy(&t, 1024, 3);
        assert_eq!(
            (n.entries, n.files, n.bytes, n.footprint),
            (7, 8, 800, 3072)
        );
        let n = still_to_copy(&t, 1 << 20, 99);
        assert_eq!((n.entries, n.footprint), (0, 0));
    }

    /// A link `data` with two files, app and share roots in `t`.
    fn config(t: &Path) -> Config {
        let (app, share) = (t.join("app"), t.join("share"));
        fs::create_dir_all(app.join("data/sub")).unwrap();
        fs::create_dir_all(&share).unwrap();
        fs::write(app.join("data/a"), "alpha").unwrap();
        fs::write(app.join("data/sub/b"), "beta").unwrap();
        let text = format!(
            "app_root = \"{}\"\nshare_root = \"{}\"\nrequire_mount = false\n[links]\n\"data\" = \"data\"\n",
            app.display(),
            share.display()
        );
        config::parse(&text, Path::new("t.toml"), &Overrides::default()).unwrap()
    }

    /// Stage the whole app tree beside the target, `prepare` first.
    fn stage_all(cfg: &Config, prepare: impl FnOnce(&Staging) -> Result<()>) -> Result<Stage> {
        let link = &cfg.links[0];
        let (m, _, app) = Migration::open(cfg, link)?;
        let mut lock = Lock::acquire(&cfg.share_root, &link.share)?;
        let mut ctx = Ctx::new(&mut lock, 2, "data".into(), m.app_path.clone());
        let inv = Inventory::scan(&app, &m.app_path, &mut || Ok(()))?;
        let sel = super::super::copy::select(&inv, &[0]);
        m.stage(
            m.beside_target(false),
            &inv,
            &app,
            &[0],
            &sel,
            &mut ctx,
            prepare,
        )
    }

    #[test]
    fn stages_a_selection_beside_the_target_and_resumes_it() {
        let t = tempfile::tempdir().unwrap();
        let cfg = config(t.path());
        let staging_path = cfg.share_root.join(".data.sharelink-staging");
        // Settled, so that the copies count as faithful.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let mut prepared = false;
        let stage = stage_all(&cfg, |s| {
            prepared = true;
            assert!(!s.resumed);
            Ok(())
        })
        .unwrap();
        assert!(prepared);
        assert_eq!((stage.stats.files, stage.stats.bytes), (2, 9));
        assert_eq!(stage.stats.resumed, 0);
        assert!(stage.staged.iter().flatten().all(|s| s.faithful));
        let tree = staging_path.join("tree");
        assert_eq!(fs::read(tree.join("a")).unwrap(), b"alpha");
        assert_eq!(fs::read(tree.join("sub/b")).unwrap(), b"beta");
        assert!(staging_path.join("journal").exists());
        // Left as a killed run leaves it: the next stage resumes it and
        // copies nothing again.
        drop(stage);
        let again = stage_all(&cfg, |s| {
            assert!(s.resumed);
            Ok(())
        })
        .unwrap();
        assert_eq!(again.stats.resumed, 2);
        assert_eq!(again.stats.files, 0);
    }

    #[test]
    fn a_failed_preparation_copies_nothing() {
        let t = tempfile::tempdir().unwrap();
        let cfg = config(t.path());
        let r = stage_all(&cfg, |_| Err(Error::Unsafe("no".into())));
        assert!(matches!(r, Err(Error::Unsafe(_))));
        let tree = cfg.share_root.join(".data.sharelink-staging/tree");
        assert_eq!(fs::read_dir(tree).unwrap().count(), 0);
    }
}
