//! The staged copy: chosen entries of the app tree are copied, in parallel,
//! into a staging tree on the share, as faithfully as `cp -a`, and made
//! durable with one `syncfs` per batch. The caller then commits the staging
//! tree with renames.
//!
//! A staging directory holds `tree/` (the copy) and `journal` (which files
//! are complete). It is resumable: a later run, after a crash or on
//! another replica, reuses every journaled file whose app file is still the
//! version that was copied, and copies only the rest.

mod entry;
mod walk;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::inventory::{Inventory, Ix};
use super::journal::{self, Journal, Record};
use super::layout::{ASIDE, TREE};
use super::{Ctx, Workers};
use crate::error::{Error, IoContext, Result};
use crate::failpoint::{self, Failpoint};
use crate::fs::closer::Closer;
use crate::fs::dir::Dir;
use crate::fs::meta::{Identity, Kind};
use crate::fs::pool;
use walk::{Job, Shared};

/// What to do with one inventory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sel {
    Skip,
    /// A directory on the way to copied entries: made plain, not copied.
    Path,
    Copy,
}

/// Mark `roots` and their subtrees for copying, and their ancestors as
/// paths.
pub(crate) fn select(inv: &Inventory, roots: &[Ix]) -> Vec<Sel> {
    let mut sel = vec![Sel::Skip; inv.entries.len()];
    for &r in roots {
        for i in inv.subtree(r) {
            sel[i as usize] = Sel::Copy;
        }
        let mut p = r;
        while p != 0 {
            p = inv.get(p).parent;
            if sel[p as usize] == Sel::Skip {
                sel[p as usize] = Sel::Path;
            }
        }
    }
    sel
}

/// One copied entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Staged {
    /// The app entry as it was read.
    pub(crate) app: Identity,
    /// The copy's identity (regular files), to recognise our own copy on
    /// the share later.
    pub(crate) copy: Option<Identity>,
    /// The app entry did not change while it was read and had not changed
    /// for a while before: the copy is of one settled version.
    pub(crate) faithful: bool,
}

/// The copy's counts, listed once: [`Stats`] (plain numbers, added with
/// `+=`) and `Counters` (the same as atomics, counted by the workers, read
/// with `snapshot`) are both made from this list.
macro_rules! counts {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct Stats {
            $($(#[$doc])* pub(crate) $field: u64,)*
        }

        impl std::ops::AddAssign<&Stats> for Stats {
            fn add_assign(&mut self, b: &Stats) {
                $(self.$field += b.$field;)*
            }
        }

        #[derive(Default)]
        struct Counters {
            $($field: AtomicU64,)*
        }

        impl Counters {
            fn snapshot(&self) -> Stats {
                Stats {
                    $($field: self.$field.load(std::sync::atomic::Ordering::Relaxed),)*
                }
            }
        }
    };
}

counts! {
    files,
    bytes,
    /// Files a previous run had already copied durably.
    resumed,
    resumed_bytes,
    symlinks,
    dirs,
    special,
    hard_links,
}

/// A staging directory: `<name>/{tree,journal}` under `parent`.
pub(crate) struct Staging {
    parent: Arc<Dir>,
    name: OsString,
    /// Where it is, for messages.
    pub(crate) path: PathBuf,
    dir: Dir,
    pub(crate) tree: Arc<Dir>,
    prior: HashMap<PathBuf, Record>,
    journal: Mutex<Journal>,
    /// Whether a previous run's staging was found and is being resumed.
    pub(crate) resumed: bool,
}

impl Staging {
    /// Open the staging directory `name` in `parent`, resuming one that is
    /// there.
    pub(crate) fn open(parent: Arc<Dir>, name: &OsStr, path: PathBuf) -> Result<Staging> {
        let resumed = match parent.mkdir(name, 0o700) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match parent.stat_at(name).ctx("inspect", &path)? {
                    Some(m) if m.kind == Kind::Dir => true,
                    // sharelink's own name, never followed: a symlink there
                    // is junk or hostile, and removing it touches nothing
                    // it points to.
                    Some(m) if m.kind == Kind::Symlink => {
                        crate::warn!("removing a symlink found where sharelink keeps its staging directory: {}", path.display());
                        parent
                            .unlink(name)
                            .ctx("remove", &path)?;
                        parent
                            .mkdir(name, 0o700)
                            .ctx("create staging directory", &path)?;
                        false
                    }
                    Some(m) => {
                        return Err(Error::Unsafe(format!(
                            "{} is a {} where sharelink keeps its staging directory; move it away and re-run",
                            path.display(),
                            m.kind
                        )))
                    }
                    None => return Err(Error::io("create staging directory", &path, e)),
                }
            }
            Err(e) => return Err(Error::io("create staging directory", &path, e)),
        };
        failpoint::hit(Failpoint::StagingCreated);
        // Only `*at` calls go through it (the syncs through the tree's
        // handle): `O_PATH`, no round trip for the open.
        let dir = parent
            .open_dir_path(name)
            .ctx("open staging directory", &path)?;
        let prior = if resumed {
            Some(Journal::load(&dir).ctx("read journal in", &path)?)
        } else {
            None
        };
        match dir.mkdir(OsStr::new(TREE), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(Error::io("create", &path.join(TREE), e)),
        }
        let tree = dir
            .open_dir(OsStr::new(TREE))
            .with_ctx("open", || path.join(TREE))?;
        // A staging directory this run just made holds no journal yet: it
        // is created on a thread of its own while the copy starts (the
        // first records wait for it), after `tree/` (creates in one
        // directory wait for each other, creates in `tree/` do not).
        let (prior, journal) = match prior {
            Some(prior) => {
                let journal = Journal::open(&dir).ctx("write journal in", &path)?;
                (prior, journal)
            }
            None => {
                let journal = Journal::create_aside(&dir).ctx("write journal in", &path)?;
                (HashMap::new(), journal)
            }
        };
        Ok(Staging {
            parent,
            name: name.to_os_string(),
            path,
            dir,
            tree: Arc::new(tree),
            prior,
            journal: Mutex::new(journal),
            resumed,
        })
    }

    /// Files a previous run completed (for the log).
    pub(crate) fn prior_files(&self) -> usize {
        self.prior.len()
    }

    /// Bytes a previous run already copied (they occupy the share).
    pub(crate) fn prior_bytes(&self) -> u64 {
        self.prior.values().map(|r| r.app.size).sum()
    }

    /// Make everything written so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.tree.sync_fs().ctx("sync", &self.path)
    }

    /// Rename `tree` to `to/to_name`, never replacing anything.
    pub(crate) fn commit_tree(&self, to: &Dir, to_name: &OsStr) -> std::io::Result<()> {
        self.dir.rename_noreplace(OsStr::new(TREE), to, to_name)
    }

    /// Remove the staging directory and whatever it still holds: the
    /// journal first, so that no record outlives the copy it names.
    pub(crate) fn remove(self) -> Result<()> {
        let Staging {
            parent,
            name,
            path,
            dir,
            tree,
            journal,
            ..
        } = self;
        drop((journal, tree, dir));
        discard(&parent, &name).ctx("remove", &path)
    }

    /// The staging directory itself (beside the tree and the journal).
    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// After the staged entries moved into the share: remove what is left
    /// of the tree and keep the journal, whose records now name those
    /// entries in their new place.
    pub(crate) fn close(self) -> Result<()> {
        match crate::fs::tree::remove(&self.dir, OsStr::new(TREE)) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(Error::io("remove", &self.path.join(TREE), e)),
        }
    }

    /// Copy the entries `sel` marks from `app` into the staging tree.
    /// Returns what each copied entry was; entries that changed while being
    /// copied are still copied but not `faithful`.
    ///
    /// A copy that runs out of room is not kept for resuming: it would
    /// keep the share full for everyone (crashes and other errors keep it).
    pub(crate) fn copy(
        &mut self,
        inv: &Inventory,
        app: &Dir,
        sel: &[Sel],
        ctx: &mut Ctx<'_>,
    ) -> Result<(Vec<Option<Staged>>, Stats)> {
        let r = self.copy_all(inv, app, sel, ctx);
        if let Err(Error::Io { source, .. }) = &r {
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                self.clear();
            }
        }
        r
    }

    /// Empty the staging directory (best effort; it is redundant).
    fn clear(&self) {
        // The journal made first, if it is still being made (nothing is
        // created in the staging directory while it is removed), and
        // closed before it is unlinked.
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close();
        let r = discard(&self.parent, &self.name);
        match r {
            Ok(()) => {
                crate::info!(
                    "removed the partial copy {}: the share is full",
                    self.path.display()
                )
            }
            Err(e) => {
                crate::warn!(
                    "could not remove the partial copy {}: {e}",
                    self.path.display()
                )
            }
        }
    }

    fn copy_all(
        &mut self,
        inv: &Inventory,
        app: &Dir,
        sel: &[Sel],
        ctx: &mut Ctx<'_>,
    ) -> Result<(Vec<Option<Staged>>, Stats)> {
        let threads = ctx.threads;
        let (mut coordinator, workers) = ctx.split();
        let Workers {
            fresh,
            progress,
            fidelity,
            app_path,
        } = workers;
        let spread = crate::config::is_network_fs(&self.path);
        let closer = if spread {
            let c = Closer::new(threads / 2, threads);
            Some(c.ctx("start closing threads for", &self.path)?)
        } else {
            None
        };
        let mut shared = Shared {
            inv,
            sel,
            prior: &self.prior,
            out: pool::Slots::new(inv.entries.len()),
            pending: (0..inv.entries.len()).map(|_| AtomicU64::new(0)).collect(),
            open_dirs: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            batches: Batches {
                done: Mutex::new((Vec::new(), Instant::now())),
                journal: &self.journal,
                dir: &self.tree,
                path: &self.path,
                inv,
                closer,
            },
            stats: Counters::default(),
            fid: fidelity,
            progress,
            fresh,
            app_path,
            staging_path: &self.path,
            dst_dev: self.tree.stat().map(|m| m.dev).unwrap_or(0),
            spread,
        };
        let root_src = Arc::new(app.try_clone().ctx("open", app_path)?);
        let start = vec![Job::Dir {
            ix: 0,
            src: root_src,
            dst: self.tree.clone(),
        }];
        let mut beat = || -> Result<()> {
            coordinator.beat()?;
            shared.batches.flush(false)
        };
        pool::run(threads, start, &|job, q| shared.run(job, q), &mut beat)?;
        // Followers whose leader was never copied (it changed meanwhile, or
        // sat below a directory that did): copy them on their own.
        let orphans = shared.orphaned_followers();
        if !orphans.is_empty() {
            pool::run(threads, orphans, &|job, q| shared.run(job, q), &mut beat)?;
        }
        // Every copy closed (and its close checked) before the last batch
        // is recorded and the staging tree synced.
        if let Some(closer) = shared.batches.closer.take() {
            closer
                .finish()
                .map_err(|(ix, e)| Error::io("close", &shared.dst_path(ix), e))?;
        }
        shared.batches.flush(true)?;
        self.sync()?;
        failpoint::hit(Failpoint::StagingSynced);
        let out = shared.out.into_vec();
        Ok((out, shared.stats.snapshot()))
    }
}

/// Remove the staging directory `name` in `parent`, if there is one: the
/// journal first, so that no record outlives the copy it names. What a
/// replace moved aside (`replaced.<n>` and its record) is never removed:
/// it may be another writer's file, and the staging directory then stays
/// with it for the next run to put back.
pub(crate) fn discard(parent: &Dir, name: &OsStr) -> std::io::Result<()> {
    let dir = match parent.open_dir_path(name) {
        Ok(d) => d,
        Err(e) if crate::fs::gone(&e) => return crate::fs::tree::remove(parent, name),
        Err(e) => return Err(e),
    };
    match dir.unlink(OsStr::new(journal::NAME)) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        _ => {}
    }
    // Usually only the journal was there: one rmdir, no listing (on a
    // network share three round trips fewer). An rmdir removes nothing
    // but an empty directory, so what was moved aside is still kept.
    match parent.rmdir(name) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(_) => {}
    }
    let listed = dir.list()?;
    let kept = |n: &OsStr| {
        n.as_encoded_bytes()
            .strip_prefix(ASIDE.as_bytes())
            .is_some_and(|r| r.starts_with(b"."))
    };
    if listed.iter().any(|(n, _)| kept(n)) {
        for (n, _) in listed.iter().filter(|(n, _)| !kept(n)) {
            crate::fs::tree::remove(&dir, n)?;
        }
        return Ok(());
    }
    drop(dir);
    // The rmdir above found it not empty: no second try by itself.
    crate::fs::tree::remove(parent, name)
}

/// How long, or how many, completed files wait before a `syncfs` makes
/// them durable and the journal records them: resumability costs one sync
/// per batch, not one per file, and a run killed early still leaves
/// progress behind.
const BATCH: std::time::Duration = std::time::Duration::from_secs(1);

const BATCH_FILES: usize = 256;

/// Completed files on their way into the journal: made durable with one
/// `syncfs` per batch, then recorded. A batch closes after [`BATCH`] or
/// [`BATCH_FILES`] files, whichever comes first.
struct Batches<'a> {
    done: Mutex<(Vec<(PathBuf, Record)>, Instant)>,
    journal: &'a Mutex<Journal>,
    dir: &'a Dir,
    path: &'a Path,
    inv: &'a Inventory,
    /// Where written files are closed on a network share: a batch waits
    /// for the closes of its files before it is recorded.
    closer: Option<Closer<Ix>>,
}

impl Batches<'_> {
    fn record(&self, rel: PathBuf, rec: Record) -> Result<()> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        d.0.push((rel, rec));
        if d.0.len() < BATCH_FILES {
            return Ok(());
        }
        let batch = std::mem::take(&mut d.0);
        d.1 = Instant::now();
        drop(d);
        self.write(&batch)
    }

    /// Close the batch if it is due (or `force`).
    fn flush(&self, force: bool) -> Result<()> {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if d.0.is_empty() || !force && d.1.elapsed() < BATCH {
            return Ok(());
        }
        let batch = std::mem::take(&mut d.0);
        d.1 = Instant::now();
        drop(d);
        self.write(&batch)
    }

    fn write(&self, batch: &[(PathBuf, Record)]) -> Result<()> {
        // The bytes first, then the record that they are complete: every
        // file closed (its close checked), then synced.
        self.settle()?;
        self.dir.sync_fs().ctx("sync", self.path)?;
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(batch)
            .ctx("write journal in", self.path)?;
        failpoint::hit(Failpoint::StagingJournal);
        Ok(())
    }

    /// Wait for the closes of every file handed to the closer so far.
    fn settle(&self) -> Result<()> {
        match &self.closer {
            Some(c) => c
                .settle()
                .map_err(|(ix, e)| Error::io("close", &dst_path(self.path, self.inv, ix), e)),
            None => Ok(()),
        }
    }
}

/// Where the copy of `ix` is staged.
fn dst_path(staging: &Path, inv: &Inventory, ix: Ix) -> PathBuf {
    staging.join(TREE).join(inv.rel(ix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn counters_snapshot_into_stats_that_add_up() {
        let c = Counters::default();
        c.files.fetch_add(2, Relaxed);
        c.bytes.fetch_add(10, Relaxed);
        c.hard_links.fetch_add(1, Relaxed);
        let mut total = c.snapshot();
        total += &Stats {
            files: 1,
            resumed: 3,
            special: 4,
            ..Stats::default()
        };
        assert_eq!(
            (
                total.files,
                total.bytes,
                total.resumed,
                total.resumed_bytes,
                total.symlinks,
                total.dirs,
                total.special,
                total.hard_links
            ),
            (3, 10, 3, 0, 0, 0, 4, 1)
        );
    }
}
