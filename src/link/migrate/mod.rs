//! Moving a baked app directory into the share: nothing the app holds is
//! ever lost. This file is the pass loop ([`migrate`]): inventory, the
//! share target decides the path (copy the whole tree, or compare and carry
//! out each entry's step), prune, again until the app directory is empty.
//! Each other concern has a file of its own: `rules` (the per-entry
//! decision), `marker` (which copies are ours), `stage` (staging a
//! selection), `place` (moving staged roots in), `supersede`
//! (`image-wins`), `displaced` (the set-aside store), `preflight`
//! (refusals before copying), `heartbeat` (coordination with the
//! workers), `layout` (names on disk).
//!
//! The app directory usually sits in an overlayfs image layer (renaming it
//! gives EXDEV) and the share is another filesystem, so a move is a copy
//! and a delete. The rules, each enforced here by construction:
//!
//! - Every app entry ends up whole in the share target or under
//!   `.sharelink/displaced/`, or stays where it is. At every instant each
//!   file exists whole in the app directory, in the share target, or in a
//!   staging or displaced area that the next run finishes from; a share
//!   target never shows a half-made copy (copies are staged beside it and
//!   committed by rename).
//! - An app entry is deleted only if a durable copy with the same content
//!   exists (copied and synced by this migration, or found identical by
//!   bytes) and the entry still has the identity (inode, size, mtime,
//!   ctime) it had when that copy was made or compared (`prune`).
//!   Entries that change or appear meanwhile are copied again in a later
//!   pass; after a few passes the run stops with them in place.
//! - An app entry whose content differs from what the share holds at its
//!   path is set aside under `displaced/`, never dropped; in `merge` mode,
//!   or for late arrivals of a migration this container committed itself,
//!   entries the share lacks are copied in (never overwriting).
//! - Copies are staged resumably (`copy`): a run killed part-way is
//!   continued, not restarted, by the next.
//!
//! The states a link's migration can be in are recognisable on disk
//! ([`Leftovers`]) and `status` reports them.

pub(crate) mod compare;
pub(crate) mod copy;
mod displaced;
pub(crate) mod guardian;
mod heartbeat;
pub(crate) mod inventory;
pub(crate) mod journal;
pub(crate) mod layout;
mod marker;
mod place;
mod preflight;
pub(crate) mod preview;
pub(crate) mod progress;
pub(crate) mod prune;
pub(crate) mod rules;
mod stage;
mod supersede;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, Link};
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::attrs::Loss;
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::{names, tree};
use crate::link::lock::Lock;
use crate::link::target::ShareTarget;
use crate::signals;

use compare::Verdict;
use inventory::{Inventory, Ix};
use marker::{Marker, Own};
use rules::{step, Commit, EntryStep};

pub(crate) use heartbeat::{Ctx, Fresh, Workers};
pub(crate) use layout::{Leftovers, Places, STAGING_SUFFIX};
pub(crate) use marker::forget;
pub(crate) use progress::Progress;

/// How long an entry must have been unchanged before its identity is
/// trusted to tell versions apart: file timestamps come from a clock that
/// ticks every few milliseconds, so a change within the same tick as a
/// `stat` would not move them.
pub(crate) const SETTLE_NS: i128 = 100_000_000;

/// Passes over the app directory before giving up on entries that keep
/// changing.
const PASSES: usize = 6;

/// What a migration did, for the per-link log line.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Copied into the share target.
    pub(crate) copied: copy::Stats,
    /// App files found byte-identical on the share (dropped from the app).
    pub(crate) identical: u64,
    /// Set aside under `displaced/`, and where the newest copy is.
    pub(crate) displaced: copy::Stats,
    pub(crate) displaced_to: Option<PathBuf>,
    /// Entries that were already set aside by an earlier run.
    pub(crate) already_displaced: u64,
    /// Our own earlier copies replaced by a newer version of the app file.
    pub(crate) replaced: u64,
    /// Share entries replaced by the image's version (`image-wins`), each
    /// kept under `displaced/` first.
    pub(crate) superseded: u64,
    /// Set-aside copies removed by `keep`.
    pub(crate) expired: u64,
    /// What the share could not hold, per kind.
    pub(crate) losses: Vec<(Loss, u64)>,
    pub(crate) passes: usize,
}

/// Run one migration of `link` under `lock`: when it returns `Ok`, the app
/// directory is empty (the caller makes the symlink) and everything it held
/// is in the share target or under `displaced/`.
pub(crate) fn migrate(
    cfg: &Config,
    link: &Link,
    lock: &mut Lock,
    threads: usize,
) -> Result<Outcome> {
    let (m, app_parent, app) = Migration::open(cfg, link)?;
    let app_path = m.app_path.clone();
    let mut ctx = Ctx::new(lock, threads, link.app.display().to_string(), app_path);
    // Read before any worker runs (reading it means setting it).
    crate::fs::attrs::umask();
    let r = m.run(&app_parent, &app, &mut ctx);
    // A lease broken while we deleted sends SIGIO; it is ours, not the
    // command's.
    signals::discard(libc::SIGIO);
    let mut out = r?;
    out.losses = ctx.fidelity.losses();
    if let Some(keep) = link.keep {
        match m.retain(keep, &mut ctx) {
            Ok(n) => out.expired = n,
            // A signal or a lost lock stops the run as anywhere else.
            Err(e @ (Error::Interrupted(_) | Error::LockLost(_))) => return Err(e),
            // The data is where it belongs: old copies staying a while
            // longer must not keep the pipeline from starting.
            Err(e) => crate::warn!(
                "could not remove old set-aside copies of {} (keep = {keep}): {e}",
                link.app.display()
            ),
        }
    }
    Ok(out)
}

fn split(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("/")),
        p.file_name().unwrap_or_default(),
    )
}

fn split_rel(p: &Path) -> (&Path, &OsStr) {
    (
        p.parent().unwrap_or(Path::new("")),
        p.file_name().unwrap_or_default(),
    )
}

/// One migration of one link: where things are, opened once.
struct Migration<'a> {
    cfg: &'a Config,
    link: &'a Link,
    app_path: PathBuf,
    share_path: PathBuf,
    share_root: Dir,
    share_parent: Arc<Dir>,
    share_name: OsString,
    staging_name: OsString,
    staging_path: PathBuf,
    marker: Marker,
    displaced_rel: PathBuf,
    /// Set-aside stamps this migration wrote or found entries in.
    used: Mutex<std::collections::BTreeSet<String>>,
    /// Whether this migration began a replace (which may leave what it
    /// moved aside in the staging directory, see [`place`]). What earlier
    /// runs left aside is recovered when the migration starts.
    replacing: std::sync::atomic::AtomicBool,
}

impl<'a> Migration<'a> {
    /// Open what `link`'s migration works on: the app directory and its
    /// parent, the share root, and the share target's parent (made if
    /// missing, beneath the share root).
    fn open(cfg: &'a Config, link: &'a Link) -> Result<(Migration<'a>, Dir, Dir)> {
        let app_path = cfg.app_path(link);
        let share_path = cfg.share_path(link);
        let places = Places::new(cfg, link);
        let (app_parent_path, app_name) = split(&app_path);
        let app_parent = Dir::open(app_parent_path).ctx("open", app_parent_path)?;
        let app = app_parent
            .open_dir(app_name)
            .ctx("open directory", &app_path)?;
        let share_root = Dir::open_path(&cfg.share_root).ctx("open", &cfg.share_root)?;
        let (share_parent_rel, share_name) = split_rel(&link.share);
        let share_parent =
            Arc::new(tree::make_beneath(&share_root, share_parent_rel, &cfg.share_root)?.dir);
        let m = Migration {
            cfg,
            link,
            app_path,
            share_path: share_path.clone(),
            share_root,
            share_parent,
            share_name: share_name.to_os_string(),
            staging_name: names::hidden(share_name, STAGING_SUFFIX, 0),
            staging_path: places.staging.clone(),
            marker: Marker::new(&places, &share_path),
            displaced_rel: places.displaced.clone(),
            used: Mutex::default(),
            replacing: Default::default(),
        };
        Ok((m, app_parent, app))
    }
}

/// Per app entry, after a pass copied or compared it: the identity it must
/// still have to be deleted (a durable identical copy exists), and the
/// identity of our own copy on the share (regular files), to recognise it
/// in a later pass.
struct Ledger {
    deletable: Vec<Option<Identity>>,
    copies: Vec<Option<Identity>>,
}

impl Ledger {
    fn new(n: usize) -> Ledger {
        Ledger {
            deletable: vec![None; n],
            copies: vec![None; n],
        }
    }

    /// From a staged copy: faithful copies of non-directories may go.
    fn from_staged(inv: &Inventory, staged: &[Option<copy::Staged>]) -> Ledger {
        Ledger {
            deletable: staged
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.filter(|s| s.faithful && inv.entries[i].meta.kind != Kind::Dir)
                        .map(|s| s.app)
                })
                .collect(),
            copies: staged.iter().map(|s| s.and_then(|s| s.copy)).collect(),
        }
    }

    /// Root `r`'s subtree moved into the share: what `staged` records of it
    /// holds.
    fn take_subtree(&mut self, inv: &Inventory, r: Ix, staged: &Ledger) {
        for i in inv.subtree(r) {
            self.deletable[i as usize] = staged.deletable[i as usize];
            self.copies[i as usize] = staged.copies[i as usize];
        }
    }
}

/// What a pass does with the entries that compared: each list is one step.
#[derive(Default)]
struct Steps {
    copy_in: Vec<Ix>,
    /// Roots to replace, with the identity of our copy they replace.
    replace: Vec<(Ix, Identity)>,
    supersede: Vec<Ix>,
    set_aside: Vec<Ix>,
}

impl Migration<'_> {
    /// The pass loop: when it returns `Ok`, the app directory is empty.
    fn run(&self, app_parent: &Dir, app: &Dir, ctx: &mut Ctx<'_>) -> Result<Outcome> {
        let mut out = Outcome::default();
        // What a replace killed between its renames moved aside may be
        // another writer's file: it goes back first.
        self.recover_asides()?;
        // Our own copies on the share of entries still in the app
        // directory, to recognise them in a later pass (or run).
        let mut own = Own::start(
            &self.marker,
            || matches!(self.share_parent.stat_at(&self.share_name), Ok(Some(t)) if t.kind == Kind::Dir),
        );
        let mut last_kept = Vec::new();
        for pass in 1..=PASSES {
            out.passes = pass;
            let inv = Inventory::scan(app, &self.app_path, &mut signals::check_interrupt)?;
            if pass == 1 {
                preflight::preflight(&inv, app_parent, &self.app_path)?;
            }
            self.refuse_case_twins(&inv)?;
            let target = self.target()?;
            // An empty app directory still makes a missing target (with the
            // directory's owner and mode, which the pipeline relies on).
            if inv.is_empty() && !matches!(target, ShareTarget::Empty { exists: false }) {
                self.clean_up()?;
                return Ok(out);
            }
            let ledger = match target {
                ShareTarget::Empty { exists } => {
                    match self.copy_whole(&inv, app, exists, ctx, &mut out)? {
                        Some(r) => {
                            own.commit = Commit::Here;
                            r
                        }
                        // The target gained data meanwhile: compare next pass.
                        None => continue,
                    }
                }
                ShareTarget::Full(target) => {
                    self.reconcile(&inv, app, &target, &own, ctx, &mut out)?
                }
            };
            own.before_prune(&self.marker, &inv, &ledger)?;
            let doomed = ledger.deletable.iter().flatten().count() as u64;
            ctx.progress.start_deleting(doomed);
            // prune checks in every 64 entries removed; the share's side is
            // cleaned up while the last leases are held.
            let pruned = prune::prune(
                &inv,
                app,
                &self.app_path,
                &ledger.deletable,
                &mut || {
                    ctx.progress.deleted(64);
                    ctx.beat()
                },
                &mut || self.clean_up(),
            )?;
            failpoint::hit(Failpoint::PruneDone);
            if pruned.kept.is_empty() {
                return Ok(out);
            }
            own.after_prune(&inv, &ledger, &pruned.kept);
            crate::debug!(
                "pass {pass}: {} changed or appeared during the migration; another pass",
                crate::link::count(pruned.kept.len() as u64, "entry", "entries")
            );
            last_kept = pruned
                .kept
                .iter()
                .filter(|(_, why)| *why != prune::Kept::NotEmpty)
                .map(|&(ix, why)| (inv.rel(ix), why))
                .collect();
            // Let what is being written settle before looking again.
            signals::sleep_interruptible(Duration::from_nanos(SETTLE_NS as u64 * (pass as u64)))?;
        }
        if own.commit == Commit::Here {
            self.marker.write(&own.placed)?;
        }
        Err(Error::AppBusy(describe_busy(&self.app_path, &last_kept)))
    }

    /// The app directory is empty: what is left of staging and set-aside
    /// copies in progress is redundant (a run killed after committing, or
    /// whose copies a later run found already there).
    fn clean_up(&self) -> Result<()> {
        // Only a replace of this run can have left something aside since
        // the start: no listing of the staging directory otherwise.
        if self.replacing.load(std::sync::atomic::Ordering::SeqCst) {
            self.recover_asides()?;
        }
        copy::discard(&self.share_parent, &self.staging_name).ctx("remove", &self.staging_path)?;
        let base_path = self.cfg.share_root.join(&self.displaced_rel);
        let base = match tree::open_beneath(&self.share_root, &self.displaced_rel) {
            Ok(d) => d,
            Err(e) if crate::fs::gone(&e) => return Ok(()),
            Err(e) => return Err(Error::io("open", &base_path, e)),
        };
        for (name, _) in base.list().unwrap_or_default() {
            if name
                .as_encoded_bytes()
                .ends_with(layout::PARTIAL.as_bytes())
            {
                tree::remove(&base, &name).with_ctx("remove", || base_path.join(&name))?;
            }
        }
        Ok(())
    }

    /// What the staging journal records as copied by this migration (or by
    /// another replica's, of the same image): app files whose copy the
    /// share target may hold.
    fn copied(&self) -> HashMap<PathBuf, journal::Record> {
        match self.share_parent.open_dir(&self.staging_name) {
            Ok(d) => journal::Journal::load(&d).unwrap_or_default(),
            Err(_) => HashMap::new(),
        }
    }

    /// The share target as it is now (under the lock, each pass).
    fn target(&self) -> Result<ShareTarget> {
        ShareTarget::observe(&self.share_parent, &self.share_name, &self.share_path)
    }

    /// The share target is empty: copy the whole tree beside it and commit
    /// it with one rename. `None` when the target gained data meanwhile.
    fn copy_whole(
        &self,
        inv: &Inventory,
        app: &Dir,
        exists: bool,
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
    ) -> Result<Option<Ledger>> {
        let sel = copy::select(inv, &[0]);
        let at = self.beside_target(true);
        let stage::Stage {
            staging,
            staged,
            stats,
        } = self.stage(at, inv, app, &[0], &sel, ctx, |_| Ok(()))?;
        ctx.lock.verify()?;
        if exists {
            match tree::remove_empty_dirs(&self.share_parent, &self.share_name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    return self.gained_data(staging);
                }
                Err(e) => return Err(Error::io("remove empty share target", &self.share_path, e)),
            }
        }
        match staging.commit_tree(&self.share_parent, &self.share_name) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                return self.gained_data(staging);
            }
            Err(e) => return Err(Error::io("commit the copy to", &self.share_path, e)),
        }
        failpoint::hit(Failpoint::CommitRenamed);
        self.marker.write(&HashMap::new())?;
        failpoint::hit(Failpoint::CommitMarked);
        // Through the staging tree's handle, open in full (the share
        // parent may be an `O_PATH` handle, whose syncfs would need an open).
        staging.sync()?;
        failpoint::hit(Failpoint::CommitSynced);
        // The tree was renamed away whole: nothing of it to remove
        // (`Staging::close` would only find it gone).
        drop(staging);
        crate::debug!("committed: {} holds the copy", self.share_path.display());
        out.copied += &stats;
        Ok(Some(Ledger::from_staged(inv, &staged)))
    }

    fn gained_data(&self, staging: copy::Staging) -> Result<Option<Ledger>> {
        crate::info!(
            "{} gained data while this run copied; comparing instead",
            self.share_path.display()
        );
        // The staged copy is redundant: the app directory is intact.
        staging.remove()?;
        Ok(None)
    }

    /// The share target holds data: compare entry by entry, then carry out
    /// each step.
    fn reconcile(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        own: &Own,
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
    ) -> Result<Ledger> {
        let copied = self.copied();
        let verdicts = compare::compare(inv, app, target, &self.share_path, &copied, ctx)?;
        let mut ledger = Ledger::new(inv.entries.len());
        let mut steps = Steps::default();
        for ix in 1..inv.entries.len() as Ix {
            let Some(v) = verdicts[ix as usize] else {
                continue;
            };
            let e = inv.get(ix);
            let copy = match v {
                Verdict::Differs { share: Some(s) } => {
                    let rel = inv.rel(ix);
                    own.share_copy(&rel, e.meta.id.ino, s, copied.get(&rel))
                }
                _ => rules::ShareCopy::Foreign,
            };
            match step(v, e.meta.kind, self.link.migrate, own.commit, copy) {
                EntryStep::Drop => {
                    if let (Verdict::Same { app }, true) = (v, e.meta.kind != Kind::Dir) {
                        ledger.deletable[ix as usize] = Some(app);
                        out.identical += 1;
                    }
                }
                EntryStep::CopyIn => steps.copy_in.push(ix),
                EntryStep::SetAside => steps.set_aside.push(ix),
                EntryStep::Replace => {
                    if let Verdict::Differs { share: Some(s) } = v {
                        steps.replace.push((ix, s));
                    }
                }
                EntryStep::Supersede => steps.supersede.push(ix),
                EntryStep::Wait | EntryStep::Descend => {}
            }
        }
        self.carry_out(inv, app, target, steps, ctx, out, &mut ledger)?;
        Ok(ledger)
    }

    /// The copies a pass's comparison asked for, in order: copies in and
    /// replacements, then `image-wins` replacements, then set-aside copies
    /// (with the roots `image-wins` keeps the share's version of).
    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &self,
        inv: &Inventory,
        app: &Dir,
        target: &Dir,
        mut steps: Steps,
        ctx: &mut Ctx<'_>,
        out: &mut Outcome,
        ledger: &mut Ledger,
    ) -> Result<()> {
        if !steps.copy_in.is_empty() || !steps.replace.is_empty() {
            self.copy_in(
                inv,
                app,
                target,
                &steps.copy_in,
                &steps.replace,
                ctx,
                out,
                ledger,
            )?;
        }
        if !steps.supersede.is_empty() {
            let keep_share =
                self.supersede(inv, app, target, &steps.supersede, ctx, out, ledger)?;
            steps.set_aside.extend(keep_share);
        }
        if !steps.set_aside.is_empty() {
            self.set_aside(inv, app, &steps.set_aside, ctx, out, &mut ledger.deletable)?;
        }
        Ok(())
    }
}

fn describe_busy(app: &Path, kept: &[(PathBuf, prune::Kept)]) -> String {
    let busy = kept.iter().filter(|(_, w)| *w == prune::Kept::Busy).count();
    let shown: Vec<String> = kept
        .iter()
        .take(5)
        .map(|(p, why)| {
            format!(
                "{}{}",
                p.display(),
                match why {
                    prune::Kept::Busy => " (open for writing)",
                    _ => "",
                }
            )
        })
        .collect();
    let more = kept.len().saturating_sub(shown.len());
    format!(
        "{} kept changing while it was moved into the share: {} entr{} still changed or appeared in the last pass{} ({}{}). Everything copied so far is in the share; the rest stays in {}. Stop what writes there (or let it finish) and re-run `sharelink link`",
        app.display(),
        kept.len(),
        if kept.len() == 1 { "y" } else { "ies" },
        if busy > 0 { format!(", {busy} held open for writing by another process") } else { String::new() },
        shown.join(", "),
        if more > 0 { format!(", and {more} more") } else { String::new() },
        app.display()
    )
}
